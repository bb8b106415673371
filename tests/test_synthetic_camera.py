"""The simulated smartphone camera: layout, determinism, noise model and residual statistics."""

from __future__ import annotations

import dataclasses
import errno
import math
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.stats import spearmanr

from denoise.data import synthetic_camera as cam
from denoise.data.sidd_layout import (
    ARCHIVE_ROOT,
    GT_NAME,
    NOISY_NAME,
    PHONES,
    Instance,
    list_instances,
)
from denoise.errors import DenoiseError
from denoise.fileio import read_rgb8
from denoise.metrics import psnr

H, W = 64, 96


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Instance]]:
    """30 tiny pairs (3 per scene), shared by the layout and statistics tests."""
    out = tmp_path_factory.mktemp("synthetic") / "raw"
    return out, cam.generate_dataset(out, instances=30, height=H, width=W, seed=7, progress=False)


def _pairs(root: Path) -> list[tuple[Instance, np.ndarray, np.ndarray]]:
    return [
        (inst, read_rgb8(folder / GT_NAME), read_rgb8(folder / NOISY_NAME))
        for inst, folder in list_instances(root)
    ]


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


# ----------------------------------------------------------------------------- layout


def test_writes_the_sidd_small_layout(dataset: tuple[Path, list[Instance]]) -> None:
    out, made = dataset
    data = out / ARCHIVE_ROOT / "Data"
    folders = sorted(p.name for p in data.iterdir())
    assert folders == sorted(i.name for i in made)
    assert [Instance.parse(n) for n in folders] == sorted(made, key=lambda i: i.name)
    listed = (out / ARCHIVE_ROOT / "Scene_Instances.txt").read_text().splitlines()
    assert listed == [i.name for i in made]
    for name in folders:
        assert sorted(p.name for p in (data / name).iterdir()) == sorted([GT_NAME, NOISY_NAME])
    for _, gt, noisy in _pairs(out):
        assert gt.shape == noisy.shape == (H, W, 3)
        assert gt.dtype == noisy.dtype == np.uint8
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


def test_conditions_are_sidd_like(dataset: tuple[Path, list[Instance]]) -> None:
    _, made = dataset
    assert [i.id for i in made] == list(range(1, 31))
    assert sorted({i.scene for i in made}) == list(range(1, 11))
    assert {i.phone for i in made} <= set(PHONES)
    assert {i.iso for i in made} <= set(cam.ISOS)
    assert {i.illuminant for i in made} <= set(cam.ILLUMINANTS)
    assert {i.brightness for i in made} <= {"L", "N", "H"}


def test_brightness_drives_iso_and_shutter() -> None:
    drawn = [cam.sample_instance(k, np.random.default_rng([1, k]))[0] for k in range(600)]
    mean_log_iso = {
        b: np.mean([math.log(i.iso) for i in drawn if i.brightness == b]) for b in "LNH"
    }
    assert mean_log_iso["L"] > mean_log_iso["N"] > mean_log_iso["H"]
    # Exposure equation: 1/t = light * ISO / (16 * exposure), exposure in [0.6, 1].
    light = {"L": 1.0, "N": 4.0, "H": 16.0}
    for i in drawn:
        base = light[i.brightness] * i.iso / 16.0
        assert base * 0.99 - 1 <= i.shutter <= base / 0.6 + 1, i.name


def test_noise_levels_follow_iso_and_brooks_read_relation() -> None:
    assert cam.shot_for_iso(50) == pytest.approx(1e-4)
    assert cam.shot_for_iso(10000) == pytest.approx(1.2e-2)
    shots = [cam.shot_for_iso(i) for i in cam.ISOS]
    assert shots == sorted(shots)
    settings = [cam.sample_instance(k, np.random.default_rng([2, k])) for k in range(400)]
    log_shot = np.log([s.shot for _, s in settings])
    log_read = np.log([s.read for _, s in settings])
    assert log_shot.min() >= math.log(1e-4) - 1e-9 and log_shot.max() <= math.log(1.2e-2) + 1e-9
    slope, _ = np.polyfit(log_shot, log_read, 1)
    assert slope == pytest.approx(2.18, abs=0.15)
    assert np.std(log_read - (2.18 * log_shot + 1.20)) == pytest.approx(0.26, abs=0.05)
    assert spearmanr([i.iso for i, _ in settings], log_shot).statistic > 0.9
    red = np.array([s.red_gain for _, s in settings])
    blue = np.array([s.blue_gain for _, s in settings])
    assert red.min() >= 1.9 and red.max() <= 2.4 and blue.min() >= 1.5 and blue.max() <= 1.9
    jpeg = [s.jpeg_quality for _, s in settings if s.jpeg_quality is not None]
    assert 0.35 < len(jpeg) / len(settings) < 0.65 and min(jpeg) >= 60 and max(jpeg) <= 95


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    kw = {"instances": 3, "height": 32, "width": 48, "progress": False}
    cam.generate_dataset(tmp_path / "a", seed=11, **kw)
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # the bytes must not depend on the thread count
    try:
        cam.generate_dataset(tmp_path / "b", seed=11, **kw)
    finally:
        cv2.setNumThreads(threads)
    cam.generate_dataset(tmp_path / "c", seed=12, **kw)
    a, b, c = (_tree_bytes(tmp_path / n) for n in "abc")
    assert a == b
    assert a != c


def test_names_do_not_depend_on_image_size(tmp_path: Path) -> None:
    small = cam.generate_dataset(
        tmp_path / "s", instances=4, height=16, width=16, seed=3, progress=False
    )
    large = cam.generate_dataset(
        tmp_path / "l", instances=4, height=32, width=48, seed=3, progress=False
    )
    assert small == large


def test_interrupted_run_leaves_previous_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "raw"
    cam.generate_dataset(out, instances=2, height=16, width=16, progress=False)
    before = _tree_bytes(out)
    calls = {"n": 0}
    real_write = cam.write_rgb8

    def failing_write(path: Path, img: np.ndarray) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        real_write(path, img)

    monkeypatch.setattr(cam, "write_rgb8", failing_write)
    with pytest.raises(KeyboardInterrupt):
        cam.generate_dataset(out, instances=4, height=16, width=16, seed=5, progress=False)
    assert _tree_bytes(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"instances": 0},
        {"instances": 10000},
        {"height": 8},
        {"width": 4},
        {"seed": -1},
        {"seed": 2**32},
    ],
)
def test_bad_parameters_are_user_errors(tmp_path: Path, kwargs: dict[str, int]) -> None:
    with pytest.raises(DenoiseError, match="synthetic camera"):
        cam.generate_dataset(tmp_path / "x", progress=False, **kwargs)
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- camera model


def test_demosaic_reproduces_flat_and_linear_images() -> None:
    flat = np.broadcast_to(np.array([0.2, 0.5, 0.7]), (12, 16, 3))
    np.testing.assert_allclose(cam.demosaic_malvar(cam.mosaic(flat)), flat, atol=1e-12)
    yy, xx = np.mgrid[0:24, 0:32]
    ramp = np.repeat((0.01 * yy + 0.02 * xx)[..., None], 3, axis=-1)
    out = cam.demosaic_malvar(cam.mosaic(ramp))
    np.testing.assert_allclose(out[2:-2, 2:-2], ramp[2:-2, 2:-2], atol=1e-12)


@pytest.mark.parametrize("channel", [0, 1, 2])
def test_demosaic_keeps_the_rggb_phase(channel: int) -> None:
    img = np.zeros((10, 14, 3))
    img[..., channel] = 0.8
    out = cam.demosaic_malvar(cam.mosaic(img))
    np.testing.assert_allclose(out, img, atol=1e-12)


def test_sensor_noise_is_poisson_gaussian() -> None:
    settings = cam.sample_instance(0, np.random.default_rng(0))[1]
    shot, read = 2e-3, 4e-5
    settings = cam.CameraSettings(
        shot, read, settings.red_gain, settings.blue_gain, settings.exposure, settings.rgb2cam, None
    )
    rng = np.random.default_rng(0)
    for x in (0.05, 0.4):
        noisy = cam.add_sensor_noise(np.full((256, 256), x), settings, rng)
        assert noisy.mean() == pytest.approx(x, rel=0.02)
        assert noisy.var() == pytest.approx(shot * x + read, rel=0.05)


def test_pair_differs_only_by_noise() -> None:
    rng = np.random.default_rng(4)
    _, settings = cam.sample_instance(3, rng)
    clean = cam.clean_image(7, 48, 64, rng)
    quiet = cam.CameraSettings(
        1e-9,
        1e-14,
        settings.red_gain,
        settings.blue_gain,
        settings.exposure,
        settings.rgb2cam,
        None,
    )
    gt, noisy = cam.simulate_pair(clean, quiet, rng)
    assert np.abs(gt.astype(int) - noisy.astype(int)).max() <= 1
    gt2, noisy2 = cam.simulate_pair(clean, settings, rng)
    assert np.array_equal(gt, gt2)
    assert psnr(noisy2, gt2) < psnr(noisy, gt)


def _settings(seed: int) -> cam.CameraSettings:
    return cam.sample_instance(3, np.random.default_rng(seed))[1]


def test_a_saturated_highlight_is_white_not_magenta() -> None:
    """A sensor clips at its white level: a blown highlight comes out flat white in both
    images, whatever the white balance gains (applied before the clip, as Brooks does)."""
    for seed in range(5):
        settings = _settings(seed)
        white = np.ones((16, 16, 3))
        gt, noisy = cam.simulate_pair(white, settings, np.random.default_rng(seed))
        assert (gt == 255).all(), gt.reshape(-1, 3).min(axis=0)
        assert noisy[4:-4, 4:-4].min() >= 250  # noise cannot push a clipped pixel far down


def test_a_neutral_edge_stays_nearly_neutral() -> None:
    """Malvar's gradient correction assumes channels on one scale: the demosaic runs on the
    white-balanced mosaic, so a grey disc's soft edge gains little false colour."""
    yy, xx = np.mgrid[0:64, 0:64]
    disc = np.where((yy - 32) ** 2 + (xx - 32) ** 2 < 20**2, 0.8, 0.2)
    grey = cv2.GaussianBlur(disc, (0, 0), 0.8)[..., None].repeat(3, axis=2)
    quiet = dataclasses.replace(_settings(1), shot=1e-9, read=1e-14, jpeg_quality=None)
    gt, _ = cam.simulate_pair(grey, quiet, np.random.default_rng(0))
    spread = gt.max(axis=2).astype(int) - gt.min(axis=2).astype(int)
    assert np.percentile(spread, 99) < 30, np.percentile(spread, 99)


def test_clean_content_depends_on_scene() -> None:
    images = [cam.clean_image(s, 32, 48, np.random.default_rng(0)) for s in range(1, 11)]
    for img in images:
        assert img.shape == (32, 48, 3) and img.min() >= 0.0 and img.max() <= 1.0
        assert img.std() > 0.02  # not a flat frame
    assert len({img.tobytes() for img in images}) == 10
    with pytest.raises(ValueError):
        cam.clean_image(11, 32, 48, np.random.default_rng(0))


# ----------------------------------------------------------------------------- statistics


def test_noisy_psnr_spans_sidd_range_and_falls_with_iso(
    dataset: tuple[Path, list[Instance]],
) -> None:
    pairs = _pairs(dataset[0])
    scores = np.array([psnr(noisy, gt) for _, gt, noisy in pairs])
    assert scores.min() > 15.0 and scores.max() < 46.0
    assert 22.0 < np.median(scores) < 36.0
    assert scores.max() - scores.min() > 8.0
    rho = spearmanr([inst.iso for inst, _, _ in pairs], scores).statistic
    assert rho < -0.5


def test_residuals_are_correlated_like_real_phone_noise(
    dataset: tuple[Path, list[Instance]],
) -> None:
    spatial, cross = [], []
    for _, gt, noisy in _pairs(dataset[0]):
        r = noisy.astype(np.float64) - gt.astype(np.float64)
        if r.std() == 0:
            continue
        spatial.append(
            np.mean(
                [np.corrcoef(r[:, :-1, c].ravel(), r[:, 1:, c].ravel())[0, 1] for c in range(3)]
            )
        )
        cross.append(
            np.mean(
                [
                    np.corrcoef(r[..., a].ravel(), r[..., b].ravel())[0, 1]
                    for a, b in ((0, 1), (1, 2), (0, 2))
                ]
            )
        )
    assert 0.2 < np.mean(spatial) < 0.7
    assert np.mean(cross) > 0.1


def test_colour_matrices_invert_without_lapack() -> None:
    for k in range(5):
        m = cam.sample_instance(k, np.random.default_rng(k))[1].rgb2cam
        np.testing.assert_allclose(m.sum(axis=1), 1.0)
        np.testing.assert_allclose(cam._inverse_3x3(m), np.linalg.inv(m), atol=1e-12)


def test_a_failing_write_is_one_line_naming_the_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def read_only(path: Path, img: np.ndarray) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(cam, "write_rgb8", read_only)
    out = tmp_path / "raw"
    with pytest.raises(DenoiseError, match=rf"^{re.escape(str(out))}: cannot write \(Read-only"):
        cam.generate_dataset(out, instances=2, height=16, width=16, progress=False)
    assert not out.exists() and list(tmp_path.iterdir()) == []
