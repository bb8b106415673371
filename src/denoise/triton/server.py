"""A real ``tritonserver`` process: found, started on loopback, health-checked, always stopped."""

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
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from denoise.errors import DenoiseError
from denoise.signals import Terminated, die_with_parent, sigterm_as_interrupt
from denoise.triton.address import GRPC_PORT, HOST, HTTP_PORT
from denoise.triton.repository import PYTHON_MODEL

# Where the python backend keeps the shared-memory region of each model instance. A server
# stopped while it loads a model leaves its region there; each server's regions get a name
# of their own, which stop() removes.
SHM_DIR = Path("/dev/shm")


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


# What the bundled server logs as an error on every start on a machine without a GPU.
_HARMLESS = "CudaDriverHelper has not been initialized"
_SUMMARY = "failed to load all models"  # Triton's line after the reasons it logged


# Tries of a server on ports of the kernel's choosing: one chosen then taken by another
# process before tritonserver binds it costs a retry.
_FREE_PORT_TRIES = 3


class _PortTaken(DenoiseError):
    """tritonserver exited at startup because a port it was given is in use."""


def port_problems(http_port: int, grpc_port: int) -> list[str]:
    """What is wrong with a server's two ports (empty: nothing); the one definition for the
    triton params and ``denoise serve``. 0 is any free port."""
    problems = []
    if not all(0 <= p <= 65535 for p in (http_port, grpc_port)):
        problems.append(
            f"http_port and grpc_port must be 1-65535, or 0 for any free port "
            f"(got {http_port}, {grpc_port})"
        )
    if http_port == grpc_port != 0:
        problems.append(f"http_port and grpc_port must differ (both {http_port})")
    return problems


def free_ports(count: int, host: str = HOST) -> list[int]:
    """``count`` distinct ports free on ``host`` now: bound together on port 0, then released.

    Another process may take one before the caller binds it; :class:`TritonServer` retries.
    """
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]


def port_in_use(port: int, host: str = HOST) -> bool:
    """True when ``host:port`` cannot be bound (another process listens there).

    SO_REUSEADDR, as servers set it: a port left in TIME_WAIT by a server that just stopped
    is free to listen on again, and Linux still refuses the bind while anything listens.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _bundled_stub(root: Path) -> Path:
    """pytriton's python backend stub for *this* Python version (it ships one per minor)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise DenoiseError(f"{stub}: no Triton python backend stub for Python {version}")
    return stub


def _bundled_backend_dir(root: Path, workdir: Path) -> Path:
    """A backend folder for the bundled server with the stub of *this* Python version: Triton
    looks for it at ``<backend-directory>/python/triton_python_backend_stub``."""
    stub = _bundled_stub(root)
    backend = workdir / "backends" / "python"
    backend.mkdir(parents=True)
    for item in (root / "backends" / "python").iterdir():
        if item.is_file():
            (backend / item.name).symlink_to(item)
    shutil.copy2(stub, backend / stub.name)
    return workdir / "backends"


def missing_libraries(program: Path, env: dict[str, str]) -> list[str]:
    """The shared libraries ``program`` needs that the dynamic linker cannot find in ``env``
    (``ldd``'s "not found"); empty where ``ldd`` cannot tell (not installed, not an ELF)."""
    try:
        done = subprocess.run(
            ["ldd", str(program)], env=env, capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [
        line.split("=>")[0].strip()
        for line in done.stdout.splitlines()
        if "=>" in line and line.split("=>")[1].strip() == "not found"
    ]


def _check_stub_loads(stub: Path, env: dict[str, str]) -> None:
    """Refuse, naming the library, a stub the dynamic linker cannot load: every Python model
    would otherwise fail to load with the reason deep in the server's log."""
    missing = missing_libraries(stub, env)
    if not missing:
        return
    hint = ""
    if any(name.startswith("libpython") for name in missing):
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        hint = (
            f" (Python's shared library: Debian/Ubuntu `apt install libpython{version}`; "
            "pyenv: build Python with PYTHON_CONFIGURE_OPTS=--enable-shared)"
        )
    raise DenoiseError(f"{stub}: cannot load {', '.join(missing)}{hint}")


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


class TritonServer:
    """A tritonserver process serving ``models`` of ``repository`` (a private copy of them).

    Use as a context manager: entering starts the server and waits until every model is
    ready (or raises DenoiseError with the server's own reason); leaving always stops it.
    """

    def __init__(
        self,
        repository: str | Path,
        models: Sequence[str],
        *,
        http_port: int = HTTP_PORT,
        grpc_port: int = GRPC_PORT,
        binary: str | Path | None = None,
        startup_timeout_s: float = 60.0,
        echo: bool = False,
    ) -> None:
        problems = port_problems(http_port, grpc_port)
        if problems:
            raise DenoiseError(f"triton: {'; '.join(problems)}")
        for model in models:  # a folder of the repository, copied into a private one
            if model in ("", ".", "..") or "/" in model or "\\" in model:
                raise DenoiseError(f"{model!r}: not a model name (a folder in the repository)")
        self.repository = Path(repository).resolve()
        self.models = list(dict.fromkeys(models))  # each once
        self.requested_ports = (http_port, grpc_port)  # 0: any free port, chosen at start
        self.http_port = http_port  # the ports in use once started
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
        token = uuid.uuid4().hex[:12]
        self.shm_prefix = f"denoise_triton_{token}_"
        # The name it answers to: a server that took this one's port first is not it.
        self.server_id = f"denoise-{token}"

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
            f"--id={self.server_id}",
            f"--model-repository={repository}",
            # It loads every model of the private snapshot (the chosen ones), and its model
            # load/unload API stays off: that API runs whatever Python model code a request
            # sends, and loopback does not keep the machine's other processes out.
            "--model-control-mode=none",
            "--exit-on-error=false",
            "--strict-readiness=true",
            "--allow-metrics=false",
            f"--http-address={HOST}",
            f"--http-port={self.http_port}",
            f"--grpc-address={HOST}",
            f"--grpc-port={self.grpc_port}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
        ]
        if backend_dir is not None:
            cmd.append(f"--backend-directory={backend_dir}")
        return cmd

    def start(self) -> float:
        """Start the server and wait until it is ready; returns the seconds that took.

        A port requested as 0 is one the kernel has free; where another process takes it
        before the server binds it, the server starts again on others (a few tries)."""
        if not self.repository.is_dir():
            raise DenoiseError(f"{self.repository}: model repository not found")
        for model in self.models:
            folder = self.repository / model
            if not (folder / "config.pbtxt").is_file():
                raise DenoiseError(f"{folder}: no config.pbtxt (model not in the repository)")
            try:
                config = (folder / "config.pbtxt").read_text(errors="replace")
            except OSError as e:
                raise DenoiseError(f"{folder}: cannot read config.pbtxt ({e.strerror})") from None
            python = re.search(r'^\s*backend\s*:\s*"python"', config, re.MULTILINE)
            if python and not any(folder.glob("*/model.py")):  # the server would wait, silent
                raise DenoiseError(f"{folder}: a python-backend model without <version>/model.py")
        for label, port in zip(("http", "grpc"), self.requested_ports, strict=True):
            if port and port_in_use(port):
                raise DenoiseError(f"{HOST}:{port}: port already in use (triton {label} port)")
        tries_left = _FREE_PORT_TRIES if 0 in self.requested_ports else 1
        while True:
            chosen = iter(free_ports(self.requested_ports.count(0)))
            self.http_port, self.grpc_port = (p or next(chosen) for p in self.requested_ports)
            tries_left -= 1
            try:
                return self._start_once()
            except _PortTaken as e:
                # Other ports help only where the one taken was the kernel's choice.
                if not tries_left or any(p and port_in_use(p) for p in self.requested_ports):
                    raise
                print(f"note: {e}; starting again on other ports", flush=True)

    def _start_once(self) -> float:
        self._log.clear()
        self._workdir = tempfile.TemporaryDirectory(prefix="denoise-triton-")
        try:
            workdir = Path(self._workdir.name)
            snapshot = self._snapshot(workdir / "model_repository")
            backend_dir, env = None, dict(os.environ)
            if self.binary.bundled:
                root = self.binary.path.parent.parent
                backend_dir = _bundled_backend_dir(root, workdir)
                env = _bundled_env(root)
                _check_stub_loads(_bundled_stub(root), env)
            t0 = time.perf_counter()
            try:
                self.process = subprocess.Popen(
                    self.command(snapshot, backend_dir),
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    preexec_fn=die_with_parent(),  # a killed stage leaves no server on the ports
                )
            except OSError as e:  # not an executable of this machine, a bad #! line
                raise DenoiseError(f"{self.binary.path}: cannot run ({e.strerror or e})") from None
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

    def _log_reason(self, *, exited: bool = False) -> str:
        """The server's last error line (a glog ``E...`` line, not the one every start on a
        machine without a GPU logs, nor the summary after a model failed to load, which
        says no more than that). Else, for a server that ``exited``, its last line that
        is no glog info or warning: an error before logging starts (a bad argument) comes as
        plain text after the usage text (whose lines may say "error" too); for one still
        running, its last line that says "error"."""
        lines = [ln for ln in self._log if ln.strip() and _HARMLESS not in ln]
        errors = [ln for ln in lines if re.match(r"^E\d{4} ", ln) and _SUMMARY not in ln]
        if not errors and exited:
            errors = [ln for ln in lines if not re.match(r"^[IW]\d{4} ", ln)]
        if not errors:
            errors = [ln for ln in lines if "error" in ln.lower()]
        if not errors:
            return "no error in the server log"
        reason = re.sub(r"^[EIW]\d{4} [\d:.]+ +\d+ \S+\] ", "", errors[-1]).strip()
        return self._as_repository(reason)

    def _as_repository(self, text: str) -> str:
        """``text`` naming the user's repository where the server named its private snapshot,
        a folder gone once the command ends."""
        if self._workdir is None:
            return text
        return text.replace(
            str(Path(self._workdir.name) / "model_repository"), str(self.repository)
        )

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
                    reason = self._log_reason(exited=True)
                    error = _PortTaken if "already in use" in reason else DenoiseError
                    raise error(
                        f"{self.binary.path}: exited with code "
                        f"{self.process.returncode} during startup: {reason}"
                    )
                try:
                    # Another server may answer on this port (it bound it first; this one's
                    # process then exits with "already in use"): only this one counts.
                    live = client.is_server_live() and self._answers_as_this(client)
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

    def _answers_as_this(self, client: Any) -> bool:
        return client.get_server_metadata().get("name") == self.server_id

    def _raise_unavailable(self, client: Any) -> None:
        """Raise for a model this server failed to load. It loads every model before it
        answers, so a model it answers about is loaded or failed, never still to come: one
        UNAVAILABLE, or one its index lists without a state (a config.pbtxt it could not
        parse) or not at all (a folder without a version), is failed for good."""
        try:
            index = client.get_model_repository_index()
        except Exception:
            return
        entries = {entry.get("name"): entry for entry in index}
        for name in self.models:
            entry = entries.get(name, {})
            if entry.get("state") in ("READY", "LOADING", "UNLOADING"):
                continue
            reason = self._as_repository(entry.get("reason") or "") or self._log_reason()
            raise DenoiseError(
                f"{self.repository / name}: model not ready: {reason.splitlines()[0]}"
            )

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop the whole process group (server and python stubs): SIGTERM, then SIGKILL;
        then remove any shared-memory region of its own left behind."""
        proc, self.process = self.process, None
        interrupted: KeyboardInterrupt | None = None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
            except KeyboardInterrupt as e:  # a second Ctrl-C: no more waiting, but stopped
                interrupted = e
            # SIGKILL for one that did not stop in time, and for stubs (same group) that would
            # outlive the server.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            if self._reader is not None:
                self._reader.join(timeout=5.0)
            for region in SHM_DIR.glob(f"{self.shm_prefix}*"):
                region.unlink(missing_ok=True)
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None
        if interrupted is not None:
            raise interrupted

    def wait(self) -> int:
        """Block until the server exits (foreground ``denoise serve``); returns its code."""
        assert self.process is not None
        return self.process.wait()

    def __enter__(self) -> TritonServer:
        self._signals = contextlib.ExitStack()
        self._signals.enter_context(sigterm_as_interrupt())
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


def servable_models(repository: str | Path, server: ServerBinary) -> list[str]:
    """What a server can load from ``repository``: all models, or only the python-backend one
    for the bundled server."""
    repo = Path(repository)
    if not repo.is_dir():
        raise DenoiseError(f"{repo}: model repository not found")
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
) -> None:
    """Run tritonserver in the foreground until Ctrl-C (or SIGTERM), or until it exits of
    itself: a DenoiseError saying how, unless with code 0.

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
            code = server.wait()
        except Terminated:
            raise  # the caller reports it (exit 143); only Ctrl-C is a plain stop
        except KeyboardInterrupt:
            return
    if code < 0:  # not stopped by us (Ctrl-C, SIGTERM): something killed it
        try:
            name = signal.Signals(-code).name
        except ValueError:  # a real-time signal has no name
            name = str(-code)
        raise DenoiseError(f"tritonserver was killed by signal {name} (its log is above)")
    if code:
        raise DenoiseError(f"tritonserver exited with code {code} (its log is above)")
