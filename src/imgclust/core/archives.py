"""Archives as dataset sources: download over http(s), verify the sha256, then extract safely.

The checksum is verified before a single member is extracted, and every member name and link is
checked before anything is written: an archive that would write outside its target folder
(absolute names, ``..``, links leading out) is refused as a whole, naming the member.
"""

from __future__ import annotations

import contextlib
import hashlib
import posixpath
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from urllib.parse import urlsplit

from imgclust.errors import ChecksumError, ParamError, SourceError, UnsafeArchiveError
from imgclust.core.fsutil import sha256_file

ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz")
URL_SCHEMES = ("http", "https")
# folders that archivers add beside the data (macOS resource forks); never a class
ARCHIVER_JUNK = ("__MACOSX",)
DOWNLOAD_TIMEOUT_S = 60


def is_url(source: str) -> bool:
    return urlsplit(str(source)).scheme.lower() in URL_SCHEMES


def is_archive(source: str) -> bool:
    """Whether ``source`` (a path or a URL) names a .zip, .tar.gz or .tgz file."""
    name = urlsplit(source).path if is_url(source) else str(source)
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def _normalise_sha256(expected: str) -> str:
    expected = (expected or "").strip().lower()
    if expected and (len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected)):
        raise ParamError(f"data.sha256 must be 64 hexadecimal digits, got {expected!r}.")
    return expected


def verify_sha256(path: Path, expected: str) -> str:
    """The sha256 of ``path``; ChecksumError when ``expected`` is given and differs."""
    actual = sha256_file(path)
    expected = _normalise_sha256(expected)
    if expected and actual != expected:
        raise ChecksumError(
            f"{path}: sha256 is {actual}, but data.sha256 is {expected}. The archive is not the "
            "one expected (changed, truncated or tampered with); nothing was extracted. Fix data.sha256 "
            "only if you trust this file."
        )
    return actual


def download(url: str, dest: Path, expected_sha256: str, timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Download ``url`` to ``dest`` and verify it against ``expected_sha256`` (required)."""
    import urllib.error
    import urllib.request

    expected = _normalise_sha256(expected_sha256)
    if not expected:
        raise ParamError(f"{url}: a URL source needs data.sha256 (the archive's sha256) to verify the download.")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
            while block := response.read(1 << 20):
                digest.update(block)
                out.write(block)
    except (urllib.error.URLError, OSError) as exc:
        raise SourceError(f"{url}: download failed ({exc}). Check the URL and the network, or download the "
                          "archive yourself and set data.source to its local path.") from exc
    if digest.hexdigest() != expected:
        dest.unlink()
        raise ChecksumError(f"{url}: downloaded sha256 is {digest.hexdigest()}, but data.sha256 is {expected}; "
                            "the download was discarded and nothing was extracted.")
    return dest


def _unsafe_name(name: str) -> str | None:
    """Why ``name`` may not be extracted as is, or None."""
    if not name or PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() \
            or PureWindowsPath(name).drive or name.startswith(("\\", "/")):
        return "absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return "'..' leads outside the extraction folder"
    return None


def _link_leaves(base_dir: str, target: str) -> bool:
    """Whether a link to ``target``, resolved from ``base_dir`` (archive-relative), leaves the archive."""
    if not target or _unsafe_name(target) == "absolute path":
        return True
    resolved = posixpath.normpath(posixpath.join(base_dir, target.replace("\\", "/")))
    return resolved == ".." or resolved.startswith("../")


def _is_junk(name: str) -> bool:
    return name.replace("\\", "/").split("/", 1)[0] in ARCHIVER_JUNK


def _refuse(archive: str, member: str, reason: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(f"{archive}: member {member!r} refused ({reason}); nothing was extracted. "
                              "Rebuild the archive with relative paths inside one folder.")


def _extract_zip(archive: Path, target: Path, label: str) -> None:
    import zipfile

    with zipfile.ZipFile(archive) as zf:
        members = []
        for info in zf.infolist():
            if (reason := _unsafe_name(info.filename)) is not None:
                raise _refuse(label, info.filename, reason)
            if _is_junk(info.filename):
                continue
            if stat.S_ISLNK(info.external_attr >> 16):
                # zipfile would write a link as a small file holding its target: never extract it
                link = zf.read(info).decode("utf-8", "replace")
                if _link_leaves(posixpath.dirname(info.filename), link):
                    raise _refuse(label, info.filename, f"symlink to {link!r} leaves the extraction folder")
                continue
            members.append(info)
        zf.extractall(target, members)


def _extract_tar(archive: Path, target: Path, label: str) -> None:
    import tarfile

    with tarfile.open(archive, "r:*") as tar:
        members = []
        for member in tar.getmembers():
            if (reason := _unsafe_name(member.name)) is not None:
                raise _refuse(label, member.name, reason)
            if _is_junk(member.name):
                continue
            if member.issym() and _link_leaves(posixpath.dirname(member.name), member.linkname):
                raise _refuse(label, member.name, f"symlink to {member.linkname!r} leaves the extraction folder")
            if member.islnk() and _link_leaves("", member.linkname):  # hard links name an archive path
                raise _refuse(label, member.name, f"hard link to {member.linkname!r} leaves the extraction folder")
            if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
                raise _refuse(label, member.name, "not a regular file, folder or link")
            members.append(member)
        # the 'data' filter (Python >= 3.11.4) re-checks all of the above, and drops modes and owners
        extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        try:
            tar.extractall(target, members, **extra)
        except getattr(tarfile, "FilterError", ()) as exc:  # the filter exists from Python 3.11.4
            raise _refuse(label, exc.tarinfo.name, str(exc)) from exc


def extract_archive(archive: Path, target: Path, label: str | None = None) -> Path:
    """Extract a .zip/.tar.gz/.tgz into ``target`` after checking every member; return the dataset
    root: ``target``, or its one top-level folder when the archive wraps everything in one."""
    import tarfile
    import zipfile
    import zlib

    archive, target = Path(archive), Path(target)
    label = label or str(archive)  # what messages call the archive: its path or its URL
    target.mkdir(parents=True, exist_ok=True)
    try:
        if archive.name.lower().endswith(".zip"):
            _extract_zip(archive, target, label)
        else:
            _extract_tar(archive, target, label)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as exc:
        raise SourceError(f"{label}: not a readable archive ({exc}).") from exc
    entries = [p for p in target.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        return entries[0]
    return target


@dataclass(frozen=True)
class ResolvedSource:
    folder: Path                   # a folder of class subfolders
    archive_sha256: str | None     # the verified archive's sha256; None for a folder source


@contextlib.contextmanager
def source_folder(source: str | Path, sha256: str = "") -> Iterator[ResolvedSource]:
    """Resolve ``source`` to a folder of class subfolders.

    A folder is used as is. A local archive is verified against ``sha256`` when one is given, a
    URL is downloaded and always verified; either is then extracted into a temporary folder that
    is removed on leaving the block.
    """
    text = str(source)
    if not is_archive(text):
        if is_url(text):
            raise SourceError(f"{text}: a URL source must name a {', '.join(ARCHIVE_SUFFIXES)} archive.")
        if sha256:
            raise ParamError(f"{text}: data.sha256 is set but data.source is not an archive; "
                             "clear data.sha256 or point data.source at the archive.")
        yield ResolvedSource(Path(source), None)
        return
    with tempfile.TemporaryDirectory(prefix="imgclust-source-") as workdir:
        if is_url(text):
            archive = download(text, Path(workdir) / (posixpath.basename(urlsplit(text).path)), sha256)
            actual = _normalise_sha256(sha256)
        else:
            archive = Path(source)
            if not archive.is_file():
                raise SourceError(f"{archive}: archive not found. Set data.source to an existing archive or folder.")
            actual = verify_sha256(archive, sha256)
        yield ResolvedSource(extract_archive(archive, Path(workdir) / "extracted", label=text), actual)
