"""Whole-image inference: pluggable backends and seamless tiled denoising.

A *backend* is any callable that maps a ``(N, 3, H, W)`` float32 batch in [0, 1] to a batch of
the same shape, with a ``name`` attribute. Backends are opened by name from a registry:

    backend = open_backend("torch", "models/nafnet.pt")        # checkpoint, device auto
    backend = open_backend("onnxruntime", "model_repository/denoise_onnx/1/model.onnx")
    backend = open_backend("triton", "denoise_python", url="127.0.0.1:8000")  # registered lazily

:func:`denoise_image` runs a backend over a photo of any size in overlapping tiles, blends them
with a raised-cosine window (the weights of two overlapping tiles sum to one, so there is no
seam), and accumulates the result in float32 buffers: memory is O(tile) for the network plus
the output image, so a 12-megapixel frame works on a small machine.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from denoise.checkpoint import load_model
from denoise.cpu_compile import compiled_for_cpu, cpu_compile_options
from denoise.errors import BackendUnavailable, DenoiseError, first_line
from denoise.fileio import (
    IMAGE_SUFFIXES,
    OutputExists,
    check_writable_type,
    read_photo,
    write_image,
)
from denoise.fused.dwconv_gate import DwconvForm
from denoise.fused.nafnet import fuse_nafnet
from denoise.fused.pixelwise import PixelwiseForm
from denoise.metrics import to_uint8
from denoise.padding import PAD_MULTIPLE_KEY, pad_multiple_of, pad_multiple_value, reflect_pad

# Backends whose modules register themselves when imported (written elsewhere, heavy imports).
_LAZY_BACKENDS = {"triton": "denoise.triton.client", "tensorrt": "denoise.tensorrt"}


@runtime_checkable
class Backend(Protocol):
    """``(N, 3, H, W)`` float32 in [0, 1] -> ``(N, 3, H, W)`` float32 (not necessarily clamped).

    A backend may also say, as ``pad_multiple``, the multiple its network pads its input to
    (:func:`pad_multiple_of`); :func:`denoise_image` then pads each tile itself, by reflection.
    """

    name: str

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


BackendFactory = Callable[..., Backend]
BACKENDS: dict[str, BackendFactory] = {}


def register_backend(name: str) -> Callable[[BackendFactory], BackendFactory]:
    """Register ``factory(model: str | Path, **options) -> Backend`` under ``name``."""

    def wrap(factory: BackendFactory) -> BackendFactory:
        BACKENDS[name] = factory
        return factory

    return wrap


def check_backend_name(name: str) -> None:
    """A :class:`DenoiseError` unless ``name`` is a backend (registered or importable)."""
    known = sorted(set(BACKENDS) | set(_LAZY_BACKENDS))
    if name not in known:
        raise DenoiseError(f"unknown backend {name!r}; known: {', '.join(known)}")


def open_backend(name: str, model: str | Path, **options: Any) -> Backend:
    """Open backend ``name`` on ``model`` (a file, or a served model's name for Triton)."""
    check_backend_name(name)
    if name not in BACKENDS:
        try:
            importlib.import_module(_LAZY_BACKENDS[name])
        except ImportError as e:
            raise DenoiseError(f"backend {name!r} is not available: {e}") from None
    return BACKENDS[name](model, **options)


MODEL_SUFFIXES = {".pt": "torch", ".pth": "torch", ".onnx": "onnxruntime", ".plan": "tensorrt"}


def backend_for_file(model: str | Path) -> str:
    """The local backend that runs a model file, chosen by its suffix (.pt/.pth, .onnx, .plan)."""
    suffix = Path(model).suffix.lower()
    if suffix not in MODEL_SUFFIXES:
        raise DenoiseError(
            f"{model}: unknown model file type {suffix!r} (expected .pt, .pth, .onnx or .plan)"
        )
    return MODEL_SUFFIXES[suffix]


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class TorchBackend:
    """A PyTorch module in eval mode; CUDA when available unless ``device`` says otherwise.

    Speed options (all off by default, so the default is plain eager FP32):

    - ``channels_last``: NHWC memory format (oneDNN/cuDNN convolutions run faster in it).
    - ``precision``: ``fp32``, ``bf16`` or ``fp16``. With ``amp=False`` the weights and the
      input are cast (fastest on CPU); with ``amp=True`` ``torch.autocast`` runs convolutions
      and matmuls in that precision and keeps reductions such as LayerNorm in FP32. ``amp``
      defaults to True on CUDA (FP16 LayerNorm overflows) and False on CPU.
    - ``compile``: ``torch.compile`` the module: True, a mode such as ``"reduce-overhead"``,
      or a dict of inductor options (``{"max_autotune": True, "conv_1x1_as_mm": True}``).
      The first call of every new input shape compiles. On CPU, whatever the mode or
      options, the module is frozen and GCC's miscompilation of bf16 transposes avoided
      (:mod:`denoise.cpu_compile`).
    - ``cuda_graph``: on CUDA, capture one CUDA graph per input shape and replay it (removes
      the kernel-launch overhead of a network of many small ops).
    - ``fuse``: NAFNet only: run its inference form (:mod:`denoise.fused.nafnet`: NHWC
      blocks, folded parameters, depthwise convolution and gate as one operation, the
      per-pixel work before and after it as one each), the same function with fewer passes
      over memory. ``fuse_dwconv`` names the depthwise operation's form: ``"triton"`` (one
      Triton kernel on CUDA), ``"conv"`` or ``"shifted"`` (:mod:`denoise.fused.dwconv_gate`);
      ``fuse_pixelwise`` the others': ``"triton"`` (one Triton kernel each on CUDA) or
      ``"torch"`` (:mod:`denoise.fused.pixelwise`).
    - ``cudnn_benchmark``: on CUDA, set ``torch.backends.cudnn.benchmark`` (for the whole
      process): cuDNN times its algorithms on each new input shape and keeps the fastest. It
      pays when one shape repeats (the bench) and costs a timing pass per new shape; the
      choice depends on timings, so results are not bit-reproducible between runs. Nothing
      turns it back off: a later backend without it still runs with it.

    The output is always float32 on the host. The module is moved, cast and put in eval mode
    in place (not copied: a paper-size NAFNet is 117 MB in FP32).
    """

    name = "torch"

    def __init__(
        self,
        module: nn.Module,
        *,
        device: str = "auto",
        channels_last: bool = False,
        precision: str = "fp32",
        amp: bool | None = None,
        compile: bool | str | dict[str, Any] = False,
        cuda_graph: bool = False,
        cudnn_benchmark: bool = False,
        fuse: bool = False,
        fuse_dwconv: DwconvForm = "triton",
        fuse_pixelwise: PixelwiseForm = "triton",
    ) -> None:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if precision not in PRECISIONS:
            raise DenoiseError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
        self.device = torch.device(device)
        if cuda_graph and self.device.type != "cuda":
            raise DenoiseError(f"cuda_graph needs a CUDA device, not {self.device}")
        self.channels_last = channels_last
        self.precision = precision
        self.dtype = PRECISIONS[precision]
        self.amp = (self.device.type == "cuda") if amp is None else amp
        if self.dtype == torch.float32:
            self.amp = False
        if cudnn_benchmark and self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.pad_multiple = pad_multiple_of(module)
        if fuse:
            try:
                module = fuse_nafnet(module, fuse_dwconv, fuse_pixelwise)
            except (TypeError, ValueError) as e:
                raise DenoiseError(f"fuse: {e}") from None
        self.module = module.eval().to(self.device)
        if not self.amp:
            self.module = self.module.to(self.dtype)
        if channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        self._run: Callable[[torch.Tensor], torch.Tensor] = self.module
        if compile:
            mode = compile if isinstance(compile, str) else None
            options = compile if isinstance(compile, dict) else {}
            if self.device.type == "cpu":
                self._run = compiled_for_cpu(self.module, cpu_compile_options(options), mode)
            elif mode:
                self._run = torch.compile(self.module, mode=mode)
            else:
                self._run = torch.compile(self.module, options=options or None)
        self.cuda_graph = cuda_graph
        self._graphs: dict[tuple[int, ...], tuple[Any, torch.Tensor, torch.Tensor]] = {}

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.amp:
            # Autocast's cache of cast weights must stay off inside a CUDA graph: the cached
            # copies would live in the graph's private memory pool and be freed after capture.
            with torch.autocast(
                self.device.type, dtype=self.dtype, cache_enabled=not self.cuda_graph
            ):
                return self._run(x)
        return self._run(x)

    def _replay(self, x: torch.Tensor) -> torch.Tensor:
        """Run ``x`` through the CUDA graph captured for its shape (captured on first use)."""
        key = tuple(x.shape)
        if key not in self._graphs:
            static_in = x.clone()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm up (cuDNN autotuning, allocations) outside capture
                    self._forward(static_in)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._forward(static_in)
            self._graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = self._graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out

    @property
    def input_bits(self) -> int:
        """Significant bits the network's input keeps: 24 in FP32 (also under autocast, which
        keeps the input and the global residual in FP32), 8 in bf16, 11 in fp16."""
        dtype = torch.float32 if self.amp else self.dtype
        return 1 - int(math.log2(torch.finfo(dtype).eps))  # the stored bits and the implicit one

    def prepare(self, batch: np.ndarray) -> torch.Tensor:
        """The host batch on the device, in the input dtype and memory format the model runs."""
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        if not self.amp:
            x = x.to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network on a :meth:`prepare`-d batch; the result stays on the device.

        With ``cuda_graph`` the returned tensor is the graph's static output: it is
        overwritten by the next call, so copy it before calling again.
        """
        with torch.inference_mode():
            return self._replay(x) if self.cuda_graph else self._forward(x)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        try:
            return self.forward(self.prepare(batch)).float().cpu().numpy()
        except RuntimeError as e:  # out of memory above all (torch.OutOfMemoryError is one)
            if isinstance(e, torch.OutOfMemoryError):
                hint = "; a smaller --tile needs less memory"
            elif self._run is not self.module:
                hint = "; torch.compile failed? run without --compile"
            else:
                hint = ""
            raise DenoiseError(
                f"torch: inference on a {batch.shape} batch failed ({first_line(e)}){hint}"
            ) from None


@register_backend("torch")
def _open_torch(model: str | Path | nn.Module, **options: Any) -> Backend:
    """A checkpoint written by :func:`denoise.checkpoint.save_checkpoint` (or a live module)."""
    module = model if isinstance(model, nn.Module) else load_model(model)[0]
    return TorchBackend(module, **options)


class OnnxRuntimeBackend:
    """An ONNX model run by onnxruntime: CUDA provider when available, else CPU."""

    name = "onnxruntime"

    def __init__(
        self, path: str | Path, *, providers: Sequence[str] | None = None, threads: int = 0
    ) -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise DenoiseError(f"{path}: ONNX model not found")
        if providers is None:
            available = ort.get_available_providers()
            providers = [
                p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available
            ]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads  # 0: one per physical core
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=list(providers))
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            raise DenoiseError(f"{path}: not a loadable ONNX model ({first_line(e)})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.providers = self.session.get_providers()
        meta = self.session.get_modelmeta().custom_metadata_map
        self.pad_multiple = pad_multiple_value(meta.get(PAD_MULTIPLE_KEY), str(path))

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        try:
            (y,) = self.session.run(None, {self.input_name: x})[:1]
        except Exception as e:  # onnxruntime's own exception types (bad shape, out of memory)
            raise DenoiseError(
                f"onnxruntime: inference on a {x.shape} batch failed ({first_line(e)})"
            ) from None
        return np.asarray(y, dtype=np.float32)


@register_backend("onnxruntime")
def _open_onnxruntime(model: str | Path, **options: Any) -> Backend:
    return OnnxRuntimeBackend(model, **options)


# --- tiling ----------------------------------------------------------------------------------


def tile_starts(length: int, tile: int, overlap: int) -> tuple[list[int], int]:
    """Start offsets and the tile size along one axis.

    Tiles are ``min(tile, length)`` long (``tile <= 0``: one tile), evenly spaced so that the
    first starts at 0, the last ends at ``length`` and neighbours overlap by at least
    ``overlap``. Every tile has the same size, so tiles batch together.
    """
    size = length if tile <= 0 else min(tile, length)
    if size == length:
        return [0], size
    n = math.ceil((length - size) / (size - overlap)) + 1
    return [round(i * (length - size) / (n - 1)) for i in range(n)], size


def _crossfade(n: int, margin: int) -> np.ndarray:
    """Weights of the left tile across an ``n``-pixel overlap; the right tile gets ``1 - w``.

    The first ``margin`` pixels after the neighbour's edge keep weight 1 (the neighbour saw
    zero padding there), the last ``margin`` get 0, and a raised cosine joins them.
    """
    ramp = n - 2 * margin
    t = (np.arange(n) - margin + 0.5) / max(ramp, 1)
    return (np.cos(0.5 * np.pi * np.clip(t, 0.0, 1.0)) ** 2).astype(np.float32)


def tile_weights(starts: list[int], size: int, *, margin: bool = True) -> list[np.ndarray]:
    """One blending window per tile along an axis.

    Neighbouring windows cross-fade over the pixels their tiles share and are flat elsewhere
    (including at the image border), so they sum to one: no seam and no brightness change.
    With ``margin`` the quarter of the overlap nearest each tile edge, where the network saw
    zero padding instead of image, is dropped and the fade runs over the middle half.
    """
    windows = []
    for k, start in enumerate(starts):
        w = np.ones(size, np.float32)
        if k > 0:
            ov = starts[k - 1] + size - start
            w[:ov] *= 1.0 - _crossfade(ov, ov // 4 if margin else 0)
        if k + 1 < len(starts):
            ov = start + size - starts[k + 1]
            w[size - ov :] *= _crossfade(ov, ov // 4 if margin else 0)
        windows.append(w)
    return windows


def _axis_plan(
    length: int, tile: int, overlap: int
) -> tuple[list[int], int, list[np.ndarray], np.ndarray]:
    """Tile starts, tile size, windows and the summed window along one axis."""
    starts, size = tile_starts(length, tile, overlap)
    for margin in (True, False):  # very large overlaps can leave a pixel with no weight
        windows = tile_weights(starts, size, margin=margin)
        total = np.zeros(length, np.float32)
        for start, win in zip(starts, windows, strict=True):
            total[start : start + size] += win
        if total.min() > 1e-3:
            break
    return starts, size, windows, total


# The command line's floor: smaller tiles (or overlaps above half a tile) multiply the number
# of network calls (a 12-megapixel photo at --tile 1 is millions) for worse output.
MIN_CLI_TILE = 16


def check_tiling(tile: int, overlap: int, *, command_line: bool = False) -> None:
    """Refuse a negative tile or overlap, and an overlap not smaller than the tile; with
    ``command_line``, also a tile under :data:`MIN_CLI_TILE` and an overlap above half a tile."""
    # On the command line the options' names, so that a default overlap is not a mystery
    t, o = ("--tile", "--overlap") if command_line else ("tile", "overlap")
    if tile < 0:
        raise DenoiseError(f"{t} {tile} must be >= 0 (0: the whole image at once)")
    if overlap < 0:
        raise DenoiseError(f"{o} {overlap} must be >= 0")
    if command_line and 0 < tile < MIN_CLI_TILE:
        raise DenoiseError(
            f"{t} {tile} is too small: at least {MIN_CLI_TILE} (0: the whole image at once)"
        )
    if tile > 0 and overlap >= tile:
        raise DenoiseError(f"{o} {overlap} must be smaller than {t} {tile}")
    if command_line and tile > 0 and overlap > tile // 2:
        raise DenoiseError(f"{o} {overlap} must be at most half of {t} {tile}")


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def denoise_image(
    img: np.ndarray,
    backend: Backend,
    *,
    tile: int,
    overlap: int,
    batch: int = 1,
    progress: bool = False,
) -> np.ndarray:
    """Denoise an ``(H, W, 3)`` RGB image in overlapping tiles; returns the same dtype.

    ``img`` is uint8 (or uint16, kept at 16 bits). ``tile <= 0`` runs the whole image at once.
    Tiles are ``tile`` x ``tile`` (smaller where the image is), overlap by at least
    ``overlap`` pixels, are blended with a raised-cosine window and sent ``batch`` at a time.
    """
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"expected (H, W, 3) uint8 or uint16, got {img.shape} {img.dtype}")
    check_tiling(tile, overlap)
    scale = float(np.iinfo(img.dtype).max)
    h, w = img.shape[:2]
    # The windows are separable and the tiles form a grid, so the total weight at (y, x) is
    # (sum of row windows)(y) * (sum of column windows)(x): no H x W weight buffer needed.
    ys, th, wy, sum_y = _axis_plan(h, tile, overlap)
    xs, tw, wx, sum_x = _axis_plan(w, tile, overlap)
    acc = np.zeros((h, w, 3), np.float32)
    multiple = int(getattr(backend, "pad_multiple", 1))
    grid = [(i, j) for i in range(len(ys)) for j in range(len(xs))]
    bar = tqdm(total=len(grid), desc="tiles", unit="tile", disable=not progress, leave=False)
    for group in _batches(grid, max(1, batch)):
        x_in = (
            np.stack(
                [img[ys[i] : ys[i] + th, xs[j] : xs[j] + tw].transpose(2, 0, 1) for i, j in group]
            ).astype(np.float32)
            / scale
        )
        padded = reflect_pad(x_in, multiple)
        y_out = backend(padded)
        if y_out.shape != padded.shape:
            raise DenoiseError(
                f"backend {backend.name} returned shape {y_out.shape} for input {padded.shape}"
            )
        y_out = y_out[:, :, :th, :tw]
        for (i, j), out in zip(group, y_out, strict=True):
            weight = (wy[i][:, None] * wx[j][None, :])[:, :, None]
            acc[ys[i] : ys[i] + th, xs[j] : xs[j] + tw] += out.transpose(1, 2, 0) * weight
        bar.update(len(group))
    bar.close()
    result = np.empty_like(img)
    rows = max(1, (1 << 22) // (3 * w))  # normalise and quantise in ~16 MB slabs
    for r in range(0, h, rows):
        norm = acc[r : r + rows] / (sum_y[r : r + rows, None, None] * sum_x[None, :, None])
        result[r : r + rows] = _quantise(norm, img.dtype)
    return result


def _quantise(img: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Clamp to [0, 1] and round to ``dtype`` (uint8 via the project's one definition)."""
    if dtype == np.uint8:
        return to_uint8(img)
    return np.round(np.clip(img, 0.0, 1.0) * 65535.0).astype(np.uint16)


# --- photos on disk --------------------------------------------------------------------------


def output_path(src: str | Path, out_dir: str | Path | None = None) -> Path:
    """``<stem>_denoised<suffix>`` beside ``src`` or in ``out_dir``; ``.png`` for an input
    without a suffix (what the writer then writes)."""
    src = Path(src)
    parent = Path(out_dir) if out_dir is not None else src.parent
    return parent / f"{src.stem}_denoised{src.suffix or '.png'}"


def expand_inputs(
    inputs: Sequence[str | Path], on_empty: Callable[[Path, str], None] | None = None
) -> list[Path]:
    """Files as given; a folder contributes its photos (not earlier ``*_denoised`` outputs).

    A folder with no photo, or one that cannot be read, goes to ``on_empty(folder, message)``
    (default: a :class:`DenoiseError`). An empty string is refused outright: ``Path("")`` is
    the current folder, so ``denoise run "$UNSET"`` would otherwise denoise every photo in it.
    """
    if any(isinstance(raw, str) and not raw for raw in inputs):
        raise DenoiseError('"": an empty input path (an unset shell variable?)')
    files: list[Path] = []
    for item in map(Path, inputs):
        try:
            if not item.is_dir():
                files.append(item)  # a missing or unreadable file is reported when read
                continue
            photos = [
                p
                for p in sorted(item.iterdir())
                if p.suffix.lower() in IMAGE_SUFFIXES
                and not p.stem.endswith("_denoised")
                and not p.name.startswith(".")
                and p.is_file()
            ]
            message = f"{item}: no photos ({', '.join(IMAGE_SUFFIXES)})"
        except OSError as e:  # Python 3.11's is_dir raises PermissionError, not False
            photos, message = [], f"{item}: cannot read ({e.strerror or e})"
        if not photos:
            if on_empty is None:
                raise DenoiseError(message)
            on_empty(item, message)
        files += photos
    # The same file named twice (alone, through its folder, through a link) is denoised once,
    # under the first name given.
    first_names: dict[Path, Path] = {}
    for p in files:
        first_names.setdefault(_real(p), p)
    return list(first_names.values())


def _real(path: Path) -> Path:
    """``path`` with its links followed; a loop of links is left as it is (``resolve()`` would
    raise, ending the run; reading or writing it fails alone, named)."""
    return Path(os.path.realpath(path))


def check_existing_outputs_rule(overwrite: bool, skip_existing: bool) -> None:
    """What to do with an output that exists: replace it or pass its input over, not both."""
    if overwrite and skip_existing:
        raise DenoiseError("--overwrite and --skip-existing: choose one")


def check_out_dir(out_dir: Path) -> None:
    """A :class:`DenoiseError` if ``out_dir`` cannot hold outputs. Nothing is created here
    (the first output creates the folder), so a run that fails leaves no empty folder."""
    try:
        if out_dir.is_symlink() and not out_dir.exists():
            target = out_dir.readlink()
            raise DenoiseError(f"{out_dir}: output folder is a link to nothing ({target})")
        if out_dir.exists() and not out_dir.is_dir():
            raise DenoiseError(f"{out_dir}: output folder is a file")
        existing = next(p for p in (out_dir, *out_dir.parents) if p.exists())
    except OSError as e:
        raise DenoiseError(f"{out_dir}: cannot use as output folder ({e.strerror or e})") from None
    if not existing.is_dir():
        raise DenoiseError(f"{out_dir}: cannot create the output folder ({existing} is a file)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DenoiseError(f"{out_dir}: output folder is not writable ({existing})")


def _denoise_file(
    src: Path,
    dst: Path,
    backend: Backend,
    *,
    tile: int,
    overlap: int,
    overwrite: bool,
    progress: bool,
) -> None:
    """Read ``src``, denoise it and write ``dst``: :func:`denoise_files`' work on one photo,
    its checks of the paths done (``dst`` is replaced only if ``overwrite``: another process
    may write it while this one works)."""
    photo = None
    try:
        photo = read_photo(src)
        bits = getattr(backend, "input_bits", 24)
        if photo.rgb.dtype == np.uint16 and bits < 16:
            raise DenoiseError(
                f"{src}: a 16-bit photo would keep only {bits} bits through the network in "
                f"{getattr(backend, 'precision', 'reduced precision')}; denoise it in fp32 "
                "(the default)"
            )
        out = denoise_image(photo.rgb, backend, tile=tile, overlap=overlap, progress=progress)
        write_image(dst, out, grey=photo.grey, metadata=photo.metadata, replace=overwrite)
    except MemoryError:  # the photo's own buffers (the tile's fail as a DenoiseError)
        size = "this photo"
        if photo is not None:
            h, w = photo.rgb.shape[:2]
            size = f"a {w}x{h} photo ({w * h / 1e6:.0f} MP)"
        raise DenoiseError(
            f"{src}: not enough memory for {size}: besides the network's tiles a photo needs "
            "about 20 bytes per pixel"
        ) from None


def denoise_files(
    inputs: Sequence[str | Path],
    backend: Backend,
    *,
    tile: int,
    overlap: int,
    out_dir: str | Path | None = None,
    overwrite: bool = False,
    skip_existing: bool = False,
    progress: bool = True,
    on_error: Callable[[Path, str], None] | None = None,
    on_written: Callable[[Path], None] | None = None,
    on_skipped: Callable[[Path], None] | None = None,
) -> list[Path]:
    """Denoise photos into ``<stem>_denoised.<ext>``; returns the outputs written, each also
    passed to ``on_written`` as soon as it is (so a run cut short has said what it wrote).

    An output is upright, grey if its input was, and carries its input's colour profile and
    EXIF into JPEG and PNG (:mod:`denoise.photo_metadata`).

    A file that fails (unreadable, output exists without ``overwrite``, output not writable)
    is passed to ``on_error(path, message)`` and skipped; the rest still run, and so does a
    folder with no photo. A backend that stops answering (:class:`BackendUnavailable`: a
    server gone or timing out) ends the run at once, naming how many inputs are left (with
    ``skip_existing`` a re-run finishes them). An existing file, input or earlier output, is
    never replaced unless ``overwrite``; with ``skip_existing`` its input is passed over
    instead (``on_skipped`` gets the output): a run cut short finishes where it stopped. An
    input of this same run is never replaced, and neither is a folder. Two inputs that map
    to one output (``a/x.jpg b/x.jpg -o out``) are refused, never merged. An ``out_dir``
    that cannot hold outputs is a :class:`DenoiseError` before any work.
    """
    check_tiling(tile, overlap)
    check_existing_outputs_rule(overwrite, skip_existing)
    if out_dir is not None:
        check_out_dir(Path(out_dir))
    files = expand_inputs(inputs, on_empty=on_error)
    written: list[Path] = []
    sources: dict[Path, Path] = {_real(p): p for p in files}  # output or input -> input
    many = len(files) > 1
    bar = tqdm(files, desc="denoise", unit="photo", disable=not (progress and many))
    for done, src in enumerate(bar):
        dst = output_path(src, out_dir)
        try:
            first = sources.setdefault(_real(dst), src)
            if first is not src:
                if _real(first) == _real(dst):
                    raise DenoiseError(f"{dst}: is an input of this run; not overwritten")
                raise DenoiseError(f"{src}: same output {dst} as {first}; use separate -o folders")
            if dst.is_dir():  # before the work: --overwrite would not replace it either
                raise DenoiseError(f"{dst}: is a folder; not replaced by an output")
            exists = os.path.lexists(dst)  # a link to nothing is there too
            if exists and skip_existing:
                if on_skipped is not None:
                    on_skipped(dst)
                continue
            if exists and not overwrite:
                raise DenoiseError(
                    f"{dst}: already exists (--overwrite replaces it, --skip-existing keeps it)"
                )
            check_writable_type(src)  # the output keeps its type; before the work
            if out_dir is None and not os.access(dst.parent, os.W_OK | os.X_OK):
                raise DenoiseError(f"{dst}: cannot be written ({dst.parent} is not writable)")
            _denoise_file(
                src,
                dst,
                backend,
                tile=tile,
                overlap=overlap,
                overwrite=overwrite,
                progress=progress and not many,
            )
        except BackendUnavailable as e:  # every later photo would wait and fail the same way
            left = len(files) - done
            raise BackendUnavailable(
                f"{e}; stopped with {left} of {len(files)} inputs not denoised ({src} on)"
            ) from None
        except (DenoiseError, OSError) as e:  # OSError: e.g. a folder without permission
            if isinstance(e, OutputExists) and skip_existing:  # another run wrote it meanwhile
                if on_skipped is not None:
                    on_skipped(dst)
                continue
            if on_error is None:
                raise
            msg = str(e) if isinstance(e, DenoiseError) else f"{e.strerror or e}"
            on_error(src, msg if str(src) in msg or str(dst) in msg else f"{src}: {msg}")
            continue
        written.append(dst)
        if on_written is not None:
            on_written(dst)
    return written
