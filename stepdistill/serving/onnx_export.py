"""`stepdistill export --format onnx`: the student's label-ranking graphs as ONNX files that onnxruntime runs
(:mod:`stepdistill.student.onnx_student` names the graphs and their inputs), optionally int8 through onnxruntime's
dynamic quantiser.

The exporter is torch's own (``torch.onnx.export``, dynamo-based: ``torch.export`` then onnxscript, opset 18+), with
dynamic batch and sequence axes. Attention is switched to the eager implementation first: T5's SDPA attention fails
the exporter's decomposition in torch 2.13 with transformers 5 (a reshape of a transposed tensor), and one
implementation for every family keeps the graphs alike. ``optimum``'s exporter is not used: optimum-onnx 0.1.0
requires transformers < 4.58. Each graph is a single .onnx file (weights inside) below protobuf's 2 GB limit, with
external data beside it above that. The seq2seq graphs both hold the shared embedding matrix (duplicated on disk).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

from ..student.onnx_student import GRAPH_INPUTS, GRAPH_OUTPUTS, GRAPHS

# model types exported and checked against PyTorch; others may export, but nobody has checked their graphs
SUPPORTED_MODEL_TYPES = {"t5": "seq2seq", "mt5": "seq2seq", "encoder-decoder": "seq2seq", "llama": "causal"}
SINGLE_FILE_LIMIT = 1_800_000_000  # bytes of weights; protobuf caps one file at 2 GB


def _wrappers(model):
    """{graph name: a module whose forward takes the graph's inputs positionally} for the model's family."""
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    class Decoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, decoder_input_ids, encoder_hidden_states, attention_mask):
            return self.model(encoder_outputs=(encoder_hidden_states,), attention_mask=attention_mask,
                              decoder_input_ids=decoder_input_ids, use_cache=False).logits

    class Causal(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, position_ids, keep):
            # logits_to_keep as a tensor of positions: the vocabulary projection runs on those rows only
            return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              use_cache=False, logits_to_keep=keep).logits

    if getattr(model.config, "is_encoder_decoder", False):
        return {"encoder": Encoder().eval(), "decoder": Decoder().eval()}
    return {"model": Causal().eval()}


def _example_inputs(model) -> dict[str, Any]:
    """Small example tensors (batch 2, lengths above 1 so that no axis is specialised to 0 or 1) and their axes."""
    import torch

    batch, length, target = torch.export.Dim("batch"), torch.export.Dim("sequence"), torch.export.Dim("target")
    ids = torch.randint(3, 20, (2, 7))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    hidden = torch.zeros(2, 7, model.config.encoder.hidden_size if model.config.model_type == "encoder-decoder"
                         else getattr(model.config, "d_model", None) or model.config.hidden_size)
    return {
        "encoder": ((ids, mask), {"input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}}),
        "decoder": ((ids[:, :3], hidden, mask), {"decoder_input_ids": {0: batch, 1: target},
                                                 "encoder_hidden_states": {0: batch, 1: length},
                                                 "attention_mask": {0: batch, 1: length}}),
        "model": ((ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), torch.tensor([5, 6])),
                  {"input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length},
                   "position_ids": {0: batch, 1: length}, "keep": {0: torch.export.Dim("keep")}}),
    }


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter's and the quantiser's warnings (about the graphs they write, not about the student) silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # onnxruntime's quantiser warns through the root logger, the exporter through torch.onnx's (e.g. that
        # torchvision's operators are skipped)
        loggers = [logging.root, logging.getLogger("torch.onnx")]
        levels = [logger.level for logger in loggers]
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def check_exportable(model) -> str:
    """The family of a model that ``--format onnx`` exports; a ValueError naming the model type (or the missing
    packages) otherwise."""
    import importlib.util

    missing = [name for name in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"--format onnx needs {', '.join(missing)}: pip install 'stepdistill[onnx]'")
    model_type = model.config.model_type
    family = SUPPORTED_MODEL_TYPES.get(model_type)
    if family is None:
        raise ValueError(f"--format onnx: model type {model_type!r} is not supported (supported: "
                         f"{', '.join(sorted(SUPPORTED_MODEL_TYPES))}); export it with --format safetensors")
    return family


def export_graphs(model, out: Path, quantize: str | None = None) -> dict[str, Any]:
    """Write the family's graphs into ``out`` (fp32, or int8 with ``quantize="int8"``); the meta file's ``onnx``
    section: family, graph files, the token ids generation needs, the exporter's versions."""
    import onnx
    import onnxruntime
    import torch

    family = check_exportable(model)
    model = model.cpu().eval()
    model.set_attn_implementation("eager")
    large = sum(p.numel() * p.element_size() for p in model.parameters()) > SINGLE_FILE_LIMIT
    examples = _example_inputs(model)
    graphs = {}
    with tempfile.TemporaryDirectory(dir=out, prefix=".fp32-") as scratch, _quiet_exporter(), torch.no_grad():
        fp32_dir = Path(scratch) if quantize else out
        for name, wrapper in _wrappers(model).items():
            args, shapes = examples[name]
            try:
                torch.onnx.export(wrapper, args, str(fp32_dir / f"{name}.onnx"), input_names=list(GRAPH_INPUTS[name]),
                                  output_names=[GRAPH_OUTPUTS[name]], dynamic_shapes=shapes, dynamo=True,
                                  external_data=large, verbose=False)
            except Exception as exc:  # the exporter's errors are long reports; their first line says what failed
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ValueError(f"--format onnx: torch.onnx.export failed on the {name} graph of this "
                                 f"{model.config.model_type} student: {first}") from exc
            graphs[name] = f"{name}.onnx"
        if quantize:
            quantize_graphs(fp32_dir, out, graphs)
    generation = model.generation_config
    start = generation.decoder_start_token_id
    if start is None:
        start = getattr(model.config, "decoder_start_token_id", None)
    return {"family": family, "graphs": graphs, "quantize": quantize, "model_type": model.config.model_type,
            "decoder_start_token_id": start, "pad_token_id": generation.pad_token_id
            if generation.pad_token_id is not None else model.config.pad_token_id,
            "eos_token_id": generation.eos_token_id if generation.eos_token_id is not None
            else model.config.eos_token_id,
            "opset": max(o.version for o in onnx.load(str(out / graphs[GRAPHS[family][0]]),
                                                       load_external_data=False).opset_import if o.domain == ""),
            "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}}


def quantize_graphs(source: Path, out: Path, graphs: dict[str, str]) -> None:
    """Dynamic int8 copies (weights int8, activations quantised per batch) of the fp32 ``graphs`` in ``source``,
    written to ``out`` under the same names, by onnxruntime's quantiser after its pre-processing (shape inference
    and graph optimisation, so that more MatMuls qualify)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source, out = source.resolve(), out.resolve()
    with tempfile.TemporaryDirectory(dir=out, prefix=".int8-") as scratch, _quiet_exporter():
        for name, file in graphs.items():
            fp32 = source / file
            large = any(source.glob(f"{file}*.data")) or fp32.stat().st_size > SINGLE_FILE_LIMIT
            prepared = Path(scratch) / file
            try:
                # auto_merge: the warm-started BERT pair's decoder needs it for its shapes to be inferred; the
                # working directory is the scratch folder because a failed inference saves a copy of the graph there
                with contextlib.chdir(scratch):
                    quant_pre_process(str(fp32), str(prepared), auto_merge=True, save_as_external_data=large)
            except Exception:  # pre-processing only helps; a graph its shape inference cannot read quantises as is
                prepared = fp32
            quantize_dynamic(str(prepared), str(out / file), weight_type=QuantType.QInt8,
                             use_external_data_format=large)
