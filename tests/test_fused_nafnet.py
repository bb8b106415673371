"""NAFNet's inference form: the same function as NAFNet, and the Triton kernel behind it."""

from __future__ import annotations

import copy
import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import tiny_model
from torch._inductor.exc import InductorError

from denoise.errors import DenoiseError
from denoise.fused.dwconv_gate import dwconv_gate, dwconv_gate_reference, dwconv_gate_shifted
from denoise.fused.nafnet import FusedNAFBlock, fuse_nafnet
from denoise.fused.pixelwise import (
    block_head,
    block_head_reference,
    block_tail,
    block_tail_reference,
)
from denoise.infer import TorchBackend
from denoise.models.dncnn import DnCNN

try:
    from denoise.fused.dwconv_gate_triton import TUNING_CANDIDATES, Blocks
    from denoise.fused.pixelwise_triton import PixelBlocks, tuning_candidates
except ImportError:  # no Triton: the tests that need these are skipped
    TUNING_CANDIDATES = ()

    def tuning_candidates(channels: int) -> list:  # type: ignore[no-redef]
        return []


needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="Triton is not installed"
)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


# Two encoder blocks at the second level; every parameter (LayerNorm affine, beta and gamma
# too) perturbed well away from the identity.
CONFIG = {"width": 8, "enc_blk_nums": [1, 2], "middle_blk_num": 1, "dec_blk_nums": [1, 1]}


def perturbed_nafnet() -> torch.nn.Module:
    return tiny_model("nafnet", scale=0.2, config=CONFIG)


@pytest.mark.parametrize("dwconv", ["conv", "shifted"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_nafnet_computes_what_nafnet_does(channels_last: bool, dwconv: str) -> None:
    net = perturbed_nafnet()
    fused = fuse_nafnet(net, dwconv)
    x = torch.rand(2, 3, 21, 30)  # not a multiple of the padding: the crop is exercised too
    if channels_last:
        net, fused = (m.to(memory_format=torch.channels_last) for m in (net, fused))
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        want, got = net(x), fused(x)
    assert got.shape == want.shape == x.shape
    assert want.abs().max() > 0.5  # the blocks really change the image
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)


def test_fuse_copies_and_leaves_the_network_alone() -> None:
    net = perturbed_nafnet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fused = fuse_nafnet(net).to(torch.bfloat16)
    assert fused.intro.weight.dtype == torch.bfloat16
    assert not any(p.requires_grad for p in fused.parameters())
    for key, value in net.state_dict().items():
        assert value.dtype == torch.float32 and torch.equal(value, before[key]), key


def test_torch_backend_fuse_option() -> None:
    net = perturbed_nafnet()
    batch = np.random.default_rng(0).random((1, 3, 24, 24), dtype=np.float32)
    plain = TorchBackend(net, device="cpu")(batch)
    fused = TorchBackend(net, device="cpu", fuse=True)
    assert type(fused.module).__name__ == "FusedNAFNet"
    np.testing.assert_allclose(fused(batch), plain, atol=2e-5)
    blocks = TorchBackend(net, device="cpu", fuse=True, fuse_dwconv="conv").module.modules()
    forms = {b.dwconv for b in blocks if isinstance(b, FusedNAFBlock)}
    assert forms == {"conv"}
    with pytest.raises(DenoiseError, match=r"fuse: only a NAFNet.*DnCNN"):
        TorchBackend(DnCNN(), device="cpu", fuse=True)
    with pytest.raises(DenoiseError, match=r"fuse: unknown depthwise form 'taps'.*shifted"):
        TorchBackend(net, device="cpu", fuse=True, fuse_dwconv="taps")


def test_dwconv_gate_off_cuda_is_the_reference() -> None:
    x, w, b = torch.randn(1, 4, 5, 6), torch.randn(6, 9), torch.randn(6)
    gate, mean = dwconv_gate(x, w, b)
    # The same depthwise convolution written out by hand, for one output pixel.
    window = torch.nn.functional.pad(x, (0, 0, 1, 1, 1, 1))[0, 1:4, 2:5]  # around (y=1, x=2)
    conv = (window.reshape(9, 6) * w.T).sum(0) + b
    torch.testing.assert_close(gate[0, 1, 2], conv[:3] * conv[3:])
    torch.testing.assert_close(mean, gate.mean(dim=(1, 2)))
    with pytest.raises(ValueError, match="unknown depthwise form 'taps'"):
        dwconv_gate(x, w, b, how="taps")  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shifted_taps_are_the_depthwise_convolution(dtype: torch.dtype) -> None:
    """Eager and compiled, the shifted form is the convolution up to one rounding to ``dtype``
    (the convolution in FP32 is the reference for both)."""
    torch.manual_seed(0)
    x, w, b = (t.to(dtype) for t in (torch.randn(2, 7, 9, 12), torch.randn(12, 9), torch.randn(12)))
    want_gate, want_mean = dwconv_gate(x.float(), w.float(), b.float(), how="conv")
    tolerance = 1e-5 if dtype == torch.float32 else 0.01
    for form in (dwconv_gate_shifted, torch.compile(dwconv_gate_shifted)):
        gate, mean = form(x, w, b)
        assert gate.dtype == dtype and mean.dtype == torch.float32
        scale = want_gate.abs().max()
        torch.testing.assert_close(gate.float(), want_gate, atol=tolerance * scale, rtol=0)
        torch.testing.assert_close(mean, want_mean, atol=tolerance * scale, rtol=0)


def run_interpreted(check: str) -> None:
    """``interpreted_kernel_check.py CHECK`` in its own process under Triton's interpreter."""
    script = Path(__file__).with_name("interpreted_kernel_check.py")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), check], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-4000:]


@needs_triton
@pytest.mark.parametrize("kernel", ["kernel", "rolling-kernel", "tuned-kernel"])
def test_triton_kernel_matches_the_reference(kernel: str) -> None:
    """Widths and heights not a multiple of the blocks, odd channel counts, bf16 rounding; the
    tuned kernel with either form chosen."""
    run_interpreted(kernel)


@needs_triton
def test_custom_op_compiles_as_one_opaque_call() -> None:
    run_interpreted("custom-op")


@needs_triton
@pytest.mark.parametrize("check", ["pixelwise-kernels", "tuned-pixelwise", "pixelwise-ops"])
def test_pixelwise_kernels_match_the_reference(check: str) -> None:
    """The per-pixel kernels: programs whose pixels cross from one image to the next, a
    part-full last program, several channel steps, bf16 rounding; tuned; compiled as ops."""
    run_interpreted(check)


def test_pixelwise_off_cuda_is_the_reference() -> None:
    """Off CUDA the ``"triton"`` forms are the PyTorch ones, and those are NAFNet's block,
    checked by hand for one pixel; an unknown form is refused."""
    torch.manual_seed(0)
    n, c = 2, 16
    x, inp, attention = torch.randn(n, 3, 4, c), torch.randn(n, 3, 4, c), torch.randn(n, c)
    weights = tuple(
        torch.randn(*shape) for shape in ((c, c), (c,), (2 * c, c), (2 * c,), (c, c), (c,))
    )
    got = block_tail(x, attention, inp, weights, 1e-6)
    torch.testing.assert_close(got, block_tail_reference(x, attention, inp, weights, 1e-6))
    # the first residual and conv3 of the attention-scaled input, for one pixel, by hand
    w3, b3 = weights[:2]
    y = inp[1, 2, 3] + w3 @ (x[1, 2, 3] * attention[1]) + b3
    normed = torch.nn.functional.layer_norm(y, (c,), eps=1e-6)
    first, second = (weights[2] @ normed + weights[3]).chunk(2)
    torch.testing.assert_close(
        got[1, 2, 3], y + weights[4] @ (first * second) + weights[5], rtol=1e-5, atol=1e-4
    )
    head = block_head(inp, weights[2], weights[3], 1e-6)
    torch.testing.assert_close(head, block_head_reference(inp, weights[2], weights[3], 1e-6))
    normed = torch.nn.functional.layer_norm(inp[0, 1, 2], (c,), eps=1e-6)
    torch.testing.assert_close(
        head[0, 1, 2], weights[2] @ normed + weights[3], rtol=1e-5, atol=1e-5
    )
    with pytest.raises(ValueError, match="unknown per-pixel form 'fused'"):
        block_tail(x, attention, inp, weights, 1e-6, how="fused")  # type: ignore[arg-type]


def fused_and_plain_errors(
    device: str, dwconv: str, pixelwise: str = "triton"
) -> tuple[float, float, float]:
    """Mean absolute error against FP32 (on the CPU) of: the inference form (depthwise form
    ``dwconv``, per-pixel form ``pixelwise``) in FP32 on ``device``, the inference form cast to
    bf16 (compiled), and NAFNet itself cast to bf16."""
    net = perturbed_nafnet()
    x = torch.rand(2, 3, 40, 56)
    with torch.no_grad():
        want = net(x)
        fused32 = fuse_nafnet(net, dwconv, pixelwise).to(device)(x.to(device)).cpu()
        plain = copy.deepcopy(net).to(device, torch.bfloat16)(x.to(device, torch.bfloat16))
        fused = fuse_nafnet(net, dwconv, pixelwise).to(device, torch.bfloat16)
        fused = fused.to(memory_format=torch.channels_last)
        xb = x.to(device, torch.bfloat16).contiguous(memory_format=torch.channels_last)
        compiled = torch.compile(fused)(xb)
    return tuple(float((y.float().cpu() - want).abs().mean()) for y in (fused32, compiled, plain))


@pytest.mark.parametrize("dwconv", ["conv", "shifted"])
def test_bf16_inference_form_is_as_close_to_fp32_as_nafnet_in_bf16(dwconv: str) -> None:
    fp32, fused, plain = fused_and_plain_errors("cpu", dwconv)
    assert fp32 < 1e-5
    assert 0 < fused < 2 * plain


@needs_cuda
@needs_triton
@pytest.mark.parametrize(
    ("dwconv", "pixelwise"),
    [("triton", "triton"), ("triton", "torch"), ("conv", "triton"), ("shifted", "torch")],
)
def test_fused_nafnet_on_cuda(monkeypatch: pytest.MonkeyPatch, dwconv: str, pixelwise: str) -> None:
    """Each depthwise and per-pixel form on CUDA, checked the same way (no TF32 in the FP32
    reference). The test network's widths 16 and 32 take the per-pixel kernels, 8 not."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    try:
        fp32, fused, plain = fused_and_plain_errors("cuda", dwconv, pixelwise)
    except InductorError as e:
        # Inductor before torch 2.12 raised its own tiling exception wrongly
        # (pytorch/pytorch#178676, fixed by #178886): on an H100 with torch 2.11 the shifted
        # form's compile, after the other forms', ended in "CantSplit.__init__() missing 2
        # required positional arguments". That failure alone is expected there.
        old = torch.torch_version.TorchVersion(torch.__version__) < "2.12"
        if (
            old
            and isinstance(getattr(e, "inner_exception", None), TypeError)
            and "CantSplit" in str(e)
        ):
            pytest.xfail("torch < 2.12: inductor's CantSplit bug (pytorch/pytorch#178676)")
        raise
    assert fp32 < 1e-4
    assert 0 < fused < 2 * plain


@needs_cuda
@needs_triton
@pytest.mark.parametrize("stages", [1, 2, 3])
@pytest.mark.parametrize("rows", [3, 16])
def test_rolling_kernel_on_cuda(rows: int, stages: int) -> None:
    """The rolling form compiled for the GPU, with and without prefetch (the interpreter's
    checks cannot see prefetch: it ignores it), against the plain form in FP32."""
    torch.manual_seed(0)
    x = torch.randn(2, 37, 45, 64)  # no size a multiple of the blocks
    w, b = torch.randn(64, 9), torch.randn(64)
    blocks = Blocks(rows, pixels=16, channels=16, warps=4, stages=stages, rolling=True)
    assert_kernel_on_cuda_matches(x, w, b, blocks)


@needs_cuda
@needs_triton
@pytest.mark.parametrize("blocks", TUNING_CANDIDATES, ids=str)
def test_tuning_candidates_on_cuda(blocks: Blocks) -> None:
    """Every candidate the autotuner may choose, each run on its own (the tuner would skip one
    that failed to compile, and only the chosen one's output is checked below)."""
    torch.manual_seed(0)
    x = torch.randn(2, 37, 45, 128)  # every candidate fits 64 channels
    assert_kernel_on_cuda_matches(x, torch.randn(128, 9), torch.randn(128), blocks)


@needs_cuda
@needs_triton
def test_tuned_kernel_on_cuda() -> None:
    """The autotuner on a GPU times every candidate of the shape, of both forms (none fails to
    compile), and runs the one it keeps."""
    from denoise.fused.dwconv_gate_triton import _tuned_kernel, tuned_blocks, tuning_candidates

    torch.manual_seed(0)
    x = torch.randn(2, 37, 45, 128)
    w, b = torch.randn(128, 9), torch.randn(128)
    assert_kernel_on_cuda_matches(x, w, b, None)
    timings = _tuned_kernel.configs_timings
    assert len(timings) == len(tuning_candidates(37, 45, 64))
    assert {c.kwargs["ROLLING"] for c in timings} == {False, True}
    assert all(math.isfinite(t[0]) for t in timings.values()), timings
    assert tuned_blocks() in tuning_candidates(37, 45, 64)


def assert_kernel_on_cuda_matches(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, blocks: Blocks | None
) -> None:
    """The kernel on the GPU at ``blocks`` (None: tuned) against the plain form on the CPU
    (no TF32), in FP32."""
    from denoise.fused.dwconv_gate_triton import dwconv_gate_triton

    gate, mean = dwconv_gate_triton(x.cuda(), w.cuda(), b.cuda(), blocks)
    want_gate, want_mean = dwconv_gate_reference(x, w, b)
    scale = want_gate.abs().max()
    torch.testing.assert_close(gate.cpu() / scale, want_gate / scale, atol=1e-5, rtol=0)
    torch.testing.assert_close(mean.cpu() / scale, want_mean / scale, atol=1e-5, rtol=0)


@needs_cuda
@needs_triton
@pytest.mark.parametrize(
    ("channels", "blocks"),
    [(c, b) for c in (32, 128) for b in tuning_candidates(c)] + [(64, None), (256, None)],
    ids=str,
)
def test_pixelwise_kernels_on_cuda(channels: int, blocks: PixelBlocks | None) -> None:
    """Both per-pixel kernels at each candidate, compiled for the GPU at two of NAFNet-w32's
    widths, then tuned at a third and at 256 (which only ``benchmarks/pixelwise_speed.py``
    sends to them), in bf16 (the network's only dtype for them), against the PyTorch forms on
    the CPU in FP32."""
    from interpreted_kernel_check import pixelwise_inputs, run_kernel, run_reference

    torch.manual_seed(0)
    shape = (2, 7, 9, channels)  # 126 pixels: the last program part-full, one crossing images
    for which, tensors in pixelwise_inputs(shape).items():
        want = run_reference(which, tensors)
        got = run_kernel(which, tuple(t.to("cuda", torch.bfloat16) for t in tensors), blocks)
        scale = want.abs().max()
        assert got.dtype == torch.bfloat16, which
        torch.testing.assert_close(
            got.float().cpu() / scale, want / scale, atol=0.03, rtol=0, msg=which
        )


@needs_cuda
@needs_triton
def test_inference_form_under_autocast_on_cuda() -> None:
    """With autocast (FP32 weights, bf16 activations) the kernels get their weights cast to
    the activations' dtype: the result is as close to FP32 as the cast inference form's."""
    net = perturbed_nafnet()
    batch = np.random.default_rng(0).random((2, 3, 40, 56), dtype=np.float32)
    want = TorchBackend(net, device="cpu")(batch)
    errors = {}
    for amp in (True, False):
        backend = TorchBackend(net, device="cuda", precision="bf16", amp=amp, fuse=True)
        errors[amp] = float(np.abs(backend(batch) - want).mean())
    assert 0 < errors[True] < 2 * errors[False], errors
