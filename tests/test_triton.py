"""Triton: config.pbtxt, server discovery and ports, and a REAL tritonserver (the CPU one
bundled in nvidia-pytriton) serving a tiny NAFNet over HTTP and gRPC."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import types
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tiny_models import tiny_model
from tritonclient.grpc import model_config_pb2
from typer.testing import CliRunner

from denoise.cli import app
from denoise.errors import DenoiseError
from denoise.export import export_onnx
from denoise.fileio import read_rgb8, write_rgb8
from denoise.infer import OnnxRuntimeBackend, denoise_image, open_backend
from denoise.metrics import to_batch, to_uint8
from denoise.padding import PAD_MULTIPLE_KEY, pad_multiple_value
from denoise.triton import client as client_module
from denoise.triton import server as server_module
from denoise.triton import smoke as smoke_module
from denoise.triton.client import TritonBackend, split_url
from denoise.triton.repository import (
    INPUT_NAME,
    ONNX_MODEL,
    OUTPUT_NAME,
    PYTHON_MODEL,
    PYTHON_MODEL_TEMPLATE,
    TRT_MODEL,
    config_parameter,
    model_config,
    served_parameters,
    write_model,
    write_onnx_routes,
)
from denoise.triton.server import (
    HOST,
    SHM_DIR,
    ServerBinary,
    TritonServer,
    _pytriton_root,
    find_server,
    free_ports,
    port_in_use,
    port_problems,
    servable_models,
)
from denoise.triton.smoke import SmokeSettings, smoke_test


def parse_config(text: str) -> model_config_pb2.ModelConfig:
    """Parse config.pbtxt with Triton's own schema (fails on any unknown field)."""
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def smoke_settings(http_port: int, grpc_port: int, **overrides: object) -> SmokeSettings:
    """Settings for the bundled server and the python route; tests override what they vary."""
    base: dict = dict(
        binary="",
        models=(PYTHON_MODEL,),
        http_port=http_port,
        grpc_port=grpc_port,
        startup_timeout_s=60,
        images=1,
        crop=16,
        repeats=1,
        warmup=0,
        tolerance=1e-3,
        clients=2,
    )
    return SmokeSettings(**{**base, **overrides})


def servers() -> set[int]:
    """The tritonserver processes this test process started (from any of its threads)."""
    children = [
        int(p) for f in Path("/proc/self/task").glob("*/children") for p in f.read_text().split()
    ]
    return {pid for pid in children if "tritonserver" in command_line(pid)}


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:  # exited meanwhile
        return ""


def process_gone(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with both ONNX routes of a tiny NAFNet with random weights."""
    tmp = tmp_path_factory.mktemp("triton")
    model = tiny_model("nafnet", scale=0.05)
    onnx_path = tmp / "model.onnx"
    export_onnx(model, onnx_path, network="nafnet")
    repo = tmp / "model_repository"
    write_onnx_routes(repo, onnx_path, max_batch_size=2, python_threads=1)
    return repo


def local_onnxruntime(repo: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(
        str(repo / PYTHON_MODEL / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    return sess.run(None, {INPUT_NAME: x})[0]


# --------------------------------------------------------------------------- configs


def test_python_route_config(repository: Path) -> None:
    cfg = parse_config((repository / PYTHON_MODEL / "config.pbtxt").read_text())
    assert cfg.name == PYTHON_MODEL and cfg.backend == "python" and not cfg.platform
    assert cfg.max_batch_size == 2
    (inp,), (out,) = cfg.input, cfg.output
    assert (inp.name, out.name) == (INPUT_NAME, OUTPUT_NAME)
    for t in (inp, out):
        assert t.data_type == model_config_pb2.TYPE_FP32
        assert list(t.dims) == [3, -1, -1]
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert cfg.HasField("dynamic_batching")
    assert cfg.parameters["intra_op_threads"].string_value == "1"
    # What the export recorded in the ONNX file, for clients that tile (denoise run)
    multiple = int(
        served_parameters(repository / PYTHON_MODEL / "1" / "model.onnx")[PAD_MULTIPLE_KEY]
    )
    assert multiple > 1 and cfg.parameters[PAD_MULTIPLE_KEY].string_value == str(multiple)
    onnx_cfg = parse_config((repository / ONNX_MODEL / "config.pbtxt").read_text())
    assert onnx_cfg.parameters[PAD_MULTIPLE_KEY].string_value == str(multiple)


def test_the_python_model_runs_each_shape_of_a_batch_of_requests_once(
    repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What dynamic batching hands the python model (several requests, two shapes) becomes one
    onnxruntime call per shape, each request answered with its own rows; a call that fails
    answers its requests with the error. Run here with a stand-in for Triton's stub module."""
    import importlib.util

    class Tensor:
        def __init__(self, name: str, arr: np.ndarray) -> None:
            self.name, self.arr = name, arr

    stub = types.ModuleType("triton_python_backend_utils")
    stub.__dict__.update(
        Tensor=Tensor,
        TritonError=lambda message: [message],  # an object per call, as Triton's
        InferenceResponse=lambda output_tensors, error=None: (output_tensors, error),
        get_input_tensor_by_name=lambda request, name: request[name],
    )
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", stub)
    spec = importlib.util.spec_from_file_location("served_model", PYTHON_MODEL_TEMPLATE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    config = {"input": [{"name": INPUT_NAME}], "output": [{"name": OUTPUT_NAME}]}
    model.initialize(
        {
            "model_config": json.dumps(config),
            "model_repository": str(repository / PYTHON_MODEL),
            "model_version": "1",
        }
    )
    runs: list[tuple[int, ...]] = []
    session = model.session

    class Counting:
        def run(self, names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
            runs.append(feed[INPUT_NAME].shape)
            return session.run(names, feed)

    model.session = Counting()
    rng = np.random.default_rng(7)
    shapes = [(1, 3, 32, 48), (2, 3, 32, 48), (1, 3, 40, 24), (1, 3, 32, 48)]
    inputs = [rng.random(shape, dtype=np.float32) for shape in shapes]
    request = lambda x: {INPUT_NAME: types.SimpleNamespace(as_numpy=lambda: x)}  # noqa: E731
    responses = model.execute([request(x) for x in inputs])
    assert sorted(runs) == [(1, 3, 40, 24), (4, 3, 32, 48)]
    for x, (tensors, error) in zip(inputs, responses, strict=True):
        assert error is None
        assert np.abs(tensors[0].arr - local_onnxruntime(repository, x)).max() <= 1e-5
    # Pixels outside the network's [0, 1] are refused request by request; the rest are served.
    good = inputs[0]
    empty = np.zeros((1, 3, 0, 16), np.float32)
    answers = model.execute(
        [request(good * 255), request(good), request(good * np.nan), request(empty)]
    )
    assert [error[0] if error else None for _, error in answers] == [
        f"{INPUT_NAME}: input values must be in [0, 1] (got {good.min() * 255:g} to "
        f"{good.max() * 255:g}: 8-bit pixels / 255)",
        None,
        f"{INPUT_NAME}: input has NaN or infinite values",
        f"{INPUT_NAME}: input is empty (shape (1, 3, 0, 16))",
    ]
    assert np.abs(answers[1][0][0].arr - local_onnxruntime(repository, good)).max() <= 1e-5
    failed = model.execute([request(np.zeros((1, 4, 8, 8), np.float32))] * 3)
    assert all(not tensors and error[0].startswith("onnxruntime: ") for tensors, error in failed)
    # One error object each: the python backend's stub crashes the server on a shared one.
    assert len({id(error) for _, error in failed}) == 3


def test_config_parameters_read_back_and_bad_multiples_are_named() -> None:
    text = model_config("m", backend="python", max_batch_size=1, parameters={"a": "1", "b": "x"})
    assert (config_parameter(text, "a"), config_parameter(text, "b")) == ("1", "x")
    assert config_parameter(text, "c") is None
    assert pad_multiple_value(None, "m") == 1 and pad_multiple_value("16", "m") == 16
    for bad in ("0", "-2", "1.5", "x"):
        with pytest.raises(DenoiseError, match=rf"m: pad_multiple '{re.escape(bad)}' is not"):
            pad_multiple_value(bad, "m")


def test_onnx_and_tensorrt_configs() -> None:
    cfg = parse_config(model_config(ONNX_MODEL, platform="onnxruntime_onnx", max_batch_size=8))
    assert (cfg.platform, cfg.backend, cfg.max_batch_size) == ("onnxruntime_onnx", "", 8)
    assert cfg.HasField("dynamic_batching")
    assert not cfg.instance_group  # Triton picks GPU when there is one, else CPU
    cfg = parse_config(
        model_config(
            TRT_MODEL, platform="tensorrt_plan", max_batch_size=4, instance_kind="KIND_GPU"
        )
    )
    assert cfg.platform == "tensorrt_plan" and list(cfg.input[0].dims) == [3, -1, -1]
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    with pytest.raises(DenoiseError, match="max_batch_size must be > 0"):
        model_config("m", platform="onnxruntime_onnx", max_batch_size=0)


def test_write_model_replaces_the_whole_folder(tmp_path: Path) -> None:
    src = tmp_path / "model.onnx"
    src.write_bytes(b"new")
    stale = tmp_path / "repo" / "m" / "1" / "old.plan"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    write_model(tmp_path / "repo", "m", 'name: "m"\n', {"model.onnx": src})
    assert not stale.exists()
    assert (tmp_path / "repo" / "m" / "1" / "model.onnx").read_bytes() == b"new"


# --------------------------------------------------------------------------- server setup


def test_missing_binary_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DenoiseError, match=r"nope/tritonserver: tritonserver binary not found"):
        find_server(tmp_path / "nope" / "tritonserver")
    monkeypatch.setattr(server_module.shutil, "which", lambda name: None)
    monkeypatch.setattr(server_module, "_pytriton_root", lambda: None)
    with pytest.raises(DenoiseError, match="tritonserver binary not found: none on PATH"):
        find_server()


def test_bundled_server_is_found() -> None:
    server = find_server(_pytriton_root() / "bin" / "tritonserver")
    assert server.bundled and os.access(server.path, os.X_OK)


def test_servable_models_depend_on_the_server(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    for name in (TRT_MODEL, ONNX_MODEL, PYTHON_MODEL):
        (repo / name).mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(f'name: "{name}"\n')
    (repo / "half_written" / "1").mkdir(parents=True)  # no config.pbtxt: not a model
    binary = tmp_path / "tritonserver"
    full = ServerBinary(binary, bundled=False)
    bundled = ServerBinary(binary, bundled=True)
    assert servable_models(repo, full) == [
        ONNX_MODEL,
        PYTHON_MODEL,
        TRT_MODEL,
    ]
    assert servable_models(repo, bundled) == [PYTHON_MODEL]
    (repo / PYTHON_MODEL / "config.pbtxt").unlink()
    with pytest.raises(DenoiseError, match=rf"^{re.escape(str(repo))}: no model this tritonserver"):
        servable_models(repo, bundled)
    assert servable_models(repo, full) == [ONNX_MODEL, TRT_MODEL]
    # A mistyped `denoise serve --repo` is not told to run the export.
    typo = tmp_path / "rep"
    with pytest.raises(
        DenoiseError, match=rf"^{re.escape(str(typo))}: model repository not found$"
    ):
        servable_models(typo, full)


def test_busy_port_is_refused_before_start(repository: Path) -> None:
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = TritonServer(repository, [PYTHON_MODEL], http_port=0, grpc_port=port)
        with pytest.raises(
            DenoiseError,
            match=rf"127\.0\.0\.1:{port}: port already in use "
            r"\(triton grpc port\)",
        ):
            server.start()
        assert server.process is None


def test_a_binary_that_cannot_run_is_one_line(repository: Path, tmp_path: Path) -> None:
    """Not a program of this machine (or a bad #! line): subprocess raised a traceback."""
    binary = tmp_path / "tritonserver"
    binary.write_text("not a program\n")
    binary.chmod(0o755)
    server = TritonServer(repository, [PYTHON_MODEL], http_port=0, grpc_port=0, binary=binary)
    with pytest.raises(DenoiseError, match=rf"^{re.escape(str(binary))}: cannot run \(Exec format"):
        server.start()
    assert server.process is None


def test_missing_libraries_are_what_the_dynamic_linker_cannot_find(tmp_path: Path) -> None:
    """The bundled stub, copied away from the wheel, finds the CUDA runtime it ships only
    through the server's environment (its run path is relative to where it lies)."""
    root = server_module._pytriton_root()
    assert root is not None
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = tmp_path / "triton_python_backend_stub"
    shutil.copy2(root / "python_backend_stubs" / version / stub.name, stub)
    missing = server_module.missing_libraries(stub, {"PATH": os.environ["PATH"]})
    assert any(name.startswith("libcudart") for name in missing), missing
    assert server_module.missing_libraries(stub, server_module._bundled_env(root)) == []
    assert server_module.missing_libraries(tmp_path / "nothing", dict(os.environ)) == []


def test_a_stub_without_a_shared_libpython_is_refused_before_the_server_starts(
    repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without Python's shared library every Python model failed to load, the reason deep in
    the server's log; the one line names the library and how to get it."""
    wanted = f"libpython{sys.version_info.major}.{sys.version_info.minor}.so.1.0"
    asked: list[tuple[Path, dict[str, str]]] = []

    def missing(program: Path, env: dict[str, str]) -> list[str]:
        asked.append((program, env))
        return [wanted]

    monkeypatch.setattr(server_module, "missing_libraries", missing)
    server = TritonServer(repository, [PYTHON_MODEL], http_port=0, grpc_port=0)
    if not server.binary.bundled:
        pytest.fail("the test needs the bundled server (nvidia-pytriton)")
    root = server.binary.path.parent.parent
    stub = server_module._bundled_stub(root)  # the wheel's, not the server's temporary copy
    with pytest.raises(DenoiseError, match=rf"^{re.escape(str(stub))}: cannot load {wanted} \("):
        server.start()
    assert server.process is None
    ((program, env),) = asked
    assert program == stub  # checked with the environment the server runs in
    assert str(root.parent.parent / "nvidia_pytriton.libs") in env["LD_LIBRARY_PATH"].split(":")


def test_request_to_a_stopped_server(repository: Path) -> None:
    (port,) = free_ports(1)
    with pytest.raises(
        DenoiseError,
        match=rf"http://127\.0\.0\.1:{port}: Triton server not "
        "reachable",
    ):
        open_backend("triton", PYTHON_MODEL, url=f"127.0.0.1:{port}")


# --------------------------------------------------------------------------- real server


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[TritonServer]:
    with TritonServer(
        repository, [PYTHON_MODEL], http_port=0, grpc_port=0, startup_timeout_s=60
    ) as srv:
        yield srv


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_output_matches_onnxruntime(
    server: TritonServer, repository: Path, protocol: str
) -> None:
    url = server.http_url if protocol == "http" else server.grpc_url
    # A network name (what `denoise run --backend triton` passes) means denoise_python.
    backend = open_backend("triton", "nafnet", url=url, protocol=protocol)
    x = np.random.default_rng(3).random((3, 3, 21, 35), dtype=np.float32)  # 3 > max batch 2
    y = backend(x)
    ref = local_onnxruntime(repository, x)
    served = served_parameters(repository / PYTHON_MODEL / "1" / "model.onnx")
    assert backend.pad_multiple == int(served[PAD_MULTIPLE_KEY])
    assert y.shape == x.shape and y.dtype == np.float32
    assert np.abs(y - ref).max() <= 1e-5
    assert np.abs(y - x).max() > 1e-3  # the model did something
    with pytest.raises(DenoiseError, match=r"wrong input \(1, 4, 8, 8\) float32"):
        backend(np.zeros((1, 4, 8, 8), np.float32))
    with pytest.raises(DenoiseError, match=r"wrong input .* float64"):
        backend(np.zeros((1, 3, 8, 8)))
    with pytest.raises(DenoiseError, match=r"wrong input \(0, 3, 8, 8\) .* N >= 1"):
        backend(np.zeros((0, 3, 8, 8), np.float32))
    with pytest.raises(DenoiseError, match=r"to denoise_python failed: .*must be in \[0, 1\]"):
        backend(x * 255)  # refused by the server, in one line
    backend.close()
    default = open_backend("triton", "", url=url, protocol=protocol)  # no --model: the default
    assert default.model_name == PYTHON_MODEL
    default.close()
    # Another network's name is refused: the server holds a NAFNet (its config says so).
    with pytest.raises(
        DenoiseError,
        match=rf"{protocol}://.*: denoise_python serves nafnet, not dncnn \(pass --model "
        r"denoise_python to use it as it is\)",
    ):
        open_backend("triton", "dncnn", url=url, protocol=protocol)


def test_the_model_control_api_is_off(server: TritonServer) -> None:
    """Triton's load API runs whatever Python model a request sends (and unload stops the
    served one); loopback keeps other users' processes on the machine in reach, so it is off."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    for module, url in ((httpclient, server.http_url), (grpcclient, server.grpc_url)):
        client = module.InferenceServerClient(url)
        try:
            for call in (client.unload_model, client.load_model):
                with pytest.raises(InferenceServerException, match="not allowed"):
                    call(PYTHON_MODEL)
            assert client.is_model_ready(PYTHON_MODEL)
        finally:
            client.close()


def test_the_readmes_client_example_runs(
    server: TritonServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's Python client, as written there, against a running server."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    photo = np.random.default_rng(9).integers(0, 256, (37, 45, 3), dtype=np.uint8)
    write_rgb8(tmp_path / "photo.png", photo)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(code.replace("127.0.0.1:8000", server.http_url), namespace)
    assert namespace["rgb"].shape == photo.shape and (namespace["rgb"] == photo).all()
    out = namespace["out"]
    assert out.shape == photo.shape and out.dtype == np.uint8
    want = local_onnxruntime(server.repository, to_batch(photo))[0].transpose(1, 2, 0)
    assert np.abs(out.astype(int) - to_uint8(want)).max() <= 1


def test_waiting_requests_run_as_one_batch_each_getting_its_own_rows(
    server: TritonServer, repository: Path
) -> None:
    """Dynamic batching: requests sent together while the model is busy are joined (fewer
    model runs than images); each answer must still be its own input's output, also where
    waiting requests differ in size. Whether a burst finds the model busy depends on how the
    machine schedules the threads (once in CI, all twelve ran alone), so up to three bursts."""
    import concurrent.futures
    import threading

    rng = np.random.default_rng(5)
    # Runs long enough (tens of ms) for the others to arrive meanwhile, even on a loaded machine.
    inputs = [rng.random((1, 3, 240 + 16 * (i % 2), 256), dtype=np.float32) for i in range(12)]
    start = threading.Barrier(len(inputs), timeout=60)

    def send(k: int) -> np.ndarray:
        # each in its own thread: tritonclient's HTTP client cannot change threads
        with contextlib.closing(TritonBackend(server.http_url, "http", PYTHON_MODEL)) as client:
            start.wait()
            return client(inputs[k])

    bursts = []
    for _ in range(3):
        with contextlib.closing(TritonBackend(server.http_url, "http", PYTHON_MODEL)) as stats:
            before = stats.counts()
            with concurrent.futures.ThreadPoolExecutor(len(inputs)) as pool:
                outputs = list(pool.map(send, range(len(inputs))))
            after = stats.counts(at_least=before[0] + len(inputs))
            images, runs = (a - b for a, b in zip(after, before, strict=True))
        assert images == len(inputs)
        for x, y in zip(inputs, outputs, strict=True):
            assert np.abs(y - local_onnxruntime(repository, x)).max() <= 1e-5
        bursts.append(runs)
        if runs < images:  # at least two requests ran as one
            break
        start.reset()
    assert bursts[-1] < len(inputs), f"model runs per burst of {len(inputs)}: {bursts}"


def test_server_rejects_a_wrong_shape_itself(server: TritonServer) -> None:
    backend = TritonBackend(server.http_url, "http", PYTHON_MODEL)
    with pytest.raises(DenoiseError, match=r"request to denoise_python failed: .*noisy"):
        backend._infer(np.zeros((1, 4, 8, 8), np.float32))  # skip the client-side check
    backend.close()


def test_unknown_model_names_what_is_served(server: TritonServer) -> None:
    with pytest.raises(DenoiseError, match=r"'denoise_trt' is not ready.*ready: denoise_python"):
        TritonBackend(server.http_url, "http", TRT_MODEL)


@pytest.mark.parametrize(("tile", "overlap"), [(32, 8), (0, 0)])
def test_cli_run_with_the_triton_backend(
    server: TritonServer,
    repository: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tile: int,
    overlap: int,
) -> None:
    """`denoise run --backend triton --url` writes what local onnxruntime gives, tiled alike:
    tiles (or a whole image, tile 0) whose sides are no multiple of the network's are
    reflect-padded as for local backends (the server's config says the multiple), not left
    to the network's zero padding, which spoils the bottom and right edges."""
    monkeypatch.chdir(tmp_path)  # no params.yaml here: the server's default model
    rng = np.random.default_rng(5)
    noisy = (rng.random((37, 53, 3)) * 255).astype(np.uint8)
    write_rgb8(tmp_path / "photo.png", noisy)
    tiles = ["--tile", str(tile), "--overlap", str(overlap)]
    args = ["run", "photo.png", "--backend", "triton", "--url", server.http_url, *tiles]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "photo_denoised.png" in result.output
    served = read_rgb8(tmp_path / "photo_denoised.png")
    local = OnnxRuntimeBackend(
        repository / PYTHON_MODEL / "1" / "model.onnx", providers=["CPUExecutionProvider"]
    )
    assert local.pad_multiple > 1
    ref = denoise_image(noisy, local, tile=tile, overlap=overlap)
    assert served.shape == ref.shape == noisy.shape
    assert np.abs(served.astype(int) - ref.astype(int)).max() <= 1
    assert np.abs(served.astype(int) - noisy.astype(int)).max() > 5  # the model did something


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999", "127.0.0.1:abc", "127.0.0.1:0"])
def test_a_url_without_a_usable_port_is_one_line_before_any_client(
    tmp_path: Path, url: str
) -> None:
    """tritonclient half-builds a client for such a port, whose clean-up then prints a
    traceback after the error: refused before, in a process of its own to see its stderr."""
    write_rgb8(tmp_path / "photo.png", np.zeros((8, 8, 3), np.uint8))
    cmd = ["run", "photo.png", "--backend", "triton", "--url", url]
    proc = subprocess.run(
        [sys.executable, "-m", "denoise", *cmd],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: {url}: expected host:port with a port from 1 to 65535"


SMOKE_METRICS = Path("metrics") / "triton_smoke.json"  # under the test's tmp_path


def smoke_with_reference(
    reference: type[OnnxRuntimeBackend],
    server: TritonServer,
    repository: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    images: int = 2,
) -> dict:
    """The smoke test on ``images`` test images against the running ``server`` (standing in
    for the one smoke_test would start), with ``reference`` standing in for local
    onnxruntime; metrics in ``tmp_path / SMOKE_METRICS``."""
    monkeypatch.setattr(smoke_module, "OnnxRuntimeBackend", reference)
    monkeypatch.setattr(
        smoke_module, "TritonServer", lambda *a, **k: contextlib.nullcontext(server)
    )
    write_test_split(tmp_path / "test", images)
    settings = smoke_settings(server.http_port, server.grpc_port, images=images)
    return smoke_test(repository, tmp_path / "test", tmp_path / SMOKE_METRICS, settings)


def test_smoke_test_over_tolerance_writes_metrics_and_names_the_model(
    server: TritonServer,
    repository: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A served output 0.25 off the local reference fails the smoke test after the metrics
    are written."""

    class ShiftedReference(OnnxRuntimeBackend):
        def __call__(self, batch: np.ndarray) -> np.ndarray:
            return super().__call__(batch) + 0.25

    with pytest.raises(
        DenoiseError,
        match=r"^denoise_python over http: served output differs from local onnxruntime "
        r"by 0\.25 \(> triton\.tolerance 0\.001\)$",
    ):
        smoke_with_reference(ShiftedReference, server, repository, tmp_path, monkeypatch, 1)
    report = json.loads((tmp_path / SMOKE_METRICS).read_text())
    per_protocol = report["models"][PYTHON_MODEL]
    assert list(per_protocol) == ["http"]  # stopped at the first failure, before grpc
    assert per_protocol["http"]["max_abs_diff_vs_onnxruntime"] == pytest.approx(0.25, abs=1e-5)
    assert report["images"] == 1 and report["crop"] == 16


def test_smoke_test_fails_on_a_nan_in_any_image(
    server: TritonServer,
    repository: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class NaNOnTheSecondImage(OnnxRuntimeBackend):
        calls = 0

        def __call__(self, batch: np.ndarray) -> np.ndarray:
            type(self).calls += 1
            out = super().__call__(batch)
            return out * np.nan if type(self).calls == 2 else out

    with pytest.raises(DenoiseError, match=r"differs from local onnxruntime by nan"):
        smoke_with_reference(NaNOnTheSecondImage, server, repository, tmp_path, monkeypatch)


def test_smoke_test_compares_a_batch_of_two_odd_sized_crops_too(
    server: TritonServer,
    repository: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The test crops go one per request; a batch of two must match as well, cut to odd
    sizes where the crops allow (and to the smaller of two whole images)."""

    class OffOnBatches(OnnxRuntimeBackend):
        def __call__(self, batch: np.ndarray) -> np.ndarray:
            return super().__call__(batch) + (0.5 if len(batch) > 1 else 0.0)

    with pytest.raises(DenoiseError, match=r"differs from local onnxruntime by 0\.5"):
        smoke_with_reference(OffOnBatches, server, repository, tmp_path, monkeypatch)
    crops = [np.zeros((1, 3, 256, 256)), np.zeros((1, 3, 300, 260))]
    assert smoke_module._odd_batch(crops).shape == (2, 3, 237, 253)
    assert smoke_module._odd_batch(crops[:1]).shape == (2, 3, 237, 253)
    assert smoke_module._odd_batch([np.zeros((1, 3, 40, 56))]).shape == (2, 3, 40, 56)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("127.0.0.1:8000", ("127.0.0.1:8000", False)),
        ("http://127.0.0.1:8000", ("127.0.0.1:8000", False)),
        ("HTTPS://triton.example:443", ("triton.example:443", True)),
    ],
)
def test_split_url_keeps_tls_for_https(url: str, expected: tuple[str, bool]) -> None:
    assert split_url(url) == expected


def test_https_reaches_the_client_as_tls_and_other_schemes_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[dict] = []

    class Client:
        def __init__(self, url: str, **kwargs: object) -> None:
            seen.append({"url": url, **kwargs})

        def is_model_ready(self, name: str) -> bool:
            return True

        def get_model_config(self, name: str) -> dict:
            return {"max_batch_size": 4}

    module = types.SimpleNamespace(InferenceServerClient=Client)
    monkeypatch.setattr(client_module, "_client_module", lambda protocol: module)
    TritonBackend("https://triton.example:443", "http", PYTHON_MODEL)
    assert seen[-1]["url"] == "triton.example:443" and seen[-1]["ssl"] is True
    # a client for the questions before inference, then one with the inference timeout
    probe, infer = seen[-2:]
    assert probe["network_timeout"] == client_module.PROBE_TIMEOUT_S < 120.0
    assert infer["network_timeout"] == 120.0 and probe["ssl"] is True
    TritonBackend("127.0.0.1:8000", "http", PYTHON_MODEL)
    assert seen[-1]["ssl"] is False
    with pytest.raises(DenoiseError, match=r"ftp://x:1: unsupported scheme 'ftp'"):
        TritonBackend("ftp://x:1", "http", PYTHON_MODEL)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_server_that_never_answers_is_reported_after_the_probe_timeout(
    monkeypatch: pytest.MonkeyPatch, protocol: str
) -> None:
    """Something listening on the port that never answers: an error after the short probe
    timeout, not a wait as long as the inference timeout (120 s)."""
    monkeypatch.setattr(client_module, "PROBE_TIMEOUT_S", 0.5)
    with socket.socket() as listener:  # accepts connections (the kernel does), never answers
        listener.bind((HOST, 0))
        listener.listen()
        url = f"{HOST}:{listener.getsockname()[1]}"
        t0 = time.monotonic()
        with pytest.raises(DenoiseError, match=rf"{protocol}://{url}: Triton server not reach"):
            TritonBackend(url, protocol, PYTHON_MODEL)
        assert time.monotonic() - t0 < 30  # a bound on a hang, not a speed target


def test_a_port_in_time_wait_is_free_to_serve_on() -> None:
    # What a server that just stopped with clients connected leaves behind.
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = socket.create_connection((HOST, port))
        conn, _ = listener.accept()
        conn.close()  # the server side closes first, so its end waits in TIME_WAIT
        assert port_in_use(port)  # still listening
    client.close()
    assert not port_in_use(port)


@pytest.mark.parametrize(
    ("ports", "models", "message"),
    [
        ((99999, 8001), [PYTHON_MODEL], r"must be 1-65535, or 0 for any free port \(got 99999"),
        ((-1, 8001), [PYTHON_MODEL], r"must be 1-65535, or 0 for any free port \(got -1"),
        ((8000, 8000), [PYTHON_MODEL], r"must differ \(both 8000\)"),
        ((8000, 8001), ["../elsewhere"], r"'\.\./elsewhere': not a model name"),
    ],
)
def test_bad_ports_and_model_names_are_refused_before_a_start(
    repository: Path, ports: tuple[int, int], models: list[str], message: str
) -> None:
    """What `denoise serve --http-port/--model` passes on: one line, not a bind() traceback,
    a minute's wait, or a copy outside the private repository."""
    with pytest.raises(DenoiseError, match=message):
        TritonServer(repository, models, http_port=ports[0], grpc_port=ports[1])


def test_ports_of_the_kernels_choosing_are_distinct_and_free() -> None:
    assert port_problems(0, 0) == [] and port_problems(0, 8001) == []
    http, grpc = free_ports(2)
    assert http != grpc and not port_in_use(http) and not port_in_use(grpc)


def test_a_free_port_taken_before_the_server_binds_it_costs_a_retry(
    server: TritonServer,
    repository: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Two experiments of a parallel queue may be given the same free port, and the other's
    Triton may bind it first (here: the module's running server). Its answers must not pass
    for this server's readiness: this one's process exits ("already in use") and it starts
    again on other ports, saying so."""
    real = server_module.free_ports
    (grpc,) = real(1)
    taken = server.http_port
    picks = [[taken]]  # the first try gets the other server's port
    monkeypatch.setattr(server_module, "free_ports", lambda n: picks.pop() if picks else real(n))
    with TritonServer(repository, [PYTHON_MODEL], http_port=0, grpc_port=grpc) as srv:
        assert srv.http_port not in (0, taken) and srv.grpc_port == grpc
        assert not picks  # the taken port was tried first
        assert srv.process is not None and srv.process.poll() is None  # its own, running
        assert TritonBackend(srv.http_url, "http", PYTHON_MODEL).max_batch_size >= 1
    assert f"{taken}' already in use" in capsys.readouterr().out  # the note of the retry


def test_a_given_port_taken_before_the_bind_is_not_retried(
    repository: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Other ports cannot help where the port taken is the one the user gave: one error."""
    real_in_use, checked = server_module.port_in_use, []

    def in_use(port: int) -> bool:  # the check before the start finds the port free...
        checked.append(port)
        return len(checked) > 1 and real_in_use(port)

    monkeypatch.setattr(server_module, "port_in_use", in_use)
    with socket.socket() as busy:  # ...and then it is taken
        busy.bind((HOST, 0))
        busy.listen()
        grpc = busy.getsockname()[1]
        srv = TritonServer(repository, [PYTHON_MODEL], http_port=0, grpc_port=grpc)
        with pytest.raises(DenoiseError, match=rf"{grpc}' already in use"):
            srv.start()
    assert srv.process is None and "starting again" not in capsys.readouterr().out


def test_a_model_named_twice_is_served_once(repository: Path) -> None:
    srv = TritonServer(repository, [PYTHON_MODEL, PYTHON_MODEL], http_port=1, grpc_port=2)
    assert srv.models == [PYTHON_MODEL]


def test_the_reason_given_is_the_servers_error_not_its_routine_lines(repository: Path) -> None:
    srv = TritonServer(repository, [PYTHON_MODEL], http_port=1, grpc_port=2)
    gpu = 'E1127 10:00:00.000000 1 pinned_memory_manager.cc:1] "CudaDriverHelper has not been '
    srv._log.extend([f'{gpu}initialized."', "I1127 10:00:01.000000 1 server.cc:1] started"])
    assert srv._log_reason() == "no error in the server log"  # not the GPU line of every start
    srv._log.append("error: creating server: Invalid argument - a running server's complaint")
    assert srv._log_reason().startswith("error: creating server")
    # a bad argument: the usage text (one of its lines says "error"), then the reason
    srv._log.extend(["Usage: tritonserver [options]", "  --load-model ... will result in error"])
    srv._log.append("The server cannot listen to HTTP requests and GRPC requests at the same")
    assert srv._log_reason(exited=True).startswith("The server cannot listen")
    srv._log.append('E1127 10:00:02.000000 1 model.cc:1] "failed to load denoise_python"')
    assert srv._log_reason() == '"failed to load denoise_python"'


def test_stop_kills_the_group_and_frees_the_ports(repository: Path) -> None:
    srv = TritonServer(repository, [PYTHON_MODEL], http_port=0, grpc_port=0)
    with srv:
        pid = srv.process.pid
        assert 0 not in (srv.http_port, srv.grpc_port)  # the ports the kernel chose
        assert srv.start_s is not None and srv.start_s > 0
        assert port_in_use(srv.http_port) and port_in_use(srv.grpc_port)
        # the python backend names its shared memory as told; one left as by a server
        # stopped mid-load, which stop() must remove too
        assert list(SHM_DIR.glob(f"{srv.shm_prefix}*"))
        (SHM_DIR / f"{srv.shm_prefix}left_behind").write_bytes(b"")
    assert srv.process is None and process_gone(pid)  # server and python stubs
    assert not list(SHM_DIR.glob(f"{srv.shm_prefix}*"))
    assert not port_in_use(srv.http_port) and not port_in_use(srv.grpc_port)
    # The server ran on a private copy: nothing (e.g. __pycache__) written into the repository.
    assert not list(repository.rglob("__pycache__"))
    with pytest.raises(DenoiseError, match="Triton server not reachable"):
        TritonBackend(srv.http_url, "http", PYTHON_MODEL)


def test_model_that_cannot_load_reports_the_servers_reason(
    repository: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    model_dir = repo / PYTHON_MODEL
    model_dir.mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(
        (repository / PYTHON_MODEL / "config.pbtxt").read_text()
    )
    (model_dir / "1").mkdir()  # model.py without its model.onnx
    (model_dir / "1" / "model.py").write_text(PYTHON_MODEL_TEMPLATE.read_text())
    srv = TritonServer(
        repo,
        [PYTHON_MODEL],
        http_port=0,
        grpc_port=0,
        startup_timeout_s=60,
    )
    with pytest.raises(DenoiseError, match=r"denoise_python: model not ready: .*\.onnx") as err:
        srv.start()
    assert srv.process is None
    # named in the user's repository, not in the server's private copy (gone by now)
    assert str(model_dir) in str(err.value) and "denoise-triton-" not in str(err.value)


@pytest.mark.parametrize("fault", ["cut config", "no version", "no model.py"])
def test_a_broken_repository_fails_at_once_with_the_reason(
    repository: Path, tmp_path: Path, fault: str
) -> None:
    """Triton lists such a model without a state, or not at all, and logs the reason before a
    summary that gives none: no 60 s wait for a model that will never load, and the reason."""
    repo = tmp_path / "repo"
    shutil.copytree(repository / PYTHON_MODEL, repo / PYTHON_MODEL)
    config = repo / PYTHON_MODEL / "config.pbtxt"
    if fault == "cut config":
        text = config.read_text()
        config.write_text(text[: text.index("input [") + len("input [")])
        reason = "config.pbtxt"
    else:  # refused before the server starts: a python model needs a version with model.py
        if fault == "no version":
            shutil.rmtree(repo / PYTHON_MODEL / "1")
        else:
            (repo / PYTHON_MODEL / "1" / "model.py").unlink()
        reason = "a python-backend model without <version>/model.py"
    srv = TritonServer(repo, [PYTHON_MODEL], http_port=0, grpc_port=0, startup_timeout_s=60)
    started = time.monotonic()
    with pytest.raises(DenoiseError) as err:
        srv.start()
    assert time.monotonic() - started < 30
    message = str(err.value)
    assert message.startswith(f"{repo / PYTHON_MODEL}: "), message
    assert reason in message and "failed to load all models" not in message, message
    assert srv.process is None


def test_serve_ended_by_sigterm_says_so_and_exits_143(repository: Path) -> None:
    """Ctrl-C is how a user stops `denoise serve` (exit 0); SIGTERM from a supervisor is not."""
    ports = ["--http-port", "0", "--grpc-port", "0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "denoise", "serve", "--repo", str(repository), *ports],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        while not (line := proc.stdout.readline()).startswith("serving "):
            assert line, proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 143 and err.splitlines()[-1] == "terminated", err


def test_sigterm_stops_the_server(repository: Path, tmp_path: Path) -> None:
    """A stage killed with SIGTERM still stops its server (process group, ports)."""
    http, grpc = free_ports(2)
    script = tmp_path / "hold.py"
    script.write_text(
        textwrap.dedent(f"""
        import time
        from denoise.triton.server import TritonServer
        with TritonServer({str(repository)!r}, ["denoise_python"], http_port={http},
                          grpc_port={grpc}) as srv:
            print(srv.process.pid, srv._workdir.name, srv.shm_prefix, flush=True)
            time.sleep(120)
    """)
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        pid, workdir, shm_prefix = proc.stdout.readline().split()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    deadline = time.monotonic() + 10
    while not process_gone(int(pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert process_gone(int(pid))
    assert not port_in_use(http) and not port_in_use(grpc)
    # Stopped by the stage itself, not only by the kernel's parent-death signal: the private
    # repository copy and the shared memory are gone too.
    assert proc.returncode != -signal.SIGTERM
    assert not Path(workdir).exists() and not list(SHM_DIR.glob(f"{shm_prefix}*"))


def test_serve_reports_a_server_that_died_on_its_own(repository: Path) -> None:
    """`denoise serve` whose tritonserver is killed (not by Ctrl-C): one line saying how,
    exit code 1 (not the negative code as 247, silently). Asked for any free ports, it says
    which it got."""
    args = ["serve", "--repo", str(repository), "--http-port", "0", "--grpc-port", "0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "denoise", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while "serving" not in (line := proc.stdout.readline()):
            assert line, proc.stderr.read()[-2000:]  # exited before serving
        found = re.search(r"on http://127\.0\.0\.1:(\d+) and grpc 127\.0\.0\.1:(\d+) ", line)
        assert found, line
        http, grpc = map(int, found.groups())
        assert port_in_use(http) and port_in_use(grpc)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        (server_pid,) = map(int, children)
        os.kill(server_pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 1
    assert "error: tritonserver was killed by signal SIGKILL" in err
    assert not port_in_use(http) and not port_in_use(grpc)


# --------------------------------------------------------------------------- smoke test


def write_test_split(root: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / f"{i + 1:04d}_001_S6_00100_00060_3200_L"
        folder.mkdir(parents=True)
        clean = (rng.random((40, 56, 3)) * 255).astype(np.uint8)
        noisy = np.clip(clean + rng.normal(0, 20, clean.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / "GT_SRGB_010.PNG"), clean)
        cv2.imwrite(str(folder / "NOISY_SRGB_010.PNG"), noisy)


def test_smoke_test_end_to_end(repository: Path, tmp_path: Path) -> None:
    write_test_split(tmp_path / "test", 2)
    settings = smoke_settings(0, 0, images=2, crop=32, repeats=2, warmup=1, tolerance=1e-5)
    running = servers()  # another test's, kept for the module
    metrics = tmp_path / "metrics" / "triton_smoke.json"
    report = smoke_test(repository, tmp_path / "test", metrics, settings)
    assert json.loads(metrics.read_text()) == report
    assert report["images"] == 2 and report["server"]["bundled"]
    assert report["server"]["binary"] == "tritonserver of nvidia-pytriton 0.7.0"  # no path
    for protocol in ("http", "grpc"):
        m = report["models"][PYTHON_MODEL][protocol]
        assert m["max_abs_diff_vs_onnxruntime"] <= 1e-5
        assert 0 < m["latency_p50_ms"] <= m["latency_p95_ms"]
        assert m["throughput_img_s"] > 0
        assert 5 < m["psnr_in"] < 30 and np.isfinite(m["psnr_out"])
    together = report["concurrent"][PYTHON_MODEL]
    assert (together["clients"], together["requests"]) == (2, 4)
    assert together["max_abs_diff_vs_onnxruntime"] <= 1e-5 and together["throughput_img_s"] > 0
    assert together["images_per_execution"] >= 1
    assert servers() == running  # its server stopped


def test_smoke_settings_reject_impossible_values() -> None:
    import yaml

    section = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())["triton"]
    assert SmokeSettings.from_params(section).tolerance == section["tolerance"]
    assert SmokeSettings.from_params({**section, "binary": None}).binary is None  # -S ...=null
    for bad, match in (
        (
            {"http_port": 65536},
            rf"http_port and grpc_port must be 1-65535, or 0 for any free port "
            rf"\(got 65536, {section['grpc_port']}\)",
        ),
        (
            {"http_port": 8000, "grpc_port": 8000},
            r"http_port and grpc_port must differ \(both 8000\)",
        ),
        ({"repeats": 0}, "images, repeats and clients must be >= 1"),
        ({"clients": 0}, "images, repeats and clients must be >= 1"),
        ({"tolerance": -1.0}, "warmup, tolerance and crop must be >= 0"),
        ({"crop": -5}, "warmup, tolerance and crop must be >= 0"),
        ({"models": []}, "models must name at least one model"),
    ):
        with pytest.raises(DenoiseError, match=rf"^params\.yaml triton: {match}$"):
            SmokeSettings.from_params({**section, **bad})


def test_the_python_model_spells_the_repository_layout_as_the_writer_does() -> None:
    """python_model.py runs in Triton's stub without this package, so it writes the file name
    and the threads key out; a rename on one side only would break the served model."""
    from denoise.triton import repository

    source = repository.PYTHON_MODEL_TEMPLATE.read_text()
    assert f'/ "{repository.ONNX_FILE}"' in source
    assert f'params.get("{repository.THREADS_KEY}", "0")' in source
