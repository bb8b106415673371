"""NAFNet and DnCNN: the published parameter counts, shapes, identity at init, ONNX LayerNorm."""

from __future__ import annotations

import io

import onnx
import pytest
import torch

from denoise.errors import DenoiseError
from denoise.models.dncnn import DnCNN
from denoise.models.nafnet import LayerNorm2d, NAFNet
from denoise.models.registry import build_model

SIDD = {"enc_blk_nums": [2, 2, 4, 8], "middle_blk_num": 12, "dec_blk_nums": [2, 2, 2, 2]}
TINY = {"width": 8, "enc_blk_nums": [1, 1], "middle_blk_num": 1, "dec_blk_nums": [1, 1]}


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
    model = NAFNet(**TINY).eval()
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
    model = NAFNet(**TINY).eval()
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
