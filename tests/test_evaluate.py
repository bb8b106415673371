"""Scoring pairs and the evaluate stage on a tiny split with tiny real checkpoints."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio
from ssim_reference import ssim_3d_reference
from tiny_models import TINY, save_tiny

import denoise.evaluate as evaluate_module
from denoise.data import sidd_layout
from denoise.data.pairs import find_pairs, read_pair
from denoise.data.patch_store import write_patch_store
from denoise.data.sidd_layout import GT_NAME, NOISY_NAME
from denoise.errors import DenoiseError
from denoise.evaluate import EvalParams, evaluate, nlm_denoise, score_image, tune_nlm
from denoise.fileio import write_rgb8
from denoise.infer import TorchBackend, denoise_image, open_backend
from denoise.metrics import psnr
from denoise.models.registry import build_model

# Three ISO bands, two brightness levels, two phones.
INSTANCES = [
    "0001_001_S6_00100_00060_3200_L",
    "0002_002_GP_00800_00350_5500_N",
    "0003_003_S6_03200_00100_4400_N",
]


def noisy_clean(h: int, w: int, seed: int, sigma: float = 15.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    clean = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3)).astype(np.float32), (0, 0), 2)
    clean = (clean - clean.mean()) * 3 + 128
    noisy = np.clip(clean + rng.normal(0, sigma, clean.shape), 0, 255).astype(np.uint8)
    return noisy, np.clip(clean, 0, 255).astype(np.uint8)


@pytest.fixture
def split(tmp_path: Path) -> Path:
    """data/split-like: test/<instance>/ whole images and a val patch store."""
    root = tmp_path / "split"
    for i, name in enumerate(INSTANCES):
        noisy, clean = noisy_clean(36, 52, seed=i)
        write_rgb8(root / "test" / name / NOISY_NAME, noisy)
        write_rgb8(root / "test" / name / GT_NAME, clean)
    pairs = [noisy_clean(32, 32, seed=10 + i) for i in range(5)]
    write_patch_store(
        root / "val", np.stack([n for n, _ in pairs]), np.stack([c for _, c in pairs])
    )
    return root


def params(**over) -> EvalParams:
    d = {
        "models": ["dncnn", "nafnet"],
        "tile": 32,
        "overlap": 8,
        "nlm": {"h": [2, 12], "h_color": [2, 12], "val_patches": 3, "template": 7, "search": 21},
        "strip": {"crop": 24, "zoom": 2},
    }
    return EvalParams.from_dict({**d, **over})


def test_scores_agree_with_skimage_on_the_uint8_output() -> None:
    noisy, clean = noisy_clean(40, 48, seed=0)
    torch.manual_seed(0)
    model = build_model("dncnn", TINY["dncnn"])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    out = denoise_image(noisy, TorchBackend(model), tile=32, overlap=8)
    assert out.dtype == np.uint8 and not np.array_equal(out, noisy)
    score = score_image(out, clean)
    assert score.psnr == pytest.approx(
        peak_signal_noise_ratio(clean, out, data_range=255), abs=1e-9
    )
    assert score.ssim == pytest.approx(ssim_3d_reference(out, clean), abs=1e-12)


def test_find_pairs_in_both_layouts(tmp_path: Path, split: Path) -> None:
    sidd = find_pairs(split / "test")
    assert [p.name for p in sidd] == INSTANCES
    assert sidd[1].instance is not None and sidd[1].instance.phone == "GP"
    noisy, clean = noisy_clean(8, 8, seed=0)
    write_rgb8(tmp_path / "flat" / "noisy" / "b.jpg", noisy)
    write_rgb8(tmp_path / "flat" / "clean" / "b.png", clean)
    write_rgb8(tmp_path / "flat" / "noisy" / "a.png", noisy)
    write_rgb8(tmp_path / "flat" / "clean" / "a.png", clean)
    flat = find_pairs(tmp_path / "flat")
    assert [(p.name, p.noisy.name, p.clean.name) for p in flat] == [
        ("a", "a.png", "a.png"),
        ("b", "b.jpg", "b.png"),
    ]
    assert read_pair(flat[1])[0].shape == (8, 8, 3)


def test_pair_errors_name_the_file(tmp_path: Path) -> None:
    noisy, clean = noisy_clean(8, 8, seed=0)
    write_rgb8(tmp_path / "noisy" / "only_noisy.png", noisy)
    (tmp_path / "clean").mkdir()
    with pytest.raises(DenoiseError, match=r"only_noisy.png: no image named only_noisy"):
        find_pairs(tmp_path)
    write_rgb8(tmp_path / "clean" / "only_noisy.png", clean[:4])
    (pair,) = find_pairs(tmp_path)
    with pytest.raises(DenoiseError, match=r"noisy/only_noisy.png: size 8x8 differs"):
        read_pair(pair)
    with pytest.raises(DenoiseError, match="no pairs found"):
        find_pairs(tmp_path / "noisy")


def test_nlm_tuning_picks_the_best_strength() -> None:
    pairs = [noisy_clean(32, 32, seed=s, sigma=20) for s in range(2)]
    noisy, clean = [n for n, _ in pairs], [c for _, c in pairs]
    h, hc, best = tune_nlm(noisy, clean, [1, 10], [1, 10], progress=False)
    for g in (1, 10):
        for gc in (1, 10):
            got = np.mean([psnr(nlm_denoise(n, h=g, h_color=gc), c) for n, c in pairs])
            assert got <= best + 1e-9
    assert best > np.mean([psnr(n, c) for n, c in pairs])  # NLM helps on sigma 20 noise
    assert (h, hc) != (1.0, 1.0)


def test_evaluate_writes_metrics_and_plots(tmp_path: Path, split: Path) -> None:
    models = tmp_path / "models"
    for name in ("dncnn", "nafnet"):
        save_tiny(models / f"{name}.pt", name, scale=0.01)
    out = tmp_path / "out"
    kw = {
        "metrics_path": out / "evaluate.json",
        "speed_path": out / "speed.json",
        "plots_dir": out / "plots",
        "progress": False,
    }
    ckpts = {n: models / f"{n}.pt" for n in ("dncnn", "nafnet")}
    stale = out / "plots" / ".strips.zdeh589y.tmp"  # what a SIGKILLed run leaves
    stale.mkdir(parents=True)
    (stale / "0001.png").write_bytes(b"half a strip")
    summary = evaluate(split, ckpts, params(), **kw)
    assert not stale.exists()

    written = json.loads((out / "evaluate.json").read_text())
    assert written == summary
    assert list(summary["methods"]) == ["noisy", "nlm", "dncnn", "nafnet"]
    assert summary["test_images"] == 3
    assert summary["images_per_group"]["by_phone"] == {"GP": 1, "S6": 2}
    assert summary["images_per_group"]["by_brightness"] == {"L": 1, "N": 2}
    assert summary["nlm"]["h"] in (2.0, 12.0) and summary["nlm"]["val_patches"] == 3
    pairs = [read_pair(p) for p in find_pairs(split / "test")]
    noisy_mean = np.mean([psnr(n, c) for n, c in pairs])
    assert summary["methods"]["noisy"]["psnr"] == pytest.approx(noisy_mean, abs=1e-4)
    for entry in summary["methods"].values():
        assert set(entry) == {"psnr", "ssim", "by_iso", "by_brightness", "by_phone"}
        assert set(entry["by_iso"]) == {"ISO<400", "ISO400-1599", "ISO>=1600"}
        assert 0 < entry["ssim"] <= 1
    iso_low = summary["methods"]["noisy"]["by_iso"]["ISO<400"]["psnr"]
    assert iso_low == pytest.approx(psnr(*pairs[0]), abs=1e-4)
    scored = {}
    for name, ckpt in ckpts.items():  # each column is its own network's output, tiled
        backend = open_backend("torch", ckpt)
        outputs = [denoise_image(n, backend, tile=32, overlap=8) for n, _ in pairs]
        scored[name] = np.mean([psnr(o, c) for o, (_, c) in zip(outputs, pairs, strict=True)])
        assert summary["methods"][name]["psnr"] == pytest.approx(scored[name], abs=1e-4)
    assert abs(scored["dncnn"] - scored["nafnet"]) > 1e-3  # a swap of the two would show

    speed = json.loads((out / "speed.json").read_text())
    assert set(speed["seconds_per_megapixel"]) == {"nlm", "dncnn", "nafnet"}
    with open(out / "plots" / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 4 and rows[0]["image"] == INSTANCES[0]
    strips = sorted(p.name for p in (out / "plots" / "strips").iterdir())
    assert strips == [f"{n}.png" for n in INSTANCES]
    strip = cv2.imread(str(out / "plots" / "strips" / strips[0]))
    assert strip.shape[1] > 5 * 24 * 2  # five zoomed panels side by side
    chart = cv2.imread(str(out / "plots" / "psnr_by_iso.png"))
    assert chart is not None and chart.shape[0] > 100

    # Deterministic: the same inputs give the same bytes (timings live in speed.json only).
    first = {
        p: p.read_bytes()
        for p in [
            out / "evaluate.json",
            out / "plots" / "per_image.csv",
            out / "plots" / "psnr_by_iso.png",
            out / "plots" / "strips" / strips[0],
        ]
    }
    evaluate(split, ckpts, params(), **kw)
    assert all(p.read_bytes() == data for p, data in first.items())


def test_missing_checkpoint_and_bad_params(tmp_path: Path, split: Path) -> None:
    with pytest.raises(DenoiseError, match=r"nafnet\.pt: checkpoint not found"):
        evaluate(
            split,
            {"nafnet": tmp_path / "nafnet.pt"},
            params(),
            progress=False,
            metrics_path=tmp_path / "m.json",
            speed_path=tmp_path / "s.json",
            plots_dir=tmp_path / "p",
        )
    with pytest.raises(DenoiseError, match=r"params\.yaml evaluate: missing nlm, overlap, strip"):
        EvalParams.from_dict({"models": ["nafnet"], "tile": 32})
    # the tiling is checked as params.yaml is read, not after the minutes the NLM grid takes
    for over, problem in (
        ({"overlap": 40}, "overlap 40 must be smaller than tile 32"),
        ({"tile": -5}, "tile -5 must be >= 0"),
        ({"models": ["foo"]}, r"models: unknown foo; known: dncnn, nafnet"),
    ):
        with pytest.raises(DenoiseError, match=rf"^params\.yaml evaluate.? ?{problem}"):
            params(**over)
    for key, value in (("crop", -5), ("crop", 0), ("zoom", 0)):
        strip = {"crop": 24, "zoom": 2, key: value}
        with pytest.raises(DenoiseError, match=rf"evaluate\.strip\.{key}: must be >= 1, got"):
            params(strip=strip)


def test_params_typos_are_errors_at_every_level() -> None:
    good = params()
    assert (good.nlm.h, good.nlm.template, good.strip.zoom) == ((2.0, 12.0), 7, 2)
    nlm = {"h": [2], "h_color": [2], "val_patches": 3, "template": 7, "search": 21}
    strip = {"crop": 24, "zoom": 2}
    for over, where in (
        ({"overlapp": 8}, "evaluate: unknown overlapp"),
        ({"nlm": {**nlm, "templte": 5}}, "evaluate.nlm: unknown templte"),
        ({"strip": {**strip, "zooom": 3}}, "evaluate.strip: unknown zooom"),
        ({"nlm": {**nlm, "h": "strong"}}, "evaluate.nlm.h: expected a list, got 'strong'"),
        ({"nlm": {**nlm, "h": [0, 5]}}, r"evaluate.nlm: h \[0.0, 5.0\] .* positive and finite"),
        ({"nlm": {**nlm, "h_color": [math.nan]}}, r"evaluate.nlm: h .* positive and finite"),
        ({"nlm": {**nlm, "search": 0}}, "evaluate.nlm: template 7 and search 0 must be odd"),
        ({"nlm": {**nlm, "template": 6}}, "evaluate.nlm: template 6 and search 21 must be odd"),
        ({"nlm": {**nlm, "search": 5}}, "evaluate.nlm: .* search >= template"),
    ):
        with pytest.raises(DenoiseError, match=rf"params\.yaml {where}"):
            params(**over)


def _flat_pairs_root(tmp_path: Path, problem: str) -> tuple[Path, Path, str]:
    """A noisy/ + clean/ folder with one ``problem``; returns (root, culprit, detail)."""
    noisy, clean = noisy_clean(8, 8, seed=0)
    root = tmp_path / "pairs"
    root.mkdir()
    if problem in ("duplicate_noisy", "duplicate_clean"):
        side = "noisy" if problem == "duplicate_noisy" else "clean"
        write_rgb8(root / "noisy" / "a.png", noisy)
        write_rgb8(root / "clean" / "a.png", clean)
        write_rgb8(root / side / "a.jpg", noisy)  # sorts first, so a.png is the clash
        return root, root / side / "a.png", "same name as a.jpg"
    if problem == "no_clean_dir":
        write_rgb8(root / "noisy" / "a.png", noisy)
        return root, root / "clean", "missing"
    if problem == "no_noisy_dir":
        write_rgb8(root / "clean" / "a.png", clean)
        return root, root / "noisy", "missing"
    if problem == "empty_dirs":
        (root / "noisy").mkdir()
        (root / "noisy" / ".DS_Store").write_bytes(b"hidden files are not images")
        (root / "clean").mkdir()
        return root, root / "noisy", "no images"
    if problem == "heic":  # a phone's HEIC beside its PNG partner: the type is the problem
        write_rgb8(root / "clean" / "IMG_2.png", clean)
        (root / "noisy").mkdir()
        (root / "noisy" / "IMG_2.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic")
        (root / "noisy" / "IMG_2.AAE").write_text("<plist/>")  # an iPhone's edit sidecar
        detail = "(IMG_2.AAE, IMG_2.HEIC: not a type denoise reads)"
        return root, root / "clean" / "IMG_2.png", detail
    if problem == "unreadable":
        write_rgb8(root / "noisy" / "a.png", noisy)
        write_rgb8(root / "clean" / "a.png", clean)
        return root, root / "clean", "cannot read (Permission denied)"
    assert problem == "empty_root"
    return root, root, "no pairs found"


@pytest.mark.parametrize(
    "problem",
    [
        "duplicate_noisy",
        "duplicate_clean",
        "no_clean_dir",
        "no_noisy_dir",
        "empty_dirs",
        "empty_root",
        "heic",
        "unreadable",
    ],
)
def test_find_pairs_errors_name_the_folder_or_file(
    tmp_path: Path, problem: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, culprit, detail = _flat_pairs_root(tmp_path, problem)
    if problem == "unreadable":  # chmod does not stop root, who runs CI
        listing = Path.iterdir

        def iterdir(self: Path):
            if self == culprit:
                raise PermissionError(13, "Permission denied", str(self))
            return listing(self)

        monkeypatch.setattr(Path, "iterdir", iterdir)
    with pytest.raises(DenoiseError) as err:
        find_pairs(root)
    message = str(err.value)
    assert message.startswith(f"{culprit}: "), message
    assert detail in message


def test_find_pairs_ignores_files_that_are_not_images(tmp_path: Path) -> None:
    noisy, clean = noisy_clean(8, 8, seed=0)
    write_rgb8(tmp_path / "noisy" / "a.png", noisy)
    write_rgb8(tmp_path / "clean" / "a.png", clean)
    (tmp_path / "noisy" / "README.txt").write_text("how these were shot")
    (tmp_path / "clean" / "Thumbs.db").write_bytes(b"\x00")
    # Netpbm files are images like any other (16-bit PPM is a common raw-converter output)
    cv2.imwrite(str(tmp_path / "noisy" / "b.ppm"), (noisy.astype(np.uint16) * 257)[..., ::-1])
    write_rgb8(tmp_path / "clean" / "b.png", clean)
    found = find_pairs(tmp_path)
    assert [p.name for p in found] == ["a", "b"]
    assert np.array_equal(read_pair(found[1])[0], noisy)


def test_a_size_mismatch_after_an_exif_turn_says_so(tmp_path: Path) -> None:
    """Both files are 12x8 on disk; the noisy one is tagged to be shown turned (8x12): the
    message gives the sizes compared and why they differ from what a file browser shows."""
    from PIL import Image

    noisy, clean = noisy_clean(8, 12, seed=0)
    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "noisy").mkdir()
    Image.fromarray(noisy).save(tmp_path / "noisy" / "a.jpg", exif=exif.tobytes())
    write_rgb8(tmp_path / "clean" / "a.png", clean)
    with pytest.raises(DenoiseError) as err:
        read_pair(find_pairs(tmp_path)[0])
    assert str(err.value) == (
        f"{tmp_path / 'noisy' / 'a.jpg'}: size 8x12 after its EXIF orientation 6 differs "
        f"from {tmp_path / 'clean' / 'a.png'} (12x8)"
    )


def test_nlm_baseline_score_recomputed_with_opencv_and_skimage(
    tmp_path: Path, split: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The evaluate stage's NLM record, redone from the files with OpenCV (BGR) and skimage."""

    records = []
    real_csv = evaluate_module._per_image_csv

    def spy(recs):
        records.extend(recs)  # the unrounded per-image records the stage writes
        return real_csv(recs)

    monkeypatch.setattr(evaluate_module, "_per_image_csv", spy)
    nlm = {"h": [2, 12], "h_color": [2, 12], "val_patches": 3, "template": 5, "search": 11}
    out = tmp_path / "out"
    summary = evaluate(
        split,
        {},
        params(models=[], nlm=nlm),
        metrics_path=out / "evaluate.json",
        speed_path=out / "speed.json",
        plots_dir=out / "plots",
        progress=False,
    )
    h, hc = summary["nlm"]["h"], summary["nlm"]["h_color"]
    nlm_records = {r.image: r.score.psnr for r in records if r.method == "nlm"}
    assert sorted(nlm_records) == INSTANCES
    for name in INSTANCES:
        noisy = cv2.imread(str(split / "test" / name / NOISY_NAME))
        clean = cv2.imread(str(split / "test" / name / GT_NAME))
        ref = peak_signal_noise_ratio(
            clean, cv2.fastNlMeansDenoisingColored(noisy, None, h, hc, 5, 11), data_range=255
        )
        assert nlm_records[name] == pytest.approx(ref, abs=1e-6)
        assert abs(ref - peak_signal_noise_ratio(clean, noisy, data_range=255)) > 0.1
        # template/search reach OpenCV: the defaults (7, 21) would score differently
        default = cv2.fastNlMeansDenoisingColored(noisy, None, h, hc, 7, 21)
        assert abs(peak_signal_noise_ratio(clean, default, data_range=255) - ref) > 1e-3

    # per_image.csv (4 decimals) averages to the JSON means, per method and per phone.
    with open(out / "plots" / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["method"] for r in rows} == {"noisy", "nlm"}
    for method, entry in summary["methods"].items():
        mine = [r for r in rows if r["method"] == method]
        assert len(mine) == len(INSTANCES)
        for metric in ("psnr", "ssim"):
            csv_mean = np.mean([float(r[metric]) for r in mine])
            assert csv_mean == pytest.approx(entry[metric], abs=1e-4)
        for phone, means in entry["by_phone"].items():
            csv_mean = np.mean([float(r["psnr"]) for r in mine if r["by_phone"] == phone])
            assert csv_mean == pytest.approx(means["psnr"], abs=1e-4)


def test_the_iso_chart_has_every_band(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bar chart's groups come from the one list of ISO bands, whatever it holds."""
    bands = (("ISO<400", 400), ("ISO400-3199", 3200), ("ISO>=3200", float("inf")))
    monkeypatch.setattr(sidd_layout, "ISO_BANDS", bands)
    by_iso = {label: {"psnr": 30.0 + i} for i, (label, _) in enumerate(bands)}
    chart = evaluate_module._psnr_by_iso({"noisy": {"psnr": 31.0, "by_iso": by_iso}})
    assert list(chart["noisy"]) == ["all", "ISO<400", "ISO400-3199", "ISO>=3200"]
    assert (
        sidd_layout.iso_band(3199) == "ISO400-3199" and sidd_layout.iso_band(10000) == "ISO>=3200"
    )
