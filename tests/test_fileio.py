"""Atomic outputs and validated image input."""

import errno
import json
import os
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from denoise.errors import DenoiseError
from denoise.fileio import (
    atomic_path,
    check_free_space,
    clear_stale_staging,
    is_truncated_jpeg,
    is_truncated_png,
    read_photo,
    read_rgb8,
    write_errors_named,
    write_image,
    write_json,
    write_rgb8,
)


def test_atomic_path_replaces_on_success_and_keeps_old_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]  # no temporary left
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_atomic_path_replaces_a_folder_whole(tmp_path: Path) -> None:
    target = tmp_path / "dir"
    (target / "stale").mkdir(parents=True)
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "fresh.txt").write_text("x")
    assert sorted(p.name for p in target.iterdir()) == ["fresh.txt"]


def test_a_folder_swap_that_fails_puts_the_old_folder_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "dir"
    (target / "old.txt").parent.mkdir()
    (target / "old.txt").write_text("old")
    replace = os.replace

    def interrupted(src: Path, dst: Path) -> None:
        if Path(src).parent.name.endswith(".tmp") and Path(src).name == "dir":  # the new one in
            raise KeyboardInterrupt
        replace(src, dst)

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")
    assert (target / "old.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir"]


def test_an_error_inside_names_the_output_not_its_staging_folder(tmp_path: Path) -> None:
    target = tmp_path / "split"
    with pytest.raises(DenoiseError) as exc, atomic_path(target) as tmp:
        tmp.mkdir()
        check_free_space(tmp, 10**18, "the train patches")
    assert str(exc.value).startswith(f"not enough free space in {target} for the train patches")
    assert list(tmp_path.iterdir()) == []
    # An OSError of a file inside, as write_errors_named around the two reports it.
    with pytest.raises(DenoiseError) as exc, write_errors_named(target), atomic_path(target) as tmp:
        raise OSError(28, "No space left on device", str(tmp / "train" / "noisy.npy"))
    assert str(exc.value) == (
        f"{target}: cannot write (No space left on device: {target / 'train' / 'noisy.npy'})"
    )


def test_stale_staging_folders_are_cleared_and_a_target_left_aside_is_put_back(
    tmp_path: Path,
) -> None:
    target = tmp_path / "raw"
    killed = tmp_path / ".raw.ab12cd_9.tmp"  # a write killed mid-way: half the new data
    (killed / "raw").mkdir(parents=True)
    other = tmp_path / ".raw.v2.ab12cd_9.tmp"  # another target's (raw.v2) staging
    other.mkdir()
    (tmp_path / "raw.v2").mkdir()
    clear_stale_staging(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name, "raw.v2"]

    swapped = tmp_path / ".raw.zz99zz99.tmp"  # killed between the two renames
    (swapped / ".replaced").mkdir(parents=True)
    (swapped / ".replaced" / "old.txt").write_text("old")
    clear_stale_staging(target)
    assert (target / "old.txt").read_text() == "old"
    assert not swapped.exists()


def test_the_longest_legal_name_can_be_written(tmp_path: Path) -> None:
    path = tmp_path / ("n" * 251 + ".png")  # 255 bytes: the temporary's name must fit too
    write_rgb8(path, np.zeros((4, 4, 3), np.uint8))
    assert path.is_file()


def test_write_json_is_stable(tmp_path: Path) -> None:
    write_json(tmp_path / "a.json", {"b": 1, "a": [1.5, 2]})
    write_json(tmp_path / "b.json", {"a": [1.5, 2], "b": 1})
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


def test_rgb_round_trip_keeps_channel_order(tmp_path: Path) -> None:
    img = np.zeros((4, 5, 3), np.uint8)
    img[..., 0] = 200  # red
    write_rgb8(tmp_path / "x.png", img)
    assert np.array_equal(read_rgb8(tmp_path / "x.png"), img)


def test_grey_and_16bit_are_converted_explicitly(tmp_path: Path) -> None:
    grey = np.full((3, 4), 77, np.uint8)
    cv2.imwrite(str(tmp_path / "g.png"), grey)
    out = read_rgb8(tmp_path / "g.png")
    assert out.shape == (3, 4, 3) and (out == 77).all()
    deep = np.full((3, 4, 3), 257 * 10, np.uint16)
    deep[0, 0] = 257 * 10 + 129  # 10.50: rounds up, where truncating would keep 10
    deep[0, 1] = 257 * 10 + 128  # 10.498: rounds down
    cv2.imwrite(str(tmp_path / "d.png"), deep)
    eight = read_rgb8(tmp_path / "d.png")
    assert eight[0, 0].tolist() == [11] * 3 and eight[0, 1].tolist() == [10] * 3
    assert (eight[1:] == 10).all()
    with pytest.raises(DenoiseError, match=r"d\.png: 16-bit"):
        read_rgb8(tmp_path / "d.png", allow_convert=False)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("rgba.png", np.zeros((3, 4, 4), np.uint8), "has an alpha channel"),
        ("junk.png", None, "not a readable image"),
        ("empty.jpg", b"", "empty file"),
        ("missing.png", "absent", "file not found"),
        ("pipe.png", "fifo", "not a regular file"),
    ],
)
def test_bad_images_name_the_file(tmp_path: Path, name: str, content, message: str) -> None:
    path = tmp_path / name
    if isinstance(content, np.ndarray):
        cv2.imwrite(str(path), content)
    elif content is None:
        path.write_bytes(b"not an image")
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "fifo":  # reading it would wait for a writer
        os.mkfifo(path)
    with pytest.raises(DenoiseError, match=message) as e:
        read_rgb8(path)
    assert name in str(e.value)


def test_write_json_writes_null_for_non_finite_numbers(tmp_path: Path) -> None:
    write_json(tmp_path / "m.json", {"psnr": float("inf"), "rows": [float("nan"), 1.0]})
    assert json.loads((tmp_path / "m.json").read_text()) == {"psnr": None, "rows": [None, 1.0]}


def test_replacing_a_folder_swaps_it_whole(tmp_path: Path) -> None:
    target = tmp_path / "store"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["store"]  # no temporary left behind


@pytest.mark.parametrize("progressive", [0, 1])
def test_a_truncated_jpeg_is_refused_by_name(tmp_path: Path, progressive: int) -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    params = [cv2.IMWRITE_JPEG_PROGRESSIVE, progressive, cv2.IMWRITE_JPEG_RST_INTERVAL, 2]
    data = cv2.imencode(".jpg", img, params)[1].tobytes()
    assert not is_truncated_jpeg(data)
    for end in (3, 40, len(data) // 2, len(data) - 1):
        assert is_truncated_jpeg(data[:end]), end
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DenoiseError, match=r"cut\.jpg: truncated JPEG"):
        read_rgb8(cut)
    # Data after the end (a motion photo's video) holds 0xFFDA and 0xFFD9 at random.
    for _ in range(20):
        tail = rng.integers(0, 256, 20_000, dtype=np.uint8).tobytes()
        assert not is_truncated_jpeg(data + tail)
    (tmp_path / "motion.jpg").write_bytes(data + tail)
    assert read_rgb8(tmp_path / "motion.jpg").shape == (64, 64, 3)


def test_a_truncated_png_is_refused_by_name(tmp_path: Path) -> None:
    data = cv2.imencode(".png", np.zeros((32, 48, 3), np.uint8))[1].tobytes()
    assert not is_truncated_png(data)
    assert not is_truncated_png(data + b"trailing bytes after IEND")
    for end in (8, 20, 40, len(data) // 2, len(data) - 1):
        assert is_truncated_png(data[:end]), end
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[:40])  # inside the header: libpng gives no reason at all
    with pytest.raises(DenoiseError, match=r"cut\.png: truncated PNG \(the image data stops"):
        read_rgb8(cut)


def test_corrupt_data_is_refused_and_the_decoders_say_nothing(tmp_path: Path, capfd) -> None:
    """libjpeg decodes a JPEG with damaged entropy data (garbled rows) and libpng gives up on a
    cut PNG; both write to the error stream themselves. One error naming the file, no more."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    data = bytearray(cv2.imencode(".jpg", img)[1].tobytes())
    mid = len(data) // 2
    for i in range(mid, mid + 40):  # new values, never a marker (0xFF) or after one
        if data[i] != 0xFF and data[i - 1] != 0xFF:
            data[i] = int(rng.integers(0, 255))
    (tmp_path / "flip.jpg").write_bytes(bytes(data))
    assert cv2.imdecode(np.frombuffer(bytes(data), np.uint8), cv2.IMREAD_COLOR) is not None
    assert "Corrupt JPEG data" in capfd.readouterr().err  # OpenCV alone: decoded, with a warning
    with pytest.raises(DenoiseError, match=r"flip\.jpg: corrupt image data \(Corrupt JPEG data"):
        read_rgb8(tmp_path / "flip.jpg")
    png = cv2.imencode(".png", img)[1].tobytes()
    damaged = bytearray(png)
    damaged[len(png) // 2] ^= 0xFF
    (tmp_path / "crc.png").write_bytes(bytes(damaged))
    with pytest.raises(DenoiseError, match=r"crc\.png: not a readable image \(libpng error: IDAT"):
        read_rgb8(tmp_path / "crc.png")  # libpng's reason, not only that it failed
    (tmp_path / "good.png").write_bytes(png)
    np.testing.assert_array_equal(read_rgb8(tmp_path / "good.png"), img[..., ::-1])  # BGR file
    captured = capfd.readouterr()
    assert "JPEG" not in captured.err and "libpng" not in captured.err, captured.err


@pytest.mark.parametrize("suffix", [".ppm", ".pnm"])
def test_sixteen_bit_netpbm_stays_sixteen_bit(tmp_path: Path, suffix: str) -> None:
    deep = np.random.default_rng(0).integers(0, 65536, (5, 7, 3), dtype=np.uint16)
    write_image(tmp_path / f"x{suffix}", deep)
    np.testing.assert_array_equal(read_photo(tmp_path / f"x{suffix}").rgb, deep)


def test_a_file_output_never_replaces_a_folder(tmp_path: Path) -> None:
    folder = tmp_path / "results"
    (folder / "old").mkdir(parents=True)
    (folder / "old" / "run1.json").write_text("{}")
    with pytest.raises(DenoiseError, match=r"results: is a folder; not replaced by a file"):
        write_json(folder, {"a": 1})
    assert (folder / "old" / "run1.json").read_text() == "{}"


def test_an_unwritable_output_is_one_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DenoiseError, match=r"afile/s\.json: cannot write"):
        write_json(tmp_path / "afile" / "s.json", {"a": 1})


def test_write_errors_name_the_output_or_the_input_that_failed(tmp_path: Path) -> None:
    out, missing = tmp_path / "split", tmp_path / "raw" / "in.png"
    read_error = rf"^{re.escape(str(missing))}: cannot read \(No such file or directory\) for "
    with (
        pytest.raises(DenoiseError, match=read_error + rf"{re.escape(str(out))}$"),
        write_errors_named(out),
        atomic_path(out) as staged,
    ):
        staged.mkdir()
        shutil.copyfile(missing, staged / "in.png")
    with (
        pytest.raises(DenoiseError, match=rf"^{re.escape(str(out))}: cannot write \(No space "),
        write_errors_named(out),
        atomic_path(out) as staged,
    ):
        staged.mkdir()
        raise OSError(errno.ENOSPC, "No space left on device", str(staged / "in.png"))
    assert list(tmp_path.iterdir()) == []  # nothing staged is left behind


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_an_all_opaque_alpha_is_dropped(tmp_path: Path, dtype) -> None:
    """An RGBA file whose alpha is all opaque reads as its colour; one transparent pixel, and
    it is refused."""
    rng = np.random.default_rng(3)
    bgra = rng.integers(0, np.iinfo(dtype).max, (5, 6, 4), dtype=dtype, endpoint=True)
    bgra[..., 3] = np.iinfo(dtype).max
    cv2.imwrite(str(tmp_path / "opaque.png"), bgra)
    photo = read_photo(tmp_path / "opaque.png")
    np.testing.assert_array_equal(photo.rgb, bgra[..., 2::-1])
    bgra[4, 5, 3] -= 1
    cv2.imwrite(str(tmp_path / "clear.png"), bgra)
    with pytest.raises(DenoiseError, match=r"clear\.png: has an alpha channel"):
        read_photo(tmp_path / "clear.png")


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_grey_with_alpha_reads_as_grey_or_is_named_as_such(tmp_path: Path, suffix: str) -> None:
    """OpenCV decodes a grey+alpha PNG as four channels, like RGBA, and a grey+alpha TIFF as
    one, dropping the alpha: all opaque, either is a grey photo (written back grey); one
    transparent pixel, and it is refused."""
    from PIL import Image

    la = np.zeros((3, 4, 2), np.uint8)
    la[..., 0], la[..., 1] = np.arange(12).reshape(3, 4) * 20, 255
    opaque, clear = tmp_path / f"opaque{suffix}", tmp_path / f"la{suffix}"
    Image.fromarray(la, "LA").save(opaque)
    photo = read_photo(opaque)
    assert photo.grey
    np.testing.assert_array_equal(photo.rgb, np.repeat(la[..., :1], 3, axis=2))
    with pytest.raises(DenoiseError, match=rf"{opaque.name}: greyscale image, expected"):
        read_photo(opaque, allow_convert=False)
    la[0, 0, 1] = 0
    Image.fromarray(la, "LA").save(clear)
    with pytest.raises(DenoiseError, match=rf"{clear.name}: has an alpha channel \(RGBA or grey"):
        read_rgb8(clear)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("planar", [False, True], ids=["interleaved", "planar"])
def test_tiff_orientation_is_applied_once(
    tmp_path: Path, orientation: int, dtype, planar: bool
) -> None:
    # OpenCV's TIFF decoder turns the pixels itself; turning them again would show the photo
    # upside down (orientation 3) or rotated the wrong way (6, 8). A 16-bit TIFF with its
    # colour planes stored one after the other OpenCV 4.11 decodes as garbage: tifffile reads
    # it, and the orientation is applied by us then.
    import tifffile

    stored = np.random.default_rng(orientation).integers(0, 60000, (5, 7, 3)).astype(dtype)
    stored[..., 1] //= 2  # the channels differ in level: a swap of two would show
    path = tmp_path / "o.tif"
    tifffile.imwrite(
        path,
        stored.transpose(2, 0, 1) if planar else stored,
        photometric="rgb",
        planarconfig="separate" if planar else "contig",
        extratags=[(274, "H", 1, orientation)],
    )
    expected = {
        1: stored,
        2: stored[:, ::-1],
        3: stored[::-1, ::-1],
        4: stored[::-1],
        5: stored.transpose(1, 0, 2),
        6: np.rot90(stored, -1),
        7: np.rot90(stored, 2).transpose(1, 0, 2),
        8: np.rot90(stored, 1),
    }[orientation]
    np.testing.assert_array_equal(read_photo(path).rgb, expected)


def test_a_decoder_exception_restores_stderr_and_passes_on_other_messages(
    tmp_path: Path, capfd: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While OpenCV decodes, file descriptor 2 goes to a capture; when the decoder raises, the
    error names the file, lines that are not the decoders' (another thread's) still reach
    stderr, and stderr is stderr again afterwards."""

    def failing_decode(buf: np.ndarray, flags: int) -> np.ndarray:
        os.write(2, b"another thread's warning\n")
        error = cv2.error()
        error.err = "decoder gave up"
        raise error

    monkeypatch.setattr(cv2, "imdecode", failing_decode)
    path = tmp_path / "odd.png"
    path.write_bytes(b"not really a png")
    capfd.readouterr()
    with pytest.raises(DenoiseError, match=r"odd\.png: not a readable image \(decoder gave up\)"):
        read_photo(path)
    os.write(2, b"after the decode\n")
    assert capfd.readouterr().err == "another thread's warning\nafter the decode\n"


def test_a_bad_file_leaves_no_decoder_chatter_on_stderr(
    tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    ok, buf = cv2.imencode(".png", np.zeros((64, 64, 3), np.uint8))
    assert ok
    path = tmp_path / "cut.png"
    path.write_bytes(buf.tobytes()[: len(buf) // 2])
    capfd.readouterr()
    with pytest.raises(DenoiseError, match=r"cut\.png: truncated PNG"):
        read_rgb8(path)
    assert capfd.readouterr().err == ""  # OpenCV would print "[ WARN:0@...] ... incomplete"


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_an_atomic_write_is_on_disk_before_its_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """The data is fsynced before the rename and the rename after it: a power cut cannot
    leave an empty file under the final name."""
    events: list[tuple[str, str]] = []
    fsync, replace = os.fsync, os.replace

    def logged_fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def logged_replace(src: str | Path, dst: str | Path) -> None:
        events.append(("replace", str(dst)))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", logged_fsync)
    monkeypatch.setattr(os, "replace", logged_replace)
    (tmp_path / "neighbour.jpg").write_bytes(b"not ours")
    target = tmp_path / "out"
    with atomic_path(target) as tmp:
        if kind == "file":
            tmp.write_bytes(b"data")
        else:
            tmp.mkdir()
            (tmp / "part.bin").write_bytes(b"data")
    renamed = events.index(("replace", str(target)))
    synced = [path for op, path in events[:renamed] if op == "fsync"]
    assert any(p.endswith("part.bin" if kind == "folder" else "/out") for p in synced), events
    assert ("fsync", str(tmp_path)) in events[renamed:], events
    assert not [p for _, p in events if "neighbour" in p]  # the folder alone, not its files


@pytest.mark.parametrize(
    ("code", "named"), [(5, "LZW"), (60123, "code 60123")], ids=["lzw", "unknown-code"]
)
def test_a_planar_16_bit_tiff_that_cannot_be_decoded_is_refused_not_garbled(
    tmp_path: Path, code: int, named: str
) -> None:
    """OpenCV misreads these; one tifffile has no codec for (LZW needs imagecodecs, not
    installed; a code tifffile does not know) must not fall back to OpenCV's garbled decode."""
    import struct

    import tifffile

    stored = np.random.default_rng(0).integers(0, 60000, (3, 5, 7)).astype(np.uint16)
    path = tmp_path / "lzw.tif"
    tifffile.imwrite(path, stored, photometric="rgb", planarconfig="separate")
    with tifffile.TiffFile(path) as tif:
        at = tif.pages[0].tags["Compression"].valueoffset
    data = bytearray(path.read_bytes())
    struct.pack_into("<H", data, at, code)
    path.write_bytes(bytes(data))
    with pytest.raises(DenoiseError) as err:
        read_photo(path)
    assert str(err.value).startswith(
        f"{path}: 16-bit TIFF with its colour planes stored apart and {named} compression: "
        "cannot be read ("
    )


def test_a_planar_16_bit_tiff_with_a_damaged_later_page_is_still_its_first_page(
    tmp_path: Path,
) -> None:
    """Cut short inside a trailing preview's header: listing the pages fails, but the photo
    (first page, planes stored apart, which OpenCV misreads) is whole and must be read as it is,
    not handed to OpenCV."""
    import tifffile

    image = np.random.default_rng(0).integers(0, 65536, (8, 10, 3), dtype=np.uint16)
    whole = tmp_path / "whole.tif"
    with tifffile.TiffWriter(whole) as tif:
        tif.write(image.transpose(2, 0, 1), photometric="rgb", planarconfig="separate")
        tif.write(np.zeros((4, 5, 3), np.uint8), photometric="rgb", subfiletype=1)
    with tifffile.TiffFile(whole) as tif:
        second = tif.pages[1].offset
    cut = tmp_path / "cut.tif"
    cut.write_bytes(whole.read_bytes()[: second + 1])
    np.testing.assert_array_equal(read_photo(whole).rgb, image)
    np.testing.assert_array_equal(read_photo(cut).rgb, image)


def test_a_tiff_of_several_images_is_refused_a_preview_page_is_not(tmp_path: Path) -> None:
    """OpenCV decodes the first page alone: a 3-page TIFF came back as a 1-page output, and
    one whose first page is a preview as that preview."""
    import tifffile

    several = tmp_path / "stack.tif"
    tifffile.imwrite(several, np.zeros((3, 8, 8, 3), np.uint8))
    with pytest.raises(DenoiseError, match=r"stack\.tif: a TIFF of 3 images; denoise reads one"):
        read_photo(several)
    with_preview = tmp_path / "preview.tif"
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    with tifffile.TiffWriter(with_preview) as tif:
        tif.write(image, photometric="rgb")
        tif.write(np.zeros((4, 4, 3), np.uint8), photometric="rgb", subfiletype=1)  # reduced
        tif.write(np.ones((8, 8), bool), photometric="mask", subfiletype=4)  # a transparency mask
    np.testing.assert_array_equal(read_photo(with_preview).rgb, image)
    preview_first = tmp_path / "preview_first.tif"
    with tifffile.TiffWriter(preview_first) as tif:
        tif.write(np.zeros((4, 4, 3), np.uint8), photometric="rgb", subfiletype=1)
        tif.write(image, photometric="rgb")
    with pytest.raises(DenoiseError, match=r"preview_first\.tif: a TIFF whose first page is a"):
        read_photo(preview_first)


def test_a_jfif_photo_is_a_jpeg(tmp_path: Path) -> None:
    """Browsers on Windows save JPEGs as .jfif: refused as a type OpenCV cannot write."""
    from denoise.fileio import check_writable_type

    ramp = np.linspace(0, 255, 16)
    pixels = np.stack(np.broadcast_arrays(ramp[:, None], ramp[None, :], 128), -1).astype(np.uint8)
    path = tmp_path / "download.jfif"
    check_writable_type(path)
    write_image(path, pixels)
    assert path.read_bytes()[:2] == b"\xff\xd8"  # a JPEG
    assert np.abs(read_photo(path).rgb.astype(int) - pixels).mean() < 3
