"""End to end: the whole DVC pipeline reproduces, in a fresh copy of the repository.

Runs the data stages on the DEFAULT params (so their output hashes can be compared with the
committed dvc.lock: the same params give the same bytes on another machine) and the rest of
the DAG on tiny training params. Then checks what a user relies on: `dvc status` is clean, a
second `dvc repro` runs nothing, `dvc exp run -S model=dncnn` re-runs only the deploy half
of the DAG, and the README's sweep (`dvc exp run --queue -S 'train.nafnet.lr=...,...'` then
`dvc queue start -j 2`) runs one experiment per value.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from tiny_models import TINY

REPO = Path(__file__).resolve().parents[1]
DATA_STAGES = ("download", "crop-split")
DEPLOY_STAGES = {"export-onnx", "build-trt", "triton-smoke"}

pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, *, fails: bool | None = False) -> str:
    """``cmd``'s output; a failure fails the test, or, with ``fails``, success does (with
    None, neither)."""
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        DVC_NO_ANALYTICS="1",
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@localhost",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@localhost",
    )
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if fails is not None and (proc.returncode != 0) != fails:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout + proc.stderr


def _tracked_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [f for f in out.splitlines() if (REPO / f).is_file()]


def _out_hashes(lock: dict, stage: str) -> dict[str, str]:
    return {o["path"]: o["md5"] for o in lock["stages"][stage]["outs"]}


def _shrink_training(params: dict) -> None:
    """Tiny models and a few iterations: the check is about the DAG, not the quality."""
    for name, arch in TINY.items():
        section = params["train"][name]
        section["arch"] = dict(arch)
        section["iters"] = 4
        section["val_every"] = 2
        section["batch_size"] = 2
        section["crop"] = 32
    params["evaluate"]["tile"] = 128
    params["evaluate"]["overlap"] = 16
    params["evaluate"]["nlm"] |= {"h": [5], "h_color": [5], "val_patches": 1}  # one NLM try


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("pipeline")
    for rel in _tracked_files():
        dst = work / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dst)
    params = yaml.safe_load((work / "params.yaml").read_text())
    _shrink_training(params)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q"], work)
    if not (work / ".dvc").is_dir():
        _run(["dvc", "init", "-q"], work)
    _run(["dvc", "config", "core.autostage", "false"], work)
    _run(["git", "add", "-A"], work)
    _run(["git", "commit", "-qm", "fresh clone"], work)
    _run(["dvc", "repro"], work)
    return work


def test_data_stages_reproduce_the_committed_hashes(workdir: Path) -> None:
    committed = REPO / "dvc.lock"
    assert committed.is_file(), "dvc.lock is not committed: run `make repro` and commit it"
    ours = yaml.safe_load((workdir / "dvc.lock").read_text())
    theirs = yaml.safe_load(committed.read_text())
    for stage in DATA_STAGES:
        assert _out_hashes(ours, stage) == _out_hashes(theirs, stage), (
            f"stage {stage} produced different outputs than the committed dvc.lock"
        )


def test_status_clean_and_second_repro_runs_nothing(workdir: Path) -> None:
    status = _run(["dvc", "status"], workdir)
    assert "up to date" in status, status
    again = _run(["dvc", "repro"], workdir)
    assert "Running stage" not in again, again


def test_model_switch_reruns_only_the_deploy_half(workdir: Path) -> None:
    _run(["git", "add", "-A"], workdir)
    _run(["git", "commit", "-qm", "baseline run"], workdir)
    out = _run(["dvc", "exp", "run", "-S", "model=dncnn"], workdir)
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == DEPLOY_STAGES, out
    shown = _run(["dvc", "exp", "show", "--no-pager", "--csv"], workdir)
    assert "dncnn" in shown
    # The workspace now holds the dncnn deploy results: `dvc metrics diff` shows them against
    # the baseline commit, and the training/evaluation metrics are untouched.
    changed = set(json.loads(_run(["dvc", "metrics", "diff", "--json"], workdir)))
    assert changed & {"metrics/export.json", "metrics/triton_smoke.json"}, changed
    assert not changed & {"metrics/evaluate.json", "dvclive/nafnet/metrics.json"}, changed


def test_a_queued_sweep_runs_one_experiment_per_value(workdir: Path) -> None:
    rates = ("0.0005", "0.002")
    _run(["dvc", "exp", "run", "--queue", "-S", f"train.nafnet.lr={','.join(rates)}"], workdir)
    # Two workers, as a sweep on a bigger machine would run: both experiments train, export and
    # start a Triton server at once (each on ports of its own, `triton.*_port: 0`). Workers
    # exit once the queue is empty.
    _run(["dvc", "queue", "start", "-j", "2"], workdir)
    try:
        deadline = time.monotonic() + 900
        while "Queued" in (status := _run(["dvc", "queue", "status"], workdir)) or (
            "Running" in status
        ):
            assert time.monotonic() < deadline, status
            time.sleep(5)
    finally:  # a failed wait leaves no worker training on in the background
        _run(["dvc", "queue", "stop", "--kill"], workdir, fails=None)
    assert "Failed" not in status, status
    rows = list(
        csv.DictReader(io.StringIO(_run(["dvc", "exp", "show", "--no-pager", "--csv"], workdir)))
    )
    done = {row["train.nafnet.lr"]: row for row in rows if row.get("State") == "Success"}
    assert set(done) >= {str(float(r)) for r in rates}, rows
    # Each ran the training it was given: its own best validation PSNR, measured, not copied.
    columns = [c for c in rows[0] if "nafnet" in c and c.endswith("best.val_psnr")]
    assert len(columns) == 1, list(rows[0])
    psnrs = {done[str(float(r))][columns[0]] for r in rates}
    assert len(psnrs) == 2 and all(p for p in psnrs), psnrs
    # The README's `dvc exp show` recipe keeps what it says: each rate and its test scores.
    readme = (REPO / "README.md").read_text().splitlines()
    recipe = shlex.split(next(line for line in readme if line.startswith("dvc exp show --drop")))
    kept = list(csv.DictReader(io.StringIO(_run([*recipe, "--no-pager", "--csv"], workdir))))
    assert {"params.yaml:model", "train.nafnet.lr", "methods.nafnet.ssim"} <= set(kept[0])
    assert not [c for c in kept[0] if "by_iso" in c or c.startswith("http")], list(kept[0])
    tested = {r["train.nafnet.lr"]: r["methods.nafnet.psnr"] for r in kept if r["train.nafnet.lr"]}
    assert set(tested) >= set(done) and len({tested[lr] for lr in done}) == 2, kept


def test_a_failed_export_leaves_the_served_models_in_place(workdir: Path) -> None:
    """DVC deletes a stage's outputs before it runs, unless they persist: a parity check that
    fails must not leave `denoise serve` with nothing to serve."""
    repo = workdir / "model_repository"
    before = {p: p.read_bytes() for p in sorted(repo.glob("denoise_*/**/*")) if p.is_file()}
    assert any(p.name == "model.onnx" for p in before)
    params_file = workdir / "params.yaml"
    kept = params_file.read_text()
    params = yaml.safe_load(kept)
    params["export"]["tolerance"] = 0.0  # no export's ONNX matches PyTorch to the last bit
    params["model"] = "dncnn" if params["model"] == "nafnet" else "nafnet"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        out = _run(["dvc", "repro", "export-onnx"], workdir, fails=True)
    finally:
        params_file.write_text(kept)
    assert "differs from PyTorch" in out, out
    after = {p: p.read_bytes() for p in sorted(repo.glob("denoise_*/**/*")) if p.is_file()}
    assert after == before
