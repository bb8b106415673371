"""A Triton client as a ``denoise`` backend (``--backend triton``), over HTTP or gRPC."""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from denoise.errors import BackendUnavailable, DenoiseError, first_line
from denoise.infer import register_backend
from denoise.padding import PAD_MULTIPLE_KEY, pad_multiple_value
from denoise.triton.address import DEFAULT_URL, HTTP_PORT
from denoise.triton.repository import INPUT_NAME, NETWORK_KEY, OUTPUT_NAME, PYTHON_MODEL


def split_url(url: str) -> tuple[str, bool]:
    """``(host:port, tls)`` of a server URL: ``https://`` means TLS (a proxy in front of
    Triton, as the README advises before exposing it); no scheme or ``http://`` means plain."""
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", url)
    scheme = match.group(1).lower() if match else "http"
    if scheme not in ("http", "https"):
        raise DenoiseError(f"{url}: unsupported scheme {scheme!r} (use http:// or https://)")
    address = url[match.end() :] if match else url
    # checked here: a port tritonclient cannot use leaves a half-built client behind, whose
    # clean-up prints a traceback after the error
    port = re.fullmatch(r"(?:\[[^\]]*\]|[^:/\[\]]+)(?::([0-9]+))?(?:/.*)?", address)
    if port is None or (port.group(1) is not None and not 1 <= int(port.group(1)) <= 65535):
        raise DenoiseError(f"{url}: expected host:port with a port from 1 to 65535")
    return address, scheme == "https"


def _client_module(protocol: str) -> Any:
    if protocol == "http":
        import tritonclient.http as module
    elif protocol == "grpc":
        import tritonclient.grpc as module
    else:
        raise DenoiseError(f"triton protocol {protocol!r}: expected http or grpc")
    return module


# Seconds a server has to answer the questions asked before inference; a live one answers in
# milliseconds.
PROBE_TIMEOUT_S = 10.0


class TritonBackend:
    """A denoiser served by Triton: ``(N, 3, H, W)`` float32 in [0, 1] -> same shape.

    Batches larger than the model's ``max_batch_size`` are split into several requests.
    """

    name = "triton"

    def __init__(
        self,
        url: str = DEFAULT_URL,
        protocol: str = "http",
        model_name: str = PYTHON_MODEL,
        timeout_s: float = 120.0,
        network: str | None = None,
    ) -> None:
        """``network``: the registry name the caller asked for; the served model must say, in
        its config, that it holds that network."""
        self.url, tls = split_url(url)
        self.protocol = protocol
        # what messages name: the scheme the user gave (https), else the protocol (grpc)
        scheme = "https" if tls and protocol == "http" else protocol
        self.where = f"{scheme}://{self.url}"
        self.model_name = model_name
        self.network = network
        self._module = _client_module(protocol)
        self.timeout_s = timeout_s
        try:
            self._open(tls)
        except BaseException:
            self.close()
            raise

    def _open(self, tls: bool) -> None:
        """Ask the server whether the model is ready and for its config (batch size, padding
        multiple), then keep a client for inference. The questions get a short timeout:
        something on the port that never answers is reported in seconds, not after the
        inference timeout (HTTP has no per-call timeout, so they get a client of their own)."""
        where, model_name = self.where, self.model_name
        try:
            self._client = self._connect(tls, PROBE_TIMEOUT_S)
            ready = self._client.is_model_ready(model_name, **self._probe_timeout)
        except Exception as e:
            if type(e).__name__ == "HTTPParseError":  # something answers, in another protocol
                raise DenoiseError(
                    f"{where}: answers, but not over HTTP (Triton's gRPC port? --url takes the "
                    f"HTTP port, {HTTP_PORT} by default)"
                ) from None
            raise DenoiseError(f"{where}: Triton server not reachable ({first_line(e)})") from None
        if not ready:
            served = ", ".join(self._ready_models()) or "none"
            raise DenoiseError(
                f"{where}: model {model_name!r} is not ready on the server (ready: {served})"
            )
        try:
            config = self._client.get_model_config(model_name, **self._probe_timeout)
        except Exception as e:
            raise DenoiseError(f"{where}: no config for {model_name!r} ({first_line(e)})") from None
        if self.protocol == "grpc":
            self.max_batch_size = int(config.config.max_batch_size)
            params = {k: v.string_value for k, v in config.config.parameters.items()}
        else:
            self.max_batch_size = int(config.get("max_batch_size", 0))
            params = {k: v.get("string_value") for k, v in config.get("parameters", {}).items()}
            self.close()
            self._client = self._connect(tls, self.timeout_s)  # for inference
        served = params.get(NETWORK_KEY)
        if self.network is not None and served != self.network:
            raise DenoiseError(
                f"{where}: {model_name} serves {served or 'a network its config does not name'}"
                f", not {self.network} (pass --model {model_name} to use it as it is)"
            )
        # What the network pads to, from the model's config (the export writes it there): so
        # denoise_image reflect-pads tiles as it does for the local backends.
        self.pad_multiple = pad_multiple_value(
            params.get(PAD_MULTIPLE_KEY), f"{where} {model_name}"
        )

    def _connect(self, tls: bool, timeout_s: float) -> Any:
        """A client of the server; over HTTP, every request it sends times out at
        ``timeout_s`` (over gRPC each call says its own)."""
        if self.protocol == "http":
            return self._module.InferenceServerClient(
                self.url, connection_timeout=timeout_s, network_timeout=timeout_s, ssl=tls
            )
        return self._module.InferenceServerClient(self.url, ssl=tls)

    @property
    def _probe_timeout(self) -> dict[str, float]:
        """The gRPC keyword that bounds a question before inference (HTTP: in the client)."""
        return {"client_timeout": PROBE_TIMEOUT_S} if self.protocol == "grpc" else {}

    def _ready_models(self) -> list[str]:
        try:
            index = self._client.get_model_repository_index(**self._probe_timeout)
        except Exception:
            return []
        if self.protocol == "grpc":
            return [m.name for m in index.models if m.state == "READY"]
        return [m["name"] for m in index if m.get("state") == "READY"]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if batch.dtype != np.float32 or batch.ndim != 4 or batch.shape[1] != 3 or not len(batch):
            raise DenoiseError(
                f"{self.model_name}: wrong input {batch.shape} {batch.dtype}, "
                "expected (N, 3, H, W) float32 with N >= 1"
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
            error = BackendUnavailable if _is_transport_failure(e) else DenoiseError
            raise error(
                f"{self.where}: request to {self.model_name} failed: {first_line(e)}"
            ) from None
        y = result.as_numpy(OUTPUT_NAME)
        if y is None or y.shape != batch.shape:
            got = None if y is None else y.shape
            raise DenoiseError(
                f"{self.where}: {self.model_name} returned {got} for input {batch.shape}"
            )
        return y

    def counts(self, at_least: int = 0, timeout_s: float = 10.0) -> tuple[int, int]:
        """``(inferences, executions)`` the server has counted for the model since it started:
        images served, and model runs (fewer where dynamic batching joined requests).

        The python backend counts a run after it has answered, so a count read right after
        the last answer can miss it: with ``at_least``, wait (up to ``timeout_s``) until
        that many images are counted.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            counted = self._counts()
            if counted[0] >= at_least or time.monotonic() > deadline:
                return counted
            time.sleep(0.02)

    def _counts(self) -> tuple[int, int]:
        try:
            stats = self._client.get_inference_statistics(self.model_name)
        except Exception as e:
            raise DenoiseError(
                f"{self.where}: no statistics for {self.model_name} ({first_line(e)})"
            ) from None
        if self.protocol == "grpc":
            model = stats.model_stats[0]
            return int(model.inference_count), int(model.execution_count)
        model = stats["model_stats"][0]
        return int(model["inference_count"]), int(model["execution_count"])

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.close()


# gRPC status codes of a server that is gone or not answering in time (not of a request the
# server answered with an error)
_GRPC_TRANSPORT = ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED")


def _is_transport_failure(e: Exception) -> bool:
    """Whether an inference failed on the way (refused, reset, timed out) rather than in the
    server: tritonclient raises its own exception type for what a server answered, and over
    HTTP lets a transport error through as it is."""
    from tritonclient.utils import InferenceServerException

    if isinstance(e, InferenceServerException):
        return str(e.status()) in _GRPC_TRANSPORT
    return True


def _is_network_name(name: str) -> bool:
    from denoise.models.registry import model_names

    return name in model_names()


@register_backend("triton")
def open_triton(
    model: str | Path = PYTHON_MODEL,
    *,
    url: str = DEFAULT_URL,
    protocol: str = "http",
    model_name: str | None = None,
    **options: Any,
) -> TritonBackend:
    """The ``triton`` inference backend; ``model`` (or ``model_name``) is the served model.

    A network name such as ``nafnet`` means ``denoise_python``, provided the network it serves
    (the one exported last) is that one; an empty name (``denoise run --backend triton``
    without ``--model``) means ``denoise_python`` whatever it serves.
    """
    name = model_name or str(model) or PYTHON_MODEL
    if _is_network_name(name):
        return TritonBackend(url, protocol, PYTHON_MODEL, network=name, **options)
    return TritonBackend(url, protocol, name, **options)
