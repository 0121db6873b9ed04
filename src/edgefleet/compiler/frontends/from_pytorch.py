"""PyTorch front-end: a ``torch.export`` program (``.pt2``), a TorchScript archive or a whole pickled
``nn.Module`` -> ONNX opset 17 through the TorchScript-based exporter (``dynamo=False``).

The dynamo exporter would need onnxscript and opset >= 18; opset 17 keeps the artifacts loadable by
older ONNX Runtime releases on devices. A pickled module is loaded with ``weights_only=False``,
which runs the pickle's code: compile only files you trust, and make the module's class importable.
"""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx
import torch

from edgefleet.compiler.frontends import FrontendResult
from edgefleet.compiler.frontends.from_onnx import finish
from edgefleet.compiler.signature import InputSpec, concrete_shape
from edgefleet.compiler.types import LogFn, UnsupportedModel
from edgefleet.core.errors import InvalidArgument
from edgefleet.core.tensors import DataType

OPSET = 17
_TORCH_DTYPES = {
    DataType.UINT8: torch.uint8,
    DataType.INT16: torch.int16,
    DataType.INT32: torch.int32,
    DataType.INT64: torch.int64,
    DataType.FLOAT16: torch.float16,
    DataType.FLOAT32: torch.float32,
    DataType.FLOAT64: torch.float64,
}


class _ExportedProgramModule(torch.nn.Module):
    """Wraps ``ExportedProgram.module()``, whose ``train()`` raises, so the exporter can trace it."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def train(self, mode: bool = True) -> _ExportedProgramModule:
        return self  # the exported graph is already in inference form

    def forward(self, *args: torch.Tensor) -> Any:
        return self.inner(*args)


def convert(model_path: Path, declared: Sequence[InputSpec], work_dir: Path, log: LogFn) -> FrontendResult:
    """Load the PyTorch model and export it to ONNX with the declared inputs."""
    if not declared:
        raise InvalidArgument(
            "--framework pytorch needs --input NAME:SHAPE[:DTYPE] for every model input, in forward() order "
            "(e.g. --input x:1x3x224x224)"
        )
    module, kind = _load(model_path)
    log(f"read PyTorch {kind} {model_path.name}")
    specs = [d.to_tensor_spec() for d in declared]
    examples = tuple(torch.zeros(concrete_shape(s.shape), dtype=_TORCH_DTYPES[s.dtype]) for s in specs)
    try:
        with torch.no_grad():
            sample = module(*examples)
    except Exception as exc:  # a shape/type mismatch surfaces as whatever the module raises
        raise InvalidArgument(
            f"the model does not run on inputs {[f'{s.name}:{list(concrete_shape(s.shape))}' for s in specs]}: {exc}"
        ) from exc
    output_names = _output_names(sample)
    dynamic: dict[str, dict[int, str]] = {
        s.name: {i: f"{s.name}_dim{i}" for i, d in enumerate(s.shape) if d < 0} for s in specs
    }
    dynamic = {k: v for k, v in dynamic.items() if v}
    if any(0 in axes for axes in dynamic.values()):
        dynamic.update({name: {0: "batch"} for name in output_names})
    exported = work_dir / "exported.onnx"
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of dynamo (which needs opset >= 18)
            # and emits tracer warnings for benign Python control flow.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                examples,
                str(exported),
                dynamo=False,
                opset_version=OPSET,
                input_names=[s.name for s in specs],
                output_names=output_names,
                dynamic_axes=dynamic or None,
                do_constant_folding=True,
            )
    except torch.onnx.errors.UnsupportedOperatorError as exc:
        raise UnsupportedModel(f"unsupported operator for ONNX opset {OPSET}: {exc}") from exc
    except Exception as exc:  # the exporter raises plain RuntimeErrors for untraceable code
        raise UnsupportedModel(f"PyTorch could not export the model to ONNX: {exc}") from exc
    model = onnx.load(str(exported))
    exported.unlink()
    log(f"exported to ONNX opset {OPSET}: {len(model.graph.node)} nodes")
    return finish(
        model,
        [],
        work_dir,
        {"torch": str(torch.__version__)},
        (f"exported from PyTorch {kind}",),
        batch_declared=declared,
    )


def _load(path: Path) -> tuple[torch.nn.Module, str]:
    if not path.is_file():
        raise InvalidArgument(f"model file {path} does not exist or is not a file")
    names: list[str] = []
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    try:
        with warnings.catch_warnings():
            # TorchScript and torch.load of whole modules are deprecated upstream but still the
            # formats users have; the warnings are not actionable during a compile.
            warnings.simplefilter("ignore")
            if any(n.endswith("/archive_format") or "/models/" in n for n in names):
                program = torch.export.load(str(path))
                return _ExportedProgramModule(program.module()), "torch.export program"
            if any("/code/" in n for n in names):
                script: torch.nn.Module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
                return script.eval(), "TorchScript module"
            loaded = torch.load(str(path), map_location="cpu", weights_only=False)
    except (AttributeError, ModuleNotFoundError) as exc:
        raise InvalidArgument(
            f"model file {path.name}: the module's class cannot be imported ({exc}); put its module on "
            "PYTHONPATH, or save the model with torch.jit.script/trace + save or torch.export.save"
        ) from exc
    except Exception as exc:  # torch raises RuntimeError/UnpicklingError/EOFError for corrupt files
        raise InvalidArgument(f"model file {path.name} is not a readable PyTorch model: {exc}") from exc
    if isinstance(loaded, torch.nn.Module):
        return loaded.eval(), "nn.Module"
    if isinstance(loaded, dict):
        raise InvalidArgument(
            f"model file {path.name} holds a state_dict (weights only, no architecture); save the whole module "
            "(torch.save(model)), a TorchScript archive or a torch.export program"
        )
    raise InvalidArgument(f"model file {path.name} holds a {type(loaded).__name__}, not a torch.nn.Module")


def _output_names(sample: object) -> list[str]:
    if isinstance(sample, torch.Tensor):
        return ["output"]
    if isinstance(sample, dict):
        return [str(k) for k in sample]
    if isinstance(sample, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in sample):
        return [f"output_{i}" for i in range(len(sample))]
    raise UnsupportedModel(
        f"the model returns {type(sample).__name__}; edgefleet compiles models returning a tensor, "
        "a tuple/list of tensors or a dict of tensors"
    )
