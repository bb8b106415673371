"""SIDD download, verification and safe extraction, end to end against a local HTTP server.

The server (stdlib http.server on 127.0.0.1, ephemeral port) serves a tiny zip in the SIDD
layout, implements Range requests, and can misbehave on demand: cut a body in half, ignore
Range, answer 416 or an error status.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import io
import os
import re
import shutil
import socket
import stat
import struct
import subprocess
import sys
import threading
import types
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

import denoise.data.sidd_download as sd
import denoise.fileio
from denoise.data.sidd_layout import GT_NAME, NOISY_NAME, list_instances
from denoise.errors import DenoiseError
from denoise.fileio import read_rgb8, write_rgb8

REPO = Path(__file__).resolve().parents[1]
INSTANCES = ("0001_001_S6_00100_00060_3200_L", "0002_001_GP_00800_00100_5500_N")
ROOT = "SIDD_Small_sRGB_Only"


# ------------------------------------------------------------------------------ fixtures


@dataclass
class Archive:
    data: bytes
    md5: str
    images: dict[str, np.ndarray]  # "<instance>/<file>" -> pixels


def _zip_tree(tree: Path, extra: list[tuple[zipfile.ZipInfo | str, bytes]] = ()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(tree.rglob("*")):
            zf.write(path, path.relative_to(tree).as_posix())
        for name, payload in extra:
            zf.writestr(name, payload)
    return buf.getvalue()


@pytest.fixture(scope="module")
def sidd_tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """A tiny SIDD-layout folder: two instances of 8x12 PNG pairs plus Scene_Instances.txt."""
    tree = tmp_path_factory.mktemp("sidd_src")
    rng = np.random.default_rng(0)
    images = {}
    for inst in INSTANCES:
        for fname in (GT_NAME, NOISY_NAME):
            img = rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)
            write_rgb8(tree / ROOT / "Data" / inst / fname, img)
            images[f"{inst}/{fname}"] = img
    (tree / ROOT / "Scene_Instances.txt").write_text("\n".join(INSTANCES) + "\n")
    return tree, images


@pytest.fixture(scope="module")
def archive(sidd_tree: tuple[Path, dict[str, np.ndarray]]) -> Archive:
    data = _zip_tree(sidd_tree[0])
    return Archive(data, hashlib.md5(data).hexdigest(), sidd_tree[1])


@dataclass
class Server:
    url: str = ""
    payload: bytes = b""
    requests: list[str | None] = field(default_factory=list)  # the Range header of each GET
    bytes_sent: int = 0
    cut_next: int = 0  # the next N responses send half the body, then drop the connection
    ignore_range: bool = False
    force_416_next: int = 0
    status: int | None = None  # answer every request with this error status
    busy_resumes: int = 0  # answer the next N ranged requests with 503
    resume_back: int = 0  # a 206 starts this many bytes before the asked-for byte
    page: bytes | None = None  # answer with this whole (chunked) body instead of the archive
    page_type: str = "text/html"
    block: int = 0  # answer a ranged request with at most this many bytes, chunked (a 206)
    redirect: str | None = None  # answer every request with a 302 to this URL
    start_at: int = 0  # answer a request without Range with a 206 from this byte


class _Handler(BaseHTTPRequestHandler):
    server: Any

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass

    def _send_chunked(self, body: bytes) -> None:
        """End the headers and send ``body`` as one chunk: a whole response, no length."""
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))

    def do_GET(self) -> None:
        st: Server = self.server.state
        rng = self.headers.get("Range")
        st.requests.append(rng)
        data = st.payload
        if st.status is not None:
            self.send_error(st.status)
            return
        if st.redirect is not None:
            self.send_response(302)
            self.send_header("Location", st.redirect)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if st.start_at and not rng:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {st.start_at}-{len(data) - 1}/{len(data)}")
            body = data[st.start_at :]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if rng and st.busy_resumes:
            st.busy_resumes -= 1
            self.send_error(503)
            return
        if st.page is not None:
            self.send_response(200)
            self.send_header("Content-Type", st.page_type)
            self._send_chunked(st.page)
            return
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if m and not st.ignore_range:
            start = max(0, int(m.group(1)) - st.resume_back)
            if st.force_416_next or start >= len(data):
                st.force_416_next = max(0, st.force_416_next - 1)
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            if st.block:
                body = data[start : start + st.block]
                end = start + len(body) - 1
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                self._send_chunked(body)
                st.bytes_sent += len(body)
                return
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if st.cut_next:
            st.cut_next -= 1
            body = body[: len(body) // 2]
            self.close_connection = True
        self.wfile.write(body)
        st.bytes_sent += len(body)


@pytest.fixture
def server(archive: Archive) -> Iterator[Server]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    state = Server(
        url=f"http://127.0.0.1:{httpd.server_port}/share/{ROOT}.zip", payload=archive.data
    )
    httpd.state = state  # type: ignore[attr-defined]
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _fetch(server: Server, tmp_path: Path, *, md5: str, size: int | None = None, **kw: Any) -> Path:
    kw.setdefault("retry_delay", 0.0)
    return sd.download(
        server.url,
        tmp_path / "downloads" / f"{ROOT}.zip",
        size=len(server.payload) if size is None else size,
        md5=md5,
        progress=False,
        timeout=10,
        **kw,
    )


def _leftovers(folder: Path) -> list[str]:
    """Temporary siblings (atomic_path's ``.<name>.*.tmp``) left in ``folder``."""
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] if folder.exists() else []


# ---------------------------------------------------------------------- download + extract


def test_fetch_extracts_sidd_layout_and_second_run_downloads_nothing(
    server: Server, archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "data" / "raw"
    kw = dict(
        size=len(archive.data),
        md5=archive.md5,
        cache_dir=tmp_path / "downloads",
        out_dir=out,
        progress=False,
    )
    assert sd.fetch_sidd(server.url, **kw) == out

    found = list_instances(out)
    assert [inst.name for inst, _ in found] == sorted(INSTANCES)
    assert found[0][1] == out / ROOT / "Data" / INSTANCES[0]
    for key, img in archive.images.items():
        np.testing.assert_array_equal(read_rgb8(out / ROOT / "Data" / key), img)
    cached = tmp_path / "downloads" / f"{ROOT}.zip"
    assert hashlib.md5(cached.read_bytes()).hexdigest() == archive.md5
    assert not cached.with_name(cached.name + ".part").exists()
    assert cached.with_name(cached.name + ".verified").is_file()
    assert server.requests == [None]

    hashed: list[Path] = []
    real_md5 = sd._md5_of
    monkeypatch.setattr(sd, "_md5_of", lambda p, **k: hashed.append(p) or real_md5(p, **k))
    sd.fetch_sidd(server.url, **kw)  # everything in place: no request, extraction redone
    assert hashed == []  # the .verified sidecar spared re-hashing the archive
    assert server.requests == [None]
    assert len(list_instances(out)) == len(INSTANCES)
    assert _leftovers(out.parent) == []


def test_marker_is_invalidated_by_a_changed_archive_which_is_never_deleted(
    server: Server, archive: Archive, tmp_path: Path
) -> None:
    dest = _fetch(server, tmp_path, md5=archive.md5)
    assert sd.is_verified(dest, len(archive.data), archive.md5)
    assert not sd.is_verified(dest, len(archive.data), "0" * 32)
    os.utime(dest, ns=(0, 10**18))  # touched, same bytes: re-hashed once, then trusted again
    assert not sd.is_verified(dest, len(archive.data), archive.md5)
    _fetch(server, tmp_path, md5=archive.md5)
    assert sd.is_verified(dest, len(archive.data), archive.md5)

    corrupt = bytearray(archive.data)
    corrupt[len(corrupt) // 2] ^= 0xFF
    mtime = dest.stat().st_mtime_ns
    dest.write_bytes(bytes(corrupt))  # same size, and the mtime set back: ctime still moved
    os.utime(dest, ns=(mtime, mtime))
    assert not sd.is_verified(dest, len(archive.data), archive.md5)
    with pytest.raises(DenoiseError, match=r"MD5 .* left untouched") as exc:
        _fetch(server, tmp_path, md5=archive.md5)
    assert "\n" not in str(exc.value)
    assert dest.read_bytes() == bytes(corrupt)
    assert server.requests == [None]


def test_resumes_with_range_after_the_connection_drops(
    server: Server, archive: Archive, tmp_path: Path
) -> None:
    server.cut_next = 1
    half = len(archive.data) // 2
    dest = tmp_path / "downloads" / f"{ROOT}.zip"
    part = dest.with_name(dest.name + ".part")
    with pytest.raises(DenoiseError, match=rf"interrupted at {half} of .*run again to resume"):
        _fetch(server, tmp_path, md5=archive.md5, retries=0)
    assert part.stat().st_size == half and not dest.exists()

    _fetch(server, tmp_path, md5=archive.md5, retries=0)
    assert server.requests == [None, f"bytes={half}-"]
    assert server.bytes_sent == len(archive.data)  # the second request sent only the rest
    assert hashlib.md5(dest.read_bytes()).hexdigest() == archive.md5
    assert not part.exists()


def test_retries_resume_within_one_call(server: Server, archive: Archive, tmp_path: Path) -> None:
    server.cut_next = 2
    dest = _fetch(server, tmp_path, md5=archive.md5, retries=2)
    assert len(server.requests) == 3 and all(
        r and r.startswith("bytes=") for r in server.requests[1:]
    )
    assert hashlib.md5(dest.read_bytes()).hexdigest() == archive.md5


def test_a_link_that_keeps_dropping_but_advancing_is_not_given_up_on(
    server: Server, archive: Archive, tmp_path: Path
) -> None:
    server.cut_next = 5  # five drops, each after half of what was asked: always some progress
    dest = _fetch(server, tmp_path, md5=archive.md5, retries=1)
    assert len(server.requests) == 6
    assert hashlib.md5(dest.read_bytes()).hexdigest() == archive.md5


def test_a_busy_server_on_resume_is_waited_for_then_given_up_on(
    server: Server, archive: Archive, tmp_path: Path
) -> None:
    server.cut_next, server.busy_resumes = 1, 1
    dest = _fetch(server, tmp_path, md5=archive.md5, retries=1)  # 503 once, then resumed
    assert hashlib.md5(dest.read_bytes()).hexdigest() == archive.md5
    assert len(server.requests) == 3

    dest.unlink()
    server.requests.clear()
    server.cut_next, server.busy_resumes = 1, 3
    with pytest.raises(DenoiseError, match=r"HTTP 503 .* on resuming\); run again to resume"):
        _fetch(server, tmp_path, md5=archive.md5, retries=2)  # three 503s in a row: stop
    assert len(server.requests) == 4


def test_server_ignoring_range_restarts_cleanly(
    server: Server, archive: Archive, tmp_path: Path
) -> None:
    server.cut_next, server.ignore_range = 2, True
    with pytest.raises(DenoiseError, match=r"interrupted .*; run again to resume from"):
        _fetch(server, tmp_path, md5=archive.md5, retries=0)  # not known yet: worth a try
    with pytest.raises(DenoiseError, match=r"interrupted .*; the server cannot resume"):
        _fetch(server, tmp_path, md5=archive.md5, retries=0)  # it sent the whole file again
    dest = _fetch(server, tmp_path, md5=archive.md5, retries=0)
    assert server.requests[1] is not None  # asked to resume, got the whole file (200)
    assert dest.read_bytes() == archive.data


def test_a_resume_from_an_earlier_byte_keeps_the_partial(
    server: Server, archive: Archive, tmp_path: Path
) -> None:
    """A 206 from before the asked-for byte (a proxy's block boundary): the bytes already on
    disk are a prefix of it, so they are kept and the overlap skipped, not downloaded anew."""
    server.cut_next, server.resume_back = 1, 100
    with pytest.raises(DenoiseError, match="interrupted"):
        _fetch(server, tmp_path, md5=archive.md5, retries=0)
    dest = _fetch(server, tmp_path, md5=archive.md5, retries=0)
    assert server.requests == [None, f"bytes={len(archive.data) // 2}-"]
    assert dest.read_bytes() == archive.data


def test_a_resume_from_a_later_byte_restarts_from_the_first(
    server: Server, archive: Archive, tmp_path: Path
) -> None:
    """A 206 that starts after the asked-for byte would leave a hole: the partial is dropped
    and the next request asks for the whole file."""
    server.cut_next, server.resume_back = 1, -100
    with pytest.raises(DenoiseError, match="interrupted"):
        _fetch(server, tmp_path, md5=archive.md5, retries=0)
    dest = _fetch(server, tmp_path, md5=archive.md5, retries=1)
    assert server.requests == [None, f"bytes={len(archive.data) // 2}-", None]
    assert dest.read_bytes() == archive.data


def test_a_partial_longer_than_the_archive_is_started_over(
    server: Server, archive: Archive, tmp_path: Path
) -> None:
    part = tmp_path / "downloads" / f"{ROOT}.zip.part"
    part.parent.mkdir()
    part.write_bytes(b"x" * (len(archive.data) + 10))  # not a prefix of the expected file
    dest = _fetch(server, tmp_path, md5=archive.md5)
    assert server.requests == [None]  # no range request for bytes past the end
    assert dest.read_bytes() == archive.data


def test_a_range_served_in_whole_chunked_blocks_is_resumed_block_by_block(
    server: Server, archive: Archive, tmp_path: Path
) -> None:
    """Each 206 is one whole block, shorter than the rest of the file: a resume, not the
    "whole response that is not the archive" of a 200."""
    server.cut_next, server.block = 1, 1000
    with pytest.raises(DenoiseError, match="interrupted"):
        _fetch(server, tmp_path, md5=archive.md5, retries=0)
    dest = _fetch(server, tmp_path, md5=archive.md5, retries=1)
    assert dest.read_bytes() == archive.data
    assert len(server.requests) == 2 + (len(archive.data) - len(archive.data) // 2 - 1) // 1000


@pytest.mark.parametrize(
    ("content_type", "message"),
    [
        ("text/html; charset=utf-8", "serves a web page, not the archive"),
        ("application/octet-stream", "sent a whole response of 58 bytes where"),
    ],
)
def test_a_page_instead_of_the_archive_is_one_error_not_a_resume_loop(
    server: Server, archive: Archive, tmp_path: Path, content_type: str, message: str
) -> None:
    """A mirror's sign-in or virus-scan page: a complete response, so "run again to resume"
    would fetch the same page forever."""
    server.page, server.page_type = (
        b"<html>Google Drive can't scan this file for viruses</html>",
        content_type,
    )
    with pytest.raises(DenoiseError, match=message):
        _fetch(server, tmp_path, md5=archive.md5, retries=3)
    assert len(server.requests) == 1
    assert not list((tmp_path / "downloads").iterdir())  # no page kept as a partial archive


def test_416_drops_the_partial_and_restarts(
    server: Server, archive: Archive, tmp_path: Path
) -> None:
    server.cut_next, server.force_416_next = 1, 1
    with pytest.raises(DenoiseError, match="interrupted"):
        _fetch(server, tmp_path, md5=archive.md5, retries=0)
    dest = _fetch(server, tmp_path, md5=archive.md5, retries=1)
    assert server.requests[1] is not None and server.requests[2] is None
    assert dest.read_bytes() == archive.data


def test_bad_checksum_rejects_the_download_and_extracts_nothing(
    server: Server, archive: Archive, tmp_path: Path
) -> None:
    out = tmp_path / "data" / "raw"
    bad = r"failed verification \(MD5 [0-9a-f]{32}, expected 0+\)"
    with pytest.raises(DenoiseError, match=bad):
        sd.fetch_sidd(
            server.url,
            size=len(archive.data),
            md5="0" * 32,
            cache_dir=tmp_path / "downloads",
            out_dir=out,
            progress=False,
        )
    dl = tmp_path / "downloads"
    assert not out.exists()
    assert sorted(p.name for p in dl.iterdir()) == [f"{ROOT}.zip.rejected"]


def test_a_download_rejected_under_a_wrong_md5_is_used_once_the_md5_is_fixed(
    server: Server, archive: Archive, tmp_path: Path
) -> None:
    """A typo in data.sidd.md5 must not cost a second 6.6 GB download, nor leave the good file
    behind as .rejected; a .rejected that is still not the archive is removed once it is in."""
    with pytest.raises(DenoiseError, match=r"moved to .*\.rejected.*checks that file first"):
        _fetch(server, tmp_path, md5="0" * 32)
    dest = _fetch(server, tmp_path, md5=archive.md5)
    assert server.requests == [None]  # not downloaded again
    assert dest.read_bytes() == archive.data
    assert sorted(p.name for p in dest.parent.iterdir()) == [f"{ROOT}.zip", f"{ROOT}.zip.verified"]

    dest.unlink()
    corrupt = bytearray(archive.data)
    corrupt[len(corrupt) // 2] ^= 0xFF
    dest.with_name(dest.name + ".rejected").write_bytes(bytes(corrupt))
    _fetch(server, tmp_path, md5=archive.md5)  # a real download, then the stale copy goes
    assert server.requests == [None, None]
    assert sorted(p.name for p in dest.parent.iterdir()) == [f"{ROOT}.zip", f"{ROOT}.zip.verified"]


def test_an_archive_on_a_read_only_disk_is_used_without_its_sidecar(
    server: Server, archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "downloads" / f"{ROOT}.zip"
    dest.parent.mkdir()
    dest.write_bytes(archive.data)

    def read_only(path: Path, obj: Any) -> None:
        raise DenoiseError(f"{path}: cannot write (Read-only file system)")

    monkeypatch.setattr(sd, "write_json", read_only)
    assert _fetch(server, tmp_path, md5=archive.md5) == dest
    assert server.requests == []
    assert not sd.is_verified(dest, len(archive.data), archive.md5)  # hashed again next time


def test_wrong_size_from_the_server_is_refused_before_downloading(
    server: Server, archive: Archive, tmp_path: Path
) -> None:
    with pytest.raises(DenoiseError, match=rf"serves {len(archive.data)} bytes but 1000 are"):
        _fetch(server, tmp_path, md5=archive.md5, size=1000)
    assert not (tmp_path / "downloads" / f"{ROOT}.zip.part").exists()  # nothing was written


def test_http_error_status_is_one_line(server: Server, archive: Archive, tmp_path: Path) -> None:
    server.status = 404
    with pytest.raises(DenoiseError, match=rf"HTTP 404 .* from {re.escape(server.url)}") as exc:
        _fetch(server, tmp_path, md5=archive.md5)
    assert "\n" not in str(exc.value)


def test_a_redirect_to_ftp_is_refused_in_one_line(
    server: Server, archive: Archive, tmp_path: Path
) -> None:
    """urllib would follow it (no TLS, and none of the response checks apply there)."""
    server.redirect = "ftp://127.0.0.1:1/SIDD_Small_sRGB_Only.zip"
    with pytest.raises(DenoiseError, match=r"HTTP 302 .*a redirect to ftp:// is refused") as e:
        _fetch(server, tmp_path, md5=archive.md5)
    assert "\n" not in str(e.value)
    assert _leftovers(tmp_path / "downloads") == []
    assert not (tmp_path / "downloads" / f"{ROOT}.zip.part").exists()


def test_a_range_nobody_asked_for_is_one_line_not_a_crash(
    server: Server, archive: Archive, tmp_path: Path
) -> None:
    """A 206 from byte 100 to a request without Range (no .part yet): asking again would get
    the same, so one line at once, naming the URL, and nothing left behind."""
    server.start_at = 100
    with pytest.raises(DenoiseError, match=r"whole file with bytes from 100 on; set data") as e:
        _fetch(server, tmp_path, md5=archive.md5)
    assert "\n" not in str(e.value) and server.url in str(e.value)
    assert server.requests == [None]
    assert list((tmp_path / "downloads").iterdir()) == []


def test_a_redirect_loop_is_one_line(server: Server, archive: Archive, tmp_path: Path) -> None:
    server.redirect = server.url  # to itself, again and again
    with pytest.raises(DenoiseError, match=r"HTTP 302 .*infinite loop\. from ") as e:
        _fetch(server, tmp_path, md5=archive.md5)
    assert "\n" not in str(e.value)


def test_unreachable_url_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port that was free a moment ago and has no listener now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/{ROOT}.zip"
    with pytest.raises(
        DenoiseError, match=rf"cannot reach {re.escape(url)}: .*data.sidd.url"
    ) as exc:
        sd.download(url, tmp_path / "a.zip", size=10, md5="0" * 32, progress=False)
    assert "\n" not in str(exc.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "url,size,md5,match",
    [
        ("ftp://example.org/a.zip", 10, "0" * 32, "not an http"),
        ("http://127.0.0.1/a.zip", 0, "0" * 32, "positive byte count"),
        ("http://127.0.0.1/a.zip", 10, "xyz", "32 hex digits"),
        ("http://127.0.0.1:1/\u00e9.zip", 10, "0" * 32, r"not a valid URL \(a character outside"),
        ("http://a..b/x.zip", 10, "0" * 32, r"not a valid URL .*fix data\.sidd\.url$"),
        ("http:///x.zip", 10, "0" * 32, r"no host in the URL"),
    ],
)
def test_bad_request_params(tmp_path: Path, url: str, size: int, md5: str, match: str) -> None:
    with pytest.raises(DenoiseError, match=match):
        sd.download(url, tmp_path / "a.zip", size=size, md5=md5, progress=False)


def test_a_cache_dir_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "cache").write_text("a file where the download folder should be")
    with pytest.raises(
        DenoiseError, match=r"cache: cannot hold the download \(.*data\.sidd\.cache"
    ):
        sd.download(
            "http://127.0.0.1:1/a.zip", tmp_path / "cache" / "a.zip", size=10, md5="0" * 32,
            progress=False,
        )  # fmt: skip


def test_not_enough_space_is_refused_up_front(
    server: Server, archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        denoise.fileio.shutil, "disk_usage", lambda _: types.SimpleNamespace(free=5)
    )
    with pytest.raises(DenoiseError, match="not enough free space"):
        _fetch(server, tmp_path, md5=archive.md5)
    assert server.requests == []


class _FullDisk(io.BytesIO):
    def write(self, b: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def _full_disk_open(real_open: Any) -> Any:
    def fake(path: Any, mode: str = "r", *a: Any, **kw: Any) -> Any:
        return _FullDisk() if mode in ("wb", "ab") else real_open(path, mode, *a, **kw)

    return fake


def test_disk_full_while_downloading(
    server: Server, archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sd, "open", _full_disk_open(open), raising=False)
    with pytest.raises(DenoiseError, match=r"no space left on device writing .*\.part"):
        _fetch(server, tmp_path, md5=archive.md5)
    assert not (tmp_path / "downloads" / f"{ROOT}.zip").exists()


def test_disk_full_while_extracting_keeps_the_old_target(
    archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    zpath = tmp_path / "a.zip"
    zpath.write_bytes(archive.data)
    out = tmp_path / "raw"
    (out / "old.txt").parent.mkdir()
    (out / "old.txt").write_text("previous run")
    monkeypatch.setattr(sd, "open", _full_disk_open(open), raising=False)
    with pytest.raises(DenoiseError, match="no space left on device extracting"):
        sd.safe_extract(zpath, out, progress=False)
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    assert _leftovers(tmp_path) == []


# ------------------------------------------------------------------------ safe extraction


def _symlink(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize(
    "member,reason",
    [
        ("../evil", "'..' path component"),
        (f"{ROOT}/Data/../../../evil", "'..' path component"),
        ("/abs", "absolute path"),
        ("C:/windows/evil", "absolute path"),
        (_symlink(f"{ROOT}/Data/link"), "symbolic link"),
    ],
)
def test_hostile_members_are_refused_and_nothing_is_extracted(
    server: Server,
    sidd_tree: tuple[Path, dict[str, np.ndarray]],
    tmp_path: Path,
    member: zipfile.ZipInfo | str,
    reason: str,
) -> None:
    data = _zip_tree(sidd_tree[0], [(member, b"/etc/passwd")])
    server.payload = data
    work = tmp_path / "work"
    out = work / "data" / "raw"
    name = member.filename if isinstance(member, zipfile.ZipInfo) else member
    with pytest.raises(DenoiseError, match=re.escape(f"{name!r} ({reason})")):
        sd.fetch_sidd(
            server.url,
            size=len(data),
            md5=hashlib.md5(data).hexdigest(),
            cache_dir=work / "downloads",
            out_dir=out,
            progress=False,
        )
    assert not out.exists()
    assert _leftovers(out.parent) == []
    assert not list(tmp_path.rglob("evil")) and not list(tmp_path.rglob("link"))
    assert (work / "downloads" / f"{ROOT}.zip").is_file()  # verified archive kept


def test_a_link_in_the_old_target_cannot_redirect_extraction(
    archive: Archive, tmp_path: Path
) -> None:
    # Members go into a fresh staging folder, never through what is already in the target.
    target = tmp_path / "raw"
    outside = tmp_path / "outside"
    outside.mkdir()
    target.mkdir()
    (target / ROOT).symlink_to(outside)
    zpath = tmp_path / "a.zip"
    zpath.write_bytes(archive.data)
    assert sd.safe_extract(zpath, target, progress=False) == len(archive.images) // 2
    assert list(outside.iterdir()) == []
    assert (target / ROOT).is_dir() and not (target / ROOT).is_symlink()


@pytest.mark.parametrize("member", ["a/./../../evil", "a\\..\\..\\evil"])
def test_textual_escapes_are_refused(tmp_path: Path, member: str) -> None:
    zpath = tmp_path / "a.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr(member, b"x")
    with pytest.raises(DenoiseError, match="refusing unsafe member"):
        sd.safe_extract(zpath, tmp_path / "raw", progress=False)
    assert not (tmp_path / "raw").exists()


def test_archive_without_sidd_instances_is_refused(tmp_path: Path) -> None:
    zpath = tmp_path / "a.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr(f"{ROOT}/Data/not_an_instance/{GT_NAME}", b"x")
    with pytest.raises(DenoiseError, match="no SIDD-layout instances"):
        sd.safe_extract(zpath, tmp_path / "raw", progress=False)
    assert not (tmp_path / "raw").exists() and _leftovers(tmp_path) == []


def test_instance_missing_its_noisy_image_is_refused(tmp_path: Path) -> None:
    zpath = tmp_path / "a.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr(f"{ROOT}/Data/{INSTANCES[0]}/{GT_NAME}", b"x")
    with pytest.raises(DenoiseError, match=f"{INSTANCES[0]} has no {NOISY_NAME}"):
        sd.safe_extract(zpath, tmp_path / "raw", progress=False)
    assert not (tmp_path / "raw").exists()


def test_a_member_running_past_the_end_is_one_line(tmp_path: Path) -> None:
    member = f"{ROOT}/Data/{INSTANCES[0]}/{GT_NAME}"
    zpath = tmp_path / "a.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(member, b"x" * 1000)
    data = bytearray(zpath.read_bytes())
    central = data.find(b"PK\x01\x02")
    for offset in (18, 22, central + 20, central + 24):  # sizes: local header, central dir
        struct.pack_into("<I", data, offset, 10**6)
    zpath.write_bytes(bytes(data))
    with pytest.raises(DenoiseError, match=f"{re.escape(str(zpath))}: cannot read a member"):
        sd.safe_extract(zpath, tmp_path / "raw", progress=False)
    assert not (tmp_path / "raw").exists()


def test_not_a_zip(tmp_path: Path) -> None:
    zpath = tmp_path / "a.zip"
    zpath.write_bytes(b"this is not a zip archive")
    with pytest.raises(DenoiseError, match=f"{re.escape(str(zpath))}: not a valid zip"):
        sd.safe_extract(zpath, tmp_path / "raw", progress=False)


def test_archive_name_follows_the_url() -> None:
    assert sd.archive_name("http://h/share/SIDD_Small_sRGB_Only.zip?x=1") == f"{ROOT}.zip"
    assert sd.archive_name("https://mirror.example/a%20b.zip") == "a b.zip"
    assert sd.archive_name("https://mirror.example/") == sd.DEFAULT_ARCHIVE
    # a mirror's download link: the name a copy put in place by hand would have
    assert sd.archive_name("https://drive.example/uc?id=1&export=download") == sd.DEFAULT_ARCHIVE


# ---------------------------------------------------------------------------- stage script


def _stage_module() -> types.ModuleType:
    stages = str(REPO / "stages")
    if stages not in sys.path:
        sys.path.insert(0, stages)
    spec = importlib.util.spec_from_file_location("stage_download", REPO / "stages" / "download.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # where its dataclasses' type hints are looked up
    spec.loader.exec_module(mod)
    return mod


def _write_params(tmp_path: Path, data: dict[str, Any]) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"data": data}))
    return p


def test_stage_unknown_source_is_one_line_error(tmp_path: Path) -> None:
    _write_params(tmp_path, {"source": "kaggle"})
    proc = subprocess.run(
        [sys.executable, str(REPO / "stages" / "download.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "'kaggle'" in lines[0] and "synthetic, sidd" in lines[0]
    assert not (tmp_path / "data").exists()


def test_stage_missing_keys_are_named(tmp_path: Path) -> None:
    stage = _stage_module()
    params = _write_params(tmp_path, {"source": "sidd", "sidd": {"url": "http://x/a.zip"}})
    with pytest.raises(DenoiseError, match=r"data\.sidd: missing cache_dir, md5, size$"):
        stage.main(params, tmp_path / "raw")
    sidd = {"url": "u", "size": 1, "md5": "m", "cache_dir": "d"}
    for data, where in (
        ({"source": "sidd", "sid": {}, "sidd": sidd}, r"data: unknown sid$"),
        ({"source": "sidd", "sidd": {**sidd, "cache": "d"}}, r"data\.sidd: unknown cache$"),
        ("sidd", r"data: expected a mapping of keys, got 'sidd'$"),
        ({"source": "sidd", "sidd": {**sidd, "size": "6.6GB"}}, r"sidd\.size: expected an int"),
        (
            {"source": "synthetic", "synthetic": {"instances": 2.9, "height": 1, "width": 1}},
            r"data\.synthetic: missing seed$",
        ),
        (
            {
                "source": "synthetic",
                "synthetic": {"instances": 2.9, "height": 1, "width": 1, "seed": 1},
            },
            r"data\.synthetic\.instances: expected an integer, got 2\.9$",
        ),
        ({"synthetic": {"instances": 3}}, r"data: missing source$"),  # not synthetic by default
        (
            {
                "source": "synthetic",
                "synthetic": {"instances": 0, "height": 32, "width": 32, "seed": 1},
            },
            r"^params\.yaml data\.synthetic: instances 0: expected 1\.\.9999$",
        ),
    ):
        with pytest.raises(DenoiseError, match=where):
            stage.main(_write_params(tmp_path, data), tmp_path / "raw")


def test_stage_synthetic_calls_the_camera(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Path, dict[str, Any]]] = []
    fake = types.ModuleType("denoise.data.synthetic_camera")
    fake.generate_dataset = lambda out, **kw: calls.append((out, kw)) or [object()] * 3
    fake.settings_problem = lambda *settings: None
    monkeypatch.setitem(sys.modules, "denoise.data.synthetic_camera", fake)
    stage = _stage_module()
    params = _write_params(
        tmp_path,
        {
            "source": "synthetic",
            "synthetic": {"instances": 3, "height": 32, "width": 48, "seed": 7},
        },
    )
    stage.main(params, tmp_path / "raw")
    assert calls == [(tmp_path / "raw", {"instances": 3, "height": 32, "width": 48, "seed": 7})]


def test_stage_sidd_downloads_and_extracts(
    server: Server, archive: Archive, tmp_path: Path
) -> None:
    stage = _stage_module()
    params = _write_params(
        tmp_path,
        {
            "source": "sidd",
            "sidd": {
                "url": server.url,
                "size": len(archive.data),
                "md5": archive.md5,
                "cache_dir": str(tmp_path / "downloads"),
            },
        },
    )
    stage.main(params, tmp_path / "data" / "raw")
    assert [i.name for i, _ in list_instances(tmp_path / "data" / "raw")] == sorted(INSTANCES)


def _own_pairs(root: Path, names: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    made = {}
    for name in names:
        noisy, clean = (rng.integers(0, 256, (6, 8, 3), dtype=np.uint8) for _ in range(2))
        write_rgb8(root / name / NOISY_NAME, noisy)
        write_rgb8(root / name / GT_NAME, clean)
        made[name] = (noisy, clean)
    return made


def test_stage_folder_copies_ones_own_pairs(tmp_path: Path) -> None:
    """data.source: folder: one's own SIDD-layout pairs become data/raw as they are."""
    names = ["0001_001_S6_00100_00060_3200_L", "0002_002_IP_01600_00100_5500_N"]
    made = _own_pairs(tmp_path / "mine", names)
    (tmp_path / "mine" / "README.md").write_text("notes beside the pairs are not pairs")
    stage = _stage_module()
    params = _write_params(
        tmp_path, {"source": "folder", "folder": {"path": str(tmp_path / "mine")}}
    )
    stage.main(params, tmp_path / "raw")
    found = list_instances(tmp_path / "raw")
    assert [i.name for i, _ in found] == names
    for inst, folder in found:
        noisy, clean = made[inst.name]
        assert np.array_equal(read_rgb8(folder / NOISY_NAME), noisy)
        assert np.array_equal(read_rgb8(folder / GT_NAME), clean)
    assert (tmp_path / "mine" / names[0] / NOISY_NAME).is_file()  # copied, not moved


FOLDER_PROBLEMS = [
    "Data is a link",
    "beside the archive's Data",
    "misnamed in Data",
    "not a folder",
    "bad name",
    "missing partner",
    "lower-case names",
    "empty",
    "one level down",
    "beside Data",
    "symlink",
    "sizes differ",
    "unreadable",
]


@pytest.mark.parametrize("problem", FOLDER_PROBLEMS)
def test_stage_folder_problems_are_one_line_and_keep_the_old_data(
    tmp_path: Path, problem: str
) -> None:
    """Nothing under the folder is left out without a word, and nothing is copied until all
    of it is checked; the error names the user's file, not a copy."""
    mine = tmp_path / "mine"
    good = "0001_001_S6_00100_00060_3200_L"
    _own_pairs(mine, [good])
    _own_pairs(tmp_path / "raw" / "Data", ["0009_009_GP_00100_00060_3200_H"])  # the old data
    if problem == "Data is a link":
        mine = tmp_path / "linked"
        mine.mkdir()
        (mine / "Data").symlink_to(tmp_path / "mine")
        expected = rf"^{mine / 'Data'}: a symbolic link; DVC does not look through links"
    elif problem == "beside the archive's Data":
        shutil.rmtree(mine / good)  # only the archive's two levels
        archive = mine / "SIDD_Small_sRGB_Only"
        _own_pairs(archive / "Data", ["0002_002_S6_00100_00060_3200_L"])
        _own_pairs(archive, ["0003_003_S6_00100_00060_3200_L"])
        expected = rf"^{archive}/0003_003_S6_00100_00060_3200_L: a folder beside {archive}/Data"
    elif problem == "misnamed in Data":
        mine = tmp_path / "only"
        _own_pairs(mine / "Data", ["0001_001_S6_00100_00060_3200_l"])
        expected = rf"^{mine}/Data/0001_001_S6_00100_00060_3200_l: not a pair folder's name"
    elif problem == "not a folder":
        mine = tmp_path / "nowhere"
        expected = rf"^params\.yaml data\.folder\.path: {mine}: not a folder$"
    elif problem == "bad name":
        _own_pairs(mine, ["0002_002_S6_00100_00060_3200_h"])
        expected = rf"^{mine}/0002_002_S6_00100_00060_3200_h: not a pair folder's name"
    elif problem == "missing partner":
        (mine / good / GT_NAME).unlink()
        expected = rf"^{mine / good / GT_NAME}: missing \(the partner of {NOISY_NAME}\)$"
    elif problem == "lower-case names":
        (mine / good / GT_NAME).rename(mine / good / "gt_srgb_010.png")
        expected = rf"{GT_NAME}: missing .*\(gt_srgb_010\.png is not named exactly {GT_NAME}\)$"
    elif problem == "empty":
        mine = tmp_path / "empty"
        mine.mkdir()
        expected = rf"^params\.yaml data\.folder\.path: {mine}: no pair folders"
    elif problem == "one level down":
        _own_pairs(mine / "batch2", ["0002_002_S6_00100_00060_3200_L"])
        expected = rf"^{mine}/batch2: not a pair folder's name"
    elif problem == "beside Data":
        _own_pairs(mine / "Data", ["0002_002_S6_00100_00060_3200_L"])
        expected = rf"^{mine / good}: a folder beside {mine / 'Data'}; keep every pair folder"
    elif problem == "symlink":
        _own_pairs(tmp_path / "elsewhere", ["0003_003_S6_00100_00060_3200_L"])
        link = mine / "0003_003_S6_00100_00060_3200_L"
        link.symlink_to(tmp_path / "elsewhere" / link.name)
        expected = rf"^{link}: a symbolic link; DVC does not look through links"
    elif problem == "sizes differ":
        write_rgb8(mine / good / GT_NAME, np.zeros((5, 8, 3), np.uint8))
        expected = rf"^{mine / good / NOISY_NAME}: size 8x6 differs from .* \(8x5\)$"
    else:
        (mine / good / NOISY_NAME).write_bytes(b"not a png")
        expected = rf"^{mine / good / NOISY_NAME}: not a readable image"
    stage = _stage_module()
    params = _write_params(tmp_path, {"source": "folder", "folder": {"path": str(mine)}})
    with pytest.raises(DenoiseError, match=expected):
        stage.main(params, tmp_path / "raw")
    assert [i.name for i, _ in list_instances(tmp_path / "raw")] == [
        "0009_009_GP_00100_00060_3200_H"
    ]


def test_stage_folder_takes_pairs_in_a_data_folder_beside_notes(tmp_path: Path) -> None:
    """``<folder>/Data/<instance>/``, as `dvc add pairs/Data` keeps them, with the folder's
    README and ``Data.dvc`` beside it."""
    names = ["0001_001_S6_00100_00060_3200_L"]
    _own_pairs(tmp_path / "mine" / "Data", names)
    (tmp_path / "mine" / "README.md").write_text("notes")
    (tmp_path / "mine" / "Data.dvc").write_text("outs: []")
    (tmp_path / "mine" / "notes.txt").symlink_to(tmp_path / "mine" / "README.md")  # a file
    stage = _stage_module()
    params = _write_params(
        tmp_path, {"source": "folder", "folder": {"path": str(tmp_path / "mine")}}
    )
    stage.main(params, tmp_path / "raw")
    assert [i.name for i, _ in list_instances(tmp_path / "raw")] == names
