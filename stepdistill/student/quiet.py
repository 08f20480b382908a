"""Less noise from transformers while a student is built, saved and reloaded (issue 15): progress bars for loading
and writing a few small weight files, the checkpoint-order ``mtime`` notice, and "missing keys" for weights that
are tied to weights that did load. Keys that are really missing still warn."""

from __future__ import annotations

import contextlib
import logging

MTIME_NOTICE = "mtime may not be reliable"


class _DropMtimeNotice(logging.Filter):
    # checkpoints saved within a second of each other (small students) make transformers fall back to step order,
    # which is the order we want anyway
    def filter(self, record: logging.LogRecord) -> bool:
        return MTIME_NOTICE not in record.getMessage()


def silence_checkpoint_order_notice() -> None:
    target = logging.getLogger("transformers.trainer_utils")
    if not any(isinstance(f, _DropMtimeNotice) for f in target.filters):
        target.addFilter(_DropMtimeNotice())


@contextlib.contextmanager
def no_progress_bars():
    """transformers' "Loading weights" / "Writing model shards" bars off inside the block (restored after)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def tied_parameter_names(model) -> set[str]:
    """Names of parameters that share their tensor with another parameter (tied embeddings, lm_head, ...)."""
    names_by_tensor: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        names_by_tensor.setdefault(id(parameter), []).append(name)
    return {name for names in names_by_tensor.values() if len(names) > 1 for name in names}


def really_missing(model, missing_keys: list[str]) -> list[str]:
    """The missing keys that are not tied to a parameter the checkpoint did provide."""
    tied = tied_parameter_names(model)
    loaded_tensors = {id(p) for name, p in model.named_parameters(remove_duplicate=False) if name not in missing_keys}
    parameters = dict(model.named_parameters(remove_duplicate=False))
    return [key for key in missing_keys if key not in tied or id(parameters.get(key)) not in loaded_tensors]
