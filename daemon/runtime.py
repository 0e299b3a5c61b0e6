"""Load a .tflite model on the TFLite runtime alone: ai_edge_litert first, tflite_runtime as fallback.

The daemon must never import TensorFlow (hundreds of MB, slow start on a Pi); both runtimes expose the same
Interpreter API, so the rest of the code does not care which one it got.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

_RUNTIMES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter")


class RuntimeMissingError(RuntimeError):
    """Neither TFLite runtime is importable."""


def interpreter_class(preferred: str | None = None) -> tuple[type, str]:
    """The Interpreter class of the first runtime that imports, and that runtime's module name.

    `preferred` ("ai_edge_litert" or "tflite_runtime") forces one, for tests that prove a model loads in both.
    """
    modules = _RUNTIMES if preferred is None else tuple(m for m in _RUNTIMES if m.startswith(preferred))
    if not modules:
        raise ValueError(f"unknown TFLite runtime {preferred!r}; use ai_edge_litert or tflite_runtime")
    errors = []
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
            continue
        return module.Interpreter, name.split(".")[0]
    raise RuntimeMissingError(
        "no TFLite runtime: install 'ai-edge-litert' (pip install ai-edge-litert) or, on numpy<2 systems, "
        "'tflite-runtime' (" + "; ".join(errors) + ")"
    )


def load_interpreter(path: Path | str, threads: int = 1, preferred: str | None = None) -> Any:
    """An allocated Interpreter for `path` using `threads` CPU threads."""
    cls, _ = interpreter_class(preferred)
    interpreter = cls(model_path=str(path), num_threads=max(1, int(threads)))
    interpreter.allocate_tensors()
    return interpreter


def runtime_name() -> str:
    """Which runtime this process would use (for health and bundle provenance)."""
    return interpreter_class()[1]
