"""Work per window (FLOPs counted from the model files) and this CPU's peak (a big float32 matmul), in one run.

FLOPs are counted from the TFLite graph itself, so the figure is for the network that really runs: for every
CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED op, 2 x multiply-accumulates from its tensor shapes. Pooling,
activations and the FFT are left out (well under 1 % for these networks). An int8 op counts the same as a float one.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from .common import emit

COUNTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def tflite_flops(path: Path | str) -> float:
    """FLOPs of one invoke of a .tflite model (2 per multiply-accumulate of its conv and dense ops)."""
    from custom.daemon.model.runtime import load_interpreter

    interpreter = load_interpreter(path, threads=1)
    shapes = {t["index"]: tuple(int(d) for d in t["shape"]) for t in interpreter.get_tensor_details()}
    total = 0.0
    for op in interpreter._get_ops_details():  # noqa: SLF001 - the only API that lists a graph's ops
        name = op["op_name"]
        if name not in COUNTED_OPS:
            continue
        out = shapes[op["outputs"][0]]
        weights = shapes[op["inputs"][1]]
        out_elements = float(np.prod(out))
        if name == "CONV_2D":  # weights (out_ch, kh, kw, in_ch): each output element is kh*kw*in_ch MACs
            macs = out_elements * weights[1] * weights[2] * weights[3]
        elif name == "DEPTHWISE_CONV_2D":  # weights (1, kh, kw, ch): kh*kw MACs per output element
            macs = out_elements * weights[1] * weights[2]
        else:  # FULLY_CONNECTED weights (units, inputs)
            macs = out_elements * weights[-1]
        total += 2.0 * macs
    return total


def vggish_flops_from_shapes() -> float:
    """FLOPs of one VGGish patch from the layer table (convert/backbones/vggish_model.py), independent of any model
    file."""
    from custom.convert.backbones.vggish_model import NUM_BANDS, NUM_FRAMES, OFFICIAL, POOL_SIZE

    height, width, total = NUM_FRAMES, NUM_BANDS, 0.0
    for layer in OFFICIAL.layers():
        if layer.kind == "conv":  # SAME 3x3 stride 1: one 3x3xCin dot product per output element
            total += 2.0 * height * width * np.prod(layer.weights_shape)
            if layer.pool_after:
                height, width = -(-height // POOL_SIZE), -(-width // POOL_SIZE)
        else:
            total += 2.0 * np.prod(layer.weights_shape)
    return float(total)


def matmul_peak_gflops(threads: int, size: int = 2048, repeats: int = 5) -> float:
    """Best-of-`repeats` float32 GEMM GFLOP/s: what this CPU sustains on ideal dense work with `threads` threads.

    BLAS threads are set by the caller's environment (OPENBLAS_NUM_THREADS etc.) before numpy loads.
    """
    from contextlib import nullcontext

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # the environment variables already pin it
        threadpool_limits = None
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    best = float("inf")
    with threadpool_limits(threads) if threadpool_limits else nullcontext():
        a @ b  # warm-up: page in, spin up the thread pool
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
    return 2.0 * size**3 / best / 1e9


def blas_info() -> str:
    """Which BLAS numpy uses and its kernel (OPENBLAS_CORETYPE can force a slower one on some machines)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown"
    parts = []
    for pool in threadpool_info():
        if pool.get("user_api") == "blas":
            parts.append(f"{pool.get('internal_api')} {pool.get('version')} ({pool.get('architecture')})")
    return ", ".join(parts) or "none"


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.flops --threads N [--size S]`: the matmul peak in a fresh process, as a result line."""
    parser = argparse.ArgumentParser(prog="python -m bench.flops")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--size", type=int, default=2048)
    args = parser.parse_args(argv)
    emit({"gflops": matmul_peak_gflops(args.threads, args.size), "blas": blas_info()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
