"""Archives as dataset sources: download over http(s), verify the sha256, then extract safely.

The checksum is verified before a single member is extracted, and every member name and link is
checked before anything is written: an archive that would write outside its target folder
(absolute names, ``..``, links leading out), that holds a file and a folder of one name, an encrypted
member or one compressed by a method Python cannot read is refused as a whole, naming the member.
So is an archive whose members add up to more than ``max_bytes`` or to more than ``max_ratio``
times its own size (a zip bomb), and one that would not fit in the free space of the temporary folder.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import posixpath
import shutil
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from urllib.parse import urlsplit

from imgclust.core.fsutil import disk_full, sha256_file
from imgclust.errors import ChecksumError, OutputWriteError, ParamError, SourceError, UnsafeArchiveError

ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz")
URL_SCHEMES = ("http", "https")
# folders that archivers add beside the data (macOS resource forks); never a class
ARCHIVER_JUNK = ("__MACOSX",)
DOWNLOAD_TIMEOUT_S = 60
# the defaults of ingest.max_archive_bytes and ingest.max_compression_ratio (params.yaml): BUSI
# (780 images) unpacks to about 0.2 GiB, and image files hardly compress (PNG/JPEG: ratio ~1)
MAX_ARCHIVE_BYTES = 8 * 1024**3
MAX_COMPRESSION_RATIO = 100
# zip compression methods zipfile can read: stored, deflated, bzip2, lzma
ZIP_METHODS = {0: "stored", 8: "deflated", 12: "bzip2", 14: "lzma"}


@dataclass(frozen=True)
class Limits:
    """How much an archive may unpack to: ``max_bytes`` in all, ``max_ratio`` times its own size."""

    max_bytes: int = MAX_ARCHIVE_BYTES
    max_ratio: float = MAX_COMPRESSION_RATIO


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
        raise SourceError(
            f"{url}: download failed ({exc}). Check the URL and the network, or download the "
            "archive yourself and set data.source to its local path."
        ) from exc
    if digest.hexdigest() != expected:
        dest.unlink()
        raise ChecksumError(
            f"{url}: downloaded sha256 is {digest.hexdigest()}, but data.sha256 is {expected}; "
            "the download was discarded and nothing was extracted."
        )
    return dest


def _unsafe_name(name: str) -> str | None:
    """Why ``name`` may not be extracted as is, or None."""
    if (
        not name
        or PurePosixPath(name).is_absolute()
        or PureWindowsPath(name).is_absolute()
        or PureWindowsPath(name).drive
        or name.startswith(("\\", "/"))
    ):
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
    return UnsafeArchiveError(
        f"{archive}: member {member!r} refused ({reason}); nothing was extracted. "
        "Rebuild the archive with relative paths inside one folder."
    )


def _norm(name: str) -> str:
    return posixpath.normpath(name.replace("\\", "/")).lstrip("/")


class _Tally:
    """The members about to be extracted: file and folder names that clash, and the bytes they add
    up to against the limits (checked as members are listed, so a bomb is refused early)."""

    def __init__(self, label: str, archive: Path, limits: Limits):
        self.label, self.limits = label, limits
        self.archive_bytes = max(archive.stat().st_size, 1)
        self.total = 0
        self.files: dict[str, str] = {}  # normalised path -> member name, for files and links
        self.folders: dict[str, str] = {}  # normalised path -> member name that makes it a folder

    def add(self, name: str, size: int, is_dir: bool) -> None:
        path = _norm(name)
        if path in ("", "."):
            return
        parents = [posixpath.dirname(path)]
        while parents[-1] not in ("", "."):
            parents.append(posixpath.dirname(parents[-1]))
        for parent in parents[:-1]:
            if parent in self.files:
                raise _refuse(self.label, name, f"{self.files[parent]!r} is a file, but {name!r} makes it a folder")
            self.folders.setdefault(parent, name)
        if is_dir:
            if path in self.files:
                raise _refuse(self.label, name, f"a file and a folder are both named {path!r}")
            self.folders.setdefault(path, name)
            return
        if path in self.folders:
            raise _refuse(self.label, name, f"a file and a folder are both named {path!r}")
        if path in self.files:
            raise _refuse(
                self.label, name, f"the archive holds two members named {path!r}; one would silently replace the other"
            )
        self.files[path] = name
        self.total += max(int(size), 0)
        self.check()

    def check(self) -> None:
        limits, total = self.limits, self.total
        if total > limits.max_bytes:
            raise UnsafeArchiveError(
                f"{self.label}: unpacks to more than {limits.max_bytes} bytes (ingest.max_archive_bytes); "
                "nothing was extracted. Raise ingest.max_archive_bytes if you trust this archive, or "
                "unpack it yourself and set data.source to the folder."
            )
        if total > limits.max_ratio * self.archive_bytes:
            raise UnsafeArchiveError(
                f"{self.label}: unpacks to more than {limits.max_ratio:g} times its size of "
                f"{self.archive_bytes} bytes (ingest.max_compression_ratio), as a zip bomb does; nothing "
                "was extracted. Raise ingest.max_compression_ratio if you trust this archive."
            )

    def check_free_space(self, target: Path) -> None:
        free = shutil.disk_usage(target).free
        if self.total > free:
            raise OutputWriteError(
                f"{self.label}: unpacks to {self.total} bytes, but {target} has only {free} bytes free; "
                "nothing was extracted. Free space there, or point TMPDIR at a larger disk."
            )


def _extract_zip(archive: Path, target: Path, label: str, limits: Limits) -> None:
    import zipfile

    tally = _Tally(label, archive, limits)
    with zipfile.ZipFile(archive) as zf:
        members = []
        for info in zf.infolist():
            if (reason := _unsafe_name(info.filename)) is not None:
                raise _refuse(label, info.filename, reason)
            if _is_junk(info.filename):
                continue
            if info.flag_bits & 0x1:
                raise SourceError(
                    f"{label}: member {info.filename!r} is encrypted; imgclust does not take "
                    "passwords. Unpack the archive yourself and set data.source to the folder, "
                    "or rebuild it without encryption. Nothing was extracted."
                )
            if info.compress_type not in ZIP_METHODS or not _method_available(info.compress_type):
                raise SourceError(
                    f"{label}: member {info.filename!r} is compressed with method "
                    f"{info.compress_type}, which cannot be read here (readable: "
                    f"{', '.join(ZIP_METHODS.values())}). Rebuild the archive with deflate "
                    "(zip's default). Nothing was extracted."
                )
            if stat.S_ISLNK(info.external_attr >> 16):
                # zipfile would write a link as a small file holding its target: never extract it
                link = zf.read(info).decode("utf-8", "replace")
                if _link_leaves(posixpath.dirname(info.filename), link):
                    raise _refuse(label, info.filename, f"symlink to {link!r} leaves the extraction folder")
                continue
            tally.add(info.filename, info.file_size, info.is_dir())
            members.append(info)
        tally.check_free_space(target)
        zf.extractall(target, members)


def _method_available(method: int) -> bool:
    try:
        if method == 12:
            import bz2  # noqa: F401
        elif method == 14:
            import lzma  # noqa: F401
    except ImportError:
        return False
    return True


def _extract_tar(archive: Path, target: Path, label: str, limits: Limits) -> None:
    import tarfile

    tally = _Tally(label, archive, limits)
    with tarfile.open(archive, "r:*") as tar:
        members = []
        for member in tar:  # one at a time: a bomb is refused before the rest is inflated
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
            tally.add(member.name, member.size if member.isfile() else 0, member.isdir())
            members.append(member)
        tally.check_free_space(target)
        # the 'data' filter (Python >= 3.11.4) re-checks all of the above, and drops modes and owners
        extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        try:
            tar.extractall(target, members, **extra)
        except getattr(tarfile, "FilterError", ()) as exc:  # the filter exists from Python 3.11.4
            raise _refuse(label, exc.tarinfo.name, str(exc)) from exc


def extract_archive(archive: Path, target: Path, label: str | None = None, limits: Limits = Limits()) -> Path:
    """Extract a .zip/.tar.gz/.tgz into ``target`` after checking every member and the ``limits``;
    return the dataset root: ``target``, or its one top-level folder when the archive wraps
    everything in one."""
    import tarfile
    import zipfile
    import zlib

    archive, target = Path(archive), Path(target)
    label = label or str(archive)  # what messages call the archive: its path or its URL
    target.mkdir(parents=True, exist_ok=True)
    try:
        if archive.name.lower().endswith(".zip"):
            _extract_zip(archive, target, label, limits)
        else:
            _extract_tar(archive, target, label, limits)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, NotImplementedError) as exc:
        raise SourceError(f"{label}: not a readable archive ({exc}).") from exc
    except OSError as exc:
        if disk_full(exc):
            raise OutputWriteError(
                f"{label}: the disk filled up while extracting into {target} ({exc.strerror}); "
                "nothing was kept. Free space there, or point TMPDIR at a larger disk."
            ) from exc
        if exc.errno == errno.ENAMETOOLONG:
            raise SourceError(
                f"{label}: a member's name is too long for this file system ({exc.filename}); "
                "rename it in the archive. Nothing was kept."
            ) from exc
        raise SourceError(f"{label}: cannot be extracted into {target} ({exc}). Nothing was kept.") from exc
    entries = [p for p in target.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        return entries[0]
    return target


@dataclass(frozen=True)
class ResolvedSource:
    folder: Path  # a folder of class subfolders
    archive_sha256: str | None  # the verified archive's sha256; None for a folder source


@contextlib.contextmanager
def source_folder(source: str | Path, sha256: str = "", limits: Limits = Limits()) -> Iterator[ResolvedSource]:
    """Resolve ``source`` to a folder of class subfolders.

    A folder is used as is. A local archive is verified against ``sha256`` when one is given, a
    URL is downloaded and always verified; either is then extracted (within ``limits``: pass
    ``Limits(params.ingest.max_archive_bytes, params.ingest.max_compression_ratio)``) into a
    temporary folder that is removed on leaving the block.
    """
    text = str(source)
    if not is_archive(text):
        if is_url(text):
            raise SourceError(f"{text}: a URL source must name a {', '.join(ARCHIVE_SUFFIXES)} archive.")
        if sha256:
            raise ParamError(
                f"{text}: data.sha256 is set but data.source is not an archive; "
                "clear data.sha256 or point data.source at the archive."
            )
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
        yield ResolvedSource(extract_archive(archive, Path(workdir) / "extracted", label=text, limits=limits), actual)
