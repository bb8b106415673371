"""The training loop on tiny models and a tiny patch store: checkpoints, resume, DDP, errors."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import itertools
import os
import shutil
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from tiny_models import TINY

import denoise.train as train_module
from denoise.checkpoint import load_model, read_checkpoint
from denoise.data.patch_store import RandomCropDataset, read_patch_store, write_patch_store
from denoise.errors import DenoiseError
from denoise.train import train_model
from denoise.training import distributed, resume, tracking
from denoise.training.config import TrainConfig
from denoise.training.recipe import LOSSES
from denoise.training.sampling import EpochIndexed, IterationBatchSampler

REPO = Path(__file__).resolve().parents[1]
TINY_ARCH = {  # smaller than tiny_models.TINY: these train
    "nafnet": {**TINY["nafnet"], "width": 4, "enc_blk_nums": [1], "dec_blk_nums": [1]},
    "dncnn": {**TINY["dncnn"], "nc": 8, "nb": 4},
}


def _store(path: Path, n: int, seed: int) -> None:
    """Blocky clean patches plus Gaussian noise: learnable in a few iterations."""
    rng = np.random.default_rng(seed)
    clean = np.kron(rng.random((n, 6, 6, 3)), np.ones((1, 4, 4, 1)))
    noisy = clean + rng.normal(0, 0.1, clean.shape)
    to8 = lambda a: np.round(np.clip(a, 0, 1) * 255).astype(np.uint8)  # noqa: E731
    write_patch_store(path, to8(noisy), to8(clean))


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("split")
    _store(root / "train", 10, 0)
    _store(root / "val", 3, 1)
    return root


#: A complete ``train`` section for tiny runs (TrainConfig has no defaults: params.yaml has them).
TINY_SHARED = {
    "seed": 0,
    "device": "cpu",
    "amp": True,
    "num_workers": 0,
    "checkpoint_every": 4,
    "log_every": 1,
    "val_crop": 16,
    "val_patches": 0,
    "val_batch": 2,
}


def _tiny_section(model: str) -> dict[str, object]:
    return {
        "arch": TINY_ARCH[model],
        "crop": 12,
        "batch_size": 4,
        "iters": 12,
        "val_every": 4,
        "optimizer": "adamw",
        "lr": 1e-3,
        "betas": [0.9, 0.9],
        "weight_decay": 0.0,
        "eta_min": 1e-7,
        "loss": "l1" if model == "dncnn" else "psnr",
        "grad_clip": 0.0,
    }


def _cfg(model: str = "nafnet", **kw: object) -> TrainConfig:
    cfg = TrainConfig.from_params({**TINY_SHARED, model: _tiny_section(model)}, model)
    return dataclasses.replace(cfg, **kw)  # type: ignore[arg-type]


def test_the_resume_fingerprint_holds_what_the_outputs_depend_on() -> None:
    """A resume state is used only by a run with the same fingerprint: the logging interval
    shapes the curves, so it is in; where checkpoints go and how data is loaded are not."""
    base = _cfg("dncnn")
    assert _cfg("dncnn", log_every=2).fingerprint_fields() != base.fingerprint_fields()
    assert _cfg("dncnn", lr=base.lr / 2).fingerprint_fields() != base.fingerprint_fields()
    # the batch of a validation moves its scores in the last digits, enough to change the best
    assert _cfg("dncnn", val_batch=1).fingerprint_fields() != base.fingerprint_fields()
    same = _cfg("dncnn", num_workers=2, checkpoint_every=6)
    assert same.fingerprint_fields() == base.fingerprint_fields()


def _run(cfg: TrainConfig, split: Path, out: Path) -> dict:
    train_model(
        cfg,
        split / "train",
        split / "val",
        out / "model.pt",
        resume_path=out / "ckpt" / "last.pt",
        live_dir=out / "live",
        progress=False,
    )
    return read_checkpoint(out / "model.pt")


def _tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_writes_best_weights_and_dvclive_history(split: Path, tmp_path: Path) -> None:
    ckpt = _run(_cfg(), split, tmp_path)
    live = tmp_path / "live"
    val = _tsv(live / "plots" / "metrics" / "val" / "psnr.tsv")
    assert [int(r["step"]) for r in val] == [4, 8, 12]
    best = max(val, key=lambda r: float(r["psnr"]))
    assert ckpt["meta"]["iteration"] == int(best["step"])
    assert ckpt["meta"]["val_psnr"] == pytest.approx(float(best["psnr"]))
    assert ckpt["model"] == "nafnet" and ckpt["config"] == TINY_ARCH["nafnet"]
    assert len(_tsv(live / "plots" / "metrics" / "train" / "loss.tsv")) == 12
    lrs = [float(r["lr"]) for r in _tsv(live / "plots" / "metrics" / "train" / "lr.tsv")]
    # Each point is the rate its iteration used: the first the base rate, then the cosine
    # stepped per iteration, ending one step above its floor (the floor follows the last step).
    assert lrs[0] == pytest.approx(1e-3) and all(a > b for a, b in itertools.pairwise(lrs))
    assert lrs[-1] > 1e-7
    strips = sorted((live / "plots" / "images" / "val").glob("*.png"))
    assert [p.stem for p in strips] == ["0000004", "0000008", "0000012"]
    assert not (tmp_path / "ckpt" / "last.pt").exists()  # removed after a finished run
    model, _ = load_model(tmp_path / "model.pt")
    assert isinstance(model, torch.nn.Module)


REAL_LOG = tracking.Tracker.log


def _interrupt_after(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """A Ctrl-C at the first point logged after iteration ``step`` (until _resume_logging)."""

    def log(self, at, *args, **kwargs):
        if at > step:
            raise KeyboardInterrupt
        return REAL_LOG(self, at, *args, **kwargs)

    monkeypatch.setattr(tracking.Tracker, "log", log)


def _resume_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracking.Tracker, "log", REAL_LOG)


@pytest.mark.parametrize(
    ("model", "log_every", "torn", "val_every"),
    # log_every 3: the resume state at 8 falls between the loss points at 6 and 9. torn: the
    # kill came while DVCLive rewrote its summary files in place. val_every 10: the first
    # validation (and its curves' files) comes after the resume state at 8, before the kill.
    [
        ("nafnet", 1, "", 4),
        ("dncnn", 1, "", 4),
        ("nafnet", 3, "", 4),
        ("nafnet", 1, "cut", 4),
        ("nafnet", 1, "empty", 4),
        ("dncnn", 1, "", 10),
    ],
)
def test_interrupted_run_resumes_bit_identically(
    split: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    model: str,
    log_every: int,
    torn: str,
    val_every: int,
) -> None:
    cfg = _cfg(model, log_every=log_every, val_every=val_every)
    reference = _run(cfg, split, tmp_path / "straight")

    work = tmp_path / "interrupted"
    _interrupt_after(monkeypatch, 10)  # two iterations after the resume state at 8
    with pytest.raises(KeyboardInterrupt):
        _run(cfg, split, work)
    assert not (work / "model.pt").exists()
    assert read_checkpoint(work / "ckpt" / "last.pt")["meta"]["iteration"] == 8
    for name in ("metrics.json", "params.yaml") if torn else ():
        path = work / "live" / name  # "empty": DVCLive had opened it for writing, no more
        path.write_bytes(path.read_bytes()[:40] + b"\x00\x00{" if torn == "cut" else b"")
    _resume_logging(monkeypatch)
    capsys.readouterr()
    resumed = _run(cfg, split, work)
    assert "resuming nafnet from iteration 8" in capsys.readouterr().out.replace("dncnn", "nafnet")

    assert resumed["meta"] == reference["meta"]
    assert resumed["params"].keys() == reference["params"].keys()
    for k, v in reference["params"].items():
        assert torch.equal(resumed["params"][k], v), k
    losses = _tsv(work / "live" / "plots" / "metrics" / "train" / "loss.tsv")
    steps = [int(r["step"]) for r in losses]
    # the crashed run's points after 8 were replaced, not doubled
    assert steps == [*range(log_every, 13, log_every), *([12] if 12 % log_every else [])]
    # The DVCLive history is the same to the byte (one line ending), so `dvc repro` records the
    # same output hash whether or not the run was interrupted.
    straight_live, resumed_live = tmp_path / "straight" / "live", work / "live"
    files = sorted(p.relative_to(straight_live) for p in straight_live.rglob("*") if p.is_file())
    assert files == sorted(
        p.relative_to(resumed_live) for p in resumed_live.rglob("*") if p.is_file()
    )
    for rel in files:
        if rel.suffix in (".tsv", ".json", ".yaml"):
            assert (resumed_live / rel).read_bytes() == (straight_live / rel).read_bytes(), rel


REAL_VALIDATE = train_module.validate


def _scripted_validation(monkeypatch: pytest.MonkeyPatch, psnrs: list[float]) -> None:
    """Validations that score ``psnrs`` in turn (the rest of each one as measured)."""
    scores = iter(psnrs)

    def scripted(*args, **kwargs):
        return dataclasses.replace(REAL_VALIDATE(*args, **kwargs), psnr=next(scores))

    monkeypatch.setattr(train_module, "validate", scripted)


def test_the_best_validation_is_kept_not_the_last_also_across_a_resume(
    split: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 12-iteration run's validation PSNR rises throughout, so the last is also the best:
    here the best (iteration 8) comes before the last, and before an interruption."""
    cfg = _cfg("dncnn")  # validations at 4, 8 and 12; resume states at 4 and 8
    _scripted_validation(monkeypatch, [30.0, 32.0, 31.0])
    straight = _run(cfg, split, tmp_path / "straight")
    assert (straight["meta"]["iteration"], straight["meta"]["val_psnr"]) == (8, 32.0)

    work = tmp_path / "interrupted"
    _scripted_validation(monkeypatch, [30.0, 32.0, 31.0])
    _interrupt_after(monkeypatch, 10)
    with pytest.raises(KeyboardInterrupt):
        _run(cfg, split, work)
    _scripted_validation(monkeypatch, [31.0])  # the resumed run validates at 12 only
    _resume_logging(monkeypatch)
    resumed = _run(cfg, split, work)
    assert resumed["meta"] == straight["meta"]
    for k, v in straight["params"].items():
        assert torch.equal(resumed["params"][k], v), k


@pytest.mark.parametrize("change", ["params", "code", "data", "history", "no history"])
def test_resume_state_from_other_params_code_or_data_is_ignored(
    split: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    change: str,
) -> None:
    _interrupt_after(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        _run(_cfg(iters=6), split, tmp_path)
    monkeypatch.undo()
    assert read_checkpoint(tmp_path / "ckpt" / "last.pt")["meta"]["iteration"] == 4
    capsys.readouterr()
    cfg = _cfg(iters=6, lr=5e-4) if change == "params" else _cfg(iters=6)
    if change == "code":  # an edit to the package between the interruption and the re-run
        monkeypatch.setattr(resume, "code_identity", lambda package=None: "edited")
    data = split
    if change == "data":  # e.g. another crop_split: one patch differs, same shape
        noisy, clean = (np.array(a) for a in read_patch_store(split / "train"))
        noisy[3] = 255 - noisy[3]  # neither the first, the middle nor the last patch
        data = tmp_path / "edited"
        write_patch_store(data / "train", noisy, clean)
        shutil.copytree(split / "val", data / "val")
    loss_tsv = Path("plots") / "metrics" / "train" / "loss.tsv"
    if change == "history":  # e.g. `git checkout dvclive/`: another run's curves
        rows = (tmp_path / "live" / loss_tsv).read_text().splitlines(keepends=True)
        rows[1] = rows[1].replace("\t", "\t9", 1)
        (tmp_path / "live" / loss_tsv).write_text("".join(rows))
    if change == "no history":
        shutil.rmtree(tmp_path / "live")
    changed = _run(cfg, data, tmp_path)
    out = capsys.readouterr().out
    assert "starting from scratch" in out and "resuming" not in out
    fresh = _run(cfg, data, tmp_path / "fresh")
    for k, v in fresh["params"].items():
        assert torch.equal(changed["params"][k], v), k
    # the note says what differs, so the user need not hunt for a change that is not there
    why = {
        "params": "params lr 0.001 (this run: 0.0005)",
        "code": "other code (src/denoise)",
        "data": "other train data",
    }
    if change in why:
        assert f"is from a run with {why[change]}; starting from scratch" in out, out
    if change in ("history", "no history"):
        assert "no longer holds the interrupted run's history up to iteration 4" in out
        fresh_loss = (tmp_path / "fresh" / "live" / loss_tsv).read_bytes()
        assert (tmp_path / "live" / loss_tsv).read_bytes() == fresh_loss


def test_only_one_rank_says_why_a_resume_state_is_not_used(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    assert resume.load_resume(tmp_path / "last.pt", "fp", quiet=True) is None
    assert capsys.readouterr().out == ""
    assert resume.load_resume(tmp_path / "last.pt", "fp") is None
    assert "ignoring unreadable resume state" in capsys.readouterr().out


def test_resumed_curves_keep_their_header_when_every_row_is_cut(tmp_path: Path) -> None:
    val = tmp_path / "plots" / "metrics" / "val"
    val.mkdir(parents=True)
    (val / "psnr.tsv").write_text("step\tpsnr\n500\t30.0\n")
    (val / "ssim.tsv").write_text("\n500\t0.9\n")  # headless: cannot be cut, so removed
    (val / "lpips.tsv").write_text("step\tlpips\n300\t0.2\n4")  # the kill cut "400\t0.1"
    for _ in range(2):  # interrupted again before the next validation: resumed from 400 twice
        tracking._truncate(tmp_path, 400)
    assert (val / "psnr.tsv").read_text() == f"step\tpsnr{os.linesep}"
    assert not (val / "ssim.tsv").exists()
    assert (val / "lpips.tsv").read_text() == f"step\tlpips{os.linesep}300\t0.2{os.linesep}"


def test_code_identity_changes_with_any_source_file(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "sub" / "b.py").write_text("y = 2\n")
    (pkg / "notes.txt").write_text("not code")
    before = resume.code_identity(pkg)
    (pkg / "notes.txt").write_text("edited, still not code")
    assert resume.code_identity(pkg) == before
    (pkg / "sub" / "b.py").write_text("y = 3\n")
    assert resume.code_identity(pkg) != before
    (pkg / "sub" / "b.py").write_text("y = 2\n")
    assert resume.code_identity(pkg) == before
    (pkg / "sub" / "b.py").rename(pkg / "b.py")  # the same bytes under another name
    assert resume.code_identity(pkg) != before


def test_non_finite_loss_stops_without_a_model(
    split: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(LOSSES, "l1", lambda p, t: (p - t).abs().mean() * float("nan"))
    with pytest.raises(DenoiseError, match=r"non-finite loss .* at iteration 1;"):
        _run(_cfg("dncnn"), split, tmp_path)
    assert not (tmp_path / "model.pt").exists()


def test_a_nan_validation_stops_without_a_model(
    split: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A network whose loss is finite but whose outputs are not (NaN in the clamped output):
    no best-by-val weights to keep, so no model, and the resume state stays for a fix."""
    _scripted_validation(monkeypatch, [30.0, float("nan")])
    with pytest.raises(DenoiseError, match=r"validation PSNR is NaN at iteration 8 .*no model"):
        _run(_cfg("dncnn"), split, tmp_path)
    assert not (tmp_path / "model.pt").exists()
    assert (tmp_path / "ckpt" / "last.pt").is_file()


def test_batches_depend_only_on_seed_and_iteration() -> None:
    fresh = IterationBatchSampler(10, 4, seed=3)
    batches = [fresh.batch(i) for i in range(5)]
    assert next(iter(IterationBatchSampler(10, 4, seed=3, start=3))) == batches[3]
    stream = [key for b in batches for key in b]
    assert sorted(i for e, i in stream if e == 0) == list(range(10))  # each patch once an epoch
    ranks = [IterationBatchSampler(10, 4, seed=3, rank=r, world=2).batch(2) for r in range(2)]
    assert ranks[0] + ranks[1] == batches[2]
    assert IterationBatchSampler(10, 4, seed=4).batch(0) != batches[0]
    # The permutation changes from one epoch to the next (not the same order forever).
    assert [i for e, i in stream if e == 1] != [i for e, i in stream if e == 0]


def test_each_epoch_draws_new_crops_and_flips_of_a_patch(split: Path) -> None:
    """Training fetches (epoch, index): the same patch in another epoch is another crop."""
    items = EpochIndexed(RandomCropDataset(split / "train", 12, augment=True, seed=0))
    first, again, later = items[(0, 3)], items[(0, 3)], items[(1, 3)]
    assert torch.equal(first[0], again[0])  # a pure function of (seed, epoch, index)
    assert not torch.equal(first[0], later[0])


def _train(**nafnet: object) -> dict[str, object]:
    """A complete ``train`` section with these ``train.nafnet`` keys changed."""
    return {**TINY_SHARED, "nafnet": {**_tiny_section("nafnet"), **nafnet}}


def test_config_from_params_merges_and_rejects_typos() -> None:
    train = {**_train(iters=5, lr=2e-4, betas=[0.9, 0.99]), "seed": 7}
    cfg = TrainConfig.from_params(train, "nafnet")
    assert (cfg.seed, cfg.iters, cfg.lr, cfg.betas) == (7, 5, 2e-4, (0.9, 0.99))
    # `dvc exp run -S train.nafnet.iters=2e5` writes 200000.0
    cfg = TrainConfig.from_params(_train(iters=2e5), "nafnet")
    assert cfg.iters == 200000 and isinstance(cfg.iters, int)
    # a shared key's error names it where it is written: train.<key>, not train.nafnet.<key>
    with pytest.raises(DenoiseError, match=r"^params\.yaml train\.amp: expected true or false"):
        TrainConfig.from_params({**train, "amp": 1}, "nafnet")
    with pytest.raises(DenoiseError, match=r"train.nafnet: unknown itres"):
        TrainConfig.from_params(_train(itres=5), "nafnet")
    # no defaults: a key deleted from params.yaml is named, not silently replaced by another value
    del train["val_batch"], train["nafnet"]["optimizer"]  # type: ignore[attr-defined]
    with pytest.raises(DenoiseError, match=r"^params\.yaml train: missing val_batch$"):
        TrainConfig.from_params(train, "nafnet")
    with pytest.raises(DenoiseError, match=r"^params\.yaml train\.nafnet: missing optimizer$"):
        TrainConfig.from_params({**train, "val_batch": 2}, "nafnet")
    for typo in ({"sed": 7}, {"val_patchs": 4}, {"nafnett": {"iters": 5}}):  # beside a section
        with pytest.raises(DenoiseError, match=rf"params.yaml train: unknown {next(iter(typo))}"):
            TrainConfig.from_params({**train, **typo}, "nafnet")
    with pytest.raises(DenoiseError, match=r"no train\.dncnn"):
        TrainConfig.from_params(train, "dncnn")


def test_bad_settings_are_one_line_errors(split: Path, tmp_path: Path) -> None:
    train = _train(iters=5)
    for bad, match in (
        ({"log_every": 0}, r"params\.yaml train\.nafnet\.log_every: must be > 0, got 0$"),
        ({"lr": "fast"}, r"params\.yaml train\.nafnet\.lr: expected a number, got 'fast'"),
        ({"lr": 0}, r"train\.nafnet\.lr: must be > 0, got 0\.0$"),
        ({"iters": 2.5}, r"train\.nafnet\.iters: expected an integer, got 2\.5"),
        ({"betas": 0.9}, r"train\.nafnet\.betas: expected a list, got 0\.9"),
        ({"num_workers": -1}, r"train\.nafnet\.num_workers: must be >= 0, got -1$"),
        ({"eta_min": 0.5}, r"train\.nafnet\.eta_min: must be <= lr \(0\.001\), got 0\.5$"),
        (
            {"device": "gpu"},
            r"train\.nafnet\.device: must be auto, cpu, cuda or cuda:N, got 'gpu'$",
        ),
        ({"loss": "l2"}, r"train\.nafnet\.loss: must be one of psnr, l1, mse, got 'l2'$"),
        (
            {"betas": [2, 0.9]},
            r"train\.nafnet\.betas: must be two numbers in \[0, 1\), got \(2\.0, 0\.9\)$",
        ),
        ({"val_crop": 0}, r"train\.nafnet\.val_crop: must be > 0, got 0$"),
        ({"val_crop": 300}, r"^params\.yaml train\.val_crop 300: .*val: crop 300 is larger than"),
        ({"crop": 300}, r"^params\.yaml train\.nafnet\.crop 300: .*train: crop 300 is larger"),
        ({"seed": -1}, r"train\.nafnet\.seed: must be an integer in 0\.\.2\*\*32-1, got -1$"),
        ({"seed": 2**32}, r"train\.nafnet\.seed: must be an integer in 0\.\.2\*\*32-1, got 4"),
        ({"device": "cudax"}, r"train\.nafnet\.device: must be auto, cpu, cuda or cuda:N, got"),
        ({"model": "dncnn"}, r"train\.nafnet: unknown model"),
        (
            {"arch": {**TINY_ARCH["nafnet"], "widht": 8}},
            r"params\.yaml train\.nafnet\.arch: unknown widht$",
        ),
        (  # no default taken without a word: a missing key would build another network
            {"arch": {"img_channel": 3, "width": 16}},
            r"train\.nafnet\.arch: missing middle_blk_num, enc_blk_nums, dec_blk_nums$",
        ),
        (
            {"arch": {**TINY_ARCH["nafnet"], "width": "16"}},
            r"train\.nafnet\.arch\.width: expected an integer, got '16'$",
        ),
        (
            {"arch": {**TINY_ARCH["nafnet"], "enc_blk_nums": [1, 1], "dec_blk_nums": [1]}},
            r"enc_blk_nums \[1, 1\] and dec_blk_nums \[1\] need one entry per level",
        ),
        (
            {"arch": {**TINY_ARCH["nafnet"], "img_channel": 1}},
            r"train\.nafnet\.arch: a nafnet for 1-channel input .* RGB",
        ),
        (
            {"arch": {**TINY_ARCH["nafnet"], "width": -16}},
            r"^params\.yaml train\.nafnet\.arch: nafnet config: width must be >= 1, got -16$",
        ),
        (
            {"arch": {**TINY_ARCH["nafnet"], "enc_blk_nums": [1, -1], "dec_blk_nums": [1, 1]}},
            r"train\.nafnet\.arch: .*: enc_blk_nums\[1\] must be >= 0, got -1$",
        ),
    ):
        with pytest.raises(DenoiseError, match=match):
            cfg = TrainConfig.from_params({**train, "nafnet": {**train["nafnet"], **bad}}, "nafnet")
            _run(cfg, split, tmp_path)
    # A bad network is named with the params, before any data is read.
    dncnn = {**train["nafnet"], "arch": {**TINY_ARCH["dncnn"], "nc": 0}}
    with pytest.raises(DenoiseError, match=r"train\.dncnn\.arch: .*: nc must be >= 1, got 0$"):
        TrainConfig.from_params({**train, "dncnn": dncnn}, "dncnn")
    dncnn["arch"] = {**TINY_ARCH["dncnn"], "batch_norm": "false"}  # a quoted YAML string
    with pytest.raises(DenoiseError, match=r"arch\.batch_norm: expected true or false, got 'f"):
        TrainConfig.from_params({**train, "dncnn": dncnn}, "dncnn")
    # eta_min, written in the model's section, is named there.
    with pytest.raises(DenoiseError, match=r"params\.yaml train\.nafnet\.eta_min: must be <= lr"):
        TrainConfig.from_params({**train, "nafnet": {**train["nafnet"], "lr": 5e-8}}, "nafnet")
    # A shared key is named where it was written, beside the models' sections.
    with pytest.raises(
        DenoiseError, match=r"params\.yaml train\.val_patches: must be >= 0, got -1$"
    ):
        TrainConfig.from_params({**train, "val_patches": -1}, "nafnet")
    empty = tmp_path / "empty"
    write_patch_store(empty, *(np.zeros((0, 16, 16, 3), np.uint8),) * 2)
    with pytest.raises(DenoiseError, match=r"empty: the val split has no patches"):
        train_model(_cfg(), split / "train", empty, tmp_path / "m.pt", progress=False)
    assert not (tmp_path / "m.pt").exists()


def test_stage_script_rejects_an_unknown_model() -> None:
    proc = subprocess.run(
        [sys.executable, "stages/train.py", "unet"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: usage: python stages/train.py dncnn|nafnet")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, cfg: TrainConfig, split: Path, out: Path) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    train_model(cfg, split / "train", split / "val", out, progress=False)


@pytest.mark.slow
def test_ddp_two_processes_match_one_process(split: Path, tmp_path: Path) -> None:
    cfg = _cfg(iters=6, val_every=6, grad_clip=0.0)
    mp.spawn(_ddp_worker, args=(2, _free_port(), cfg, split, tmp_path / "ddp.pt"), nprocs=2)
    train_model(cfg, split / "train", split / "val", tmp_path / "one.pt", progress=False)
    ddp, one = read_checkpoint(tmp_path / "ddp.pt"), read_checkpoint(tmp_path / "one.pt")
    assert ddp["meta"]["world_size"] == 2 and one["meta"]["world_size"] == 1
    moved = 0
    for k, v in one["params"].items():
        assert torch.allclose(ddp["params"][k], v, rtol=0, atol=1e-5), k
        moved += int(not torch.equal(v, read_init(k)))
    assert moved > 0  # training changed the weights (the comparison is not trivially true)


def _any_rank_worker(rank: int, world: int, port: int, out: Path) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world)
    )
    d = distributed.setup("cpu")
    try:
        seen = [distributed.any_rank(rank == 0, d), distributed.any_rank(False, d)]
        (out / f"{rank}.txt").write_text(repr(seen))
    finally:
        distributed.teardown(d)


def test_any_rank_tells_every_rank_what_one_rank_saw(tmp_path: Path) -> None:
    # A NaN validation on rank 0 stops every rank this way, instead of leaving the others
    # waiting in a barrier.
    mp.spawn(_any_rank_worker, args=(2, _free_port(), tmp_path), nprocs=2)
    assert [(tmp_path / f"{r}.txt").read_text() for r in (0, 1)] == ["[True, False]"] * 2


def read_init(key: str) -> torch.Tensor:
    torch.manual_seed(0)
    from denoise.models.registry import build_model

    return build_model("nafnet", TINY_ARCH["nafnet"]).state_dict()[key]


def test_amp_precision_is_bf16_where_the_gpu_has_it_else_fp16(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from denoise.training.precision import amp_context, amp_precision

    cuda = torch.device("cuda", 0)  # only the object: nothing runs on it
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert amp_precision(cuda, True) == "bf16"
    # A V100 or T4: bf16 only by emulation (torch's default counts that as supported).
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation
    )
    assert amp_precision(cuda, True) == "fp16"  # the one that needs a GradScaler
    assert amp_precision(cuda, False) == "off"
    assert amp_precision(torch.device("cpu"), True) == "off"
    assert isinstance(amp_context("off"), contextlib.nullcontext)
    for precision, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        with warnings.catch_warnings():  # CUDA autocast on a machine without CUDA warns
            warnings.simplefilter("ignore")
            ctx = amp_context(precision)
        assert isinstance(ctx, torch.autocast) and (ctx.device, ctx.fast_dtype) == ("cuda", dtype)


@pytest.mark.parametrize("scaled", [False, True])
def test_optimizer_step_clips_like_a_plain_step(scaled: bool) -> None:
    """With a loss scale (fp16 AMP) too: the gradients must be unscaled before clipping."""
    from denoise.training.recipe import optimizer_step

    def step(use_helper: bool) -> torch.Tensor:
        torch.manual_seed(0)
        net = torch.nn.Linear(4, 2)
        opt = torch.optim.SGD(net.parameters(), lr=0.5)
        loss = net(torch.ones(3, 4)).pow(2).sum() * 100  # large gradients: clipping bites
        if use_helper:
            scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, enabled=scaled)
            optimizer_step(loss, net, opt, scaler, 0.1)
        else:
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 0.1)
            opt.step()
        return torch.cat([p.detach().flatten() for p in net.parameters()])

    torch.testing.assert_close(step(True), step(False), rtol=0, atol=0)


def test_a_resume_note_names_what_differs() -> None:
    """Only the process count changed (a torchrun run, resumed by `dvc repro`): the note says
    so, not "other params, data or code", which would send the user looking in params.yaml."""
    data = {"train": {"shape": [4], "blake2b": "x"}, "device": "cpu", "processes": 2}
    saved = resume.run_identity({"lr": 1e-3}, data)
    now = resume.run_identity({"lr": 1e-3}, {**data, "processes": 1})
    assert resume.fingerprint(saved) != resume.fingerprint(now)
    assert resume.identity_difference(saved, now) == "processes 2 (this run: 1)"
    assert resume.identity_difference(None, now) == "other params, data or code"  # an old state
    edited = {**data, "train": {"shape": [4], "blake2b": "y"}}
    changed = resume.run_identity({"lr": 5e-4}, edited)
    assert resume.identity_difference(saved, changed) == (
        "params lr 0.001 (this run: 0.0005); other train data"
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORLD_SIZE": ""}, r"^environment variable WORLD_SIZE='': expected a whole number$"),
        ({"LOCAL_RANK": "x"}, r"^environment variable LOCAL_RANK='x': expected a whole number$"),
        ({"WORLD_SIZE": "2"}, r"^environment variable WORLD_SIZE=2 but no RANK: start several"),
        ({"WORLD_SIZE": "2", "RANK": "2"}, r"RANK=2, WORLD_SIZE=2: expected 0 <= RANK"),
        (  # set by hand, not by torchrun: torch's own error, as one line
            {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "", "MASTER_PORT": ""},
            r"^torch\.distributed could not start with WORLD_SIZE=2 \(.*\); WORLD_SIZE is set but "
            r"MASTER_ADDR is not: start training with torchrun",
        ),
    ],
)
def test_torchrun_variables_that_make_no_sense_are_one_line(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        if value or name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            monkeypatch.setenv(name, value)
    with pytest.raises(DenoiseError, match=message):
        distributed.setup("cpu")
