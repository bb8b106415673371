"""The ``denoise`` command: clean photos, score models, serve them.

Every subcommand turns a :class:`DenoiseError` into one ``error: ...`` line and exit code 1.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, overload

import typer

from denoise import __version__
from denoise.errors import BackendUnavailable, DenoiseError
from denoise.paths import REPOSITORY, TEST_DIR
from denoise.signals import TERMINATED_EXIT, Terminated, sigterm_as_interrupt
from denoise.triton.address import DEFAULT_URL, GRPC_PORT, HOST, HTTP_PORT

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Real-image denoising for smartphone photos (NAFNet, DnCNN).",
)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Report DenoiseError as one line and exit 1 instead of a traceback; SIGTERM unwinds as
    Ctrl-C does (:mod:`denoise.signals`), so a killed command leaves no temporary behind."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with sigterm_as_interrupt():
                return fn(*args, **kwargs)
        except DenoiseError as e:
            typer.echo(f"error: {e}", err=True)
            sys.exit(1)
        except Terminated:
            typer.echo("terminated", err=True)
            sys.exit(TERMINATED_EXIT)

    return wrapper


@app.command()
def version() -> None:
    """Print the package version."""
    typer.echo(__version__)


# Subcommands are added below, one function each (score, run, serve, bench).


# Tiled inference defaults for the commands: 512 px tiles keep a 12 MP photo within ~1 GB.
DEFAULT_TILE = 512
DEFAULT_OVERLAP = 32
TileOpt = Annotated[
    int, typer.Option(help="Tile size in pixels, at least 16 (0: whole image at once).")
]
OverlapOpt = Annotated[
    int | None,
    typer.Option(
        help=f"Minimum overlap of neighbouring tiles, pixels, at most half a tile (default: "
        f"{DEFAULT_OVERLAP}, or a quarter of a tile under {4 * DEFAULT_OVERLAP})."
    ),
]


def tile_overlap(tile: int, overlap: int | None) -> int:
    """The overlap asked for, else the default one: a small ``--tile`` alone is not refused
    for an overlap its user never set."""
    if overlap is not None:
        return overlap
    return min(DEFAULT_OVERLAP, tile // 4) if tile > 0 else DEFAULT_OVERLAP


@overload
def given(value: str, flag: str) -> str: ...
@overload
def given(value: str | None, flag: str) -> str | None: ...
def given(value: str | None, flag: str) -> str | None:
    """``value``, refused when empty: an unset shell variable (``-o "$OUT"``) must not quietly
    become the current folder (``Path("")`` is ``.``) or the default. Options that take a path
    are typed ``str`` for this reason and made paths here."""
    if value == "":
        raise DenoiseError(f"{flag} is empty (an unset variable?)")
    return value


def given_path(value: str | None, flag: str) -> Path | None:
    """:func:`given`, as a path (None stays None: the option's default)."""
    value = given(value, flag)
    return None if value is None else Path(value)


def json_out_path(value: str | None) -> Path | None:
    """The ``--json`` file, refused before the work that fills it if it cannot be written, or
    if a file there is not JSON: a slip (``--json model.pt``, ``--json photo.png``) must not
    replace the command's own model or input."""
    from denoise.infer import check_out_dir

    if value is None:
        return None
    path = Path(given(value, "--json"))
    if _written_through(path):  # the user's link, a device, a pipe: theirs to point
        return path
    if path.is_dir() or value.endswith(("/", os.sep)):
        raise DenoiseError(f"{value}: is a folder; --json takes a file name")
    if path.is_file():
        try:
            with path.open("rb") as f:
                start = f.read(64).lstrip()
        except OSError as e:
            raise DenoiseError(f"{path}: cannot read ({e.strerror or e})") from None
        if start and start[:1] not in (b"{", b"["):
            raise DenoiseError(f"{path}: exists and is not a JSON file; not replaced by --json")
    check_out_dir(path.parent)
    return path


def _own_stream(path: Path) -> Any:
    """This process's stdout or stderr if ``path`` is the same file (``--json /dev/stdout``,
    also where stdout goes to a file), else None."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if os.path.samestat(path.stat(), os.fstat(stream.fileno())):
                return stream
        except (OSError, ValueError):  # no such file; a stream without one (a test's capture)
            continue
    return None


def _written_through(path: Path) -> bool:
    """Whether ``--json`` writes into what ``path`` names rather than replacing it: this
    process's own stdout or stderr, a device or a pipe. Anything else, a link to a file too,
    is checked and replaced as a file."""
    from denoise.fileio import is_stream

    return _own_stream(path) is not None or is_stream(path)


def write_json_out(path: Path, report: dict[str, Any]) -> None:
    """Write ``--json``'s file: replaced atomically, or written through
    (:func:`_written_through`); into this process's own stdout or stderr as that stream, after
    what it printed (opened anew, the file it goes to would be cut to the JSON)."""
    from denoise.fileio import is_stream, json_text, write_errors_named, write_json

    stream = _own_stream(path)
    if stream is not None:
        stream.write(json_text(report))
        stream.flush()
    elif is_stream(path):
        with write_errors_named(path), path.open("w") as f:
            f.write(json_text(report))
    else:
        write_json(path, report)


@app.command()
@user_errors
def score(
    pairs: Annotated[
        str,
        typer.Option(
            help="DIR/noisy + DIR/clean (matched by name), a SIDD-layout folder, or a folder "
            "with SIDD's ValidationNoisyBlocksSrgb.mat + ValidationGtBlocksSrgb.mat."
        ),
    ],
    model: Annotated[
        str,
        typer.Option(
            help="A .pt checkpoint (or released NAFNet/KAIR .pth), an .onnx model or a TensorRT "
            ".plan engine."
        ),
    ],
    json_out: Annotated[
        str | None, typer.Option("--json", help="Also write the scores here as JSON.")
    ] = None,
    tile: TileOpt = DEFAULT_TILE,
    overlap: OverlapOpt = None,
) -> None:
    """Score a model on noisy/clean pairs: PSNR and SSIM of input and output per image."""
    from denoise.evaluate import format_score_table, pairs_to_score, score_pairs, tiled_denoiser
    from denoise.infer import backend_for_file, check_tiling, open_backend

    overlap = tile_overlap(tile, overlap)
    check_tiling(tile, overlap, command_line=True)
    model_path = Path(given(model, "--model"))
    kind = backend_for_file(model_path)
    if not model_path.is_file():  # before the data: reading SIDD's blocks takes a while
        raise DenoiseError(f"{model_path}: model file not found")
    json_path = json_out_path(json_out)  # before the scoring, too
    count, named_pairs = pairs_to_score(Path(given(pairs, "--pairs")))  # before the model loads
    backend = open_backend(kind, model_path)
    denoiser = tiled_denoiser(backend, tile=tile, overlap=overlap)
    report = score_pairs(named_pairs, denoiser, total=count, progress=sys.stderr.isatty())
    typer.echo(format_score_table(report))
    if json_path is not None:
        write_json_out(json_path, report)
    if report["failed"]:  # named as they failed; the scores above are of the others
        raise DenoiseError(
            f"{len(report['failed'])} of {count} pairs could not be scored (named above)"
        )


@app.command()
@user_errors
def run(
    inputs: Annotated[
        list[str],  # str, not Path: see given()
        typer.Argument(help="Photos (PNG 8/16-bit, JPEG, ...) or folders of them."),
    ],
    out_dir: Annotated[
        str | None,
        typer.Option("-o", "--out-dir", help="Write outputs here instead of beside each input."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Checkpoint (ours, or released NAFNet/KAIR .pth), ONNX or engine file, or "
            "the served model's name for triton. Default: what the pipeline last exported: "
            "its checkpoint (torch; named in metrics/export.json, before any export "
            "models/<model>.pt of params.yaml), its file in model_repository/ (onnxruntime, "
            "tensorrt), the server's default model (triton)."
        ),
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option(
            help="torch, onnxruntime, triton or tensorrt (default: from the model file's suffix)."
        ),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(help=f"Triton server URL, triton backend (default: {DEFAULT_URL})."),
    ] = None,
    tile: TileOpt = DEFAULT_TILE,
    overlap: OverlapOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
    skip_existing: Annotated[
        bool,
        typer.Option(
            help="Pass over inputs whose output exists (to finish a run that was cut short)."
        ),
    ] = False,
    precision: Annotated[
        str,
        typer.Option(
            help="torch backend: fp32|bf16|fp16 (bf16 is "
            "much faster on a CPU with bf16 instructions; "
            "`denoise bench` measures it)."
        ),
    ] = "fp32",
    channels_last: Annotated[
        bool, typer.Option(help="torch backend: NHWC memory format (faster convolutions).")
    ] = False,
    compile: Annotated[
        bool,
        typer.Option(
            help="torch backend: torch.compile the network. The first tile waits for the "
            "compiler (half a minute or more on a 2-core CPU); it pays over many photos."
        ),
    ] = False,
) -> None:
    """Denoise photos into <stem>_denoised.<ext>; a bad file is reported and skipped (exit 1).

    16-bit PNG/TIFF stay 16-bit, grey stays grey; an EXIF orientation is applied to the
    pixels, and JPEG/PNG outputs keep the photo's colour profile and EXIF.
    """
    from tqdm import tqdm

    from denoise.infer import (
        check_existing_outputs_rule,
        check_out_dir,
        check_tiling,
        denoise_files,
        open_backend,
    )
    from denoise.model_choice import resolve_model

    overlap = tile_overlap(tile, overlap)
    check_tiling(tile, overlap, command_line=True)  # before the model loads
    out_path = given_path(out_dir, "-o/--out-dir")
    if out_path is not None:
        check_out_dir(out_path)
    name, target = resolve_model(given(model, "--model"), backend)
    options: dict[str, Any] = {}
    # as -o: not quietly the default server, which may be someone else's
    if given(url, "--url") is not None:
        if name != "triton":
            raise DenoiseError(f"--url applies to the triton backend, not {name}")
        options["url"] = url
    if precision != "fp32" or channels_last or compile:
        if name != "torch":
            raise DenoiseError(
                f"--precision/--channels-last/--compile apply to the torch backend, not {name}"
            )
        options |= {"precision": precision, "channels_last": channels_last, "compile": compile}
    check_existing_outputs_rule(overwrite, skip_existing)  # before the model loads
    net = open_backend(name, target, **options)
    failed: list[Path] = []
    skipped: list[Path] = []

    def report(path: Path, message: str) -> None:
        failed.append(path)
        tqdm.write(f"error: {message}", file=sys.stderr)

    try:
        written = denoise_files(
            inputs,
            net,
            out_dir=out_path,
            tile=tile,
            overlap=overlap,
            overwrite=overwrite,
            skip_existing=skip_existing,
            progress=sys.stderr.isatty(),  # bars in a log file would bury the error lines
            on_error=report,
            on_written=lambda path: tqdm.write(str(path), file=sys.stdout),
            on_skipped=skipped.append,
        )
    except BackendUnavailable as e:  # the run stopped: what it had counted before, then why
        if failed:
            raise BackendUnavailable(f"{e}; {len(failed)} had failed before") from None
        raise
    if skipped:
        typer.echo(f"{len(skipped)} inputs passed over: their outputs exist", err=True)
    if failed:
        total = len(failed) + len(written) + len(skipped)
        typer.echo(f"{len(failed)} of {total} inputs failed", err=True)
        raise typer.Exit(1)


@app.command()
@user_errors
def serve(
    repo: Annotated[
        str | None,
        typer.Option(help="Triton model repository (default: the project's model_repository)."),
    ] = None,
    http_port: Annotated[
        int, typer.Option(help=f"HTTP port (bound to {HOST}; 0: any free one).")
    ] = HTTP_PORT,
    grpc_port: Annotated[
        int, typer.Option(help=f"gRPC port (bound to {HOST}; 0: any free one).")
    ] = GRPC_PORT,
    model: Annotated[
        list[str] | None,
        typer.Option(help="Model to load (repeatable). Default: every model this server can load."),
    ] = None,
    binary: Annotated[
        str | None,
        typer.Option(
            help="tritonserver executable (default: on PATH, else the one in nvidia-pytriton)."
        ),
    ] = None,
) -> None:
    """Serve the model repository with Triton in the foreground (Ctrl-C stops it)."""
    from denoise.model_choice import find_project
    from denoise.triton.server import port_problems
    from denoise.triton.server import serve as serve_repository

    problems = port_problems(http_port, grpc_port)
    if problems:  # named as the user gave them, not as the params' keys
        text = "; ".join(problems).replace("http_port", "--http-port")
        raise DenoiseError(text.replace("grpc_port", "--grpc-port"))

    repo_path = given_path(repo, "--repo") or find_project() / REPOSITORY
    binary = given(binary, "--binary")
    serve_repository(
        repo_path, model or (), http_port=http_port, grpc_port=grpc_port, binary=binary
    )


@app.command()
@user_errors
def bench(
    model: Annotated[
        str,
        typer.Option(
            help="nafnet|dncnn (models/<name>.pt, or the paper-size "
            "network with --arch paper) or a .pt checkpoint."
        ),
    ] = "nafnet",
    arch: Annotated[
        str,
        typer.Option(
            help="checkpoint: the trained weights; paper: the "
            "paper-size network (NAFNet-w32, or DnCNN 17x64 with --model dncnn) with perturbed "
            "random weights."
        ),
    ] = "checkpoint",
    size: Annotated[int, typer.Option(help="Square input size in pixels.")] = 512,
    batch: Annotated[int, typer.Option(help="Images per call.")] = 1,
    backends: Annotated[
        list[str] | None,
        typer.Option(
            "--backends",
            help="Paths to measure (repeatable; default: all available except the opt-in "
            "ones: *-compile, the torch-bf16-cast-* and *fused* paths, "
            "onnxruntime-int8-dynamic; the command lists them). torch (eager FP32) is always "
            "measured.",
        ),
    ] = None,
    repeats: Annotated[int, typer.Option(help="Timed calls per path (median reported).")] = 5,
    rounds: Annotated[
        int,
        typer.Option(
            help="Measure every path this many times over, interleaved (each round's ratio to "
            "eager is reported: their spread is the machine's noise)."
        ),
    ] = 1,
    psnr_images: Annotated[
        int, typer.Option(help="Test images (centre crops) for the PSNR change.")
    ] = 10,
    test_dir: Annotated[
        str | None,
        typer.Option(
            help=f"Noisy/clean pairs for the PSNR change (default: {TEST_DIR} where the "
            "pipeline has made it, else synthetic camera pairs)."
        ),
    ] = None,
    threads: Annotated[int, typer.Option(help="CPU threads (0: torch's default).")] = 0,
    isolate: Annotated[
        bool, typer.Option(help="Each path in a fresh process (own peak memory).")
    ] = True,
    json_out: Annotated[
        str | None, typer.Option("--json", help="Also write the results here as JSON.")
    ] = None,
) -> None:
    """Inference speed per backend and precision: images/s, ratio to eager FP32, PSNR change,
    peak memory and share of the machine's peak FLOP/s."""
    from denoise.bench import run_bench
    from denoise.bench.paths import available_paths
    from denoise.bench.report import failed_paths, format_table

    names = [n.strip() for item in backends or [] for n in item.split(",") if n.strip()]
    if backends and not names:  # `--backends ,` (an empty shell variable): not "all of them"
        raise DenoiseError(f"--backends {' '.join(backends)!r} names no backend")
    json_path = json_out_path(json_out)  # before minutes of measuring
    report = run_bench(
        given(model, "--model"),
        arch=arch,
        size=size,
        batch=batch,
        backends=names or None,
        repeats=repeats,
        rounds=rounds,
        psnr_images=psnr_images,
        test_dir=given_path(test_dir, "--test-dir"),
        isolate=isolate,
        threads=threads or None,
    )
    typer.echo(format_table(report))
    typer.echo(f"paths available here: {', '.join(available_paths(opt_in=True))}")
    if json_path is not None:
        write_json_out(json_path, report)
    if failed_paths(report):
        raise typer.Exit(1)  # the measured paths are reported above; the failures listed there
