"""Checks of the fused-NAFNet Triton kernels under Triton's CPU interpreter.

Run by ``test_fused_nafnet.py`` in a process of its own with ``TRITON_INTERPRET=1`` set before
Triton is imported: in a process where Triton was imported without it (torch's inductor does
that), the interpreter fails on Triton's own library functions.

    TRITON_INTERPRET=1 python tests/interpreted_kernel_check.py CHECK

CHECK: kernel, rolling-kernel, tuned-kernel or custom-op (the depthwise kernel);
pixelwise-kernels, tuned-pixelwise or pixelwise-ops (the per-pixel kernels). Triton's
autotuner times on a GPU; here :class:`FakeTimer` stands in for its timer, so the checks
choose which candidate wins.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import numpy as np
import torch
import triton.language as tl
from triton.runtime import interpreter

from denoise.fused import dwconv_gate_triton as kernel
from denoise.fused import pixelwise_triton as pixel_kernels
from denoise.fused.dwconv_gate import _dwconv_gate_op, dwconv_gate_reference
from denoise.fused.dwconv_gate_triton import Blocks, block_sizes, dwconv_gate_triton
from denoise.fused.pixelwise import (
    _block_head_op,
    _block_tail_op,
    block_head_reference,
    block_tail_reference,
)
from denoise.fused.pixelwise_triton import (
    PixelBlocks,
    block_head_triton,
    block_tail_triton,
    default_blocks,
)

CASES = [  # (N, H, W, 2C), dtype, tolerance relative to the largest output
    ((2, 5, 7, 16), torch.float32, 1e-5),  # a width smaller than one block
    ((1, 3, 70, 6), torch.float32, 1e-5),  # channels not a power of two, several blocks
    ((2, 11, 9, 8), torch.float32, 1e-5),  # a last row tile that is not full
    ((2, 4, 33, 80), torch.float32, 1e-5),  # several channel blocks
    ((1, 6, 9, 32), torch.bfloat16, 0.02),  # rounding: FP32 inside, one bf16 rounding
]
SMALL_BLOCKS = Blocks(rows=4, pixels=8, channels=4, warps=1)


def assert_matches_reference(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, blocks: Blocks | None, tol: float
) -> None:
    """``dwconv_gate_triton`` at ``blocks`` (None: tuned) against the PyTorch form in FP32."""
    want_gate, want_mean = dwconv_gate_reference(x.float(), w.float(), b.float())
    scale = want_gate.abs().max()
    gate, mean = dwconv_gate_triton(x, w, b, blocks)
    assert gate.dtype == x.dtype and mean.dtype == torch.float32, (x.shape, x.dtype)
    msg = f"shape {tuple(x.shape)}, {x.dtype}, blocks {blocks}"
    torch.testing.assert_close(gate.float() / scale, want_gate / scale, atol=tol, rtol=0, msg=msg)
    torch.testing.assert_close(mean / scale, want_mean / scale, atol=tol, rtol=0, msg=msg)


def check_kernel(rolling: bool = False) -> None:
    """The kernel's gate and channel means against the plain PyTorch form, case by case."""
    torch.manual_seed(1)
    for shape, dtype, tol in CASES:
        _, h, w, c2 = shape
        x, wt, b = (t.to(dtype) for t in (torch.randn(shape), torch.randn(c2, 9), torch.randn(c2)))
        # The default blocks, and blocks small enough that every edge between programs (rows,
        # pixels, channels) falls inside the image.
        for blocks in (block_sizes(h, w, c2 // 2, rolling), SMALL_BLOCKS._replace(rolling=rolling)):
            assert_matches_reference(x, wt, b, blocks, tol)


class FakeTimer:
    """A stand-in for the autotuner's timer: runs each candidate once, as the real one does,
    and says the ``winner``-th it is given was the fastest. Counts the candidates it ran."""

    def __init__(self, winner: int) -> None:
        self.winner = winner
        self.calls = 0

    def __call__(self, kernel_call: Callable[[], None], quantiles: object = None) -> list[float]:
        kernel_call()
        self.calls += 1
        return [0.0 if self.calls - 1 == self.winner else 1.0] * 3


def refuse_timing(kernel_call: Callable[[], None], quantiles: object = None) -> list[float]:
    raise AssertionError("re-timed a shape already tuned")


def check_tuned_kernel() -> None:
    """Without ``blocks``, the autotuner runs every candidate of the shape and keeps the one
    timed fastest, of either form; the channel means come from its slots alone, though the
    others left sums past them; a second call at the shape (another batch) is not re-timed."""
    torch.manual_seed(2)
    shape = (2, 9, 20, 68)  # two channel blocks of the 32-channel candidates
    x, w, b = torch.randn(shape), torch.randn(68, 9), torch.randn(68)
    candidates = kernel.tuning_candidates(9, 20, 34)
    forms = {c.rolling for c in candidates}
    assert forms == {False, True} and len(candidates) > 2, candidates
    most_slots = max(c.tiles(9, 20) for c in candidates)
    # The row form's default, with fewer slots than a candidate timed after it; then a
    # rolling candidate with prefetch.
    rolling = next(i for i, c in enumerate(candidates) if c.rolling and c.stages > 1)
    for winner in (0, rolling):
        assert candidates[winner].tiles(9, 20) < most_slots, candidates[winner]
        kernel._tuned_kernel.cache.clear()
        timer = FakeTimer(winner)
        kernel._tuned_kernel.do_bench = timer
        assert_matches_reference(x, w, b, None, 1e-5)
        assert timer.calls == len(candidates)
        assert kernel.tuned_blocks() == candidates[winner], (kernel.tuned_blocks(), winner)
        kernel._tuned_kernel.do_bench = refuse_timing
        assert_matches_reference(x[:1], w, b, None, 1e-5)
        assert kernel.tuned_blocks() == candidates[winner]


def check_custom_op() -> None:
    """torch.compile traces the op through its fake (shapes only) and calls the kernel."""
    kernel._tuned_kernel.do_bench = FakeTimer(0)
    x, w, b = torch.randn(2, 6, 10, 8), torch.randn(8, 9), torch.randn(8)
    compiled = torch.compile(lambda *a: _dwconv_gate_op(*a), fullgraph=True)
    gate, mean = compiled(x, w, b)
    want_gate, want_mean = dwconv_gate_reference(x, w, b)
    assert gate.shape == (2, 6, 10, 4) and mean.shape == (2, 4)
    torch.testing.assert_close(gate, want_gate, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mean, want_mean, atol=1e-5, rtol=1e-5)


PIXELWISE_CASES = [  # (N, H, W, C), dtype, tolerance relative to the largest output
    ((2, 5, 7, 16), torch.float32, 1e-5),  # programs that span both images, a part-full last
    ((1, 4, 9, 64), torch.float32, 1e-5),  # several channel steps
    ((2, 3, 11, 32), torch.bfloat16, 0.03),  # rounding: FP32 sums, bf16 between the products
]
SMALL_PIXEL_BLOCKS = PixelBlocks(pixels=16, step=16, warps=1)
EPS = 1e-6


def _bf16_dot_in_float32() -> None:
    """Triton's interpreter (3.6.0 and 3.7.1) keeps bf16 values as their uint16 bits and
    multiplies those bits in ``tl.dot``; give it the values (widened to float32, exactly)."""
    original = interpreter.InterpreterBuilder.create_dot

    def widened(handle: interpreter.TensorHandle) -> interpreter.TensorHandle:
        if handle.dtype.scalar != tl.bfloat16:
            return handle
        bits = handle.data.astype(np.uint32) << 16
        return interpreter.TensorHandle(bits.view(np.float32), tl.float32)

    def create_dot(self, a, b, *rest):  # type: ignore[no-untyped-def]
        return original(self, widened(a), widened(b), *rest)

    interpreter.InterpreterBuilder.create_dot = create_dot


def pixelwise_inputs(shape: tuple[int, int, int, int]) -> dict[str, tuple[torch.Tensor, ...]]:
    """Each kernel's inputs for a block of this shape, in FP32, weights at the scale of trained
    ones (products of about unit size): ``head`` (inp, w1, b1), ``tail`` (x, attention, inp,
    w3, b3, w4, b4, w5, b5)."""
    n, _, _, c = shape
    x, inp, attention = torch.randn(shape), torch.randn(shape), torch.randn(n, c)
    w1, w3, w4, w5 = (torch.randn(rows, c) / c**0.5 for rows in (2 * c, c, 2 * c, c))
    return {
        "head": (inp, w1, torch.randn(2 * c)),
        "tail": (x, attention, inp, w3, torch.randn(c), w4, torch.randn(2 * c), w5, torch.randn(c)),
    }


def run_reference(which: str, tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The PyTorch form of kernel ``which`` on ``tensors`` (from :func:`pixelwise_inputs`)."""
    if which == "head":
        return block_head_reference(*tensors, EPS)
    x, attention, inp, *weights = tensors
    return block_tail_reference(x, attention, inp, tuple(weights), EPS)


def run_kernel(
    which: str, tensors: tuple[torch.Tensor, ...], blocks: PixelBlocks | None
) -> torch.Tensor:
    """Kernel ``which`` (``"head"`` or ``"tail"``) on ``tensors`` at ``blocks`` (None: tuned)."""
    if which == "head":
        return block_head_triton(*tensors, EPS, blocks)
    x, attention, inp, *weights = tensors
    return block_tail_triton(x, attention, inp, tuple(weights), EPS, blocks)


def assert_pixelwise_matches_reference(
    which: str,
    shape: tuple[int, int, int, int],
    dtype: torch.dtype,
    blocks: PixelBlocks | None,
    tol: float,
) -> None:
    """Kernel ``which`` in ``dtype`` at ``blocks`` against its PyTorch form in FP32."""
    tensors = pixelwise_inputs(shape)[which]
    want = run_reference(which, tensors)
    got = run_kernel(which, tuple(t.to(dtype) for t in tensors), blocks)
    assert got.dtype == dtype and got.shape == want.shape, (got.dtype, got.shape)
    scale = want.abs().max()
    msg = f"{which}: shape {shape}, {dtype}, blocks {blocks}"
    torch.testing.assert_close(got.float() / scale, want / scale, atol=tol, rtol=0, msg=msg)


def check_pixelwise_kernels() -> None:
    """Both per-pixel kernels against their PyTorch forms, case by case, at the width's
    default blocks and at the smallest (every program's pixels cross an image's end)."""
    torch.manual_seed(3)
    for which in ("head", "tail"):
        for shape, dtype, tol in PIXELWISE_CASES:
            for blocks in (default_blocks(shape[-1]), SMALL_PIXEL_BLOCKS):
                assert_pixelwise_matches_reference(which, shape, dtype, blocks, tol)
    # refused: a channel step past the width (it would read past each row), two dtypes
    inp, w1, b1 = pixelwise_inputs((1, 2, 3, 32))["head"]
    for bad, args in (
        ("do not fit width 32", (inp, w1, b1, EPS, PixelBlocks(16, 64, 4))),
        ("needs one dtype", (inp.to(torch.bfloat16), w1, b1, EPS)),
    ):
        try:
            block_head_triton(*args)
        except ValueError as e:
            assert bad in str(e), e
        else:
            raise AssertionError(f"not refused: {bad}")


def check_tuned_pixelwise() -> None:
    """Without ``blocks`` each kernel's autotuner runs every candidate of the width and keeps
    the one timed fastest; a second call at the shape is not re-timed."""
    torch.manual_seed(4)
    shape = (2, 3, 7, 32)
    candidates = pixel_kernels.tuning_candidates(32)
    assert len(candidates) > 2 and all(c.step <= 32 for c in candidates), candidates
    for which in ("head", "tail"):
        tuner = pixel_kernels._tuned[which]
        for winner in (0, len(candidates) - 1):
            tuner.cache.clear()
            timer = FakeTimer(winner)
            tuner.do_bench = timer
            assert_pixelwise_matches_reference(which, shape, torch.float32, None, 1e-5)
            assert timer.calls == len(candidates)
            assert pixel_kernels.tuned_blocks(which) == candidates[winner]
            tuner.do_bench = refuse_timing
            assert_pixelwise_matches_reference(which, shape, torch.float32, None, 1e-5)


def check_pixelwise_ops() -> None:
    """torch.compile traces both ops through their fakes and calls the kernels."""
    for tuner in pixel_kernels._tuned.values():
        tuner.do_bench = FakeTimer(0)
    tensors = pixelwise_inputs((2, 3, 5, 32))  # a width with several candidates
    ops = {"head": _block_head_op, "tail": _block_tail_op}
    for which, op in ops.items():
        compiled = torch.compile(lambda *a, op=op: op(*a, EPS), fullgraph=True)
        got = compiled(*tensors[which])
        torch.testing.assert_close(got, run_reference(which, tensors[which]), atol=1e-5, rtol=1e-5)


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("set TRITON_INTERPRET=1 (before Triton is imported)")
    checks = {
        "kernel": check_kernel,
        "rolling-kernel": lambda: check_kernel(rolling=True),
        "tuned-kernel": check_tuned_kernel,
        "custom-op": check_custom_op,
        "pixelwise-kernels": check_pixelwise_kernels,
        "tuned-pixelwise": check_tuned_pixelwise,
        "pixelwise-ops": check_pixelwise_ops,
    }
    _bf16_dot_in_float32()
    checks[sys.argv[1]]()
    print("ok")
