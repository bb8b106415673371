"""`denoise score` and `denoise run` through typer's CliRunner."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio
from tiny_models import tiny_model
from typer.testing import CliRunner

from denoise.checkpoint import save_checkpoint
from denoise.cli import DEFAULT_OVERLAP, DEFAULT_TILE, app
from denoise.data import sidd_blocks
from denoise.data.sidd_layout import GT_NAME, NOISY_NAME
from denoise.fileio import read_rgb8, write_rgb8
from denoise.infer import denoise_image, open_backend
from denoise.metrics import psnr

CONFIG = {"nb": 4, "nc": 8}
runner = CliRunner()


def pair(seed: int, h: int = 24, w: int = 30) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    clean = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3)).astype(np.uint8), (5, 5), 0)
    noisy = np.clip(clean + rng.normal(0, 15, clean.shape), 0, 255).astype(np.uint8)
    return noisy, clean


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny DnCNN as a checkpoint and as ONNX, perturbed so it changes the image."""
    root = tmp_path_factory.mktemp("models")
    model = tiny_model("dncnn", 0.01, config=CONFIG)
    save_checkpoint(root / "dncnn.pt", "dncnn", CONFIG, model.state_dict())
    torch.onnx.export(
        model,
        torch.rand(1, 3, 16, 16),
        str(root / "dncnn.onnx"),
        dynamo=False,
        input_names=["input"],
        output_names=["output"],
        opset_version=17,
        dynamic_axes={"input": {0: "n", 2: "h", 3: "w"}},
    )
    return {"pt": root / "dncnn.pt", "onnx": root / "dncnn.onnx"}


def flat_pairs(root: Path, names: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    pairs = []
    for i, name in enumerate(names):
        noisy, clean = pair(i)
        write_rgb8(root / "noisy" / name, noisy)
        write_rgb8(root / "clean" / f"{Path(name).stem}.png", clean)
        pairs.append((read_rgb8(root / "noisy" / name), clean))
    return pairs


def test_score_noisy_clean_folders_with_a_checkpoint(tmp_path: Path, model_files) -> None:
    pairs = flat_pairs(tmp_path / "pairs", ["a.png", "b.jpg"])  # JPEG noisy inputs work too
    out = tmp_path / "report.json"
    result = runner.invoke(
        app,
        [
            "score",
            "--pairs",
            str(tmp_path / "pairs"),
            "--model",
            str(model_files["pt"]),
            "--json",
            str(out),
            "--tile",
            "16",
            "--overlap",
            "4",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "a " in result.output and "b " in result.output and "mean" in result.output
    report = json.loads(out.read_text())
    assert set(report) == {"input", "output", "images", "failed"} and report["failed"] == []
    assert [r["name"] for r in report["images"]] == ["a", "b"]
    assert set(report["images"][0]) == {
        "name",
        "input_psnr",
        "output_psnr",
        "input_ssim",
        "output_ssim",
    }
    assert report["input"]["psnr"] == pytest.approx(
        np.mean([psnr(n, c) for n, c in pairs]), abs=1e-4
    )
    assert report["output"]["psnr"] != report["input"]["psnr"]


def test_score_sidd_layout_with_onnx_matches_the_checkpoint(tmp_path: Path, model_files) -> None:
    for i, name in enumerate(["0001_001_S6_00100_00060_3200_L", "0002_002_GP_00800_00350_5500_N"]):
        noisy, clean = pair(i)
        write_rgb8(tmp_path / "sidd" / "Data" / name / NOISY_NAME, noisy)
        write_rgb8(tmp_path / "sidd" / "Data" / name / GT_NAME, clean)
    reports = []
    for kind in ("pt", "onnx"):
        out = tmp_path / f"{kind}.json"
        result = runner.invoke(
            app,
            [
                "score",
                "--pairs",
                str(tmp_path / "sidd"),
                "--model",
                str(model_files[kind]),
                "--json",
                str(out),
            ],
        )
        assert result.exit_code == 0, result.output
        reports.append(json.loads(out.read_text()))
    assert len(reports[0]["images"]) == 2
    assert reports[1]["output"]["psnr"] == pytest.approx(reports[0]["output"]["psnr"], abs=0.01)


@pytest.mark.parametrize(
    ("args", "tile", "overlap"),
    [
        ([], DEFAULT_TILE, DEFAULT_OVERLAP),
        (["--tile", "16", "--overlap", "4"], 16, 4),
        (["--tile", "40"], 40, 10),  # a small tile alone: a quarter of it, not the default 32
    ],
    ids=["default-tiles", "16px-tiles", "40px-tile-alone"],
)
def test_score_json_output_psnr_is_skimage_psnr_of_denoise_image(
    tmp_path: Path, model_files, args: list[str], tile: int, overlap: int
) -> None:
    pairs = flat_pairs(tmp_path / "pairs", ["a.png", "b.png"])
    out = tmp_path / "report.json"
    cmd = ["score", "--pairs", str(tmp_path / "pairs"), "--model", str(model_files["pt"])]
    result = runner.invoke(app, [*cmd, "--json", str(out), *args])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    backend = open_backend("torch", model_files["pt"])
    refs = []
    for (noisy, clean), row in zip(pairs, report["images"], strict=True):
        denoised = denoise_image(noisy, backend, tile=tile, overlap=overlap)
        refs.append(peak_signal_noise_ratio(clean, denoised, data_range=255))
        assert row["output_psnr"] == pytest.approx(refs[-1], abs=5e-5)  # JSON keeps 4 decimals
        assert abs(refs[-1] - peak_signal_noise_ratio(clean, noisy, data_range=255)) > 0.01
        if tile < min(noisy.shape[:2]):
            # The tiles matter: one whole-image pass scores outside the tolerance above.
            whole = denoise_image(noisy, backend, tile=0, overlap=0)
            assert abs(peak_signal_noise_ratio(clean, whole, data_range=255) - refs[-1]) > 1e-4
    assert report["output"]["psnr"] == pytest.approx(np.mean(refs), abs=5e-5)


@pytest.mark.parametrize(
    "problem",
    [
        "unmatched",
        "json",
        "json-slash",
        "json-under-a-file",
        "json-is-the-model",
        "json-is-an-input",
        "tile",
    ],
)
def test_score_errors_name_the_file(tmp_path: Path, model_files, problem: str) -> None:
    root = tmp_path / "pairs"
    flat_pairs(root, ["a.png"])
    model = tmp_path / "model.pt"  # a copy: the JSON must not land on the shared one
    model.write_bytes(model_files["pt"].read_bytes())
    files_before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    extra: list[str] = []
    if problem == "json":  # refused before any scoring: no table printed
        (tmp_path / "scores").mkdir()
        extra, culprit = ["--json", str(tmp_path / "scores")], "scores: is a folder"
    elif problem == "json-slash":  # a folder that does not exist yet: not a file named so
        extra, culprit = ["--json", f"{tmp_path / 'new'}/"], "new/: is a folder"
    elif problem in ("json-is-the-model", "json-is-an-input"):  # a slip of the shell
        target = model if problem == "json-is-the-model" else root / "noisy" / "a.png"
        extra, culprit = ["--json", str(target)], f"{target}: exists and is not a JSON file"
    elif problem == "json-under-a-file":
        (tmp_path / "a.png").write_bytes(b"")
        extra, culprit = ["--json", str(tmp_path / "a.png" / "s.json")], "a.png"
    elif problem == "tile":
        extra, culprit = ["--tile", "1", "--overlap", "0"], "tile 1 is too small"
    else:
        write_rgb8(root / "noisy" / "lonely.png", pair(5)[0])
        culprit = "lonely.png"
    cmd = ["score", "--pairs", str(root), "--model", str(model), *extra]
    result = runner.invoke(app, cmd)
    assert result.exit_code != 0
    assert culprit in result.output and "error:" in result.output
    assert "Traceback" not in result.output
    assert "PSNR" not in result.output  # no scores: the error came first
    assert all(p.read_bytes() == data for p, data in files_before.items())
    assert not (tmp_path / "new").exists()


def test_a_bad_pair_is_named_and_skipped_the_others_scored(tmp_path: Path, model_files) -> None:
    """Pairs are read as they are scored: a bad one found late does not cost the scores of
    the pairs before and after it (hours of them on big photos); the exit code says so."""
    root = tmp_path / "pairs"
    flat_pairs(root, ["a.png", "z.png"])
    write_rgb8(root / "noisy" / "m_small.png", pair(5, h=10)[0])  # sorts between a and z
    write_rgb8(root / "clean" / "m_small.png", pair(5)[1])
    (root / "noisy" / "n_broken.png").write_bytes(b"\x89PNG not really")
    write_rgb8(root / "clean" / "n_broken.png", pair(5)[1])
    out = tmp_path / "report.json"
    cmd = ["score", "--pairs", str(root), "--model", str(model_files["pt"]), "--json", str(out)]
    result = runner.invoke(app, cmd)
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3, result.output
    assert f"{root / 'noisy' / 'm_small.png'}: size 30x10 differs from" in errors[0]
    assert f"{root / 'noisy' / 'n_broken.png'}: not a readable image" in errors[1]
    assert errors[2] == "error: 2 of 4 pairs could not be scored (named above)"
    report = json.loads(out.read_text())
    assert [r["name"] for r in report["images"]] == ["a", "z"]
    assert [f["name"] for f in report["failed"]] == ["m_small", "n_broken"]
    assert "Traceback" not in result.output


def test_run_writes_outputs_and_skips_a_bad_file(tmp_path: Path, model_files) -> None:
    noisy, _ = pair(0)
    write_rgb8(tmp_path / "one.png", noisy)
    write_rgb8(tmp_path / "two.jpg", noisy)
    deep = np.clip(noisy.astype(np.uint16) * 257, 0, 65535).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), deep[:, :, ::-1])
    (tmp_path / "bad.png").write_bytes(b"garbage")
    args = [
        "run",
        str(tmp_path / "one.png"),
        str(tmp_path / "bad.png"),
        str(tmp_path / "two.jpg"),
        str(tmp_path / "deep.png"),
        "--model",
        str(model_files["pt"]),
        "--tile",
        "16",
        "--overlap",
        "4",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "bad.png" in result.output and "1 of 4" in result.output
    assert result.stdout.splitlines() == [
        str(tmp_path / name)
        for name in ("one_denoised.png", "two_denoised.jpg", "deep_denoised.png")
    ]
    assert not (tmp_path / "bad_denoised.png").exists()
    out = read_rgb8(tmp_path / "one_denoised.png")
    assert out.shape == noisy.shape and not np.array_equal(out, noisy)
    assert cv2.imread(str(tmp_path / "two_denoised.jpg")) is not None
    assert cv2.imread(str(tmp_path / "deep_denoised.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    assert read_rgb8(tmp_path / "one.png").tolist() == noisy.tolist()  # input untouched

    # A second run refuses to replace the outputs unless asked to.
    again = runner.invoke(app, args[:2] + args[5:])
    assert again.exit_code == 1 and "--overwrite" in again.output
    (tmp_path / "one_denoised.png").write_bytes(b"stale")
    forced = runner.invoke(app, [*args[:2], *args[5:], "--overwrite"])
    assert forced.exit_code == 0, forced.output
    assert np.array_equal(read_rgb8(tmp_path / "one_denoised.png"), out)  # really replaced

    # A run cut short is finished with --skip-existing: only the missing output is written.
    (tmp_path / "two_denoised.jpg").unlink()
    finish = runner.invoke(app, [*args, "--skip-existing"])
    assert finish.exit_code == 1  # bad.png is still bad
    assert finish.stdout.splitlines() == [str(tmp_path / "two_denoised.jpg")]
    assert "2 inputs passed over: their outputs exist" in finish.stderr
    assert "1 of 4 inputs failed" in finish.stderr
    both = runner.invoke(app, [*args, "--skip-existing", "--overwrite"])
    assert both.exit_code == 1 and "--overwrite and --skip-existing: choose one" in both.stderr


def test_run_into_a_folder_with_the_onnx_backend(tmp_path: Path, model_files) -> None:
    write_rgb8(tmp_path / "in" / "x.png", pair(1)[0])
    result = runner.invoke(
        app,
        [
            "run",
            str(tmp_path / "in"),
            "-o",
            str(tmp_path / "out"),
            "--model",
            str(model_files["onnx"]),
        ],
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x_denoised.png"]


def test_run_without_a_model_says_how_to_get_one(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")  # the project: not this checkout
    write_rgb8(tmp_path / "x.png", pair(1)[0])
    result = runner.invoke(app, ["run", "x.png"])
    assert result.exit_code == 1 and "--model" in result.output
    assert "no params.yaml here or in a folder above" in result.output
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    result = runner.invoke(app, ["run", "x.png"])
    assert result.exit_code == 1
    assert f"no `model:` in {tmp_path / 'params.yaml'}" in result.output
    (tmp_path / "params.yaml").write_text("model: nafnet\n")
    result = runner.invoke(app, ["run", "x.png"])
    assert result.exit_code == 1 and "models/nafnet.pt" in result.output


def test_run_refuses_an_empty_argument_instead_of_the_current_folder(
    tmp_path: Path, monkeypatch, model_files
) -> None:
    monkeypatch.chdir(tmp_path)
    write_rgb8(tmp_path / "x.png", pair(1)[0])
    result = runner.invoke(app, ["run", "", "--model", str(model_files["pt"])])
    assert result.exit_code == 1 and '"": an empty input path' in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]  # nothing denoised
    result = runner.invoke(app, ["run", "x.png", "-o", "", "--model", str(model_files["pt"])])
    assert result.exit_code == 1 and "-o/--out-dir is empty" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]
    result = runner.invoke(app, ["run", ".", "--model", str(model_files["pt"])])
    assert result.exit_code == 0 and (tmp_path / "x_denoised.png").is_file()  # "." still works


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["score", "--pairs", "", "--model", "{pt}"], "--pairs"),
        (["score", "--pairs", "{tmp}", "--model", ""], "--model"),
        (["score", "--pairs", "{tmp}", "--model", "{pt}", "--json", ""], "--json"),
        (["run", "x.png", "--model", ""], "--model"),
        (["serve", "--repo", ""], "--repo"),
        (["serve", "--binary", ""], "--binary"),
        (["bench", "--json", ""], "--json"),
        (["bench", "--test-dir", ""], "--test-dir"),
        (["bench", "--model", ""], "--model"),
    ],
    ids=lambda v: "-".join(v) if isinstance(v, list) else v,
)
def test_an_empty_path_option_is_refused_not_taken_as_the_current_folder(
    tmp_path: Path, model_files, args: list[str], flag: str
) -> None:
    """An unset shell variable (``--json "$OUT"``): Path("") would be ".", the working folder."""
    filled = [a.format(pt=model_files["pt"], tmp=tmp_path) for a in args]
    result = runner.invoke(app, filled)
    assert result.exit_code == 1
    assert result.output.strip() == f"error: {flag} is empty (an unset variable?)"


def test_json_into_a_device_or_pipe_is_written_through_not_replaced(
    tmp_path: Path, model_files
) -> None:
    """``--json /dev/stdout`` (here a link to /dev/null): the atomic write replaced the link,
    or as root /dev/stdout itself, with a regular file."""
    flat_pairs(tmp_path / "pairs", ["a.png"])
    link = tmp_path / "out.json"
    link.symlink_to("/dev/null")
    args = ["score", "--pairs", str(tmp_path / "pairs"), "--model", str(model_files["pt"])]
    result = runner.invoke(app, [*args, "--json", str(link)])
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and link.is_char_device()


def test_json_into_stdout_sent_to_a_file_follows_the_table(tmp_path: Path, model_files) -> None:
    """``--json /dev/stdout > out.txt`` (a link here, to this process's fd 1): the link was
    replaced by a file (as root, /dev/stdout itself), and opened anew it would cut out.txt."""
    flat_pairs(tmp_path / "pairs", ["a.png"])
    link = tmp_path / "stdout.json"
    link.symlink_to("/proc/self/fd/1")
    out = tmp_path / "out.txt"
    cmd = [sys.executable, "-m", "denoise", "score", "--pairs", str(tmp_path / "pairs")]
    with out.open("w") as stdout:
        subprocess.run(
            [*cmd, "--model", str(model_files["pt"]), "--json", str(link)],
            stdout=stdout,
            check=True,
            timeout=120,
        )
    text = out.read_text()
    table, _, rest = text.partition("\n{")
    assert "PSNR" in table and json.loads("{" + rest)["output"]["psnr"] > 0
    assert link.is_symlink()


def test_json_through_a_link_to_a_model_is_refused_like_the_model(
    tmp_path: Path, model_files
) -> None:
    """A link is not written through: one to the command's model (as DVC's symlink cache type
    makes models/nafnet.pt) would have had the model overwritten with JSON."""
    flat_pairs(tmp_path / "pairs", ["a.png"])
    model = tmp_path / "model.pt"
    model.write_bytes(model_files["pt"].read_bytes())
    link = tmp_path / "scores.json"
    link.symlink_to(model)
    args = ["score", "--pairs", str(tmp_path / "pairs"), "--model", str(model)]
    result = runner.invoke(app, [*args, "--json", str(link)])
    assert result.exit_code == 1 and "exists and is not a JSON file" in result.output
    assert model.read_bytes() == model_files["pt"].read_bytes()


def test_serve_names_its_port_options(tmp_path: Path) -> None:
    result = runner.invoke(app, ["serve", "--http-port", "70000"])
    assert result.exit_code == 1
    assert result.output.startswith("error: --http-port and --grpc-port must be 1-65535")


def test_run_refuses_bad_options_before_loading_the_model(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pt")  # loading it would be the first error otherwise
    (tmp_path / "file").write_text("")
    for args, message in (
        (["-o", str(tmp_path / "file")], "output folder is a file"),
        (["--tile", "64", "--overlap", "64"], "--overlap 64 must be smaller than --tile 64"),
        (["--tile", "1", "--overlap", "0"], "--tile 1 is too small: at least 16"),
        (["--tile", "8"], "--tile 8 is too small: at least 16"),  # not the default overlap's
        (["--tile", "64", "--overlap", "33"], "--overlap 33 must be at most half of --tile 64"),
        (["--backend", "bogus"], "unknown backend 'bogus'"),
    ):
        result = runner.invoke(app, ["run", "x.png", "--model", missing, *args])
        assert result.exit_code == 1 and message in result.output, (args, result.output)
    result = runner.invoke(app, ["run", "x.png", "--backend", "bogus"])  # no --model either
    assert result.exit_code == 1 and "unknown backend 'bogus'" in result.output


def test_python_dash_m_runs_the_same_command() -> None:
    import subprocess
    import sys

    from denoise import __version__

    proc = subprocess.run(
        [sys.executable, "-m", "denoise", "version"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0 and proc.stdout.strip() == __version__


def write_blocks(root: Path, images: int = 2, per_image: int = 3, size: int = 24) -> tuple:
    """SIDD's validation-block files in miniature: (images, blocks, H, W, 3) uint8 each."""
    from scipy.io import savemat

    shape = (images, per_image, size, size, 3)
    pairs = [pair(i, size, size) for i in range(images * per_image)]
    noisy = np.stack([n for n, _ in pairs]).reshape(shape)
    clean = np.stack([c for _, c in pairs]).reshape(shape)
    root.mkdir(parents=True, exist_ok=True)
    savemat(root / sidd_blocks.NOISY_MAT, {"ValidationNoisyBlocksSrgb": noisy})
    savemat(root / sidd_blocks.GT_MAT, {"ValidationGtBlocksSrgb": clean})
    return noisy, clean


def test_score_sidd_validation_blocks(tmp_path: Path, model_files) -> None:
    noisy, clean = write_blocks(tmp_path / "val")
    out = tmp_path / "report.json"
    cmd = ["score", "--pairs", str(tmp_path / "val"), "--model", str(model_files["pt"])]
    result = runner.invoke(app, [*cmd, "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert [r["name"] for r in report["images"]] == [
        f"{i:02d}_{b:02d}" for i in range(2) for b in range(3)
    ]
    backend = open_backend("torch", model_files["pt"])
    blocks = zip(noisy.reshape(-1, 24, 24, 3), clean.reshape(-1, 24, 24, 3), strict=True)
    expected = []
    for row, (n, c) in zip(report["images"], blocks, strict=True):
        # 24-px blocks are smaller than the default tile: each is denoised whole
        out = denoise_image(n, backend, tile=DEFAULT_TILE, overlap=DEFAULT_OVERLAP)
        expected.append(peak_signal_noise_ratio(c, out, data_range=255))
        before = peak_signal_noise_ratio(c, n, data_range=255)
        assert row["input_psnr"] == pytest.approx(before, abs=5e-5)
        assert row["output_psnr"] == pytest.approx(expected[-1], abs=5e-5)
    assert report["output"]["psnr"] == pytest.approx(np.mean(expected), abs=5e-5)


@pytest.mark.parametrize(
    "problem", ["one file", "dtype", "variable", "shapes", "empty file", "cut file", "mixed"]
)
def test_bad_validation_blocks_are_one_clear_error(
    tmp_path: Path, model_files, problem: str
) -> None:
    from scipy.io import savemat

    root = tmp_path / "val"
    noisy, _ = write_blocks(root)
    gt = root / sidd_blocks.GT_MAT
    gt_re, root_re = re.escape(str(gt)), re.escape(str(root))
    noisy_re = re.escape(str(root / sidd_blocks.NOISY_MAT))
    expected = {
        "one file": rf"{gt_re}: missing \(the noisy and the GT block files go together\)",
        "dtype": rf"{gt_re}: ValidationGtBlocksSrgb is float64 \(2, 3, 24, 24, 3\); expected uint8 "
        r"\(images, blocks, height, width, 3\), not empty",
        "variable": rf"{gt_re}: has no variable 'ValidationGtBlocksSrgb'",
        "shapes": rf"{noisy_re}: shape \(2, 3, 24, 24, 3\) differs from "
        rf"{gt_re} \(\(1, 3, 24, 24, 3\)\)",
        "empty file": rf"{gt_re}: not a readable MATLAB file \(.+\)$",
        "cut file": rf"{gt_re}: not a readable MATLAB file \(.+\)$",
        "mixed": rf"{root_re}: holds SIDD validation blocks \(\*\.mat\) and noisy/ folders; point "
        "--pairs at a folder with one of them$",
    }[problem]
    if problem == "one file":
        gt.unlink()
    elif problem == "empty file":
        gt.write_bytes(b"")
    elif problem == "cut file":  # scipy raises IndexError for a header cut this short
        gt.write_bytes(gt.read_bytes()[:64])
    elif problem == "mixed":
        (root / "noisy").mkdir()
    else:
        value = {
            "dtype": noisy.astype(np.float64),
            "variable": noisy,
            "shapes": noisy[:1],
        }[problem]
        savemat(gt, {"Other" if problem == "variable" else "ValidationGtBlocksSrgb": value})
    cmd = ["score", "--pairs", str(root), "--model", str(model_files["pt"])]
    result = runner.invoke(app, cmd)
    assert result.exit_code == 1
    assert re.fullmatch(rf"error: {expected}", result.output.strip()), result.output


def test_a_missing_model_is_reported_before_the_data_is_read(tmp_path: Path) -> None:
    root = tmp_path / "val"
    write_blocks(root)
    (root / sidd_blocks.GT_MAT).write_bytes(b"")  # would be an error too, but later
    model = tmp_path / "nafnet.pt"
    result = runner.invoke(app, ["score", "--pairs", str(root), "--model", str(model)])
    assert result.exit_code == 1
    assert result.output.strip() == f"error: {model}: model file not found"
