"""`denoise run` outputs keep their photo's colour profile, EXIF and greyness, upright."""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import ExifTags, Image, ImageCms, ImageOps
from test_infer import Recorder, make_pair

from denoise.fileio import read_photo, write_image
from denoise.infer import denoise_files
from denoise.photo_metadata import (
    ORIENTATION_TAG,
    PhotoMetadata,
    embed_metadata,
    icc_colour_space,
    read_metadata,
)

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
MAKE, MODEL, DATETIME = 0x010F, 0x0110, 0x0132


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    exif[MAKE], exif[MODEL], exif[DATETIME] = "Phone Co", "Model 9", "2026:11:26 10:00:00"
    return exif


def _save(path: Path, pixels: np.ndarray, **info: object) -> Path:
    """Write with Pillow, a writer independent of the code under test."""
    fmt = "JPEG" if path.suffix == ".jpg" else "PNG"
    options = {"quality": 95} if fmt == "JPEG" else {}
    Image.fromarray(pixels).save(path, fmt, **options, **info)
    return path


def _run(*inputs: Path, out: Path) -> list[Path]:
    errors: list[tuple[Path, str]] = []
    written = denoise_files(
        list(inputs), Recorder(), tile=0, overlap=0, out_dir=out, progress=False,
        on_error=lambda p, m: errors.append((p, m)),
    )  # fmt: skip
    assert errors == []
    return written


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_output_keeps_profile_and_exif_and_says_upright(tmp_path: Path, suffix: str) -> None:
    _, pixels = make_pair(24, 40)  # smooth, so that JPEG re-encoding changes it little
    src = _save(tmp_path / f"p{suffix}", pixels, icc_profile=SRGB, exif=_exif(6).tobytes())
    (dst,) = _run(src, out=tmp_path / "out")
    with Image.open(src) as before, Image.open(dst) as after:
        assert after.info["icc_profile"] == SRGB
        exif = after.getexif()
        assert exif[ORIENTATION_TAG] == 1
        assert (exif[MAKE], exif[MODEL], exif[DATETIME]) == (
            "Phone Co",
            "Model 9",
            "2026:11:26 10:00:00",
        )
        assert after.size == (24, 40)  # stored upright: the 40x24 photo turned 90 degrees
        shown_before = np.asarray(ImageOps.exif_transpose(before), np.float32)
        shown_after = np.asarray(ImageOps.exif_transpose(after), np.float32)
    # A viewer shows the same picture (an identity backend; JPEG loses a little re-encoding).
    assert np.abs(shown_after - shown_before).mean() < (3.0 if suffix == ".jpg" else 1e-9)


def test_a_profile_larger_than_a_jpeg_segment_is_kept_whole(tmp_path: Path) -> None:
    big = SRGB + bytes(range(256)) * 600  # 154 KB: three APP2 pieces
    src = _save(tmp_path / "p.jpg", np.zeros((8, 8, 3), np.uint8), icc_profile=big)
    (dst,) = _run(src, out=tmp_path / "out")
    assert read_metadata(dst.read_bytes()).icc_profile == big
    # Numbered 1 to 3 of 3 in the order written (libjpeg refuses a piece numbered 0).
    data = dst.read_bytes()
    starts = [i + 12 for i in range(len(data)) if data.startswith(b"ICC_PROFILE\x00", i)]
    assert [(data[i], data[i + 1]) for i in starts] == [(1, 3), (2, 3), (3, 3)]


@pytest.mark.parametrize(
    ("suffix", "dtype"), [(".png", np.uint8), (".png", np.uint16), (".jpg", np.uint8)]
)
def test_a_grey_photo_stays_grey(tmp_path: Path, suffix: str, dtype: type) -> None:
    top = np.iinfo(dtype).max
    grey = np.random.default_rng(2).integers(0, top, (16, 20), dtype=dtype)
    src = tmp_path / f"g{suffix}"
    src.write_bytes(cv2.imencode(suffix, grey)[1].tobytes())
    (dst,) = _run(src, out=tmp_path / "out")
    out = cv2.imread(str(dst), cv2.IMREAD_UNCHANGED)
    assert out.shape == grey.shape and out.dtype == dtype
    if suffix == ".png":  # identity backend, lossless format: the very same values
        np.testing.assert_array_equal(out, cv2.imread(str(src), cv2.IMREAD_UNCHANGED))


def test_an_opaque_grey_and_alpha_photo_stays_grey(tmp_path: Path) -> None:
    from PIL import Image

    la = np.random.default_rng(4).integers(0, 255, (16, 20, 2), dtype=np.uint8)
    la[..., 1] = 255
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    (dst,) = _run(tmp_path / "la.png", out=tmp_path / "out")
    np.testing.assert_array_equal(cv2.imread(str(dst), cv2.IMREAD_UNCHANGED), la[..., 0])


def test_a_profile_for_other_pixels_is_not_copied(tmp_path: Path) -> None:
    cmyk = SRGB[:16] + b"CMYK" + SRGB[20:]  # a CMYK JPEG's profile: OpenCV decodes it to RGB
    grey_profile = SRGB[:16] + b"GRAY" + SRGB[20:]
    assert (icc_colour_space(SRGB), icc_colour_space(cmyk)) == ("RGB", "CMYK")
    png = cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[1].tobytes()
    grey_png = cv2.imencode(".png", np.zeros((4, 4), np.uint8))[1].tobytes()
    assert embed_metadata(png, PhotoMetadata(icc_profile=cmyk), grey=False) == png
    assert embed_metadata(png, PhotoMetadata(icc_profile=grey_profile), grey=False) == png
    kept = embed_metadata(grey_png, PhotoMetadata(icc_profile=grey_profile), grey=True)
    assert Image.open(io.BytesIO(kept)).info["icc_profile"] == grey_profile


def test_without_metadata_the_encoded_bytes_are_untouched(tmp_path: Path) -> None:
    img = np.random.default_rng(3).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    for suffix in (".png", ".jpg", ".tif"):
        write_image(tmp_path / f"a{suffix}", img)
        assert (tmp_path / f"a{suffix}").read_bytes() == cv2.imencode(suffix, img[..., ::-1])[
            1
        ].tobytes()
    # TIFF keeps no metadata here: it is written all the same.
    write_image(tmp_path / "b.tif", img, metadata=PhotoMetadata(icc_profile=SRGB))
    assert (tmp_path / "b.tif").read_bytes() == (tmp_path / "a.tif").read_bytes()


def _tiff_exif(
    order: str, entries: list[tuple[int, int, int, int]], thumbnail: bool = False
) -> bytes:
    """A TIFF-structured EXIF block whose first IFD holds ``(tag, type, count, value)``,
    linked (``thumbnail``) to a second IFD that says where a thumbnail is."""
    head = (b"II*\x00" if order == "<" else b"MM\x00*") + struct.pack(order + "I", 8)
    ifd = struct.pack(order + "H", len(entries))
    for tag, kind, count, value in entries:
        ifd += struct.pack(order + "HHI", tag, kind, count)
        ifd += struct.pack(order + "HH", value, 0) if kind == 3 else struct.pack(order + "I", value)
    ifd1_at = len(head) + len(ifd) + 4
    ifd1 = struct.pack(order + "H", 2) + struct.pack(order + "HHII", 0x0201, 4, 1, 0)
    ifd1 += struct.pack(order + "HHII", 0x0202, 4, 1, 0) + struct.pack(order + "I", 0)
    return head + ifd + struct.pack(order + "I", ifd1_at if thumbnail else 0) + ifd1


@pytest.mark.parametrize(("orientation", "swapped"), [(6, True), (8, True), (5, True), (3, False)])
def test_a_quarter_turn_swaps_the_exif_width_and_height(orientation: int, swapped: bool) -> None:
    exif = Image.Exif()  # written by Pillow: a sub-IFD (0x8769) holding the pixel dimensions
    exif[ORIENTATION_TAG] = orientation
    sub = exif.get_ifd(ExifTags.IFD.Exif)
    sub[ExifTags.Base.ExifImageWidth], sub[ExifTags.Base.ExifImageHeight] = 4000, 3000
    sub[ExifTags.Base.DateTimeOriginal] = "2026:11:26 10:00:00"
    raw = exif.tobytes().removeprefix(b"Exif\x00\x00")
    upright = _loaded(PhotoMetadata(orientation=orientation, exif=raw).upright().exif)
    sub = upright.get_ifd(ExifTags.IFD.Exif)
    size = (sub[ExifTags.Base.ExifImageWidth], sub[ExifTags.Base.ExifImageHeight])
    assert size == ((3000, 4000) if swapped else (4000, 3000))
    assert upright[ORIENTATION_TAG] == 1
    assert sub[ExifTags.Base.DateTimeOriginal] == "2026:11:26 10:00:00"


def _loaded(exif: bytes) -> Image.Exif:
    loaded = Image.Exif()
    loaded.load(exif)
    return loaded


@pytest.mark.parametrize("order", ["<", ">"])
def test_upright_rewrites_the_orientation_and_unlinks_the_thumbnail(order: str) -> None:
    def exif(orientation: int, thumbnail: bool) -> bytes:
        entries = [(0x0100, 4, 1, 4000), (ORIENTATION_TAG, 3, 1, orientation)]
        twice = [(0x0101, 4, 1, 3000)] * 2  # a tag written twice: every entry still counts
        return _tiff_exif(order, [*entries, *twice], thumbnail)

    upright = PhotoMetadata(orientation=8, icc_profile=SRGB, exif=exif(8, True)).upright()
    assert upright.orientation == 1 and upright.icc_profile == SRGB
    assert upright.exif == exif(1, False)  # every other byte as it was
    ifd1 = ExifTags.IFD.IFD1
    assert _loaded(exif(8, True)).get_ifd(ifd1) and not _loaded(upright.exif).get_ifd(ifd1)


def test_an_orientation_that_cannot_be_rewritten_drops_the_exif() -> None:
    # Stored as a LONG, against the standard: left in place it would turn the photo twice.
    odd = _tiff_exif("<", [(ORIENTATION_TAG, 4, 1, 6)])
    assert PhotoMetadata(orientation=6, exif=odd).upright().exif is None
    assert PhotoMetadata(orientation=6, exif=b"II*\x00\xff\xff\xff\xff").upright().exif is None
    # An upright photo's EXIF is kept as it is, whatever its layout; so is one without the
    # tag (Pillow also reads an orientation from XMP, which is not carried).
    assert PhotoMetadata(orientation=1, exif=odd).upright().exif == odd
    assert PhotoMetadata(orientation=6).upright() == PhotoMetadata()
    untagged = _tiff_exif(">", [(MAKE, 4, 1, 0)])
    assert PhotoMetadata(orientation=6, exif=untagged).upright().exif == untagged


def test_read_photo_metadata_describes_the_upright_pixels(tmp_path: Path) -> None:
    pixels = np.zeros((6, 10, 3), np.uint8)
    src = _save(tmp_path / "p.png", pixels, icc_profile=SRGB, exif=_exif(6).tobytes())
    photo = read_photo(src)
    assert photo.rgb.shape == (10, 6, 3) and not photo.grey
    assert photo.metadata.orientation == 1 and photo.metadata.icc_profile == SRGB
    assert read_metadata(src.read_bytes()).orientation == 6
    assert read_metadata(b"not an image") == PhotoMetadata()


def test_broken_metadata_is_left_out_and_the_photo_still_denoised(tmp_path: Path) -> None:
    png = cv2.imencode(".png", np.zeros((4, 6, 3), np.uint8))[1].tobytes()
    bad = b"MM\x00*\x00\x00"  # an EXIF cut off inside its header
    chunk = (
        struct.pack(">I", len(bad)) + b"eXIf" + bad + struct.pack(">I", zlib.crc32(b"eXIf" + bad))
    )
    src = tmp_path / "bad_exif.png"
    src.write_bytes(png[:33] + chunk + png[33:])
    (dst,) = _run(src, out=tmp_path / "out")
    assert read_metadata(dst.read_bytes()) == PhotoMetadata()


def test_an_exif_too_large_for_a_jpeg_segment_is_left_out() -> None:
    jpeg = cv2.imencode(".jpg", np.zeros((4, 4, 3), np.uint8))[1].tobytes()
    fits = _tiff_exif("<", [(MAKE, 4, 1, 0)])
    too_large = fits + bytes(65536)
    meta = PhotoMetadata(icc_profile=SRGB, exif=too_large)
    with_profile_only = embed_metadata(jpeg, replace(meta, exif=None), grey=False)
    assert embed_metadata(jpeg, meta, grey=False) == with_profile_only
    assert read_metadata(embed_metadata(jpeg, replace(meta, exif=fits), grey=False)).exif == fits


SAMPLING = {  # luma sampling factors -> OpenCV's writer setting
    (1, 1): cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444,
    (2, 1): cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422,
    (2, 2): cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420,
    (1, 2): cv2.IMWRITE_JPEG_SAMPLING_FACTOR_440,
    (4, 1): cv2.IMWRITE_JPEG_SAMPLING_FACTOR_411,
}


def _luma_factors(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        (_, h, v, _), *chroma = im.layer
        assert [c[1:3] for c in chroma] == [(1, 1), (1, 1)]
        return h, v


@pytest.mark.parametrize(
    ("factors", "orientation"),
    [
        pytest.param((1, 1), 1, id="4:4:4"),
        pytest.param((2, 1), 1, id="4:2:2"),
        pytest.param((2, 2), 1, id="4:2:0"),
        pytest.param((1, 2), 1, id="4:4:0"),
        pytest.param((4, 1), 1, id="4:1:1"),
        pytest.param((2, 1), 6, id="4:2:2-turned"),
        pytest.param((2, 1), 3, id="4:2:2-half-turn"),
        pytest.param((4, 1), 8, id="4:1:1-turned"),
    ],
)
def test_a_jpeg_keeps_its_chroma_subsampling(
    tmp_path: Path, factors: tuple[int, int], orientation: int
) -> None:
    """A 4:4:4 original written back at OpenCV's default 4:2:0 loses half its colour
    resolution whatever the network did; the copy keeps what the original had, along the
    same axis of the photo when an EXIF orientation turned the pixels a quarter."""
    rng = np.random.default_rng(factors[0] * 4 + factors[1])
    pixels = rng.integers(0, 256, (32, 48, 3)).astype(np.uint8)
    ok, buf = cv2.imencode(
        ".jpg",
        pixels,
        [cv2.IMWRITE_JPEG_QUALITY, 95, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, SAMPLING[factors]],
    )
    assert ok
    data = buf.tobytes()
    if orientation != 1:
        exif = _tiff_exif("<", [(ORIENTATION_TAG, 3, 1, orientation)])
        data = embed_metadata(data, PhotoMetadata(exif=exif), grey=False)
    (tmp_path / "in.jpg").write_bytes(data)
    assert _luma_factors(tmp_path / "in.jpg") == factors
    photo = read_photo(tmp_path / "in.jpg")
    write_image(tmp_path / "out.jpg", photo.rgb, metadata=photo.metadata)
    upright = factors[::-1] if orientation >= 5 else factors
    # 1x4 (4:1:1 turned) has no JPEG writer setting: 4:4:0 keeps every colour sample it had
    assert _luma_factors(tmp_path / "out.jpg") == {(1, 4): (1, 2)}.get(upright, upright)
    if factors == (1, 1):  # the colour detail survives the round trip
        again = read_photo(tmp_path / "out.jpg").rgb.astype(float)
        assert np.abs(again - photo.rgb).mean() < 4


def test_a_camera_jpeg_with_a_preview_image_keeps_its_subsampling(tmp_path: Path) -> None:
    """Pillow opens a JPEG whose multi-picture block lists a preview (cameras' large
    thumbnail) as an MPO: its 4:2:2 was written back as 4:2:0."""
    pixels = np.random.default_rng(1).integers(0, 256, (32, 48, 3)).astype(np.uint8)
    preview = Image.fromarray(pixels[::4, ::4].copy())
    Image.fromarray(pixels).save(
        tmp_path / "camera.jpg", "MPO", save_all=True, append_images=[preview], subsampling=1
    )
    with Image.open(tmp_path / "camera.jpg") as im:
        assert im.format == "MPO"
    photo = read_photo(tmp_path / "camera.jpg")
    assert photo.metadata.jpeg_subsampling == (2, 1)
    write_image(tmp_path / "out.jpg", photo.rgb, metadata=photo.metadata)
    assert _luma_factors(tmp_path / "out.jpg") == (2, 1)
