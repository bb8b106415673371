"""Atomic file output and validated image input.

Every output the pipeline writes goes through a temporary sibling and an ``os.replace``, so an
interrupted run leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from denoise.errors import DenoiseError, first_line
from denoise.photo_metadata import (
    NO_METADATA,
    TIFF_HEADERS,
    PhotoMetadata,
    embed_metadata,
    read_metadata,
)


def _staging_prefix(target: Path) -> str:
    """The name :func:`atomic_path`'s temporary folder beside ``target`` starts with (the name
    cut short: the temporary's own name must fit in 255 bytes like the target's)."""
    return f".{target.name[:64]}."


def _is_output(path: str | Path, target: str | Path) -> bool:
    """Whether ``path`` is ``target``, a folder above it, inside it, or inside its
    :func:`atomic_path` staging folder: a place writing ``target`` touches."""
    path, target = Path(path).absolute(), Path(target).absolute()
    prefix = _staging_prefix(target)
    return path in target.parents or any(
        p == target or (p.parent == target.parent and p.name.startswith(prefix))
        for p in (path, *path.parents)
    )


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def flush_to_disk(staged: Path) -> None:
    """fsync what a write staged: a file, or a folder and everything in it. Without it the
    rename can reach the disk before the data it points to, and a power cut leaves an empty
    file under the final name (ext4 without ``auto_da_alloc``, XFS). Folders are synced best
    effort (some file systems, FUSE or network mounts, refuse)."""
    if not staged.exists() or staged.is_symlink():
        return
    for item in [*(staged.rglob("*") if staged.is_dir() else ()), staged]:
        if item.is_symlink():
            continue
        if item.is_file():
            _fsync(item)
        elif item.is_dir():
            _flush_rename(item)


def _flush_rename(folder: Path) -> None:
    """fsync a folder (that folder alone): after a rename in it, so the rename is on disk
    too. Best effort: the output is in place by then, and some file systems (FUSE, network
    mounts) refuse to sync a folder."""
    with contextlib.suppress(OSError):
        _fsync(folder)


@contextlib.contextmanager
def atomic_path(target: str | Path, *, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target``.

    Works for files and folders. On an exception the temporary is removed and ``target`` is
    left as it was. A folder being replaced is first renamed aside (into the temporary), so
    an interruption never leaves half of the old folder, only the old or the new one whole;
    a kill in the instant between the two renames leaves the old one whole in the hidden
    temporary beside ``target`` (``.<name>.*.tmp/.replaced``). With ``replace`` false (files
    only) a ``target`` that exists when the file is published, also one another process wrote
    meanwhile, is a :class:`DenoiseError` and stays as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_staging_prefix(target), suffix=".tmp", dir=target.parent))
    staged, aside = tmp / target.name, tmp / ".replaced"
    try:
        try:
            yield staged
        # Errors name the output, not a hidden folder about to be removed.
        except DenoiseError as e:
            if str(staged) not in str(e):
                raise
            raise DenoiseError(str(e).replace(str(staged), str(target))) from None
        except OSError as e:  # as write_errors_named around this will report it
            for attr in ("filename", "filename2"):
                name = getattr(e, attr)
                if isinstance(name, str) and str(staged) in name:
                    setattr(e, attr, name.replace(str(staged), str(target)))
            raise
        flush_to_disk(staged)
        if not replace:
            _publish_new(staged, target)
            return
        try:
            if target.is_dir() and not target.is_symlink():
                os.replace(target, aside)  # deleted with ``tmp`` below
            os.replace(staged, target)
            _flush_rename(target.parent)
        except BaseException:
            if aside.exists() and not target.exists():
                os.replace(aside, target)  # the old one back, before ``tmp`` goes
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class OutputExists(DenoiseError):
    """A file at an output's name, written after the run checked it was free."""


def _publish_new(staged: Path, target: Path) -> None:
    """Put the file ``staged`` at ``target`` unless something is there: a hard link fails if
    the name exists, where a check before a rename would leave a moment for another writer."""
    try:
        os.link(staged, target, follow_symlinks=False)
    except FileExistsError:
        raise OutputExists(f"{target}: already exists (written meanwhile?); not replaced") from None
    except OSError:  # a file system without hard links (FAT, some network mounts)
        if os.path.lexists(target):
            raise OutputExists(f"{target}: already exists; not replaced") from None
        os.replace(staged, target)
    _flush_rename(target.parent)


def clear_stale_staging(target: str | Path) -> None:
    """Remove the hidden staging folders that killed :func:`atomic_path` writes of ``target``
    left beside it: as large as the output (half an extracted archive, half the patches), and
    nothing else would ever remove them. An old ``target`` that a kill left aside in one, with
    no ``target`` in its place, is put back first. Only for outputs no other process can be
    writing at the time, such as a DVC stage's (DVC locks the project while a stage runs)."""
    target = Path(target)
    # mkdtemp's names: the prefix, then 8 of [a-z0-9_]; a longer name is another target's.
    pattern = re.compile(re.escape(_staging_prefix(target)) + r"[a-z0-9_]{8}\.tmp")
    if not target.parent.is_dir():
        return
    for tmp in target.parent.iterdir():
        if pattern.fullmatch(tmp.name) and tmp.is_dir() and not tmp.is_symlink():
            aside = tmp / ".replaced"
            if aside.exists() and not target.exists():
                os.replace(aside, target)
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def write_errors_named(target: str | Path) -> Iterator[None]:
    """An ``OSError`` inside as one line: writing ``target`` (a full disk, a read-only folder,
    a file as parent), naming the file if it is one inside, or reading an input for it."""
    try:
        yield
    except OSError as e:
        reason = e.strerror or str(e)
        name = e.filename if isinstance(e.filename, str) else None
        if name and not _is_output(name, target):
            raise DenoiseError(f"{name}: cannot read ({reason}) for {target}") from None
        where = f": {name}" if name and Path(name) != Path(target) else ""
        raise DenoiseError(f"{target}: cannot write ({reason}{where})") from None


def check_free_space(folder: str | Path, needed: int, what: str) -> None:
    """A one-line error, before anything is written, if ``folder``'s disk has less than
    ``needed`` bytes free for ``what``."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise DenoiseError(
            f"not enough free space in {folder} for {what}: need {needed} bytes, "
            f"{free} free; free some space or use another folder"
        )


def write_bytes_atomic(path: str | Path, data: bytes, *, replace: bool = True) -> None:
    """Write a file atomically. A folder in its place is an error, never replaced; so is a
    place that cannot be written (a file as parent, no permission), and with ``replace``
    false, a file there when the new one is complete."""
    path = Path(path)
    if path.is_dir():
        raise DenoiseError(f"{path}: is a folder; not replaced by a file")
    with write_errors_named(path), atomic_path(path, replace=replace) as tmp:
        tmp.write_bytes(data)


def _json_safe(obj: Any) -> Any:
    """NaN and infinity (the PSNR of identical images) become null: JSON has no such numbers."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def json_text(obj: Any) -> str:
    """``obj`` as indented, key-sorted, strictly valid JSON (stable bytes for DVC)."""
    return json.dumps(_json_safe(obj), indent=2, sort_keys=True, allow_nan=False) + "\n"


def write_json(path: str | Path, obj: Any) -> None:
    """Write :func:`json_text` of ``obj`` atomically (a link in its place is replaced, not
    written through: DVC may link an output to its cache)."""
    write_bytes_atomic(path, json_text(obj).encode())


def is_stream(path: Path) -> bool:
    """Whether ``path`` (links followed) is a character device or a pipe."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)


def list_folder(folder: Path) -> list[Path]:
    """The entries of ``folder``, sorted; an unreadable folder is one line naming it."""
    try:
        return sorted(folder.iterdir())
    except OSError as e:
        raise DenoiseError(f"{folder}: cannot read ({e.strerror or e})") from None


JPEG_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")  # .jfif: browsers' downloads on Windows
_NETPBM_SUFFIXES = (".ppm", ".pgm", ".pnm")
IMAGE_SUFFIXES = (".png", *JPEG_SUFFIXES, ".tif", ".tiff", ".bmp", ".webp", *_NETPBM_SUFFIXES)
_SIXTEEN_BIT_SUFFIXES = (".png", ".tif", ".tiff", *_NETPBM_SUFFIXES)


def _to_8bit(img: np.ndarray) -> np.ndarray:
    return np.round(img.astype(np.float32) / 257.0).astype(np.uint8)


# EXIF orientation (tag 0x0112) -> the transform that shows the stored pixels upright.
_ORIENT: dict[int, Any] = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


def is_truncated_jpeg(data: bytes) -> bool:
    """A JPEG that stops before its end-of-image marker: cut off mid-download or mid-copy.

    Walks the markers from the start: each segment is skipped by its length (an EXIF
    thumbnail is inside one), each scan to the next marker (inside a scan 0xFF is followed by
    0x00 or a restart marker). The first end-of-image ends the walk, so data appended after
    the image (the video of a phone's motion photo) does not count. A structure this walk
    does not follow is left to the decoder to judge.
    """
    if data[:2] != b"\xff\xd8":
        return False
    i, n = 2, len(data)
    while True:
        if i + 1 >= n:
            return True
        if data[i] != 0xFF:
            return False
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker == 0xD9:
            return False
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        if i + 3 >= n:
            return True
        i += 2 + ((data[i + 2] << 8) | data[i + 3])
        if marker != 0xDA:
            continue
        while True:  # entropy-coded data of a scan
            j = data.find(b"\xff", i)
            if j < 0 or j + 1 >= n:
                return True
            following = data[j + 1]
            if following == 0x00 or 0xD0 <= following <= 0xD7:
                i = j + 2
            elif following == 0xFF:
                i = j + 1
            else:
                i = j
                break


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_GREY_ALPHA = 4  # the IHDR colour type of grey + alpha


def is_grey_alpha_png(data: bytes) -> bool:
    """A PNG of grey and alpha (IHDR colour type 4, at byte 25): OpenCV decodes it as four
    channels, like RGBA, so only the header tells that the photo is grey."""
    return (
        data.startswith(_PNG_SIGNATURE)
        and data[12:16] == b"IHDR"
        and data[25:26] == bytes([_PNG_GREY_ALPHA])
    )


def is_truncated_png(data: bytes) -> bool:
    """A PNG that stops before the end of its end chunk (IEND): cut off mid-download or
    mid-copy. Walks the chunks by their lengths; data after IEND does not count, and a length
    no PNG can have is left to the decoder to judge."""
    if not data.startswith(_PNG_SIGNATURE):
        return False
    i, n = len(_PNG_SIGNATURE), len(data)
    while True:
        if i + 8 > n:
            return True
        length = int.from_bytes(data[i : i + 4], "big")
        if length > 2**31 - 1:
            return False
        end = i + 12 + length  # length, type, data, CRC
        if end > n:
            return True
        if data[i + 4 : i + 8] == b"IEND":
            return False
        i = end


@dataclass(frozen=True)
class Photo:
    """An image as ``denoise run`` reads it: upright RGB pixels (``rgb``), whether the file was
    greyscale, and the metadata of those upright pixels (:mod:`denoise.photo_metadata`)."""

    rgb: np.ndarray
    grey: bool
    metadata: PhotoMetadata


_TIFF_MAGIC = (*TIFF_HEADERS, b"II+\0", b"MM\0+")  # classic TIFF and BigTIFF


def _alpha_is_opaque(img: np.ndarray, data: bytes) -> bool:
    """Whether a decoded image's alpha, if it has one, is all opaque (transparency has no
    meaning for a photograph). OpenCV keeps a PNG's alpha as a fourth channel but drops a grey
    TIFF's, which :func:`tiff_alpha_is_opaque` reads."""
    if img.ndim == 3 and img.shape[2] == 4:
        return bool((img[..., 3] == np.iinfo(img.dtype).max).all())
    if img.ndim == 2 or img.shape[2] == 1:
        return data[:4] not in _TIFF_MAGIC or tiff_alpha_is_opaque(data)
    return True


def tiff_alpha_is_opaque(data: bytes) -> bool:
    """Whether a grey TIFF's alpha sample, if it has one, is all opaque. OpenCV decodes grey
    plus alpha as one channel and drops the alpha, so tifffile reads the samples."""
    import tifffile  # only for grey TIFFs

    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = tif.pages[0]
        if page.samplesperpixel < 2:
            return True
        samples = page.asarray()
        separate = int(page.planarconfig) == 2  # (samples, H, W) rather than (H, W, samples)
    alpha = samples[-1] if separate else samples[..., -1]
    return alpha.dtype.kind in "ui" and bool((alpha == np.iinfo(alpha.dtype).max).all())


def tiff_samples(path: Path, data: bytes) -> np.ndarray | None:
    """The photo of a TIFF that OpenCV would decode wrongly; None for any other file (OpenCV
    decodes it), or one tifffile cannot parse (OpenCV's decoder then says what is wrong).

    Refused, naming the file, as the output would not be the photo: a TIFF of more
    full-resolution images than one, or with a reduced-resolution preview first (OpenCV
    decodes the first page alone; masks and previews after the image are fine), and a colour
    TIFF of more than 8 bits with its planes stored apart that tifffile cannot decode (LZW or
    JPEG inside need a codec package this project does not install). One it can decode is
    returned as ``(H, W, samples)`` BGR(A) like OpenCV's decodes, stored side up: OpenCV 4.11
    misreads those (the first plane as if interleaved, the rest zero). The file is parsed once.
    """
    if data[:4] not in _TIFF_MAGIC:
        return None
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            try:
                kinds = [int(page.subfiletype) for page in tif.pages]
            except Exception:  # a later page damaged (a file cut short): the first still counts
                kinds = []
            problem = _tiff_pages_problem(kinds)
            if problem:
                raise DenoiseError(f"{path}: {problem}")
            return _planar_samples(path, tif.pages[0])
    except DenoiseError:
        raise
    except Exception:  # a TIFF tifffile cannot parse at all: OpenCV's decoder judges it
        return None


def _tiff_pages_problem(kinds: list[int]) -> str | None:
    """What keeps a TIFF's first page from being its photo, from its pages' NewSubfileType."""
    images = sum(1 for kind in kinds if not kind & 0b101)  # bit 0: reduced; bit 2: a mask
    if images > 1:
        return f"a TIFF of {images} images; denoise reads one image a file"
    if kinds and kinds[0] & 1:
        return "a TIFF whose first page is a reduced-resolution preview; save the image first"
    return None


def _planar_samples(path: Path, page: Any) -> np.ndarray | None:
    """A colour page of more than 8 bits with its planes stored apart, decoded; else None."""
    if int(page.planarconfig) != 2 or page.bitspersample <= 8 or page.samplesperpixel < 3:
        return None
    kind = f"{page.bitspersample}-bit TIFF with its colour planes stored apart"
    # tifffile gives a plain int for a missing tag or a code it does not know
    photometric = getattr(page.photometric, "name", f"photometric {page.photometric}")
    compression = getattr(page.compression, "name", f"code {page.compression}")
    if photometric != "RGB":
        raise DenoiseError(f"{path}: {kind}, {photometric}: expected RGB")
    try:
        samples = page.asarray()  # (samples, H, W)
    except Exception as e:
        raise DenoiseError(
            f"{path}: {kind} and {compression} compression: cannot be read "
            f"({first_line(e)}); save it uncompressed, with zlib, or interleaved"
        ) from None
    rgb = np.moveaxis(samples, 0, -1)
    order = [2, 1, 0, *range(3, rgb.shape[2])]  # RGB(A) -> BGR(A)
    return np.ascontiguousarray(rgb[..., order])


# What libjpeg and libpng write to the error stream (not through OpenCV's log) about a bad
# file: why it did not decode, or, for one decoded anyway, that its rows are garbled.
_CORRUPT_DATA = ("Corrupt JPEG data", "Premature end of JPEG", "libpng error")
_BENIGN = ("libpng warning",)  # e.g. "iCCP: known incorrect sRGB profile": the pixels are fine


@contextlib.contextmanager
def _fd2_captured() -> Iterator[list[str]]:
    """File descriptor 2 redirected to a temporary file for the block; the lines written to it
    are in the yielded list once the block ends (also when it raises)."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as log:
            os.dup2(log.fileno(), 2)
            try:
                yield lines
            finally:
                os.dup2(saved, 2)
                log.seek(0)
                lines.extend(log.read().decode(errors="replace").splitlines())
    finally:
        os.close(saved)


def _decode(path: Path, data: bytes) -> np.ndarray | None:
    """OpenCV's decode with the decoders' messages caught: a bad file is reported once, by us,
    as one line naming it, not also as decoder warnings in the user's log, and an image that
    decodes with a corrupt-data warning is refused rather than passed on garbled.

    libjpeg and libpng write to file descriptor 2 themselves, so that is what is captured;
    lines that are not theirs (another thread's) are passed on to the error stream."""
    previous = cv2.setLogLevel(0)  # 0: silent
    failure = None
    try:
        with _fd2_captured() as lines:
            try:
                img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
            except cv2.error as e:
                img, failure = None, e.err
    finally:
        cv2.setLogLevel(previous)
    other = [line for line in lines if line and not line.startswith(_CORRUPT_DATA + _BENIGN)]
    if other:
        print(*other, sep="\n", file=sys.stderr)
    if failure is not None:
        raise DenoiseError(f"{path}: not a readable image ({failure})")
    corrupt = [line for line in lines if line.startswith(_CORRUPT_DATA)]
    if corrupt:  # decoded garbled, or not at all: the decoder's reason either way
        what = "corrupt image data" if img is not None else "not a readable image"
        raise DenoiseError(f"{path}: {what} ({corrupt[0].strip()})")
    return img


def read_photo(path: str | Path, *, keep16: bool = True, allow_convert: bool = True) -> Photo:
    """Read an image file: its pixels as ``(H, W, 3)`` RGB, uint8, or uint16 for 16-bit files
    if ``keep16``, with its greyness and metadata (:class:`Photo`).

    Pixels are returned the way a viewer shows them: an EXIF orientation (JPEG, PNG, TIFF,
    WebP) is applied to the pixels. Grey is expanded to three channels and 16-bit is rounded
    to 8-bit (when not ``keep16``) only if ``allow_convert``. An alpha channel that is all
    opaque (screenshots, phone editors) is dropped; one with any transparency is rejected (it
    has no meaning for a photograph, and dropping it silently could hide a wrong file).
    Every refusal is a :class:`DenoiseError` naming the file.
    """
    path = Path(path)
    try:
        if not os.path.lexists(path):
            raise DenoiseError(f"{path}: file not found")
        try:
            path.stat()  # a loop of links: "Too many levels of symbolic links", below
        except FileNotFoundError:
            raise DenoiseError(f"{path}: a link to nothing ({os.readlink(path)})") from None
        if not path.is_file():  # a device, a pipe (a folder is expanded before this)
            raise DenoiseError(f"{path}: not a regular file")
        data = path.read_bytes()
    except OSError as e:
        raise DenoiseError(f"{path}: cannot read ({e.strerror or e})") from None
    if not data:
        raise DenoiseError(f"{path}: empty file")
    # libjpeg would decode a cut JPEG, greying out what is missing; libpng says only that its
    # input buffer is incomplete, or nothing when the cut is in the header.
    cut = "JPEG" if is_truncated_jpeg(data) else "PNG" if is_truncated_png(data) else None
    if cut:
        raise DenoiseError(f"{path}: truncated {cut} (the image data stops before its end)")
    samples = tiff_samples(path, data)
    img = _decode(path, data) if samples is None else samples
    if img is None:
        raise DenoiseError(f"{path}: not a readable image")
    expected = "8/16-bit RGB" if keep16 else "8-bit RGB"
    if img.dtype == np.uint16 and not keep16:
        if not allow_convert:
            raise DenoiseError(f"{path}: 16-bit image, expected {expected}")
        img = _to_8bit(img)
    elif img.dtype not in (np.uint8, np.uint16):
        raise DenoiseError(f"{path}: unsupported sample type {img.dtype}, expected {expected}")
    channels = 1 if img.ndim == 2 else img.shape[2]
    if channels not in (1, 3, 4):
        raise DenoiseError(f"{path}: {channels} channels, expected {expected}")
    if not _alpha_is_opaque(img, data):
        raise DenoiseError(
            f"{path}: has an alpha channel (RGBA or grey+alpha), expected {expected}"
        )
    if channels == 4:
        img = np.ascontiguousarray(img[..., :3])  # all opaque: the alpha says nothing
    grey = channels == 1 or (channels == 4 and is_grey_alpha_png(data))
    if grey and not allow_convert:
        raise DenoiseError(f"{path}: greyscale image, expected {expected}")
    if channels == 1:
        img = cv2.cvtColor(img.reshape(img.shape[:2]), cv2.COLOR_GRAY2BGR)
    metadata = read_metadata(data)
    # OpenCV's TIFF decoder applies the orientation tag itself; the others leave it to us.
    turned = 1 if data[:4] in _TIFF_MAGIC and samples is None else metadata.orientation
    upright = _ORIENT.get(turned, lambda a: a)(img)
    rgb = np.ascontiguousarray(cv2.cvtColor(np.ascontiguousarray(upright), cv2.COLOR_BGR2RGB))
    return Photo(rgb=rgb, grey=grey, metadata=metadata.upright())


def read_image(path: str | Path, *, keep16: bool = False, allow_convert: bool = True) -> np.ndarray:
    """The pixels of :func:`read_photo` (by default 8-bit: 16-bit files are rounded)."""
    return read_photo(path, keep16=keep16, allow_convert=allow_convert).rgb


def read_rgb8(path: str | Path, *, allow_convert: bool = True) -> np.ndarray:
    """:func:`read_image` as ``(H, W, 3)`` uint8: what the data stages and the scores use."""
    return read_image(path, allow_convert=allow_convert)


def check_writable_type(path: str | Path) -> None:
    """A :class:`DenoiseError` if OpenCV has no encoder for ``path``'s suffix: checked before
    a photo is denoised, since its output keeps the input's type."""
    suffix = Path(path).suffix.lower() or ".png"
    if not cv2.haveImageWriter(f"x{_encoder_suffix(suffix)}"):
        raise DenoiseError(
            f"{path}: cannot write {suffix} images; convert the input to .png, .jpg or .tif"
        )


def _encoder_suffix(suffix: str) -> str:
    """The suffix OpenCV's encoder knows for a file type (it knows no ``.jfif``)."""
    return ".jpg" if suffix in JPEG_SUFFIXES else suffix


_JPEG_SAMPLING_FACTORS = {  # PhotoMetadata.jpeg_subsampling -> OpenCV's setting
    (1, 1): cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444,
    (2, 1): cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422,
    (2, 2): cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420,
    (1, 2): cv2.IMWRITE_JPEG_SAMPLING_FACTOR_440,
    (4, 1): cv2.IMWRITE_JPEG_SAMPLING_FACTOR_411,
    (1, 4): cv2.IMWRITE_JPEG_SAMPLING_FACTOR_440,  # 4:1:1 turned: no writer has it; all kept
}


def write_image(
    path: str | Path,
    img: np.ndarray,
    *,
    grey: bool = False,
    metadata: PhotoMetadata = NO_METADATA,
    jpeg_quality: int = 95,
    replace: bool = True,
) -> None:
    """Write an ``(H, W, 3)`` RGB uint8/uint16 array atomically; the format follows the suffix
    (``replace``: as :func:`write_bytes_atomic`'s).

    16-bit data is kept where the format holds it (PNG, TIFF) and rounded to 8 bits otherwise.
    ``grey`` writes one channel, the mean of the three. ``metadata`` (a :class:`Photo`'s, which
    describes upright pixels) is carried into JPEG and PNG files; a JPEG is written at
    ``jpeg_quality`` with the original's chroma subsampling (4:2:0 when it had none).
    """
    if img.dtype not in (np.uint8, np.uint16) or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8/uint16, got {img.shape} {img.dtype}")
    path = Path(path)
    suffix = path.suffix.lower() or ".png"
    if img.dtype == np.uint16 and suffix not in _SIXTEEN_BIT_SUFFIXES:
        img = _to_8bit(img)
    if grey:
        pixels = np.round(img.mean(axis=2, dtype=np.float32)).astype(img.dtype)
    else:
        pixels = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    params = []
    if suffix in JPEG_SUFFIXES:
        params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]
        sampling = metadata.jpeg_subsampling
        factor = None if sampling is None else _JPEG_SAMPLING_FACTORS.get(sampling)
        if factor is not None:  # the original's; else OpenCV's 4:2:0
            params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, factor]
    try:
        ok, buf = cv2.imencode(_encoder_suffix(suffix), pixels, params)
    except cv2.error:
        ok = False
    if not ok:
        raise DenoiseError(f"{path}: cannot write a {suffix} image (use .png, .jpg or .tif)")
    write_bytes_atomic(path, embed_metadata(buf.tobytes(), metadata, grey=grey), replace=replace)


def write_rgb8(path: str | Path, img: np.ndarray) -> None:
    """:func:`write_image` for ``(H, W, 3)`` uint8 arrays only (pipeline outputs)."""
    if img.dtype != np.uint8:
        raise ValueError(f"expected uint8, got {img.dtype}")
    write_image(path, img)
