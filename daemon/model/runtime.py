"""Load a .tflite model on the TFLite runtime alone: ai_edge_litert first, tflite_runtime as fallback.

The daemon must never import TensorFlow (hundreds of MB, slow start on a Pi); both runtimes expose the same
Interpreter API, so the rest of the code does not care which one it got.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np

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


class RowRunner:
    """One interpreter that maps rows to outputs: (n, *row) in, (n, *out_row) out.

    The one place that feeds a .tflite: the daemon's backbone and classifier, the converter's self-checks and the
    evaluator all go through it. A model whose input has a free batch dimension (signature -1, as our VGGish export
    has) runs all rows in one invoke: the weights are streamed once per window instead of once per patch. The input
    is resized only when the row count changes (a daemon's windows always give the same count), so one interpreter
    and one set of packed weights serve every call. A fixed-shape model (the TF-Hub waveform YAMNet, old bundles)
    runs one row per invoke.
    """

    def __init__(self, path: Path | str, threads: int = 1, preferred: str | None = None, batched: bool = True) -> None:
        self.interpreter = load_interpreter(path, threads=threads, preferred=preferred)
        inp = self.interpreter.get_input_details()[0]
        out = self.interpreter.get_output_details()[0]
        self.input_index = inp["index"]
        self.output_index = out["index"]
        self.input_dtype = np.dtype(inp["dtype"])
        self.input_signature = _signature(inp)
        self.output_signature = _signature(out)
        shape = tuple(int(d) for d in inp["shape"])
        # A leading batch dimension of 1 (or free) is the row axis; otherwise the whole input is one row.
        self.has_batch_axis = len(shape) >= 2 and self.input_signature[0] in (1, -1)
        self.row_shape = shape[1:] if self.has_batch_axis else shape
        self.batched = batched and self.has_batch_axis and self.input_signature[0] == -1
        out_shape = tuple(int(d) for d in out["shape"])
        self.output_row_size = int(np.prod(out_shape[1:] if len(out_shape) >= 2 else out_shape))
        self._rows = 1  # the batch size the interpreter is allocated for

    def _resize(self, rows: int) -> None:
        if rows != self._rows:
            self.interpreter.resize_tensor_input(self.input_index, [rows, *self.row_shape], strict=True)
            self.interpreter.allocate_tensors()
            self._rows = rows

    def _invoke(self, x: np.ndarray, indices: tuple[int, ...]) -> list[np.ndarray]:
        self.interpreter.set_tensor(self.input_index, np.ascontiguousarray(x, dtype=self.input_dtype))
        self.interpreter.invoke()
        return [self.interpreter.get_tensor(i) for i in indices]

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        """(n, *row_shape) -> (n, *output row); n = 0 gives an empty result without invoking."""
        return self.run(rows)[0]

    def run(self, rows: np.ndarray, extra: tuple[int, ...] = ()) -> list[np.ndarray]:
        """Like calling the runner, plus the rows of more output tensors (interpreter tensor indices `extra`, e.g. a
        backbone's exposed embedding), read after the same invoke(s): [(n, output row), (n, extra row), ...]."""
        indices = (self.output_index, *extra)
        rows = np.asarray(rows).reshape(-1, *self.row_shape)
        if self.batched and len(rows):
            self._resize(len(rows))
            return [out.reshape(len(rows), -1).copy() for out in self._invoke(rows, indices)]
        if self._rows != 1:
            self._resize(1)
        shape = (1, *self.row_shape) if self.has_batch_axis else self.row_shape
        per_row = [[out.reshape(-1).copy() for out in self._invoke(row.reshape(shape), indices)] for row in rows]
        if not per_row:
            sizes = [self.output_row_size] + [0] * len(extra)
            return [np.zeros((0, size), dtype=np.float32) for size in sizes]
        return [np.stack(column) for column in zip(*per_row, strict=True)]


def _signature(detail: dict[str, Any]) -> tuple[int, ...]:
    """A tensor's declared shape, -1 for a free dimension (older runtimes without shape_signature: its shape)."""
    signature = detail.get("shape_signature")
    if signature is None or len(signature) == 0:
        signature = detail["shape"]
    return tuple(int(d) for d in signature)
