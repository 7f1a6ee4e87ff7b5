"""Archive sources for the tests of imgclust.core.archives and of ingest: a small dataset, zip and
tar.gz builders, hostile tar members, checksums, and a real HTTP server on 127.0.0.1 for URL sources.
(The ``http_server`` fixture in tests/conftest.py is built on :func:`serve_folder`.)"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import io
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image


def make_dataset(root: Path) -> Path:
    """Two classes of small PNGs (with a mask), the layout an archive must unpack to."""
    rng = np.random.default_rng(0)
    for cls in ("benign", "malignant"):
        for i in range(3):
            path = root / cls / f"{cls} ({i}).png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (12, 16), dtype=np.uint8)).save(path)
        Image.new("1", (16, 12)).save(root / cls / f"{cls} (0)_mask.png")
    return root


def zip_folder(
    folder: Path, archive: Path, prefix: str = "", *, compression: int = zipfile.ZIP_STORED, dirs: bool = True
) -> Path:
    """``folder`` as a zip, its members named ``prefix`` + their path inside ``folder``; with
    ``dirs=False`` only its files are members (the first member is then a file)."""
    with zipfile.ZipFile(archive, "w", compression) as zf:
        for path in sorted(p for p in folder.rglob("*") if dirs or p.is_file()):
            zf.write(path, prefix + path.relative_to(folder).as_posix())
    return archive


def tgz_folder(folder: Path, archive: Path, prefix: str = "") -> Path:
    """``folder`` as a .tar.gz, its members named ``prefix`` + their path inside ``folder``."""
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            tar.add(path, prefix + path.relative_to(folder).as_posix(), recursive=False)
    return archive


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def append_tar_member(archive: Path, info: tarfile.TarInfo, data: bytes = b"") -> None:
    """Rewrite a .tgz with one more member (gzip streams cannot be appended to in place)."""
    buffer = io.BytesIO()
    with tarfile.open(archive, "r:gz") as old, tarfile.open(fileobj=buffer, mode="w:gz") as new:
        for member in old.getmembers():
            new.addfile(member, old.extractfile(member) if member.isfile() else None)
        info.size = len(data) if info.isfile() else 0
        new.addfile(info, io.BytesIO(data) if info.isfile() else None)
    archive.write_bytes(buffer.getvalue())


def tar_member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002  (the base class's signature)
        pass


@contextlib.contextmanager
def serve_folder(folder: Path) -> Iterator[str]:
    """A real HTTP server on a free port of 127.0.0.1 serving ``folder``; yields its base URL and is
    shut down afterwards."""
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
