"""Checks of the fused-NAFNet Triton kernel under Triton's CPU interpreter.

Run by ``test_fused_nafnet.py`` in a process of its own with ``TRITON_INTERPRET=1`` set before
Triton is imported: in a process where Triton was imported without it (torch's inductor does
that), the interpreter fails on Triton's own library functions.

    TRITON_INTERPRET=1 python tests/interpreted_kernel_check.py kernel|rolling-kernel|custom-op
"""

from __future__ import annotations

import os
import sys

import torch

from denoise.fused.dwconv_gate import _dwconv_gate_op, dwconv_gate_reference
from denoise.fused.dwconv_gate_triton import Blocks, dwconv_gate_triton

CASES = [  # (N, H, W, 2C), dtype, tolerance relative to the largest output
    ((2, 5, 7, 16), torch.float32, 1e-5),  # a width smaller than one block
    ((1, 3, 70, 6), torch.float32, 1e-5),  # channels not a power of two, several blocks
    ((2, 11, 9, 8), torch.float32, 1e-5),  # a last row tile that is not full
    ((2, 4, 33, 80), torch.float32, 1e-5),  # several channel blocks
    ((1, 6, 9, 32), torch.bfloat16, 0.02),  # rounding: FP32 inside, one bf16 rounding
]
SMALL_BLOCKS = Blocks(rows=4, pixels=8, channels=4, warps=1)


def check_kernel(rolling: bool = False) -> None:
    """The kernel's gate and channel means against the plain PyTorch form, case by case."""
    torch.manual_seed(1)
    for shape, dtype, tol in CASES:
        c2 = shape[-1]
        x, w, b = torch.randn(shape), torch.randn(c2, 9), torch.randn(c2)
        want_gate, want_mean = dwconv_gate_reference(x, w, b)
        scale = want_gate.abs().max()
        # The default blocks, and blocks small enough that every edge between programs (rows,
        # pixels, channels) falls inside the image.
        for blocks in (None, SMALL_BLOCKS):
            args = (x.to(dtype), w.to(dtype), b.to(dtype), blocks)
            gate, mean = dwconv_gate_triton(*args, rolling=rolling)
            assert gate.dtype == dtype and mean.dtype == torch.float32, (shape, dtype)
            msg = f"shape {shape}, {dtype}, blocks {blocks}"
            torch.testing.assert_close(
                gate.float() / scale, want_gate / scale, atol=tol, rtol=0, msg=msg
            )
            torch.testing.assert_close(mean / scale, want_mean / scale, atol=tol, rtol=0, msg=msg)


def check_custom_op() -> None:
    """torch.compile traces the op through its fake (shapes only) and calls the kernel."""
    x, w, b = torch.randn(2, 6, 10, 8), torch.randn(8, 9), torch.randn(8)
    compiled = torch.compile(lambda *a: _dwconv_gate_op(*a), fullgraph=True)
    gate, mean = compiled(x, w, b)
    want_gate, want_mean = dwconv_gate_reference(x, w, b)
    assert gate.shape == (2, 6, 10, 4) and mean.shape == (2, 4)
    torch.testing.assert_close(gate, want_gate, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mean, want_mean, atol=1e-5, rtol=1e-5)


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("set TRITON_INTERPRET=1 (before Triton is imported)")
    checks = {
        "kernel": check_kernel,
        "rolling-kernel": lambda: check_kernel(rolling=True),
        "custom-op": check_custom_op,
    }
    checks[sys.argv[1]]()
    print("ok")
