"""A GPU hog: bf16 matrix multiplies in a loop on the one GPU it can see.

Run it pinned to one replica's GPU by UUID, so it competes with that replica
only (CUDA_VISIBLE_DEVICES takes a UUID):

    CUDA_VISIBLE_DEVICES=GPU-<uuid> python3 hog.py --seconds 60

It holds about 1 GiB of GPU memory (three 8192 x 8192 bf16 matrices and the
CUDA context), which fits beside a vLLM that took gpu_memory_utilization 0.85.
Prints the TFLOP/s it sustained, so a report can say how hard it pushed.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--size", type=int, default=8192)
    args = parser.parse_args()
    a = torch.randn(args.size, args.size, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(args.size, args.size, dtype=torch.bfloat16, device="cuda")
    out = torch.empty_like(a)
    torch.cuda.synchronize()
    started = time.monotonic()
    done = 0
    while time.monotonic() - started < args.seconds:
        for _ in range(20):
            torch.matmul(a, b, out=out)
        torch.cuda.synchronize()
        done += 20
    elapsed = time.monotonic() - started
    tflops = done * 2 * args.size ** 3 / elapsed / 1e12
    print(f"hog: {done} matmuls of {args.size}^2 bf16 in {elapsed:.1f} s: {tflops:.0f} TFLOP/s "
          f"on {torch.cuda.get_device_name(0)}", flush=True)


if __name__ == "__main__":
    main()
