"""Download, verify and safely extract the SIDD-Small sRGB archive.

The archive is 6.6 GB, so the download must survive a flaky network and never waste work:

* Bytes stream into ``<archive>.part``; an interrupted download resumes from the ``.part`` size
  with an HTTP ``Range`` request (a server that ignores ``Range`` and answers ``200`` restarts
  the file cleanly; a ``416`` means the ``.part`` is not a prefix of the file, so it is dropped).
* The finished ``.part`` is checked (size first, then an MD5 computed chunk by chunk) and only
  then renamed to ``<archive>``. A ``.part`` that fails is moved to ``<archive>.rejected`` (the
  user can inspect it; the next run starts from zero); a verified archive is never deleted.
* ``<archive>.verified`` is a small JSON sidecar ``{size, md5, mtime_ns, ctime_ns, inode}``
  written after a successful check. While it matches the archive's size, times and inode, later
  runs trust it instead of re-hashing 6.6 GB; writing, touching or replacing the archive
  invalidates it (its ctime moves, and no user can set that back).
* Redirects are followed to http(s) URLs only.
* Extraction refuses absolute paths, ``..`` components, symlinks and anything resolving outside
  the target, extracts into a temporary sibling of the target and renames it into place, so a bad
  archive never leaves a half-written target behind.

Every failure a user can cause or fix is one :class:`DenoiseError` line naming the URL or file.
To use a copy obtained elsewhere, place it at ``<cache_dir>/<archive name>``: it is verified
against the expected size and MD5 and used without any network access.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import os
import posixpath
import re
import stat
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import unquote, urlparse
from urllib.request import HTTPRedirectHandler, Request, build_opener

from tqdm import tqdm

from denoise.data.sidd_layout import GT_NAME, NOISY_NAME, list_instances
from denoise.errors import DenoiseError, first_line
from denoise.fileio import atomic_path, check_free_space, write_json

CHUNK = 1 << 20
DEFAULT_ARCHIVE = "SIDD_Small_sRGB_Only.zip"
_MD5 = re.compile(r"^[0-9a-f]{32}$")
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class _Interrupted(Exception):
    """The transfer stopped early; the ``.part`` holds what arrived and a retry can resume,
    unless ``resumable`` is false: the server answered a range request with the whole file."""

    def __init__(self, reason: str, *, resumable: bool = True) -> None:
        super().__init__(reason)
        self.resumable = resumable


_NO_RESUME = (
    "the server cannot resume a download (it answers range requests with the whole file): run "
    "again to start over, or set data.sidd.url to a mirror that can"
)


# --------------------------------------------------------------------------- verification


def _md5_of(path: Path, *, progress: bool) -> str:
    h = hashlib.md5()
    with (
        open(path, "rb") as f,
        tqdm(
            total=path.stat().st_size,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=f"md5 {path.name}",
            disable=not progress,
        ) as bar,
    ):
        while chunk := f.read(CHUNK):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


def _mismatch(path: Path, size: int, md5: str, *, progress: bool) -> str | None:
    """Why ``path`` is not the expected file, or None when it is (size is checked first)."""
    actual = path.stat().st_size
    if actual != size:
        return f"size {actual} bytes, expected {size}"
    digest = _md5_of(path, progress=progress)
    if digest != md5.lower():
        return f"MD5 {digest}, expected {md5.lower()}"
    return None


def _marker(archive: Path) -> Path:
    return archive.with_name(archive.name + ".verified")


def is_verified(archive: str | Path, size: int, md5: str) -> bool:
    """True when the ``.verified`` sidecar vouches for ``archive`` as it is now (no hashing)."""
    archive = Path(archive)
    try:
        st = archive.stat()
        record = json.loads(_marker(archive).read_text())
    except (OSError, ValueError):
        return False
    return record == _record(st, size, md5) and st.st_size == size


def _record(st: os.stat_result, size: int, md5: str) -> dict[str, int | str]:
    """What the marker vouches for: the expected size and MD5, and the file as it was when
    hashed. ctime is in it because no user can set it back (mtime can be: ``touch -r``,
    ``cp -p``, a same-size file from another download of the same URL)."""
    return {
        "size": size,
        "md5": md5.lower(),
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "inode": st.st_ino,
    }


def _mark_verified(archive: Path, size: int, md5: str) -> None:
    """Record that ``archive`` passed, so the next run need not hash it again. Only a saving:
    an archive on a read-only disk is used all the same, and hashed again each run."""
    record = _record(archive.stat(), size, md5)
    try:
        write_json(_marker(archive), record)
    except DenoiseError as e:
        tqdm.write(f"note: {e}; the archive is verified but will be hashed again next run")


# ------------------------------------------------------------------------------- download


def archive_name(url: str) -> str:
    """The file name the URL serves (its last path segment), e.g. ``SIDD_Small_sRGB_Only.zip``;
    :data:`DEFAULT_ARCHIVE` when that is no zip name (a mirror's ``.../uc?id=...``), so that a
    copy put in place under that name is found."""
    name = PurePosixPath(unquote(urlparse(url).path)).name
    return name if name.lower().endswith(".zip") else DEFAULT_ARCHIVE


def _check_request(url: str, size: int, md5: str) -> None:
    parts = urlparse(url)
    if parts.scheme not in ("http", "https"):
        raise DenoiseError(f"{url}: not an http(s) URL; set data.sidd.url to the archive's URL")
    try:  # urllib would raise these mid-request, as a traceback
        url.encode("ascii")
        (parts.hostname or "").encode("idna")
    except UnicodeError:
        raise DenoiseError(
            f"{url}: not a valid URL (a character outside ASCII, percent-encode it; or an empty "
            "part of the host name); fix data.sidd.url"
        ) from None
    if not parts.hostname:
        raise DenoiseError(f"{url}: no host in the URL; fix data.sidd.url")
    if not isinstance(size, int) or size <= 0:
        raise DenoiseError(f"{url}: expected size must be a positive byte count, got {size!r}")
    if not _MD5.match(str(md5).lower()):
        raise DenoiseError(f"{url}: expected MD5 must be 32 hex digits, got {md5!r}")


def _parse_content_range(value: str | None) -> tuple[int, int | None]:
    m = _CONTENT_RANGE.match((value or "").strip())
    if m is None:
        raise _Interrupted(f"unreadable Content-Range {value!r}")
    total = None if m.group(3) == "*" else int(m.group(3))
    return int(m.group(1)), total


class _HttpRedirectsOnly(HTTPRedirectHandler):
    """Follow redirects to http(s) only: urllib's own handler also follows one to ftp://, a
    transfer without TLS that none of the response checks here would see."""

    def redirect_request(
        self, req: Request, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> Request | None:
        scheme = urlparse(newurl).scheme.lower()
        if scheme not in ("http", "https"):
            refused = f"{msg}: a redirect to {scheme}:// is refused"
            raise HTTPError(newurl, code, refused, headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = build_opener(_HttpRedirectsOnly)


def _open(url: str, part: Path, offset: int, timeout: float) -> http.client.HTTPResponse:
    """Send the (ranged) GET; turn every failure to connect into a DenoiseError or _Interrupted."""
    headers = {"User-Agent": "denoise-sidd-download/1", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return _OPENER.open(Request(url, headers=headers), timeout=timeout)
    except HTTPError as e:
        e.close()
        reason = first_line(Exception(e.reason))  # urllib's redirect-loop one has three lines
        if e.code == 416 and offset:
            part.unlink()
            raise _Interrupted("server refused the resume (HTTP 416); restarting") from None
        if offset and (e.code >= 500 or e.code == 429):  # busy or failing a moment: wait, resume
            raise _Interrupted(f"HTTP {e.code} {reason} on resuming") from None
        kept = f"; the partial download {part} is kept for the next run" if offset else ""
        raise DenoiseError(
            f"HTTP {e.code} {reason} from {url}; check data.sidd.url or set it to a mirror{kept}"
        ) from None
    except (OSError, http.client.HTTPException) as e:  # URLError is an OSError
        reason = e.reason if isinstance(e, URLError) else e
        if offset:  # the server was there a moment ago: let the retry loop wait and resume
            raise _Interrupted(f"reconnecting failed: {reason}") from None
        raise DenoiseError(
            f"cannot reach {url}: {reason}; check the network or set data.sidd.url to a mirror"
        ) from None


@dataclass(frozen=True)
class _Body:
    """How one response's body goes into the ``.part`` file."""

    offset: int  # the part file's size the body continues (0: it is written from the start)
    skip: int  # bytes at the body's start already on disk (a resume answered from earlier)
    mode: str  # "ab" (continue) or "wb" (from the start)
    resumable: bool  # whether a later request can pick up where this one stops


def _read_headers(
    resp: http.client.HTTPResponse, url: str, part: Path, offset: int, size: int
) -> _Body:
    """What the response to a request from byte ``offset`` is: a page instead of the archive, a
    range from where (206), or the whole file (200); a size other than ``size`` is refused."""
    if resp.headers.get_content_type() == "text/html":
        raise DenoiseError(
            f"{url} serves a web page, not the archive (a sign-in or download-warning "
            "page?); set data.sidd.url to the file's direct link"
        )
    ranged = offset > 0
    if resp.status == 206:
        start, total = _parse_content_range(resp.headers.get("Content-Range"))
        if start > offset and not ranged:  # a range nobody asked for: no use asking again
            raise DenoiseError(
                f"{url} answered a request for the whole file with bytes from {start} on; "
                "set data.sidd.url to another mirror"
            )
        if start > offset:
            part.unlink()
            raise _Interrupted(f"server resumed at byte {start}, not {offset}; restarting")
        body = _Body(offset, offset - start, "ab", True)  # an earlier start: a proxy's block
    else:  # 200: the server ignored Range (or there was none) and sends the whole file
        if ranged:
            tqdm.write(f"{url} ignores range requests: downloading from the start")
        length = resp.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        # Not resumable where a range request was answered with the whole file, or where the
        # server says up front that it takes none.
        accepts = resp.headers.get("Accept-Ranges", "").lower() != "none"
        body = _Body(0, 0, "wb", not ranged and accepts)
    if total is not None and total != size:
        raise DenoiseError(
            f"{url} serves {total} bytes but {size} are expected; check "
            "data.sidd.url and data.sidd.size"
        )
    return body


def _write_body(
    resp: http.client.HTTPResponse, part: Path, body: _Body, *, size: int, progress: bool
) -> int:
    """Copy the response's body into ``part`` until it ends or passes ``size``; returns the
    part file's size. A connection lost midway raises :class:`_Interrupted`."""
    written, skip = body.offset, body.skip
    try:
        with (
            open(part, body.mode) as f,
            tqdm(
                total=size,
                initial=body.offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.name,
                disable=not progress,
            ) as bar,
        ):
            while written <= size:
                try:
                    chunk = resp.read(min(CHUNK, skip) if skip else CHUNK)
                except (OSError, http.client.HTTPException) as e:
                    raise _Interrupted(
                        f"{type(e).__name__}: {e}", resumable=body.resumable
                    ) from None
                if not chunk:
                    break
                if skip:
                    skip -= len(chunk)
                    continue
                f.write(chunk)
                written += len(chunk)
                bar.update(len(chunk))
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise DenoiseError(
                f"no space left on device writing {part} ({written} of {size} "
                "bytes); free space or set data.sidd.cache_dir elsewhere, "
                "then run again to resume"
            ) from None
        raise DenoiseError(f"cannot write {part}: {e.strerror or e}") from None
    return written


def _transfer(url: str, part: Path, *, size: int, timeout: float, progress: bool) -> None:
    """Bring ``part`` to ``size`` bytes (or more, for verification to reject); one HTTP request.

    Raises :class:`_Interrupted` when the transfer stopped early and may be resumed.
    """
    offset = part.stat().st_size if part.exists() else 0
    if offset > size:  # cannot be a prefix of the expected file
        part.unlink()
        offset = 0
    if offset == size:
        return
    check_free_space(part.parent, size - offset, f"the rest of {url}")
    with _open(url, part, offset, timeout) as resp:
        body = _read_headers(resp, url, part, offset, size)
        written = _write_body(resp, part, body, size=size, progress=progress)
    # A whole response (a cut chunked body raises IncompleteRead above) that is not the
    # archive; a 206 may be one block of a range a server hands out in pieces: resumed.
    if written < size and resp.chunked and body.mode == "wb":
        part.unlink()  # a page, not a prefix of the archive
        raise DenoiseError(
            f"{url} sent a whole response of {written - body.offset} bytes where "
            f"{size - body.offset} were expected (not the archive?); check data.sidd.url and "
            "data.sidd.size"
        )
    if written < size:
        raise _Interrupted(
            f"connection closed after {written} of {size} bytes", resumable=body.resumable
        )


def download(
    url: str,
    dest: str | Path,
    *,
    size: int,
    md5: str,
    timeout: float = 60.0,
    retries: int = 3,
    retry_delay: float = 2.0,
    progress: bool = True,
) -> Path:
    """Make ``dest`` a verified copy of ``url``, downloading (or resuming) only what is missing.

    An interrupted transfer is resumed automatically, waiting ``retry_delay`` seconds, doubled
    for each interruption in a row that brought no new byte; after ``retries`` of those (or at
    the first interruption, with ``retries=0``) the ``.part`` stays on disk and the next call
    resumes it. A link that keeps dropping but keeps advancing is never given up on: over
    6.6 GB, a fixed number of interruptions would be. Returns ``dest``.
    """
    dest = Path(dest)
    _check_request(url, size, md5)
    if dest.exists():
        if is_verified(dest, size, md5):
            return dest
        reason = _mismatch(dest, size, md5, progress=progress)
        if reason:
            raise DenoiseError(
                f"{dest}: {reason}; this archive is not the expected one and is "
                "left untouched: move it away to download again, or fix "
                "data.sidd.size/md5"
            )
        _mark_verified(dest, size, md5)
        return dest

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file in its place, no permission
        raise DenoiseError(
            f"{dest.parent}: cannot hold the download ({e.strerror or e}); check "
            "data.sidd.cache_dir"
        ) from None
    rejected = dest.with_name(dest.name + ".rejected")
    if rejected.exists() and not _mismatch(rejected, size, md5, progress=progress):
        # A download refused under a wrong data.sidd.md5 that has since been corrected.
        tqdm.write(f"{rejected} is the expected archive after all: using it")
        os.replace(rejected, dest)
        _mark_verified(dest, size, md5)
        return dest
    part = dest.with_name(dest.name + ".part")
    last = part.stat().st_size if part.exists() else 0
    stalled = 0  # interruptions in a row that brought no new byte
    while True:
        try:
            _transfer(url, part, size=size, timeout=timeout, progress=progress)
            break
        except _Interrupted as e:
            have = part.stat().st_size if part.exists() else 0
            stalled = 0 if have > last else stalled + 1
            last = have
            if retries == 0 or stalled > retries:
                then = f"run again to resume from {part}" if e.resumable else _NO_RESUME
                raise DenoiseError(
                    f"download of {url} interrupted at {have} of {size} bytes ({e}); {then}"
                ) from None
            again = "resuming" if e.resumable else "trying again (a range request may work)"
            tqdm.write(f"download interrupted at {have} of {size} bytes ({e}); {again}")
            time.sleep(retry_delay * 2**stalled)

    reason = _mismatch(part, size, md5, progress=progress)
    if reason:
        os.replace(part, rejected)
        raise DenoiseError(
            f"{url}: downloaded file failed verification ({reason}); moved to {rejected}; "
            "check data.sidd.url and data.sidd.md5 (the next run checks that file first)"
        )
    os.replace(part, dest)
    _mark_verified(dest, size, md5)
    if rejected.exists():  # not the archive these params expect (checked above): only space
        rejected.unlink()
    return dest


# -------------------------------------------------------------------------------- extract


def _unsafe_reason(info: zipfile.ZipInfo) -> str | None:
    """Why extracting this member could write outside the target folder, or None when safe.

    Purely textual: members go into a fresh, empty staging folder, so nothing already on disk
    (a link left in an old ``data/raw``) can redirect them.
    """
    name = info.filename
    parts = re.split(r"[/\\]", name)
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    if ".." in parts:
        return "'..' path component"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link"
    if "\x00" in name:
        return "NUL in name"
    normal = posixpath.normpath(name.replace("\\", "/"))
    if normal == ".." or normal.startswith("../"):
        return "resolves outside the target folder"
    return None


def _check_members(zip_path: Path, infos: list[zipfile.ZipInfo]) -> None:
    for info in infos:
        reason = _unsafe_reason(info)
        if reason:
            raise DenoiseError(
                f"{zip_path}: refusing unsafe member {info.filename!r} ({reason}); "
                "nothing was extracted"
            )


def _check_pairs(zip_path: Path, staged: Path) -> int:
    """The extracted tree must hold SIDD instances, each with its GT and noisy image."""
    try:
        instances = list_instances(staged)
    except DenoiseError:
        raise DenoiseError(
            f"{zip_path}: archive holds no SIDD-layout instances "
            "(expected SIDD_Small_sRGB_Only/Data/<instance>/)"
        ) from None
    for inst, folder in instances:
        for fname in (GT_NAME, NOISY_NAME):
            if not (folder / fname).is_file():
                raise DenoiseError(f"{zip_path}: instance {inst.name} has no {fname}")
    return len(instances)


def safe_extract(zip_path: str | Path, target_dir: str | Path, *, progress: bool = True) -> int:
    """Extract a SIDD-layout zip into ``target_dir`` atomically; returns the instance count.

    Every member is checked before anything is written; extraction goes to a temporary sibling
    of ``target_dir`` which replaces it only once complete and checked, so on any failure
    ``target_dir`` is left exactly as it was.
    """
    zip_path, target_dir = Path(zip_path), Path(target_dir)
    try:
        with zipfile.ZipFile(zip_path) as zf:
            infos = zf.infolist()
            target_dir.parent.mkdir(parents=True, exist_ok=True)
            _check_members(zip_path, infos)
            check_free_space(
                target_dir.parent, sum(i.file_size for i in infos), f"extracting {zip_path}"
            )
            with atomic_path(target_dir) as staged:
                staged.mkdir()
                with tqdm(
                    total=sum(i.file_size for i in infos),
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=f"extract {zip_path.name}",
                    disable=not progress,
                ) as bar:
                    for info in infos:
                        out = staged / info.filename
                        if info.is_dir():
                            out.mkdir(parents=True, exist_ok=True)
                            continue
                        out.parent.mkdir(parents=True, exist_ok=True)
                        with zf.open(info) as src, open(out, "wb") as dst:
                            while chunk := src.read(CHUNK):
                                dst.write(chunk)
                                bar.update(len(chunk))
                count = _check_pairs(zip_path, staged)
    except zipfile.BadZipFile as e:
        raise DenoiseError(f"{zip_path}: not a valid zip archive ({e})") from None
    # Corrupt data, a member running past the end (EOFError), Deflate64, encrypted.
    except (zlib.error, EOFError, NotImplementedError, RuntimeError) as e:
        raise DenoiseError(
            f"{zip_path}: cannot read a member ({e or type(e).__name__}); nothing was extracted"
        ) from None
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise DenoiseError(
                f"no space left on device extracting {zip_path} into "
                f"{target_dir}; free space and run again"
            ) from None
        if e.filename is not None and Path(e.filename) == zip_path:  # the archive, not the target
            raise DenoiseError(f"{zip_path}: cannot read ({e.strerror or e})") from None
        raise DenoiseError(
            f"{zip_path}: cannot extract into {target_dir}: {e.strerror or e}"
        ) from None
    return count


def fetch_sidd(
    url: str,
    *,
    size: int,
    md5: str,
    cache_dir: str | Path,
    out_dir: str | Path,
    timeout: float = 60.0,
    retries: int = 3,
    progress: bool = True,
) -> Path:
    """Download (or reuse) the verified archive in ``cache_dir`` and extract it to ``out_dir``.

    The result is ``out_dir/SIDD_Small_sRGB_Only/Data/<instance>/{GT,NOISY}_SRGB_010.PNG``.
    Extraction always runs (DVC removes ``out_dir`` before re-running the stage anyway).
    """
    archive = download(
        url,
        Path(cache_dir) / archive_name(url),
        size=size,
        md5=md5,
        timeout=timeout,
        retries=retries,
        progress=progress,
    )
    safe_extract(archive, out_dir, progress=progress)
    return Path(out_dir)
