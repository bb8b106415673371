"""Triton: the model repository, a real ``tritonserver`` process, a client, and the smoke test.

Repository layout (what Triton expects)::

    <repo>/denoise_onnx/config.pbtxt     + 1/model.onnx    platform onnxruntime_onnx
    <repo>/denoise_python/config.pbtxt   + 1/model.onnx + 1/model.py   backend python
    <repo>/denoise_trt/config.pbtxt      + 1/model.plan    platform tensorrt_plan (GPU only)

Every model takes ``noisy`` and returns ``denoised``: FP32, dims ``[3, -1, -1]`` plus the batch
dimension (``max_batch_size > 0``), values in [0, 1].

The server is either a full ``tritonserver`` on PATH (or given explicitly) or the CPU-only one
bundled in the nvidia-pytriton wheel, which has the python backend only, so it serves
``denoise_python``. For that one this module prepares a backend folder holding the python
stub that matches the running interpreter, puts the interpreter's ``LIBDIR`` first on
``LD_LIBRARY_PATH`` (else the stub may load a different libpython) and this environment's
``bin`` first on ``PATH`` (the stub ignores PYTHONPATH and finds its interpreter, hence numpy
and onnxruntime, as ``python3`` on PATH). Servers bind 127.0.0.1 only, run in their own process
group and are always stopped, also on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from denoise.errors import DenoiseError, first_line
from denoise.fileio import atomic_path, write_json
from denoise.infer import OnnxRuntimeBackend, register_backend
from denoise.params import checked_section

INPUT_NAME = "noisy"
OUTPUT_NAME = "denoised"
ONNX_MODEL = "denoise_onnx"
PYTHON_MODEL = "denoise_python"
TRT_MODEL = "denoise_trt"
# The Triton models the export stage writes from one ONNX file (route -> model name).
ONNX_ROUTES = {"onnx": ONNX_MODEL, "python": PYTHON_MODEL}
PYTHON_MODEL_TEMPLATE = Path(__file__).with_name("triton_python_model.py")
HOST = "127.0.0.1"


# --------------------------------------------------------------------------- repository


def model_config(
    name: str,
    *,
    max_batch_size: int,
    platform: str | None = None,
    backend: str | None = None,
    instance_kind: str | None = None,
    parameters: dict[str, str] | None = None,
) -> str:
    """The ``config.pbtxt`` text of one denoiser model (exactly one of platform/backend)."""
    if (platform is None) == (backend is None):
        raise ValueError("give exactly one of platform and backend")
    if max_batch_size < 1:
        raise DenoiseError(
            f"{name}: max_batch_size must be > 0 (got {max_batch_size}); "
            "dims [3, -1, -1] rely on the batch dimension"
        )
    lines = [
        f'name: "{name}"',
        f'platform: "{platform}"' if platform else f'backend: "{backend}"',
        f"max_batch_size: {max_batch_size}",
    ]
    for kind, tname in (("input", INPUT_NAME), ("output", OUTPUT_NAME)):
        lines += [
            f"{kind} [",
            "  {",
            f'    name: "{tname}"',
            "    data_type: TYPE_FP32",
            "    dims: [ 3, -1, -1 ]",
            "  }",
            "]",
        ]
    if instance_kind:
        lines += [
            "instance_group [",
            "  {",
            "    count: 1",
            f"    kind: {instance_kind}",
            "  }",
            "]",
        ]
    for key, value in (parameters or {}).items():
        lines += ["parameters {", f'  key: "{key}"', f'  value: {{ string_value: "{value}" }}', "}"]
    return "\n".join(lines) + "\n"


def write_model(
    repository: str | Path, name: str, config: str, files: dict[str, str | Path]
) -> Path:
    """Write ``<repository>/<name>/`` (config.pbtxt + ``1/<file>`` for each of ``files``).

    The folder is staged and swapped in whole: a reader sees the old model or the new one.
    """
    target = Path(repository) / name
    with atomic_path(target) as tmp:
        (tmp / "1").mkdir(parents=True)
        (tmp / "config.pbtxt").write_text(config)
        for dst, src in files.items():
            shutil.copyfile(src, tmp / "1" / dst)
    return target


def write_onnx_route(
    repository: str | Path,
    route: str,
    onnx_path: str | Path,
    *,
    max_batch_size: int,
    python_threads: int = 0,
) -> Path:
    """Write the repository entry of one ONNX route: ``onnx`` or ``python``."""
    if route == "onnx":
        config = model_config(
            ONNX_MODEL, platform="onnxruntime_onnx", max_batch_size=max_batch_size
        )
        return write_model(repository, ONNX_MODEL, config, {"model.onnx": onnx_path})
    if route == "python":
        config = model_config(
            PYTHON_MODEL,
            backend="python",
            max_batch_size=max_batch_size,
            instance_kind="KIND_CPU",
            parameters={"intra_op_threads": str(python_threads)},
        )
        return write_model(
            repository,
            PYTHON_MODEL,
            config,
            {"model.onnx": onnx_path, "model.py": PYTHON_MODEL_TEMPLATE},
        )
    raise DenoiseError(f"unknown export route {route!r}; known: {sorted(ONNX_ROUTES)}")


def reference_onnx(repository: str | Path) -> Path:
    """The exported ONNX in the repository (both ONNX routes hold the same file)."""
    for name in (ONNX_MODEL, PYTHON_MODEL):
        path = Path(repository) / name / "1" / "model.onnx"
        if path.is_file():
            return path
    raise DenoiseError(
        f"{repository}: no {ONNX_MODEL}/1/model.onnx or {PYTHON_MODEL}/1/"
        "model.onnx (run the export-onnx stage first)"
    )


def exported_model(backend: str, repository: str | Path) -> Path:
    """The file the pipeline last exported for a local ``backend`` (onnxruntime, tensorrt)."""
    if backend == "onnxruntime":
        return reference_onnx(repository)
    plan = Path(repository) / TRT_MODEL / "1" / "model.plan"
    if backend != "tensorrt":
        raise DenoiseError(f"backend {backend!r} has no exported model file; pass --model")
    if not plan.is_file():
        raise DenoiseError(f"{plan}: not found (the build-trt stage writes it on a TensorRT GPU)")
    return plan


# --------------------------------------------------------------------------- server


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system
        shutil.copy2(src, dst)


@dataclass(frozen=True)
class ServerBinary:
    """A tritonserver executable; ``bundled`` is the python-backend-only one of pytriton."""

    path: Path
    bundled: bool


def _pytriton_root() -> Path | None:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "tritonserver"


def find_server(binary: str | Path | None = None) -> ServerBinary:
    """Locate tritonserver: ``binary`` if given, else ``tritonserver`` on PATH, else pytriton's."""
    root = _pytriton_root()
    bundled = root / "bin" / "tritonserver" if root else None
    if binary:
        path = Path(binary)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise DenoiseError(f"{path}: tritonserver binary not found or not executable")
        return ServerBinary(path, bundled is not None and path.resolve() == bundled.resolve())
    on_path = shutil.which("tritonserver")
    if on_path:
        return ServerBinary(Path(on_path), False)
    if bundled is not None and bundled.is_file():
        return ServerBinary(bundled, True)
    raise DenoiseError(
        "tritonserver binary not found: none on PATH and no nvidia-pytriton "
        "(pip install nvidia-pytriton==0.7.0, or set triton.binary)"
    )


def port_in_use(port: int, host: str = HOST) -> bool:
    """True when ``host:port`` cannot be bound (another process listens there)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _bundled_backend_dir(root: Path, workdir: Path) -> Path:
    """A backend folder for the bundled server with the stub of *this* Python version.

    pytriton ships one stub per Python minor version beside the backend; Triton looks for it
    at ``<backend-directory>/python/triton_python_backend_stub``.
    """
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise DenoiseError(f"{stub}: no Triton python backend stub for Python {version}")
    backend = workdir / "backends" / "python"
    backend.mkdir(parents=True)
    for item in (root / "backends" / "python").iterdir():
        if item.is_file():
            (backend / item.name).symlink_to(item)
    shutil.copy2(stub, backend / stub.name)
    return workdir / "backends"


def _bundled_env(root: Path) -> dict[str, str]:
    """Environment for the bundled server and its python stub (see the module docstring)."""
    env = dict(os.environ)
    # The stub ignores PYTHONPATH; it finds its interpreter by looking up ``python3`` on PATH,
    # so our environment's bin first gives it our site-packages (as pytriton does).
    env["PATH"] = os.pathsep.join([str(Path(sys.exec_prefix) / "bin"), env.get("PATH", "")])
    libdirs = [
        sysconfig.get_config_var("LIBDIR") or "",
        str(root.parent.parent / "nvidia_pytriton.libs"),
        env.get("LD_LIBRARY_PATH", ""),
    ]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(d for d in libdirs if d)
    return env


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when this process dies (Linux), so a
    killed stage never leaves a server holding the ports. libc is loaded here, in the parent:
    the child between fork and exec must not import anything."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig, sigterm = 1, int(signal.SIGTERM)
    return lambda: prctl(pr_set_pdeathsig, sigterm)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so ``finally`` blocks stop the server."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class TritonServer:
    """A tritonserver process on ``repository``, loading ``models`` explicitly.

    Use as a context manager: entering starts the server and waits until every model is
    ready (or raises DenoiseError with the server's own reason); leaving always stops it.
    """

    def __init__(
        self,
        repository: str | Path,
        models: Sequence[str],
        *,
        http_port: int = 8000,
        grpc_port: int = 8001,
        binary: str | Path | None = None,
        startup_timeout_s: float = 60.0,
        echo: bool = False,
    ) -> None:
        self.repository = Path(repository).resolve()
        self.models = list(models)
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.binary = find_server(binary)
        self.startup_timeout_s = startup_timeout_s
        self.echo = echo
        self.process: subprocess.Popen[bytes] | None = None
        self.start_s: float | None = None
        self._log: collections.deque[str] = collections.deque(maxlen=400)
        self._reader: threading.Thread | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self._signals: contextlib.ExitStack | None = None

    @property
    def http_url(self) -> str:
        return f"{HOST}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{HOST}:{self.grpc_port}"

    def _snapshot(self, target: Path) -> Path:
        """A private copy (hard links where possible) of the models to serve.

        The server must not write into the repository: the python backend leaves a
        ``__pycache__`` in the model folder, which would change a DVC-tracked output.
        """
        for model in self.models:
            shutil.copytree(
                self.repository / model,
                target / model,
                copy_function=_link_or_copy,
                ignore=shutil.ignore_patterns("__pycache__"),
            )
        return target

    def command(self, repository: Path, backend_dir: Path | None) -> list[str]:
        cmd = [
            str(self.binary.path),
            f"--model-repository={repository}",
            "--model-control-mode=explicit",
            "--exit-on-error=false",
            "--strict-readiness=true",
            "--allow-metrics=false",
            f"--http-address={HOST}",
            f"--http-port={self.http_port}",
            f"--grpc-address={HOST}",
            f"--grpc-port={self.grpc_port}",
        ]
        cmd += [f"--load-model={m}" for m in self.models]
        if backend_dir is not None:
            cmd.append(f"--backend-directory={backend_dir}")
        return cmd

    def start(self) -> float:
        """Start the server and wait until it is ready; returns the seconds that took."""
        if not self.repository.is_dir():
            raise DenoiseError(f"{self.repository}: model repository not found")
        for model in self.models:
            if not (self.repository / model / "config.pbtxt").is_file():
                raise DenoiseError(
                    f"{self.repository / model}: no config.pbtxt (model not in the repository)"
                )
        for label, port in (("http", self.http_port), ("grpc", self.grpc_port)):
            if port_in_use(port):
                raise DenoiseError(f"{HOST}:{port}: port already in use (triton {label} port)")
        self._workdir = tempfile.TemporaryDirectory(prefix="denoise-triton-")
        try:
            workdir = Path(self._workdir.name)
            snapshot = self._snapshot(workdir / "model_repository")
            backend_dir, env = None, dict(os.environ)
            if self.binary.bundled:
                root = self.binary.path.parent.parent
                backend_dir = _bundled_backend_dir(root, workdir)
                env = _bundled_env(root)
            t0 = time.perf_counter()
            self.process = subprocess.Popen(
                self.command(snapshot, backend_dir),
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent(),
            )
            self._reader = threading.Thread(target=self._read_log, daemon=True)
            self._reader.start()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.start_s = time.perf_counter() - t0
        return self.start_s

    def _read_log(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self._log.append(line)
            if self.echo:
                print(line, flush=True)

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(list(self._log)[-lines:])

    def _log_reason(self) -> str:
        """The server's last error line (``E...`` glog lines, or 'error:' text)."""
        lines = list(self._log)
        errors = [ln for ln in lines if re.match(r"^E\d{4} ", ln)]
        errors = errors or [ln for ln in lines if "error" in ln.lower()]
        if not errors:
            return "no error in the server log"
        return re.sub(r"^[EIW]\d{4} [\d:.]+ +\d+ \S+\] ", "", errors[-1]).strip()

    def _wait_ready(self) -> None:
        import tritonclient.http as httpclient

        assert self.process is not None
        client = httpclient.InferenceServerClient(
            self.http_url, connection_timeout=2.0, network_timeout=5.0
        )
        deadline = time.monotonic() + self.startup_timeout_s
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    if self._reader:
                        self._reader.join(timeout=2.0)
                    raise DenoiseError(
                        f"{self.binary.path}: exited with code "
                        f"{self.process.returncode} during startup: "
                        f"{self._log_reason()}"
                    )
                try:
                    live = client.is_server_live()
                    ready = live and all(client.is_model_ready(m) for m in self.models)
                except Exception:  # not listening yet
                    live = ready = False
                if ready:
                    return
                if live:
                    self._raise_unavailable(client)
                time.sleep(0.1)
        finally:
            client.close()
        raise DenoiseError(
            f"{self.repository}: models {self.models} not ready after "
            f"{self.startup_timeout_s:g} s: {self._log_reason()}"
        )

    def _raise_unavailable(self, client: Any) -> None:
        try:
            index = client.get_model_repository_index()
        except Exception:
            return
        for entry in index:
            if entry.get("name") in self.models and entry.get("state") == "UNAVAILABLE":
                reason = entry.get("reason") or self._log_reason()
                raise DenoiseError(
                    f"{self.repository / entry['name']}: model not ready: {reason.splitlines()[0]}"
                )

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop the whole process group (server and python stubs): SIGTERM, then SIGKILL."""
        proc, self.process = self.process, None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            # Stubs are in the same group; make sure none outlives the server.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            if self._reader is not None:
                self._reader.join(timeout=5.0)
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def wait(self) -> int:
        """Block until the server exits (foreground ``denoise serve``); returns its code."""
        assert self.process is not None
        return self.process.wait()

    def __enter__(self) -> TritonServer:
        self._signals = contextlib.ExitStack()
        self._signals.enter_context(_sigterm_as_interrupt())
        try:
            self.start()
        except BaseException:
            self._signals.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            if self._signals is not None:
                self._signals.close()


# --------------------------------------------------------------------------- client


def _client_module(protocol: str) -> Any:
    if protocol == "http":
        import tritonclient.http as module
    elif protocol == "grpc":
        import tritonclient.grpc as module
    else:
        raise DenoiseError(f"triton protocol {protocol!r}: expected http or grpc")
    return module


class TritonBackend:
    """A denoiser served by Triton: ``(N, 3, H, W)`` float32 in [0, 1] -> same shape.

    Batches larger than the model's ``max_batch_size`` are split into several requests.
    """

    name = "triton"

    def __init__(
        self,
        url: str = f"{HOST}:8000",
        protocol: str = "http",
        model_name: str = PYTHON_MODEL,
        timeout_s: float = 120.0,
    ) -> None:
        self.url = re.sub(r"^[a-z]+://", "", url)
        self.protocol = protocol
        self.model_name = model_name
        self._module = _client_module(protocol)
        self.timeout_s = timeout_s
        try:
            if protocol == "http":
                self._client = self._module.InferenceServerClient(
                    self.url, connection_timeout=timeout_s, network_timeout=timeout_s
                )
            else:
                self._client = self._module.InferenceServerClient(self.url)
            ready = self._client.is_model_ready(model_name)
        except Exception as e:
            raise DenoiseError(
                f"{protocol}://{self.url}: Triton server not reachable ({first_line(e)})"
            ) from None
        if not ready:
            served = ", ".join(self._ready_models()) or "none"
            raise DenoiseError(
                f"{protocol}://{self.url}: model {model_name!r} is not ready "
                f"on the server (ready: {served})"
            )
        try:
            config = self._client.get_model_config(model_name)
        except Exception as e:
            raise DenoiseError(
                f"{protocol}://{self.url}: no config for {model_name!r} ({first_line(e)})"
            ) from None
        if protocol == "grpc":
            self.max_batch_size = int(config.config.max_batch_size)
        else:
            self.max_batch_size = int(config.get("max_batch_size", 0))

    def _ready_models(self) -> list[str]:
        try:
            index = self._client.get_model_repository_index()
        except Exception:
            return []
        if self.protocol == "grpc":
            return [m.name for m in index.models if m.state == "READY"]
        return [m["name"] for m in index if m.get("state") == "READY"]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if batch.dtype != np.float32 or batch.ndim != 4 or batch.shape[1] != 3:
            raise DenoiseError(
                f"{self.model_name}: wrong input {batch.shape} {batch.dtype}, "
                "expected (N, 3, H, W) float32"
            )
        step = self.max_batch_size or len(batch)
        return np.concatenate(
            [self._infer(batch[i : i + step]) for i in range(0, len(batch), step)]
        )

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        inp = self._module.InferInput(INPUT_NAME, list(batch.shape), "FP32")
        inp.set_data_from_numpy(np.ascontiguousarray(batch))
        out = self._module.InferRequestedOutput(OUTPUT_NAME)
        kwargs = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        try:
            result = self._client.infer(self.model_name, [inp], outputs=[out], **kwargs)
        except Exception as e:
            raise DenoiseError(
                f"{self.protocol}://{self.url}: request to {self.model_name} "
                f"failed: {first_line(e)}"
            ) from None
        y = result.as_numpy(OUTPUT_NAME)
        if y is None or y.shape != batch.shape:
            got = None if y is None else y.shape
            raise DenoiseError(
                f"{self.protocol}://{self.url}: {self.model_name} returned "
                f"{got} for input {batch.shape}"
            )
        return y

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.close()


def _is_network_name(name: str) -> bool:
    from denoise.models import dncnn, nafnet  # noqa: F401  (importing registers them)
    from denoise.models.registry import MODELS

    return name in MODELS


@register_backend("triton")
def open_triton(
    model: str | Path = PYTHON_MODEL,
    *,
    url: str = f"{HOST}:8000",
    protocol: str = "http",
    model_name: str | None = None,
    **options: Any,
) -> TritonBackend:
    """The ``triton`` inference backend; ``model`` (or ``model_name``) is the served model.

    A network name such as ``nafnet`` (what ``denoise run --backend triton`` passes by
    default) means ``denoise_python``: the repository serves whichever network was exported.
    """
    name = model_name or str(model) or PYTHON_MODEL
    return TritonBackend(url, protocol, PYTHON_MODEL if _is_network_name(name) else name, **options)


# --------------------------------------------------------------------------- smoke test


@dataclass(frozen=True)
class SmokeSettings:
    """The ``triton`` section of params.yaml."""

    binary: str
    models: tuple[str, ...]
    http_port: int
    grpc_port: int
    startup_timeout_s: float
    images: int
    crop: int
    repeats: int
    warmup: int
    tolerance: float

    @classmethod
    def from_params(cls, section: dict[str, Any]) -> SmokeSettings:
        s = checked_section(cls, section, "triton")
        s["models"] = tuple(s["models"])
        settings = cls(**s)
        problems = [
            msg
            for ok, msg in (
                (
                    all(1 <= p <= 65535 for p in (settings.http_port, settings.grpc_port)),
                    "http_port and grpc_port must be 1-65535",
                ),
                (settings.http_port != settings.grpc_port, "http_port and grpc_port must differ"),
                (settings.images >= 1 and settings.repeats >= 1, "images and repeats must be >= 1"),
                (
                    settings.warmup >= 0 and settings.tolerance >= 0,
                    "warmup and tolerance must be >= 0",
                ),
                (settings.startup_timeout_s > 0, "startup_timeout_s must be > 0"),
            )
            if not ok
        ]
        if problems:
            raise DenoiseError(f"params.yaml triton: {'; '.join(problems)}")
        return settings


def _center_crop(img: np.ndarray, size: int) -> np.ndarray:
    if size <= 0:
        return img
    h, w = img.shape[:2]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return img[top : top + size, left : left + size]


def load_test_pairs(
    root: str | Path, count: int, crop: int
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(instance, noisy, clean)`` uint8 HWC pairs from a SIDD-layout test split."""
    from denoise.data.sidd_layout import GT_NAME, NOISY_NAME, list_instances
    from denoise.fileio import read_rgb8

    found = list_instances(root)[:count] if count > 0 else list_instances(root)
    return [
        (
            inst.name,
            _center_crop(read_rgb8(folder / NOISY_NAME), crop),
            _center_crop(read_rgb8(folder / GT_NAME), crop),
        )
        for inst, folder in found
    ]


def _percentile_ms(times: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(times) * 1000.0, q))


def _measure(
    backend: TritonBackend, batches: list[np.ndarray], *, repeats: int, warmup: int, desc: str
) -> tuple[list[float], list[np.ndarray]]:
    """Per-request seconds over ``repeats`` passes, and the outputs of the first pass."""
    from tqdm import tqdm

    times, outs = [], []
    try:
        for b in batches[:1] * warmup:
            backend(b)
        for i in tqdm(range(len(batches) * max(1, repeats)), desc=desc, leave=False):
            t0 = time.perf_counter()
            y = backend(batches[i % len(batches)])
            times.append(time.perf_counter() - t0)
            if i < len(batches):
                outs.append(y)
    finally:
        backend.close()
    return times, outs


def smoke_test(
    repository: str | Path, test_root: str | Path, metrics_path: str | Path, settings: SmokeSettings
) -> dict[str, Any]:
    """Serve the repository with a real tritonserver and check it over HTTP and gRPC.

    Per model and protocol: max abs difference of the served output vs local onnxruntime on
    the same ONNX file (above ``settings.tolerance`` fails, except for TensorRT engines, which
    are FP16: build-trt gates them on PSNR against onnxruntime, here it is only recorded),
    PSNR of the output and of the input vs the clean image, request latency p50/p95 and
    sequential throughput. Written to ``metrics_path``.
    """
    from denoise.metrics import psnr, to_batch, to_uint8

    pairs = load_test_pairs(test_root, settings.images, settings.crop)
    if not pairs:
        raise DenoiseError(f"{test_root}: no test images")
    batches = [to_batch(noisy) for _, noisy, _ in pairs]
    session = OnnxRuntimeBackend(reference_onnx(repository), providers=["CPUExecutionProvider"])
    local = [session(b) for b in batches]
    models = list(settings.models) or [PYTHON_MODEL]
    report: dict[str, Any] = {
        "images": len(pairs),
        "crop": settings.crop,
        "repeats": settings.repeats,
        "models": {},
    }
    psnr_in = float(np.mean([psnr(noisy, clean) for _, noisy, clean in pairs]))
    with TritonServer(
        repository,
        models,
        http_port=settings.http_port,
        grpc_port=settings.grpc_port,
        binary=settings.binary or None,
        startup_timeout_s=settings.startup_timeout_s,
    ) as server:
        report["server"] = {
            "binary": str(server.binary.path),
            "bundled": server.binary.bundled,
            "start_s": round(server.start_s or 0.0, 3),
        }
        for model in models:
            report["models"][model] = per_protocol = {}
            for protocol in ("http", "grpc"):
                url = server.http_url if protocol == "http" else server.grpc_url
                times, outs = _measure(
                    TritonBackend(url, protocol, model),
                    batches,
                    repeats=settings.repeats,
                    warmup=settings.warmup,
                    desc=f"{model} {protocol}",
                )
                diff = max(
                    float(np.max(np.abs(y - ref))) for y, ref in zip(outs, local, strict=True)
                )
                psnr_out = float(
                    np.mean(
                        [
                            psnr(to_uint8(y[0].transpose(1, 2, 0)), clean)
                            for y, (_, _, clean) in zip(outs, pairs, strict=True)
                        ]
                    )
                )
                per_protocol[protocol] = {
                    "max_abs_diff_vs_onnxruntime": diff,
                    "psnr_out": psnr_out,
                    "psnr_in": psnr_in,
                    "latency_p50_ms": _percentile_ms(times, 50),
                    "latency_p95_ms": _percentile_ms(times, 95),
                    "throughput_img_s": len(times) / sum(times),
                }
                if model != TRT_MODEL and not diff <= settings.tolerance:
                    write_json(metrics_path, report)
                    raise DenoiseError(
                        f"{model} over {protocol}: served output differs from "
                        f"local onnxruntime by {diff:.3g} (> triton.tolerance "
                        f"{settings.tolerance:g})"
                    )
    write_json(metrics_path, report)
    return report


def servable_models(repository: str | Path, server: ServerBinary) -> list[str]:
    """What a server can load from ``repository``: all models, or only the python-backend one
    for the bundled server."""
    repo = Path(repository)
    present = sorted(p.parent.name for p in repo.glob("*/config.pbtxt"))
    if server.bundled:
        present = [m for m in present if m == PYTHON_MODEL]
    if not present:
        raise DenoiseError(
            f"{repo}: no model this tritonserver can load (run `dvc repro export-onnx` first)"
        )
    return present


def serve(
    repository: str | Path,
    models: Sequence[str] = (),
    *,
    http_port: int,
    grpc_port: int,
    binary: str | None = None,
    startup_timeout_s: float = 60.0,
) -> int:
    """Run tritonserver in the foreground until it exits or Ctrl-C; returns its exit code.

    ``models`` empty: every model the server can load (see :func:`servable_models`).
    """
    models = list(models) or servable_models(repository, find_server(binary))
    server = TritonServer(
        repository,
        models,
        http_port=http_port,
        grpc_port=grpc_port,
        binary=binary,
        startup_timeout_s=startup_timeout_s,
        echo=True,
    )
    with server:
        print(
            f"serving {', '.join(models)} from {server.repository} on http://{server.http_url}"
            f" and grpc {server.grpc_url} (Ctrl-C stops)",
            flush=True,
        )
        try:
            return server.wait()
        except KeyboardInterrupt:
            return 0
