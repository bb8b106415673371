"""Checkpoint files: our format, and released weights-only files (official NAFNet, KAIR DnCNN)."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from tiny_models import tiny_model
from typer.testing import CliRunner

from denoise.checkpoint import load_model, read_checkpoint, save_checkpoint
from denoise.cli import app
from denoise.errors import DenoiseError
from denoise.models.dncnn import DnCNN
from denoise.models.registry import build_model, infer_architecture

NAFNET_CONFIGS = [
    # the SIDD release layout (width 32 is NAFNet-SIDD-width32.pth)
    {"img_channel": 3, "width": 32, "middle_blk_num": 12, "enc_blk_nums": [2, 2, 4, 8],
     "dec_blk_nums": [2, 2, 2, 2]},
    # a level without blocks, decoder levels unlike their encoders, no middle blocks
    {"img_channel": 1, "width": 8, "middle_blk_num": 0, "enc_blk_nums": [1, 0, 2],
     "dec_blk_nums": [3, 1, 0]},
]  # fmt: skip
DNCNN_CONFIGS = [
    {"in_nc": 3, "out_nc": 3, "nc": 64, "nb": 17, "batch_norm": True},
    {"in_nc": 3, "out_nc": 3, "nc": 64, "nb": 20, "batch_norm": False},  # dncnn_color_blind.pth
    {"in_nc": 1, "out_nc": 1, "nc": 16, "nb": 2, "batch_norm": False},
]


@pytest.mark.parametrize(
    ("name", "config"),
    [("nafnet", c) for c in NAFNET_CONFIGS] + [("dncnn", c) for c in DNCNN_CONFIGS],
)
def test_architecture_is_read_back_from_the_weights(name: str, config: dict) -> None:
    with torch.device("meta"):  # shapes and key names only, no memory
        state_dict = build_model(name, config).state_dict()
    assert infer_architecture(state_dict) == (name, config)


def test_kair_released_dncnn_key_layout() -> None:
    """KAIR's act_mode='R' DnCNN: conv, ReLU pairs flattened into one Sequential, conv last."""
    with torch.device("meta"):
        keys = list(build_model("dncnn", DNCNN_CONFIGS[1]).state_dict())
    assert keys == [f"model.{i}.{p}" for i in range(0, 40, 2) for p in ("weight", "bias")]


@pytest.mark.parametrize(
    ("name", "config", "layout"),
    [
        ("nafnet", NAFNET_CONFIGS[0] | {"width": 8}, "official NAFNet: weights under 'params'"),
        ("dncnn", DNCNN_CONFIGS[1] | {"nc": 16}, "KAIR: a bare state_dict"),
    ],
)
def test_released_weights_only_files_load_and_denoise_the_same(
    tmp_path: Path, name: str, config: dict, layout: str
) -> None:
    model = tiny_model(name, config=config)
    state_dict = model.state_dict()
    path = tmp_path / "released.pth"
    torch.save({"params": state_dict} if layout.startswith("official") else state_dict, path)

    loaded, ckpt = load_model(path)
    assert (ckpt["model"], ckpt["config"]) == (name, config)
    x = torch.rand(1, 3, 37, 45)
    with torch.no_grad():
        expected = model(x)
        assert not torch.allclose(expected, x, atol=1e-3)  # the weights really do something
        torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)

    photo = tmp_path / "photo.png"
    rgb = np.random.default_rng(0).integers(0, 256, (40, 52, 3), dtype=np.uint8)
    cv2.imwrite(str(photo), rgb)
    result = CliRunner().invoke(app, ["run", str(photo), "--model", str(path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "photo_denoised.png").is_file()


def test_stored_name_and_config_win_over_the_layout(tmp_path: Path) -> None:
    config = {"nc": 8, "nb": 3, "batch_norm": False}
    model = build_model("dncnn", config)
    save_checkpoint(tmp_path / "m.pt", "dncnn", config, model.state_dict(), {"iteration": 5})
    _, ckpt = load_model(tmp_path / "m.pt")
    assert ckpt["config"] == config and ckpt["meta"] == {"iteration": 5}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"fc.weight": torch.zeros(2, 2)}, r"no model name/config stored, and the weights fit "
         r"no known network \(dncnn, nafnet\)$"),
        ([1, 2, 3], r"not a model checkpoint \(no weights under 'params' or 'params_ema', and "
         r"not a state_dict\)$"),
        ({"params": {"intro.weight": 3}}, r"not a model checkpoint"),
        # FFDNet/SRMD-style: the same key layout, but not a residual x - n network
        ({f"model.{i}.weight": torch.zeros(8, 4 if i == 0 else 8, 3, 3) for i in (0, 2)}
         | {"model.4.weight": torch.zeros(3, 8, 3, 3)},
         r"no model name/config stored, and the weights fit no known network"),
    ],
    ids=["foreign", "list", "non-tensor", "in-out-channels-differ"],
)  # fmt: skip
def test_foreign_files_are_one_clear_error(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "foreign.pth"
    torch.save(content, path)
    with pytest.raises(DenoiseError, match=rf"^{re.escape(str(path))}: {message}"):
        load_model(path)


def test_a_corrupt_file_is_refused_without_unsafe_advice(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.pt"
    path.write_bytes(b"\x80\x02garbage that is no pickle" * 4)
    with pytest.raises(DenoiseError) as e:
        load_model(path)
    assert str(e.value).startswith(f"{path}: not a ")
    assert "weights_only" not in str(e.value) and "\n" not in str(e.value)


def test_a_checkpoint_cut_short_is_named_as_such(tmp_path: Path) -> None:
    """What a copy interrupted half way leaves (torch's zip reader has its own words for it)."""
    path = tmp_path / "half.pt"
    save_checkpoint(path, "dncnn", {"nc": 8, "nb": 3}, DnCNN(nc=8, nb=3).state_dict())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DenoiseError, match=rf"^{re.escape(str(path))}: not a readable checkpoint"):
        read_checkpoint(path)


class _RunsCodeWhenUnpickled:
    """What a malicious checkpoint holds: unpickling it calls a function of its choosing (here
    one that leaves a file behind, so the test can see whether it ran)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "code_ran"
    path = tmp_path / "downloaded.pt"
    params = tiny_model("dncnn").state_dict()
    torch.save({"model": "dncnn", "params": params, "extra": _RunsCodeWhenUnpickled(marker)}, path)
    with pytest.raises(DenoiseError, match=r"not a checkpoint that loads safely"):
        read_checkpoint(path)
    assert not marker.exists()  # weights_only=True: the function was never called


def test_a_grey_release_is_refused_in_one_line(tmp_path: Path) -> None:
    """KAIR's dncnn_25.pth and dncnn_gray_blind.pth are 1-channel: not for RGB photos."""
    path = tmp_path / "dncnn_gray_blind.pth"
    torch.save(DnCNN(in_nc=1, out_nc=1, nc=8, nb=3, batch_norm=False).state_dict(), path)
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), np.zeros((8, 8, 3), np.uint8))
    result = CliRunner().invoke(app, ["run", str(photo), "--model", str(path)])
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"error: {path}: a dncnn for 1-channel input and 1-channel output; "
        "denoise works on RGB photos (3 channels in and out)"
    )
    assert not (tmp_path / "photo_denoised.png").exists()


@pytest.mark.parametrize("wrapping", ["ddp-prefix", "params_ema-only", "bn-without-counter"])
def test_common_variants_of_released_files_load(tmp_path: Path, wrapping: str) -> None:
    config = {"in_nc": 3, "out_nc": 3, "nc": 8, "nb": 3, "batch_norm": True}
    model = tiny_model("dncnn", config=config)
    state_dict = model.state_dict()
    content: object = {
        "ddp-prefix": {f"module.{k}": v for k, v in state_dict.items()},
        "params_ema-only": {"params_ema": state_dict},
        "bn-without-counter": {
            k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")
        },
    }[wrapping]
    path = tmp_path / "release.pth"
    torch.save(content, path)
    loaded, ckpt = load_model(path)
    assert ckpt["config"] == config
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_a_given_name_is_the_only_network_tried(tmp_path: Path) -> None:
    path = tmp_path / "nafnet.pth"
    torch.save({"params": build_model("nafnet", NAFNET_CONFIGS[1]).state_dict()}, path)
    with pytest.raises(
        DenoiseError,
        match=rf"^{re.escape(str(path))}: no model config stored, and the weights are not a "
        r"dncnn's$",
    ):
        load_model(path, model_name="dncnn")
    with pytest.raises(DenoiseError, match=rf"^{re.escape(str(path))}: unknown model 'unet'"):
        load_model(path, model_name="unet", config={})


def test_weights_that_only_look_like_a_network_fail_on_loading(tmp_path: Path) -> None:
    state_dict = build_model("nafnet", NAFNET_CONFIGS[1]).state_dict()
    del state_dict["encoders.0.0.beta"]
    path = tmp_path / "broken.pth"
    torch.save({"params": state_dict}, path)
    with pytest.raises(
        DenoiseError,
        match=rf"^{re.escape(str(path))}: weights do not match nafnet .*: "
        r"missing encoders\.0\.0\.beta$",
    ):
        load_model(path)
    assert read_checkpoint(path)["params"].keys() == state_dict.keys()


def test_a_mismatch_names_the_keys(tmp_path: Path) -> None:
    model = build_model("dncnn", {"nc": 8, "nb": 3, "batch_norm": False})
    state_dict = model.state_dict()
    state_dict["model.0.weight"] = torch.zeros(8, 1, 3, 3)
    state_dict.update({f"extra.{i}": torch.zeros(1) for i in range(5)})
    path = tmp_path / "m.pt"
    save_checkpoint(path, "dncnn", {"nc": 8, "nb": 3, "batch_norm": False}, state_dict)
    with pytest.raises(DenoiseError) as info:
        load_model(path)
    assert str(info.value).endswith(
        ": unexpected extra.0, extra.1, extra.2 and 2 more; "
        "shape model.0.weight (8, 1, 3, 3) (expected (8, 3, 3, 3))"
    )
