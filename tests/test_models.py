"""NAFNet and DnCNN: the published parameter counts, shapes, identity at init, ONNX LayerNorm."""

from __future__ import annotations

import io

import onnx
import pytest
import torch
import torch.nn.functional as F
from tiny_models import TINY, tiny_model

from denoise.errors import DenoiseError
from denoise.models.dncnn import DnCNN
from denoise.models.nafnet import LayerNorm2d, NAFNet
from denoise.models.registry import build_model

SIDD = {"enc_blk_nums": [2, 2, 4, 8], "middle_blk_num": 12, "dec_blk_nums": [2, 2, 2, 2]}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("width", "expected"), [(32, 29_159_715), (64, 115_982_915)])
def test_nafnet_sidd_parameter_counts(width: int, expected: int) -> None:
    with torch.device("meta"):
        model = build_model("nafnet", {"width": width, **SIDD})
    assert n_params(model) == expected


def test_nafnet_reference_state_dict_keys() -> None:
    keys = set(build_model("nafnet", {"width": 8, **SIDD}).state_dict())
    for k in (
        "intro.weight",
        "ending.bias",
        "encoders.0.0.conv1.weight",
        "encoders.3.7.sca.1.weight",
        "encoders.0.0.norm1.weight",
        "encoders.0.0.norm2.bias",
        "encoders.0.0.beta",
        "encoders.0.0.gamma",
        "middle_blks.11.conv5.weight",
        "decoders.3.1.conv4.bias",
        "ups.0.0.weight",
        "downs.3.weight",
        "downs.3.bias",
    ):
        assert k in keys, k
    assert "ups.0.0.bias" not in keys  # the reference's up-convolutions have no bias


def test_nafnet_odd_sizes_keep_shape_and_start_as_identity() -> None:
    torch.manual_seed(0)
    model = NAFNet(**TINY["nafnet"]).eval()
    x = torch.rand(1, 3, 37, 53)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape
    assert torch.equal(y, x)
    # once trained (non-zero beta/gamma/ending) it is no longer the identity, shape still kept
    for p in model.parameters():
        p.data.add_(0.05)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape and not torch.allclose(y, x)


def test_layernorm2d_normalises_over_channels() -> None:
    ln = LayerNorm2d(5)
    x = torch.randn(2, 5, 4, 3) * 3 + 1
    y = ln(x)
    assert torch.allclose(y.mean(1), torch.zeros(2, 4, 3), atol=1e-5)
    assert torch.allclose(y.var(1, unbiased=False), torch.ones(2, 4, 3), atol=1e-4)


def test_nafnet_onnx_export_has_native_layernorm() -> None:
    model = NAFNet(**TINY["nafnet"]).eval()
    buf = io.BytesIO()
    torch.onnx.export(
        model,
        (torch.rand(1, 3, 32, 32),),
        buf,
        dynamo=False,
        opset_version=17,
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "n", 2: "h", 3: "w"}},
    )
    ops = {node.op_type for node in onnx.load_from_string(buf.getvalue()).graph.node}
    assert "LayerNormalization" in ops
    assert "ReduceMean" not in ops  # no hand-decomposed LayerNorm left


def test_dncnn_colour_parameter_count_and_residual() -> None:
    model = build_model("dncnn", {"in_nc": 3, "out_nc": 3, "nc": 64, "nb": 17})
    assert n_params(model) == 558_403
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(convs) == 17 and len(bns) == 15
    x = torch.rand(2, 3, 19, 23)
    assert torch.equal(model.eval()(x), x)  # zero last layer: predicted noise 0 at init
    torch.nn.init.normal_(convs[-1].weight)
    y = model(x)
    assert y.shape == x.shape
    assert torch.allclose(y, x - model.model(x))  # x - n


def test_dncnn_without_batch_norm_and_bad_depth() -> None:
    model = DnCNN(nc=16, nb=5, batch_norm=False)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert all(m.bias is not None for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    with pytest.raises(ValueError):
        DnCNN(nb=1)


def test_unknown_model_is_a_user_error() -> None:
    with pytest.raises(DenoiseError, match="unknown model"):
        build_model("unet")


# --- the networks against the papers' equations, written out independently -----------------
# A second, functional form of each network from its description (DESIGN.md; the NAFNet and
# DnCNN papers and reference code), run on the module's own weights: a term dropped from the
# module (a skip, the channel attention, a residual) shows here, where comparing the module
# with its own export or fused form cannot.


def _layer_norm_over_channels(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor):
    mu = x.mean(1, keepdim=True)
    var = (x - mu).pow(2).mean(1, keepdim=True)  # biased, as the reference's LayerNormFunction
    return weight.view(1, -1, 1, 1) * (x - mu) / (var + 1e-6).sqrt() + bias.view(1, -1, 1, 1)


def _gate(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=1)
    return a * b


def _nafblock(x: torch.Tensor, p: dict[str, torch.Tensor], at: str) -> torch.Tensor:
    def w(name: str) -> torch.Tensor:
        return p[f"{at}.{name}"]

    t = _layer_norm_over_channels(x, w("norm1.weight"), w("norm1.bias"))
    t = F.conv2d(t, w("conv1.weight"), w("conv1.bias"))
    t = F.conv2d(t, w("conv2.weight"), w("conv2.bias"), padding=1, groups=t.shape[1])
    t = _gate(t)
    t = t * F.conv2d(t.mean((2, 3), keepdim=True), w("sca.1.weight"), w("sca.1.bias"))
    y = x + F.conv2d(t, w("conv3.weight"), w("conv3.bias")) * w("beta")
    t = _layer_norm_over_channels(y, w("norm2.weight"), w("norm2.bias"))
    t = _gate(F.conv2d(t, w("conv4.weight"), w("conv4.bias")))
    return y + F.conv2d(t, w("conv5.weight"), w("conv5.bias")) * w("gamma")


def _nafnet(x: torch.Tensor, p: dict[str, torch.Tensor], arch: dict) -> torch.Tensor:
    h, w = x.shape[-2:]
    multiple = 2 ** len(arch["enc_blk_nums"])
    inp = F.pad(x, (0, -w % multiple, 0, -h % multiple))  # zeros below and right
    t = F.conv2d(inp, p["intro.weight"], p["intro.bias"], padding=1)
    skips = []
    for level, blocks in enumerate(arch["enc_blk_nums"]):
        for b in range(blocks):
            t = _nafblock(t, p, f"encoders.{level}.{b}")
        skips.append(t)
        t = F.conv2d(t, p[f"downs.{level}.weight"], p[f"downs.{level}.bias"], stride=2)
    for b in range(arch["middle_blk_num"]):
        t = _nafblock(t, p, f"middle_blks.{b}")
    for level, blocks in enumerate(arch["dec_blk_nums"]):
        t = F.pixel_shuffle(F.conv2d(t, p[f"ups.{level}.0.weight"]), 2) + skips[-1 - level]
        for b in range(blocks):
            t = _nafblock(t, p, f"decoders.{level}.{b}")
    out = F.conv2d(t, p["ending.weight"], p["ending.bias"], padding=1) + inp
    return out[..., :h, :w]


def _dncnn(x: torch.Tensor, model: DnCNN) -> torch.Tensor:
    """conv+ReLU, (conv+BN+ReLU) x (nb - 2), conv: the predicted noise, taken from the input."""
    layers = list(model.model)
    convs = [m for m in layers if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in layers if isinstance(m, torch.nn.BatchNorm2d)]
    t = F.relu(F.conv2d(x, convs[0].weight, convs[0].bias, padding=1))
    for i, conv in enumerate(convs[1:-1]):
        t = F.conv2d(t, conv.weight, conv.bias, padding=1)
        if norms:
            bn = norms[i]
            t = (t - bn.running_mean.view(1, -1, 1, 1)) / (
                bn.running_var.view(1, -1, 1, 1) + bn.eps
            ).sqrt() * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
        t = F.relu(t)
    return x - F.conv2d(t, convs[-1].weight, convs[-1].bias, padding=1)


@pytest.mark.parametrize("name", ["nafnet", "dncnn"])
def test_the_networks_compute_what_their_papers_describe(name: str) -> None:
    model = tiny_model(name, scale=0.1)  # every weight perturbed, beta and gamma included
    if name == "dncnn":  # BatchNorm statistics other than the initial 0 and 1
        with torch.no_grad():
            for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
                bn.running_mean.uniform_(-0.1, 0.1)
                bn.running_var.uniform_(0.5, 1.5)
    x = torch.rand(2, 3, 21, 34, generator=torch.Generator().manual_seed(1))  # not multiples
    with torch.no_grad():
        got = model(x)
        params = dict(model.state_dict())
        want = _nafnet(x, params, TINY["nafnet"]) if name == "nafnet" else _dncnn(x, model)
    assert got.shape == x.shape
    assert (got - x).abs().max() > 1e-2  # not the identity: the comparison means something
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
