"""Tiled inference: equal to untiled inference, seamless, any size; backends; photo I/O."""

from __future__ import annotations

import itertools
import json
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
import torch._inductor.config as inductor_config
from tiny_models import TINY, tiny_model

from denoise.checkpoint import save_checkpoint
from denoise.cpu_compile import cpu_compile_options
from denoise.errors import BackendUnavailable, DenoiseError
from denoise.export import export_onnx
from denoise.fileio import read_image, read_photo, write_image
from denoise.infer import (
    BACKENDS,
    OnnxRuntimeBackend,
    TorchBackend,
    check_tiling,
    denoise_files,
    denoise_image,
    expand_inputs,
    open_backend,
    output_path,
    register_backend,
    tile_starts,
    tile_weights,
)
from denoise.metrics import psnr
from denoise.model_choice import find_project, resolve_model
from denoise.padding import pad_multiple_of


def make_pair(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth colour pattern and a noisy copy of it."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    clean = (
        np.stack(
            [
                np.sin(xx / 9) + np.cos(yy / 13),
                np.sin((xx + yy) / 17),
                np.cos(xx / 5) * np.sin(yy / 7),
            ],
            -1,
        )
        * 60
        + 128
    )
    noisy = clean + np.random.default_rng(seed).normal(0, 20, clean.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8), np.clip(clean, 0, 255).astype(np.uint8)


class Recorder:
    """A backend that returns its input and records the batch shapes it saw."""

    name = "identity"

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        assert batch.dtype == np.float32 and batch.min() >= 0.0 and batch.max() <= 1.0
        self.shapes.append(batch.shape)
        return batch.copy()


def _denoise_reporting(
    inputs: list[Path], backend: Any, **options: Any
) -> tuple[list[Path], list[str]]:
    """:func:`denoise_files` at tile 0 without progress, with the error messages it reports
    (as ``denoise run`` prints them): ``(written, errors)``."""
    errors: list[str] = []
    written = denoise_files(
        inputs, backend, tile=0, overlap=0, progress=False,
        on_error=lambda path, message: errors.append(message), **options,
    )  # fmt: skip
    return written, errors


@pytest.mark.parametrize(
    ("length", "tile", "overlap"),
    [
        (1, 64, 16),
        (64, 64, 16),
        (65, 64, 16),
        (128, 64, 0),
        (300, 64, 16),
        (1001, 96, 32),
        (99, 64, 30),
        (50, 0, 0),
    ],
)
def test_tile_starts_cover_the_axis_with_enough_overlap(length, tile, overlap) -> None:
    starts, size = tile_starts(length, tile, overlap)
    assert size == (length if tile <= 0 else min(tile, length))
    assert starts[0] == 0 and starts[-1] + size == length
    assert all(b - a <= size - overlap for a, b in itertools.pairwise(starts))


def test_tiles_that_fit_exactly_need_no_extra_tile() -> None:
    assert tile_starts(128, 64, 0) == ([0, 64], 64)
    assert tile_starts(112, 64, 16) == ([0, 48], 64)


@pytest.mark.parametrize(
    ("length", "tile", "overlap"), [(300, 64, 16), (1001, 96, 32), (130, 64, 8)]
)
def test_windows_sum_to_one(length, tile, overlap) -> None:
    starts, size = tile_starts(length, tile, overlap)
    total = np.zeros(length)
    for start, win in zip(starts, tile_weights(starts, size), strict=True):
        total[start : start + size] += win
    np.testing.assert_allclose(total, 1.0, atol=1e-6)


@pytest.mark.parametrize(
    ("h", "w", "tile", "overlap", "batch"),
    [
        (1, 1, 64, 16, 1),
        (5, 7, 64, 16, 1),
        (64, 64, 64, 16, 1),
        (128, 64, 64, 0, 2),
        (67, 130, 32, 8, 3),
        (40, 41, 16, 15, 4),
        (33, 21, 0, 0, 1),
    ],
)
def test_identity_backend_gives_back_the_input(h, w, tile, overlap, batch) -> None:
    img = np.random.default_rng(1).integers(0, 256, (h, w, 3), dtype=np.uint8)
    backend = Recorder()
    out = denoise_image(img, backend, tile=tile, overlap=overlap, batch=batch)
    np.testing.assert_array_equal(out, img)
    limit = tile if tile > 0 else max(h, w)
    assert all(n <= batch and th <= limit and tw <= limit for n, _, th, tw in backend.shapes)


def test_sixteen_bit_stays_sixteen_bit() -> None:
    img = np.random.default_rng(2).integers(0, 65536, (30, 45, 3), dtype=np.uint16)
    out = denoise_image(img, Recorder(), tile=16, overlap=4)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, img)


def test_bad_overlap_is_a_user_error() -> None:
    with pytest.raises(DenoiseError, match="overlap"):
        denoise_image(np.zeros((8, 8, 3), np.uint8), Recorder(), tile=16, overlap=16)


@pytest.mark.parametrize("name", ["nafnet", "dncnn"])
def test_tiled_equals_untiled_within_a_hundredth_of_a_db(name: str) -> None:
    noisy, clean = make_pair(112, 150)
    backend = TorchBackend(tiny_model(name))
    whole = denoise_image(noisy, backend, tile=0, overlap=0)
    assert psnr(whole, noisy) < 40, "the network must change the image for this test to bite"
    recorder_calls = []

    def counting(batch: np.ndarray) -> np.ndarray:
        recorder_calls.append(batch.shape[0])
        return backend(batch)

    counting.name = "counting"  # type: ignore[attr-defined]
    tiled = denoise_image(noisy, counting, tile=64, overlap=16, batch=2)  # type: ignore[arg-type]
    assert sum(recorder_calls) >= 6
    assert abs(psnr(tiled, clean) - psnr(whole, clean)) < 0.01
    if name == "dncnn":  # a local network: tiles that drop their padded margins are exact
        assert psnr(tiled, whole) > 60


def test_blending_leaves_no_seam() -> None:
    """Each tile comes back as a flat grey of its own mean: hard stitching would show steps."""

    class TileMean:
        name = "tile-mean"

        def __call__(self, batch: np.ndarray) -> np.ndarray:
            return np.broadcast_to(batch.mean(axis=(1, 2, 3), keepdims=True), batch.shape).copy()

    ramp = np.tile(np.linspace(0, 255, 200)[None, :, None], (40, 1, 3)).astype(np.uint8)
    out = denoise_image(ramp, TileMean(), tile=64, overlap=32).astype(float)
    starts, _ = tile_starts(200, 64, 32)
    means = [ramp[:, s : s + 64].mean() for s in starts]
    step = min(abs(b - a) for a, b in itertools.pairwise(means))
    assert step > 20  # hard stitching would jump by this much at each border
    assert np.abs(np.diff(out, axis=1)).max() < 0.35 * step
    assert np.abs(np.diff(out, axis=0)).max() == 0


def test_tiles_reach_a_padding_network_reflect_padded_to_its_multiple() -> None:
    class PaddingRecorder(Recorder):
        pad_multiple = 16

        def __init__(self) -> None:
            super().__init__()
            self.batches: list[np.ndarray] = []

        def __call__(self, batch: np.ndarray) -> np.ndarray:
            self.batches.append(batch)
            return super().__call__(batch)

    # 11 rows and 8 columns short of the multiple: height and width are padded each their own
    img = np.random.default_rng(4).integers(0, 256, (21, 40, 3), dtype=np.uint8)
    backend = PaddingRecorder()
    out = denoise_image(img, backend, tile=0, overlap=0)
    np.testing.assert_array_equal(out, img)  # the padding is cropped away again
    assert backend.shapes == [(1, 3, 32, 48)]
    (x,) = backend.batches
    np.testing.assert_array_equal(x[..., 21:, :40], x[..., 19:8:-1, :40])  # mirrored rows
    np.testing.assert_array_equal(x[..., :21, 40:], x[..., :21, 38:30:-1])  # mirrored columns
    plain = Recorder()
    denoise_image(img, plain, tile=0, overlap=0)
    assert plain.shapes == [(1, 3, 21, 40)]  # a network that pads nothing gets the image as is


def test_padding_multiple_follows_the_network_into_onnx(tmp_path: Path) -> None:
    nafnet, dncnn = tiny_model("nafnet", scale=0.05), tiny_model("dncnn", scale=0.05)
    expected = 2 ** len(TINY["nafnet"]["enc_blk_nums"])
    assert pad_multiple_of(nafnet) == expected > 1 and pad_multiple_of(dncnn) == 1
    assert TorchBackend(nafnet).pad_multiple == expected
    for name, model in (("nafnet", nafnet), ("dncnn", dncnn)):
        export_onnx(model, tmp_path / f"{name}.onnx")
    assert OnnxRuntimeBackend(tmp_path / "nafnet.onnx").pad_multiple == expected
    assert OnnxRuntimeBackend(tmp_path / "dncnn.onnx").pad_multiple == 1
    # Both backends pad an odd-sized image the same way, so they still agree on it.
    img = np.random.default_rng(5).integers(0, 256, (21, 37, 3), dtype=np.uint8)
    by_torch = denoise_image(img, TorchBackend(nafnet), tile=0, overlap=0)
    by_ort = denoise_image(img, OnnxRuntimeBackend(tmp_path / "nafnet.onnx"), tile=0, overlap=0)
    assert np.abs(by_torch.astype(int) - by_ort).max() <= 1


def test_a_missing_or_broken_onnx_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(DenoiseError, match=rf"^{tmp_path / 'no.onnx'}: ONNX model not found$"):
        OnnxRuntimeBackend(tmp_path / "no.onnx")
    cut = tmp_path / "cut.onnx"
    export_onnx(tiny_model("dncnn", scale=0.05), cut)
    cut.write_bytes(cut.read_bytes()[:100])  # a copy interrupted early
    with pytest.raises(DenoiseError, match=rf"^{cut}: not a loadable ONNX model \(") as e:
        OnnxRuntimeBackend(cut)
    assert "\n" not in str(e.value)


def test_torch_and_onnxruntime_backends_agree(tmp_path: Path) -> None:
    model = tiny_model("dncnn", scale=0.05)
    ckpt = tmp_path / "dncnn.pt"
    save_checkpoint(ckpt, "dncnn", TINY["dncnn"], model.state_dict())
    onnx_path = tmp_path / "dncnn.onnx"
    torch.onnx.export(
        model,
        torch.rand(1, 3, 32, 32),
        str(onnx_path),
        dynamo=False,
        input_names=["input"],
        output_names=["output"],
        opset_version=17,
        dynamic_axes={"input": {0: "n", 2: "h", 3: "w"}},
    )
    batch = np.random.default_rng(3).random((2, 3, 20, 27), dtype=np.float32)
    by_torch = open_backend("torch", ckpt, channels_last=True)
    by_ort = open_backend("onnxruntime", onnx_path)
    assert by_torch.name == "torch" and by_ort.name == "onnxruntime"
    np.testing.assert_allclose(by_torch(batch), by_ort(batch), atol=1e-4)
    assert np.abs(by_torch(batch) - batch).max() > 1e-3


@pytest.mark.parametrize(
    ("compile_option", "mode", "inductor"),
    [
        (True, None, cpu_compile_options()),
        ("max-autotune", "max-autotune", cpu_compile_options()),
        (
            {"conv_1x1_as_mm": True, "freezing": False},
            None,
            cpu_compile_options({"conv_1x1_as_mm": True, "freezing": False}),
        ),
        (False, "off", {}),
        ("", "off", {}),
        ({}, "off", {}),
    ],
)
def test_cpu_compile_runs_with_the_cpu_options_in_force(
    monkeypatch: pytest.MonkeyPatch,
    compile_option: object,
    mode: str | None,
    inductor: dict[str, object],
) -> None:
    """On CPU every compile (any mode, any options) runs and compiles under
    :func:`cpu_compile_options`; the inductor config is as it was outside the calls."""
    calls: list[dict[str, object]] = []
    seen: list[dict[str, object]] = []

    def fake_compile(module: torch.nn.Module, **kwargs: object) -> Callable[..., torch.Tensor]:
        calls.append(kwargs)

        def run(x: torch.Tensor) -> torch.Tensor:
            seen.append({k: inductor_config.get_config_copy()[k] for k in inductor})
            return module(x)

        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    backend = TorchBackend(tiny_model("nafnet"), device="cpu", compile=compile_option)
    assert calls == ([] if mode == "off" else [{"mode": mode}])
    assert backend(np.zeros((1, 3, 16, 16), np.float32)).shape == (1, 3, 16, 16)
    assert seen == ([] if mode == "off" else [inductor])
    assert inductor_config.freezing is False  # only while the call runs


@pytest.mark.parametrize(
    ("compile_option", "expected"),
    [
        (True, {"options": None}),
        ("reduce-overhead", {"mode": "reduce-overhead"}),
        ({"max_autotune": True}, {"options": {"max_autotune": True}}),
    ],
)
def test_off_cpu_compile_gets_the_callers_mode_or_options(
    monkeypatch: pytest.MonkeyPatch, compile_option: object, expected: dict[str, object]
) -> None:
    """Off the CPU (a meta device stands in for CUDA) torch.compile gets what was asked."""
    calls: list[dict[str, object]] = []
    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: calls.append(kwargs) or module)
    TorchBackend(tiny_model("nafnet"), device="meta", compile=compile_option)
    assert calls == [expected]


def test_bad_compile_options_fail_when_the_backend_opens() -> None:
    with pytest.raises(
        DenoiseError, match=r"unknown torch\.compile \(inductor\) options: no_such_option"
    ):
        TorchBackend(tiny_model("nafnet"), device="cpu", compile={"no_such_option": 1})


def test_cudnn_benchmark_is_left_alone_off_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    TorchBackend(tiny_model("nafnet"), device="cpu", cudnn_benchmark=True)
    assert torch.backends.cudnn.benchmark is False


def test_backend_registry(tmp_path: Path) -> None:
    @register_backend("test-double")
    def _open(model, scale: float = 1.0):
        backend = Recorder()
        backend.name = f"double:{model}:{scale}"
        return backend

    try:
        assert open_backend("test-double", "m", scale=2.0).name == "double:m:2.0"
    finally:
        BACKENDS.pop("test-double")
    with pytest.raises(DenoiseError, match="unknown backend 'nope'"):
        open_backend("nope", "m")
    with pytest.raises(DenoiseError, match=r"missing\.onnx"):
        open_backend("onnxruntime", tmp_path / "missing.onnx")
    with pytest.raises(DenoiseError, match=r"missing\.pt"):
        open_backend("torch", tmp_path / "missing.pt")


def _exif_tiff(orientation: int) -> bytes:
    """A minimal big-endian EXIF (TIFF) block holding only the orientation tag."""
    tiff = b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 1)
    return tiff + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """Insert an EXIF APP1 segment holding only the orientation tag."""
    payload = b"Exif\x00\x00" + _exif_tiff(orientation)
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def _png_with_exif_orientation(png: bytes, orientation: int) -> bytes:
    """Insert an eXIf chunk right after IHDR (8-byte signature + 25-byte IHDR chunk)."""
    data = _exif_tiff(orientation)
    chunk = struct.pack(">I", len(data)) + b"eXIf" + data
    chunk += struct.pack(">I", zlib.crc32(b"eXIf" + data))
    return png[:33] + chunk + png[33:]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_png_orientation_matches_pillow(tmp_path: Path, orientation: int) -> None:
    from PIL import Image, ImageOps

    img = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    _, buf = cv2.imencode(".png", img[..., ::-1])
    path = tmp_path / "o.png"
    path.write_bytes(_png_with_exif_orientation(buf.tobytes(), orientation))
    with Image.open(path) as im:
        expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    np.testing.assert_array_equal(read_image(path), expected)


def test_sixteen_bit_png_is_turned_upright_and_stays_sixteen_bit(tmp_path: Path) -> None:
    img = np.random.default_rng(7).integers(0, 65536, (4, 6, 3), dtype=np.uint16)
    _, buf = cv2.imencode(".png", img[..., ::-1])
    path = tmp_path / "deep.png"
    path.write_bytes(_png_with_exif_orientation(buf.tobytes(), 6))  # 6: rotate 90 degrees CW
    np.testing.assert_array_equal(read_image(path, keep16=True), np.rot90(img, -1))


def test_read_photo_applies_exif_orientation(tmp_path: Path) -> None:
    img = np.zeros((10, 30, 3), np.uint8)
    img[:, :5] = 255  # a bright left edge
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    path = tmp_path / "rotated.jpg"
    path.write_bytes(_with_exif_orientation(buf.tobytes(), 6))  # 6: rotate 90 degrees CW
    out = read_image(path, keep16=True)
    assert out.shape == (30, 10, 3)
    assert out[:5].mean() > 200 and out[-5:].mean() < 50  # the left edge is now on top


def test_photo_round_trip_keeps_depth(tmp_path: Path) -> None:
    img16 = np.random.default_rng(4).integers(0, 65536, (6, 9, 3), dtype=np.uint16)
    write_image(tmp_path / "a.png", img16)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png", keep16=True), img16)
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    cv2.imwrite(str(tmp_path / "g.png"), grey)
    assert read_image(tmp_path / "g.png", keep16=True).shape == (3, 4, 3)
    cv2.imwrite(str(tmp_path / "rgba.png"), np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(DenoiseError, match=r"rgba\.png: has an alpha channel"):
        read_image(tmp_path / "rgba.png", keep16=True)
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(DenoiseError, match=r"junk\.png: not a readable image"):
        read_image(tmp_path / "junk.png", keep16=True)


def test_unwritable_format_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DenoiseError, match=r"x\.gif: cannot write a \.gif image"):
        write_image(tmp_path / "x.gif", np.zeros((4, 4, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_a_folder_contributes_its_photos_only(tmp_path: Path) -> None:
    img = np.zeros((4, 4, 3), np.uint8)
    for name in ("b.png", "a.JPG", "a_denoised.png", ".hidden.png"):
        write_image(tmp_path / name, img)
    (tmp_path / "notes.txt").write_text("not a photo")
    (tmp_path / "sub").mkdir()
    found = expand_inputs([tmp_path, tmp_path / "b.png"])
    assert [p.name for p in found] == ["a.JPG", "b.png"]


def test_denoise_files_skips_clashes_and_unwritable_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    img = np.random.default_rng(5).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    for folder in ("a", "b"):
        write_image(tmp_path / folder / "x.png", img)
    (tmp_path / "blocked").write_text("a file where the output folder should be")
    errors: list[tuple[Path, str]] = []

    def run(*inputs: Path, out: str) -> list[Path]:
        return denoise_files(
            list(inputs), Recorder(), tile=0, overlap=0, out_dir=tmp_path / out,
            progress=False, on_error=lambda p, m: errors.append((p, m)),
        )  # fmt: skip

    # The same file named alone, through its folder and through a link is denoised once,
    # under the first name given.
    a = tmp_path / "a" / "x.png"
    (tmp_path / "a" / "link.png").symlink_to(a)
    assert run(a, tmp_path / "a", out="out1") == [tmp_path / "out1" / "x_denoised.png"]
    assert run(a, tmp_path / "a" / "link.png", out="out1b") == [
        tmp_path / "out1b" / "x_denoised.png"
    ]
    assert errors == []
    # Two inputs with one output name: the second is refused, the first kept.
    assert run(a, tmp_path / "b" / "x.png", out="out2") == [tmp_path / "out2" / "x_denoised.png"]
    assert len(errors) == 1 and "same output" in errors[0][1] and "a/x.png" in errors[0][1]
    # An output folder that cannot hold outputs fails before any work.
    with pytest.raises(DenoiseError, match="blocked: output folder is a file"):
        run(a, out="blocked")
    with pytest.raises(DenoiseError, match=r"sub: cannot create the output folder \(.*blocked is"):
        run(a, out="blocked/sub")
    real_access = os.access  # the tests run as root, for whom every folder is writable
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != tmp_path and real_access(p, mode))
    with pytest.raises(DenoiseError, match=rf"new: output folder is not writable \({tmp_path}\)"):
        run(a, out="new")  # the folder it would create is refused by its writable parent
    monkeypatch.undo()
    # An output that cannot be written (a folder in its place, kept whole even with
    # --overwrite) is one error naming it, before the photo is denoised, and the run goes on.
    errors.clear()
    (tmp_path / "out3" / "x_denoised.png").mkdir(parents=True)
    (tmp_path / "out3" / "x_denoised.png" / "keep.txt").write_text("keep")
    recorder = Recorder()
    outputs = denoise_files(
        [a], recorder, tile=0, overlap=0, out_dir=tmp_path / "out3", overwrite=True,
        progress=False, on_error=lambda p, m: errors.append((p, m)),
    )  # fmt: skip
    assert outputs == [] and len(errors) == 1 and recorder.shapes == []
    assert errors[0][1].endswith("x_denoised.png: is a folder; not replaced by an output")
    assert (tmp_path / "out3" / "x_denoised.png" / "keep.txt").read_text() == "keep"


def test_an_output_another_process_writes_meanwhile_is_not_replaced(tmp_path: Path) -> None:
    """Two runs into one folder: the one that finishes second must not silently replace the
    first one's output (the check before the work leaves the whole denoise as a window)."""
    photo = tmp_path / "x.png"
    write_image(photo, np.zeros((8, 8, 3), np.uint8))
    dst = tmp_path / "out" / "x_denoised.png"

    class OtherWriterMeanwhile(Recorder):
        def __call__(self, batch: np.ndarray) -> np.ndarray:
            write_image(dst, np.full((4, 4, 3), 9, np.uint8))  # the other run's output
            return super().__call__(batch)

    written, errors = _denoise_reporting([photo], OtherWriterMeanwhile(), out_dir=dst.parent)
    assert written == [] and errors == [f"{dst}: already exists (written meanwhile?); not replaced"]
    assert read_image(dst, keep16=True).shape == (4, 4, 3)  # the other run's, whole
    assert [p.name for p in dst.parent.iterdir()] == [dst.name]  # no staging left
    # With --skip-existing it counts as an output found before: passed over, not an error.
    skipped: list[Path] = []
    dst.unlink()
    assert denoise_files(
        [photo], OtherWriterMeanwhile(), tile=0, overlap=0, out_dir=tmp_path / "out",
        skip_existing=True, progress=False, on_skipped=skipped.append,
    ) == []  # fmt: skip
    assert skipped == [dst] and read_image(dst, keep16=True).shape == (4, 4, 3)
    # With --overwrite the newer output replaces it, as asked.
    assert denoise_files(
        [photo], OtherWriterMeanwhile(), tile=0, overlap=0, out_dir=tmp_path / "out",
        overwrite=True, progress=False,
    ) == [dst]  # fmt: skip
    assert read_image(dst, keep16=True).shape == (8, 8, 3)


def test_links_to_nothing_and_loops_are_named_not_a_traceback(tmp_path: Path) -> None:
    """A link loop as an input fails alone (``resolve()`` raised for the whole run); a link to
    nothing at an output's name exists (not replaced without --overwrite); an output folder
    that is a link to nothing is refused before the work."""
    good = tmp_path / "good.png"
    write_image(good, np.zeros((8, 8, 3), np.uint8))
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    out = tmp_path / "out"
    written, errors = _denoise_reporting([loop, good], Recorder(), out_dir=out)
    assert written == [out / "good_denoised.png"]
    assert errors == [f"{loop}: cannot read (Too many levels of symbolic links)"]
    dangling = tmp_path / "out2" / "good_denoised.png"
    dangling.parent.mkdir()
    dangling.symlink_to(tmp_path / "nowhere.png")
    written, errors = _denoise_reporting([good], Recorder(), out_dir=dangling.parent)
    assert written == []
    assert errors == [
        f"{dangling}: already exists (--overwrite replaces it, --skip-existing keeps it)"
    ]
    assert dangling.is_symlink()
    (tmp_path / "out3").symlink_to(tmp_path / "gone")
    recorder = Recorder()
    with pytest.raises(DenoiseError, match=r"out3: output folder is a link to nothing \(.*gone\)$"):
        denoise_files([good], recorder, tile=0, overlap=0, out_dir=tmp_path / "out3")
    assert recorder.shapes == []


def test_a_read_only_input_folder_is_refused_before_the_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outputs beside the inputs, in a folder this user cannot write: one error per photo
    before it is denoised (not after minutes of work), and the others go on."""
    import denoise.infer as infer_module

    for folder in ("ro", "rw"):
        write_image(tmp_path / folder / "x.png", np.zeros((8, 8, 3), np.uint8))
    real_access = os.access  # the tests run as root, for whom every folder is writable
    monkeypatch.setattr(
        infer_module.os,
        "access",
        lambda path, mode: Path(path) != tmp_path / "ro" and real_access(path, mode),
    )
    recorder = Recorder()
    written, errors = _denoise_reporting(
        [tmp_path / "ro" / "x.png", tmp_path / "rw" / "x.png"], recorder
    )
    assert written == [tmp_path / "rw" / "x_denoised.png"] and len(recorder.shapes) == 1
    ro = tmp_path / "ro"
    assert errors == [f"{ro / 'x_denoised.png'}: cannot be written ({ro} is not writable)"]


def test_an_input_is_never_overwritten_by_another_inputs_output(tmp_path: Path) -> None:
    x, x_out = tmp_path / "x.png", tmp_path / "x_denoised.png"
    write_image(x, np.zeros((8, 8, 3), np.uint8))
    write_image(x_out, np.full((5, 5, 3), 7, np.uint8))
    before = x_out.read_bytes()
    written, errors = _denoise_reporting([x, x_out], Recorder(), overwrite=True)
    assert written == [tmp_path / "x_denoised_denoised.png"]
    assert errors == [f"{x_out}: is an input of this run; not overwritten"]
    assert x_out.read_bytes() == before


def test_a_folder_without_photos_is_an_error_the_others_still_run(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not a photo")
    write_image(tmp_path / "good" / "y.png", np.zeros((8, 8, 3), np.uint8))
    errors: list[tuple[Path, str]] = []
    folders = [tmp_path / "empty", tmp_path / "notes", tmp_path / "good"]
    written = denoise_files(
        folders, Recorder(), tile=0, overlap=0, progress=False,
        on_error=lambda p, m: errors.append((p, m)),
    )  # fmt: skip
    assert written == [tmp_path / "good" / "y_denoised.png"]
    assert [p for p, _ in errors] == folders[:2]
    assert all(": no photos (.png" in m for _, m in errors)
    with pytest.raises(DenoiseError, match="empty: no photos"):
        expand_inputs([tmp_path / "empty"])
    # A run that writes nothing leaves no output folder behind.
    with pytest.raises(DenoiseError, match="empty: no photos"):
        denoise_files([tmp_path / "empty"], Recorder(), tile=0, overlap=0, out_dir=tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_unreadable_folders_and_failed_inferences_are_skipped_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a user without permission sees them (Python 3.11's ``is_dir`` raises), and a model
    that runs out of memory on one photo: each is one line, and the other photos still run."""
    for name, size in (("big.png", 40), ("small.png", 8)):
        write_image(tmp_path / "in" / name, np.zeros((size, size, 3), np.uint8))
    (tmp_path / "locked").mkdir()
    is_dir = Path.is_dir

    def denied(self: Path) -> bool:
        if self.name == "locked":
            raise PermissionError(13, "Permission denied", str(self))
        return is_dir(self)

    monkeypatch.setattr(Path, "is_dir", denied)

    class RunsOutOfMemory(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.shape[-1] > 16:
                raise torch.OutOfMemoryError("DefaultCPUAllocator: can't allocate memory")
            return x

    errors: list[tuple[Path, str]] = []
    written = denoise_files(
        [tmp_path / "locked", tmp_path / "in"], TorchBackend(RunsOutOfMemory()), tile=0,
        overlap=0, out_dir=tmp_path / "out", progress=False,
        on_error=lambda p, m: errors.append((p, m)),
    )  # fmt: skip
    assert written == [tmp_path / "out" / "small_denoised.png"]
    assert errors[0] == (
        tmp_path / "locked",
        f"{tmp_path / 'locked'}: cannot read (Permission denied)",
    )
    path, message = errors[1]
    assert path == tmp_path / "in" / "big.png" and "\n" not in message
    assert "torch: inference on a (1, 3, 40, 40) batch failed (DefaultCPUAllocator" in message


def test_a_photo_too_big_for_memory_is_skipped_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """numpy's MemoryError for the photo's own buffers (not the network's tile): one line with
    the photo's size, and the next photo still runs."""
    write_image(tmp_path / "huge.png", np.zeros((30, 40, 3), np.uint8))
    write_image(tmp_path / "small.png", np.zeros((8, 8, 3), np.uint8))
    real_zeros = np.zeros

    def zeros(shape, *args, **kwargs):
        if shape == (30, 40, 3):
            raise MemoryError("Unable to allocate 14.1 KiB for an array with shape (30, 40, 3)")
        return real_zeros(shape, *args, **kwargs)

    monkeypatch.setattr(np, "zeros", zeros)
    written, errors = _denoise_reporting(
        [tmp_path / "huge.png", tmp_path / "small.png"], Recorder(), out_dir=tmp_path / "out"
    )
    assert written == [tmp_path / "out" / "small_denoised.png"]
    assert errors == [
        f"{tmp_path / 'huge.png'}: not enough memory for a 40x30 photo (0 MP): besides the "
        "network's tiles a photo needs about 20 bytes per pixel"
    ]


def test_a_16bit_photo_is_refused_where_the_network_would_keep_fewer_bits(tmp_path: Path) -> None:
    """Cast to bf16 (CPU's default for --precision bf16), the input and the global residual keep
    8 significant bits: a 16-bit photo would come back with about 128 levels per octave, still
    written as 16-bit. Under autocast the input stays FP32, as in the default fp32."""
    deep = (np.arange(16 * 16 * 3, dtype=np.uint16).reshape(16, 16, 3) * 85).astype(np.uint16)
    write_image(tmp_path / "deep.png", deep)
    write_image(tmp_path / "eight.png", (deep // 257).astype(np.uint8))
    model = tiny_model("dncnn", scale=0.05)
    written, errors = _denoise_reporting(
        [tmp_path / "deep.png", tmp_path / "eight.png"],
        TorchBackend(model, precision="bf16"),
        out_dir=tmp_path / "bf16",
    )
    assert written == [tmp_path / "bf16" / "eight_denoised.png"]
    assert errors == [
        f"{tmp_path / 'deep.png'}: a 16-bit photo would keep only 8 bits through the network "
        "in bf16; denoise it in fp32 (the default)"
    ]
    for backend in (TorchBackend(model), TorchBackend(model, precision="bf16", amp=True)):
        assert backend.input_bits == 24
        out = denoise_files(
            [tmp_path / "deep.png"], backend, tile=0, overlap=0, out_dir=tmp_path / "ok",
            overwrite=True, progress=False,
        )  # fmt: skip
        assert read_photo(out[0]).rgb.dtype == np.uint16
    assert TorchBackend(model, precision="fp16").input_bits == 11


def test_a_failure_that_is_no_lack_of_memory_gets_no_tile_advice() -> None:
    class Broken(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("a kernel failed")

    with pytest.raises(DenoiseError) as e:
        TorchBackend(Broken())(np.zeros((1, 3, 8, 8), np.float32))
    assert str(e.value) == "torch: inference on a (1, 3, 8, 8) batch failed (a kernel failed)"


def test_each_output_and_each_failure_is_reported_as_it_happens(tmp_path: Path) -> None:
    for name in ("a.png", "c.png"):
        write_image(tmp_path / name, np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "b.png").write_bytes(b"not an image")
    events: list[tuple[str, str]] = []
    denoise_files(
        [tmp_path / n for n in ("a.png", "b.png", "c.png")], Recorder(), tile=0, overlap=0,
        progress=False, on_error=lambda p, m: events.append(("failed", p.name)),
        on_written=lambda p: events.append(("wrote", p.name)),
    )  # fmt: skip
    assert events == [("wrote", "a_denoised.png"), ("failed", "b.png"), ("wrote", "c_denoised.png")]


def test_output_names_keep_the_type_and_give_one_to_an_input_without_a_suffix() -> None:
    assert output_path("d/IMG_1.JPG") == Path("d/IMG_1_denoised.JPG")
    assert output_path("d/scan", "out") == Path("out/scan_denoised.png")  # written as PNG


def test_an_output_type_without_an_encoder_is_refused_before_the_work(tmp_path: Path) -> None:
    (tmp_path / "anim.gif").write_bytes(b"GIF89a not read: refused before")
    backend = Recorder()
    written, errors = _denoise_reporting([tmp_path / "anim.gif"], backend)
    assert written == [] and backend.shapes == []
    assert errors == [  # named by the file the user gave
        f"{tmp_path / 'anim.gif'}: cannot write .gif images; convert the input to "
        ".png, .jpg or .tif"
    ]


@pytest.mark.parametrize(
    ("tile", "overlap", "message"),
    [
        (-5, 0, "tile -5 must be >= 0"),
        (0, -1, "overlap -1 must be >= 0"),
        (64, 64, "overlap 64 must be smaller than tile 64"),
    ],
)
def test_bad_tiling_is_named(tile: int, overlap: int, message: str) -> None:
    with pytest.raises(DenoiseError, match=message):
        check_tiling(tile, overlap)


def test_resolve_model_follows_the_params_switch(tmp_path: Path) -> None:
    params, models = tmp_path / "params.yaml", tmp_path / "models"
    repo = tmp_path / "model_repository"  # and no metrics/export.json yet: params.yaml decides
    kw = {"project": tmp_path}
    with pytest.raises(DenoiseError, match="run the export-onnx stage first"):
        resolve_model(None, "onnxruntime", **kw)
    with pytest.raises(DenoiseError, match=r"model\.plan: not found .*build-trt"):
        resolve_model(None, "tensorrt", **kw)
    onnx = repo / "denoise_onnx" / "1" / "model.onnx"
    onnx.parent.mkdir(parents=True)
    onnx.write_bytes(b"")
    assert resolve_model(None, "onnxruntime", **kw) == ("onnxruntime", str(onnx))
    with pytest.raises(DenoiseError, match="pass --model"):
        resolve_model(None, None, **kw)
    assert resolve_model(None, "triton", **kw) == ("triton", "")  # the server's default model
    params.write_text("model: dncnn\n")
    with pytest.raises(DenoiseError, match=r"dncnn.pt: not found.*dvc repro train-dncnn"):
        resolve_model(None, None, **kw)
    models.mkdir()
    (models / "dncnn.pt").write_bytes(b"")
    assert resolve_model(None, None, **kw) == ("torch", str(models / "dncnn.pt"))
    # Triton: the served model, unchecked against params.yaml (edited since the export, maybe).
    assert resolve_model(None, "triton", **kw) == ("triton", "")


def test_resolve_model_takes_the_last_export_over_the_params_switch(tmp_path: Path) -> None:
    """params.yaml edited after the pipeline ran: every backend still runs the exported model
    (the torch backend its checkpoint), not one backend each."""
    models = tmp_path / "models"
    models.mkdir()
    for name in ("nafnet", "dncnn"):
        (models / f"{name}.pt").write_bytes(b"")
    (tmp_path / "params.yaml").write_text("model: dncnn\n")
    export = tmp_path / "metrics" / "export.json"
    export.parent.mkdir()
    kw = {"project": tmp_path}
    # the stage names the checkpoint relative to the project folder
    export.write_text(json.dumps({"checkpoint": "models/nafnet.pt", "passed": True}))
    assert resolve_model(None, None, **kw) == ("torch", str(models / "nafnet.pt"))
    assert resolve_model(None, "torch", **kw) == ("torch", str(models / "nafnet.pt"))
    assert resolve_model(str(models / "dncnn.pt"), None, **kw)[1] == str(models / "dncnn.pt")
    # Unreadable, its checkpoint deleted, none named, or an export that failed its parity
    # check (the repository keeps the earlier model): the switch decides.
    for report in (
        "{not json",
        "[1]",
        json.dumps({"checkpoint": str(models / "gone.pt"), "passed": True}),
        json.dumps({"checkpoint": None, "passed": True}),
        json.dumps({"checkpoint": str(models / "nafnet.pt"), "passed": False}),
    ):
        export.write_text(report)
        assert resolve_model(None, None, **kw) == ("torch", str(models / "dncnn.pt")), report
    assert resolve_model("x.onnx", None, **kw) == ("onnxruntime", "x.onnx")
    assert resolve_model("x.plan", None, **kw) == ("tensorrt", "x.plan")
    with pytest.raises(DenoiseError, match="unknown model file type"):
        resolve_model("x.bin", None, **kw)


def test_default_model_is_found_from_outside_the_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Photos seldom sit in the project: the project is the working folder or one above it
    that holds dvc.yaml, else $DENOISE_PROJECT, else this package's checkout."""
    project = tmp_path / "project"
    (project / "models").mkdir(parents=True)
    (project / "dvc.yaml").write_text("stages: {}\n")
    (project / "params.yaml").write_text("model: dncnn\n")
    (project / "models" / "dncnn.pt").write_bytes(b"")
    photos = project / "photos" / "2026"
    photos.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert find_project(photos) == project
    monkeypatch.setenv("DENOISE_PROJECT", str(project))
    assert find_project(elsewhere) == project
    monkeypatch.chdir(elsewhere)
    assert resolve_model(None, None) == ("torch", str(project / "models" / "dncnn.pt"))
    monkeypatch.delenv("DENOISE_PROJECT")
    checkout = Path(__file__).resolve().parents[1]  # the tests run from a checkout
    assert find_project(elsewhere) == checkout


class GoneAfter(Recorder):
    """A backend whose server stops answering after ``n`` batches."""

    name = "gone"

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if len(self.shapes) >= self.n:
            self.shapes.append(batch.shape)
            raise BackendUnavailable("http://127.0.0.1:1: request to m failed: timed out")
        return super().__call__(batch)


def test_a_backend_that_stops_answering_ends_the_run_at_once(tmp_path: Path) -> None:
    """A server gone mid-run: not one error (and one timeout) per photo left, but one error
    that says how many are left; the outputs written before it stay, none is half written."""
    paths = []
    for i in range(4):
        paths.append(tmp_path / f"p{i}.png")
        write_image(paths[-1], make_pair(24, 24, seed=i)[1])
    backend, errors = GoneAfter(1), []
    with pytest.raises(BackendUnavailable) as err:
        denoise_files(
            paths,
            backend,
            tile=0,
            overlap=0,
            out_dir=tmp_path / "out",
            progress=False,
            on_error=lambda path, message: errors.append(message),
        )
    assert str(err.value) == (
        "http://127.0.0.1:1: request to m failed: timed out; stopped with 3 of 4 inputs "
        f"not denoised ({paths[1]} on)"
    )
    assert len(backend.shapes) == 2 and errors == []  # no call for p2, p3
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p0_denoised.png"]


def test_only_a_failure_on_the_way_counts_as_the_server_gone() -> None:
    from tritonclient.utils import InferenceServerException

    from denoise.triton.client import _is_transport_failure

    assert _is_transport_failure(ConnectionRefusedError(111, "Connection refused"))
    assert _is_transport_failure(TimeoutError("timed out"))
    gone = InferenceServerException("unavailable", status="StatusCode.UNAVAILABLE")
    assert _is_transport_failure(gone)
    answered = InferenceServerException("[500] out of memory", status="500")
    assert not _is_transport_failure(answered)  # one photo's problem: the run goes on
