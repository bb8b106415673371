"""What a photo's file holds besides its pixels, and must still hold once denoised.

A phone photo carries a colour profile and EXIF. The profile says what its RGB numbers mean:
iPhones shoot in Display P3, and a colour-managed viewer shows a P3 photo whose profile was
dropped as if it were sRGB, visibly duller. EXIF holds the capture time, camera, exposure
and place that photo libraries sort and search by. ``denoise run`` copies both into its JPEG
and PNG outputs, byte for byte but for what turning the pixels changes: they are written
upright (the EXIF orientation is applied when they are read), so the copy's orientation tag
says upright, a quarter-turned photo's EXIF width and height trade places, and a turned
photo's EXIF thumbnail, stored as the camera held it and now wrongly turned, is unlinked.

Not carried: XMP (it can hold its own orientation and an edit history that no longer
applies), the multi-picture data of a JPEG (depth and gain maps of the noisy original), a
PNG's other colour chunks (cICP, sRGB, gAMA, cHRM), and any metadata of TIFF, WebP and BMP
outputs. Left as the camera wrote it: the thumbnail of an upright photo (the noisy
original, small).
"""

from __future__ import annotations

import contextlib
import io
import re
import struct
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

ORIENTATION_TAG = 0x0112
TIFF_HEADERS = (b"II*\x00", b"MM\x00*")  # how a TIFF file, and so an EXIF block, starts
_EXIF_HEADER = b"Exif\x00\x00"  # how EXIF starts inside a JPEG APP1 segment
_ICC_HEADER = b"ICC_PROFILE\x00"  # how each piece of a profile starts inside a JPEG APP2 segment
_SEGMENT_MAX = 65535 - 2  # a JPEG segment's payload: its 16-bit length counts itself


@dataclass(frozen=True)
class PhotoMetadata:
    """A photo's EXIF orientation (1 to 8, 1 = upright), colour profile and EXIF.

    ``exif`` is the TIFF-structured block (it starts ``II*`` or ``MM*``) exactly as the file
    holds it, orientation included; :meth:`upright` gives what an upright copy should hold.
    """

    orientation: int = 1
    icc_profile: bytes | None = None
    exif: bytes | None = None
    #: A JPEG's chroma subsampling as its luma sampling factors (horizontal, vertical) beside
    #: chroma's 1x1: (1, 1) 4:4:4, (2, 1) 4:2:2, (2, 2) 4:2:0, (1, 2) 4:4:0, (4, 1) 4:1:1. Kept
    #: by a JPEG copy: 4:2:0 would halve the colour resolution of a 4:4:4 original.
    jpeg_subsampling: tuple[int, int] | None = None

    def upright(self) -> PhotoMetadata:
        """The metadata of the same photo with its pixels turned upright.

        An EXIF whose orientation tag cannot be rewritten in place is dropped: copied as it
        is, it would make viewers turn the upright pixels a second time.
        """
        if self.orientation == 1:
            return self
        exif = None if self.exif is None else _with_upright_orientation(self.exif, self.orientation)
        sampling = self.jpeg_subsampling
        if sampling is not None and self.orientation >= 5:  # a quarter turn: the axes trade
            sampling = (sampling[1], sampling[0])
        return replace(self, orientation=1, exif=exif, jpeg_subsampling=sampling)


NO_METADATA = PhotoMetadata()


@contextlib.contextmanager
def _lenient_pillow() -> Iterator[None]:
    """Pillow as a header parser for pixels OpenCV has already decoded: no size limit (a
    200-megapixel phone photo is above its decompression-bomb limit) and no refusal of a PNG
    for a bad checksum in an ancillary chunk (libpng only warns), and quiet: what it cannot
    parse is left out, not reported once per photo."""
    from PIL import Image, ImageFile

    saved = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = None, True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved


def read_metadata(data: bytes) -> PhotoMetadata:
    """The orientation, colour profile and EXIF of an image file's bytes.

    Read with Pillow, which parses the header only. OpenCV applies the orientation only to
    8-bit colour decodes, which would lose 16-bit data and hide an alpha channel, and keeps
    no profile. Metadata Pillow cannot parse is left out, and nothing else: the pixels are
    judged by the decoder, and a broken EXIF does not cost the profile.
    """
    from PIL import Image

    icc = exif = subsampling = None
    orientation: object = 1
    with _lenient_pillow():
        try:
            with Image.open(io.BytesIO(data)) as im:
                icc = im.info.get("icc_profile") or None
                subsampling = _jpeg_sampling(im)
                # For a PNG Pillow decodes the whole image to look for an EXIF chunk after
                # the pixels: not worth it when there is none.
                if im.format != "PNG" or b"eXIf" in data:
                    with contextlib.suppress(Exception):
                        orientation = im.getexif().get(ORIENTATION_TAG, 1)
                        exif = im.info.get("exif") or None
        except Exception:  # any failure to parse means: no metadata Pillow can read
            pass
    if not (isinstance(orientation, int) and 1 <= orientation <= 8):
        orientation = 1
    if isinstance(exif, bytes):
        exif = re.sub(b"^(" + re.escape(_EXIF_HEADER) + b"){1,2}", b"", exif)  # as Pillow does
    if not (isinstance(exif, bytes) and exif[:4] in TIFF_HEADERS):
        exif = None
    return PhotoMetadata(
        orientation=orientation,
        icc_profile=icc if isinstance(icc, bytes) else None,
        exif=exif,
        jpeg_subsampling=subsampling,
    )


def _jpeg_sampling(im: Any) -> tuple[int, int] | None:
    """A colour JPEG's luma sampling factors where both chroma components are 1x1; None for
    any other image. Pillow opens a JPEG with a multi-picture preview (cameras' large
    thumbnail, Ultra HDR) as an MPO, a JPEG too."""
    from PIL import JpegImagePlugin

    layers = getattr(im, "layer", None)
    if not isinstance(im, JpegImagePlugin.JpegImageFile) or not layers or len(layers) != 3:
        return None
    (_, h, v, _), *chroma = layers
    return (h, v) if all(layer[1:3] == (1, 1) for layer in chroma) else None


_SHORT, _LONG = 3, 4  # TIFF field types
_EXIF_IFD_TAG = 0x8769  # where IFD0 points to the EXIF sub-IFD
_PIXEL_X, _PIXEL_Y = 0xA002, 0xA003  # the sub-IFD's image width and height


def _ifd_entries(exif: bytes, order: str, at: int) -> tuple[dict[int, tuple[int, int, int]], int]:
    """The entries of the IFD at offset ``at`` (tag -> (entry offset, field type, count)) and
    the offset of its link to the next IFD, after every entry (a tag written twice too)."""
    (count,) = struct.unpack_from(order + "H", exif, at)
    end = at + 2 + 12 * count
    entries = {}
    for entry in range(at + 2, end, 12):
        tag, kind, n = struct.unpack_from(order + "HHI", exif, entry)
        entries.setdefault(tag, (entry, kind, n))
    return entries, end


def _with_upright_orientation(exif: bytes, orientation: int) -> bytes | None:
    """``exif`` as it should read once pixels stored with ``orientation`` are turned upright.

    The orientation tag of its first IFD is set to 1 and the link to the thumbnail's IFD cut
    (its bytes stay, unreferenced). For a quarter turn (orientations 5 to 8) the sub-IFD's
    width and height are swapped where both are there. An EXIF without the tag is returned
    as it is (the orientation came from XMP, which is not carried); None if the tag is not a
    SHORT holding one value, as the EXIF standard stores it, or the IFD cannot be read.
    """
    order = "<" if exif[:2] == b"II" else ">"
    try:
        (ifd,) = struct.unpack_from(order + "I", exif, 4)
        ifd0, next_link = _ifd_entries(exif, order, ifd)
        if ORIENTATION_TAG not in ifd0:
            return exif
        entry, kind, n = ifd0[ORIENTATION_TAG]
        if kind != _SHORT or n != 1:
            return None
        patched = bytearray(exif)
        struct.pack_into(order + "H", patched, entry + 8, 1)
        struct.pack_into(order + "I", patched, next_link, 0)
    except struct.error:
        return None
    if orientation >= 5 and _EXIF_IFD_TAG in ifd0:
        with contextlib.suppress(struct.error):  # a sub-IFD that cannot be read stays as it is
            _swap_width_and_height(patched, order, ifd0[_EXIF_IFD_TAG][0])
    return bytes(patched)


def _swap_width_and_height(exif: bytearray, order: str, pointer_entry: int) -> None:
    """Swap the sub-IFD's pixel width and height in place, each kept in its own field type
    (SHORT or LONG); left alone unless both hold one value that fits the other's field."""
    (sub,) = struct.unpack_from(order + "I", exif, pointer_entry + 8)
    entries, _ = _ifd_entries(bytes(exif), order, sub)
    if _PIXEL_X not in entries or _PIXEL_Y not in entries:
        return
    (x_at, x_kind, x_n), (y_at, y_kind, y_n) = entries[_PIXEL_X], entries[_PIXEL_Y]
    if x_n != 1 or y_n != 1 or not {x_kind, y_kind} <= {_SHORT, _LONG}:
        return
    x_format = order + ("H" if x_kind == _SHORT else "I")
    y_format = order + ("H" if y_kind == _SHORT else "I")
    (x,) = struct.unpack_from(x_format, exif, x_at + 8)
    (y,) = struct.unpack_from(y_format, exif, y_at + 8)
    if (x_kind == _SHORT and y > 0xFFFF) or (y_kind == _SHORT and x > 0xFFFF):
        return
    struct.pack_into(x_format, exif, x_at + 8, y)
    struct.pack_into(y_format, exif, y_at + 8, x)


def icc_colour_space(profile: bytes) -> str:
    """The data colour space an ICC profile describes: ``RGB``, ``GRAY``, ``CMYK``, ..."""
    return profile[16:20].decode("latin-1").strip()


def embed_metadata(encoded: bytes, meta: PhotoMetadata, *, grey: bool) -> bytes:
    """Put ``meta`` (already :meth:`~PhotoMetadata.upright`) into a freshly encoded image.

    ``encoded`` is what OpenCV wrote (it writes no metadata; its format is read from its
    first bytes) and ``grey`` whether its pixels are one channel. A profile for another
    colour space than the pixels' (a CMYK JPEG's, which OpenCV decodes to RGB) is not
    copied, and nor is anything into a format other than JPEG and PNG.
    """
    icc = meta.icc_profile
    if icc is not None and icc_colour_space(icc) != ("GRAY" if grey else "RGB"):
        icc = None
    if icc is None and meta.exif is None:
        return encoded
    if encoded.startswith(b"\xff\xd8"):
        return _embed_in_jpeg(encoded, icc, meta.exif)
    if encoded.startswith(b"\x89PNG\r\n\x1a\n"):
        return _embed_in_png(encoded, icc, meta.exif)
    return encoded


def _jpeg_segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload


def _embed_in_jpeg(jpeg: bytes, icc: bytes | None, exif: bytes | None) -> bytes:
    """EXIF as an APP1 segment and the profile as numbered APP2 pieces, after the JFIF APP0.

    EXIF has to fit one segment (64 KB); a larger one, which no phone writes, is left out.
    """
    segments = b""
    if exif is not None and len(_EXIF_HEADER) + len(exif) <= _SEGMENT_MAX:
        segments += _jpeg_segment(0xE1, _EXIF_HEADER + exif)
    if icc is not None:
        piece = _SEGMENT_MAX - len(_ICC_HEADER) - 2  # 2: the piece's number and the count
        pieces = [icc[i : i + piece] for i in range(0, len(icc), piece)]
        if len(pieces) > 255:  # numbered in one byte: a 16 MB profile cannot be stored
            pieces = []
        for number, data in enumerate(pieces, start=1):
            header = _ICC_HEADER + bytes((number, len(pieces)))
            segments += _jpeg_segment(0xE2, header + data)
    at = 2  # after SOI, or after the APP0 (JFIF) segment that OpenCV writes first
    if jpeg[2:4] == b"\xff\xe0":
        at = 4 + int.from_bytes(jpeg[4:6], "big")
    return jpeg[:at] + segments + jpeg[at:]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _embed_in_png(png: bytes, icc: bytes | None, exif: bytes | None) -> bytes:
    """An iCCP and an eXIf chunk right after IHDR (before the image data, where readers
    that stop at the pixels still find them)."""
    chunks = b""
    if icc is not None:
        chunks += _png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc))
    if exif is not None:
        chunks += _png_chunk(b"eXIf", exif)
    at = 8 + 8 + int.from_bytes(png[8:12], "big") + 4  # signature, IHDR's length+type, data, CRC
    return png[:at] + chunks + png[at:]
