"""Run .tflite models under tflite_runtime 2.14 (numpy<2, its own venv) and save their outputs for comparison.

Run by tests/test_vggish_convert.py with the interpreter in CUSTOM_TFLITE214_PYTHON; stdlib + numpy +
tflite_runtime only, because that venv has nothing else. Usage:

    python tflite214_check.py INPUTS.npy OUT_DIR MODEL.tflite [MODEL.tflite ...] [--threads N] [--repeat N]

INPUTS.npy holds (n, ...) float32 inputs, one per invoke (reshaped to each model's input shape). For each model it
writes OUT_DIR/<model stem>.npy with the (n, outputs) results and prints one JSON line with the runtime version
and the mean invoke time (informational: timing is never asserted). A model with a free batch dimension (-1 in its
input signature) is also run once on all n inputs, resized to [n, ...] as the daemon does; those results go to
OUT_DIR/<model stem>.batched.npy.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import tflite_runtime
from tflite_runtime.interpreter import Interpreter


def run_model(path: Path, inputs: np.ndarray, threads: int, repeat: int) -> tuple[np.ndarray, float]:
    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    results = []
    for x in inputs:
        interpreter.set_tensor(inp["index"], x.reshape(inp["shape"]).astype(inp["dtype"]))
        interpreter.invoke()
        results.append(interpreter.get_tensor(out["index"]).reshape(-1).copy())
    start = time.perf_counter()
    for _ in range(repeat):
        for x in inputs:
            interpreter.set_tensor(inp["index"], x.reshape(inp["shape"]).astype(inp["dtype"]))
            interpreter.invoke()
    invoke_ms = (time.perf_counter() - start) * 1e3 / max(1, repeat * len(inputs))
    return np.stack(results), invoke_ms


def run_batched(path: Path, inputs: np.ndarray, threads: int) -> np.ndarray | None:
    """All inputs in one invoke when the model's batch dimension is free; None when it is fixed."""
    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    inp = interpreter.get_input_details()[0]
    signature = list(inp.get("shape_signature", inp["shape"]))
    if len(signature) < 2 or signature[0] != -1:
        return None
    interpreter.resize_tensor_input(inp["index"], [len(inputs), *signature[1:]], strict=True)
    interpreter.allocate_tensors()
    out = interpreter.get_output_details()[0]
    interpreter.set_tensor(inp["index"], inputs.reshape(len(inputs), *signature[1:]).astype(inp["dtype"]))
    interpreter.invoke()
    return interpreter.get_tensor(out["index"]).reshape(len(inputs), -1).copy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("models", type=Path, nargs="+")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=0, help="extra timed passes over the inputs")
    args = parser.parse_args()
    inputs = np.load(args.inputs)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for model in args.models:
        outputs, invoke_ms = run_model(model, inputs, args.threads, args.repeat)
        np.save(args.out_dir / f"{model.stem}.npy", outputs)
        batched = run_batched(model, inputs, args.threads)
        if batched is not None:
            np.save(args.out_dir / f"{model.stem}.batched.npy", batched)
        report = {
            "batched": batched is not None,
            "model": str(model),
            "runtime": f"tflite_runtime {tflite_runtime.__version__}",
            "numpy": np.__version__,
            "threads": args.threads,
            "invoke_ms": round(invoke_ms, 3) if args.repeat else None,
        }
        print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
