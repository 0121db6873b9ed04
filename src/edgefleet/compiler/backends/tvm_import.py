"""Importing TVM for the builder (:mod:`.tvm`) and the tuner (:mod:`.tvm_tuning`), which both use it.

Kept apart from both so that the builder imports the tuner (lazily, only when tuning) and the tuner
imports nothing of the builder.
"""

from __future__ import annotations

import inspect
from typing import Any

from edgefleet.compiler.types import CandidateUnavailable

# File names Python gives code that has no source file (see speed_up_tvmscript_imports).
_SOURCELESS_FILENAMES = (
    "<frozen importlib._bootstrap>",
    "<frozen importlib._bootstrap_external>",
    "<ast>",
    "<string>",
)


def speed_up_tvmscript_imports() -> None:
    """Make importing TVM's TVMScript-heavy modules ~10x faster (55 s -> 5 s for MetaSchedule's).

    ``import tvm.s_tir.tensor_intrin`` (done by MetaSchedule's ``TuneContext``) parses ~500
    TVMScript functions, each calling ``inspect.stack()``. For frames of code without a source
    file (the import machinery's, ``<ast>``) :func:`inspect.getmodule` scans every loaded module,
    every time, to conclude there is none. Mapping those pseudo file names to a module name that is
    never imported makes it return the same ``None`` at once.
    """
    for name in _SOURCELESS_FILENAMES:
        inspect.modulesbyfile.setdefault(name, name)


def import_tvm() -> Any:
    """``tvm`` with Relax, imported fast; CandidateUnavailable naming the extra when it is missing."""
    speed_up_tvmscript_imports()
    try:
        import tvm  # type: ignore[import-untyped, unused-ignore]
        from tvm import relax  # type: ignore[import-untyped, unused-ignore]  # noqa: F401
    except ImportError as exc:
        raise CandidateUnavailable(
            f"TVM is not installed here ({exc}): pip install 'edgefleet[tvm]'"
        ) from exc
    return tvm
