"""Archives as sources (imgclust.core.archives): checksum before extraction, safe extraction, downloads."""

from __future__ import annotations

import csv
import functools
import hashlib
import http.server
import io
import json
import stat
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclust.core.archives import ChecksumError, UnsafeArchiveError, extract_archive, source_folder
from imgclust.errors import ParamError, SourceError
from imgclust.stages.ingest import ingest
from support.cli import run_cli
from support.paths import BUSI_SAMPLE
from support.project import tree_hashes, write_params


def _dataset(root: Path) -> Path:
    """Two classes of small PNGs (with a mask), the layout an archive must unpack to."""
    rng = np.random.default_rng(0)
    for cls in ("benign", "malignant"):
        for i in range(3):
            path = root / cls / f"{cls} ({i}).png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (12, 16), dtype=np.uint8)).save(path)
        Image.new("1", (16, 12)).save(root / cls / f"{cls} (0)_mask.png")
    return root


def _zip(folder: Path, archive: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            zf.write(path, prefix + path.relative_to(folder).as_posix())
    return archive


def _tgz(folder: Path, archive: Path, prefix: str = "") -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            tar.add(path, prefix + path.relative_to(folder).as_posix(), recursive=False)
    return archive


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _raw_listing(raw: Path) -> dict[str, str]:
    return {p.relative_to(raw).as_posix(): _sha256(p) for p in raw.rglob("*") if p.is_file()}


@pytest.fixture
def dataset(tmp_path) -> Path:
    return _dataset(tmp_path / "dataset")


@pytest.fixture
def no_temp_leftovers(tmp_path, monkeypatch):
    """Point tempfile at a private folder; after the test it must be empty again."""
    import tempfile

    private = tmp_path / "tmpdir"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    yield private
    assert not list(private.iterdir()), "a temporary extraction folder was left behind"


# ------------------------------------------------------------------------------------ local archives


@pytest.mark.parametrize("kind", ["zip", "tar.gz", "tgz"])
def test_a_local_archive_ingests_like_its_folder(tmp_path, dataset, kind, no_temp_leftovers):
    archive = (_zip if kind == "zip" else _tgz)(dataset, tmp_path / f"dataset.{kind}")
    ingest(dataset, tmp_path / "raw_folder", tmp_path / "folder.csv", workers=1)
    report = ingest(archive, tmp_path / "raw", tmp_path / "raw.csv", workers=1, sha256=_sha256(archive)).to_dict()
    assert _raw_listing(tmp_path / "raw") == _raw_listing(tmp_path / "raw_folder")
    assert report["source"] == {"source": str(archive), "archive_sha256": _sha256(archive)}
    assert report["files_per_class"] == {"benign": 4, "malignant": 4}


def test_a_single_top_folder_and_macos_junk_are_unwrapped(tmp_path, dataset):
    archive = _zip(dataset, tmp_path / "Dataset_BUSI_with_GT.zip", prefix="Dataset_BUSI_with_GT/")
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("__MACOSX/Dataset_BUSI_with_GT/benign/._benign (0).png", b"\x00\x05\x16\x07")
    ingest(archive, tmp_path / "raw", tmp_path / "raw.csv", workers=1)  # no sha256: optional locally
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["benign", "malignant"]


def test_a_wrong_sha256_is_refused_before_anything_is_extracted(tmp_path, dataset, no_temp_leftovers):
    # the archive also holds a traversal member: the checksum error proves it was never opened
    archive = _tgz(dataset, tmp_path / "dataset.tgz")
    _append_tar_member(archive, tarfile.TarInfo("../escaped.png"), b"x")
    with pytest.raises(ChecksumError) as info:
        ingest(archive, tmp_path / "raw", tmp_path / "raw.csv", workers=1, sha256="0" * 64)
    assert str(archive) in str(info.value) and _sha256(archive) in str(info.value)
    assert not (tmp_path / "raw").exists() and not (tmp_path / "escaped.png").exists()


def test_a_sha256_for_a_folder_source_is_refused(dataset, tmp_path):
    with pytest.raises(ParamError, match="not an archive"):
        ingest(dataset, tmp_path / "raw", tmp_path / "raw.csv", workers=1, sha256="ab" * 32)


def test_a_corrupt_archive_is_a_source_error_naming_it(tmp_path):
    archive = tmp_path / "broken.tar.gz"
    archive.write_bytes(b"\x1f\x8b\x08\x00 definitely not gzip")
    with pytest.raises(SourceError, match="broken.tar.gz: not a readable archive"):
        ingest(archive, tmp_path / "raw", tmp_path / "raw.csv", workers=1)


@pytest.mark.skipif(not BUSI_SAMPLE.is_dir(), reason="../shared/datasets/busi-sample not present")
def test_busi_sample_as_a_zip_matches_the_folder(tmp_path):
    archive = _zip(BUSI_SAMPLE, tmp_path / "busi.zip", prefix="Dataset_BUSI_with_GT/")
    ingest(archive, tmp_path / "raw", tmp_path / "raw.csv", sha256=_sha256(archive))
    assert _raw_listing(tmp_path / "raw") == tree_hashes(BUSI_SAMPLE)


# ---------------------------------------------------------------------------------- hostile archives


def _append_tar_member(archive: Path, info: tarfile.TarInfo, data: bytes = b"") -> None:
    """Rewrite a .tgz with one more member (gzip streams cannot be appended to in place)."""
    buffer = io.BytesIO()
    with tarfile.open(archive, "r:gz") as old, tarfile.open(fileobj=buffer, mode="w:gz") as new:
        for member in old.getmembers():
            new.addfile(member, old.extractfile(member) if member.isfile() else None)
        info.size = len(data) if info.isfile() else 0
        new.addfile(info, io.BytesIO(data) if info.isfile() else None)
    archive.write_bytes(buffer.getvalue())


def _tar_member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


@pytest.mark.parametrize("member, reason", [
    (_tar_member("../evil.png"), "'..' leads outside"),
    (_tar_member("benign/../../evil.png"), "'..' leads outside"),
    (_tar_member("/tmp/imgclust-abs-evil.png"), "absolute path"),
    (_tar_member("benign/link.png", tarfile.SYMTYPE, "/etc/passwd"), "symlink to '/etc/passwd'"),
    (_tar_member("benign/up", tarfile.SYMTYPE, "../.."), "symlink to '../..'"),
    (_tar_member("benign/hard.png", tarfile.LNKTYPE, "../outside.png"), "hard link to '../outside.png'"),
    (_tar_member("benign/tty", tarfile.CHRTYPE), "not a regular file"),
])
def test_tar_members_leaving_the_target_are_refused_naming_them(tmp_path, dataset, member, reason,
                                                                no_temp_leftovers):
    archive = _tgz(dataset, tmp_path / "dataset.tgz")
    _append_tar_member(archive, member, b"evil")
    with pytest.raises(UnsafeArchiveError) as info:
        ingest(archive, tmp_path / "raw", tmp_path / "raw.csv", workers=1)
    assert repr(member.name) in str(info.value) and reason in str(info.value)
    assert not (tmp_path / "evil.png").exists() and not Path("/tmp/imgclust-abs-evil.png").exists()
    assert not (tmp_path / "raw").exists()


def test_the_tar_data_filter_backs_up_the_member_checks(tmp_path):
    """``b -> a/../..`` looks like it stays inside (``cls/a/../..`` is the target itself), but ``a``
    is a link to ``.``, so on disk it leads one level above the target: the 'data' filter refuses it."""
    archive = tmp_path / "chain.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.addfile(_tar_member("cls", tarfile.DIRTYPE))
        tar.addfile(_tar_member("cls/a", tarfile.SYMTYPE, "."))
        tar.addfile(_tar_member("cls/b", tarfile.SYMTYPE, "a/../.."))
    with pytest.raises(UnsafeArchiveError) as info:
        extract_archive(archive, tmp_path / "target")
    assert "'cls/b'" in str(info.value)


def _zip_with(dataset: Path, archive: Path, name: str, data: bytes = b"evil", symlink: bool = False) -> Path:
    _zip(dataset, archive)
    with zipfile.ZipFile(archive, "a") as zf:
        info = zipfile.ZipInfo(name)
        if symlink:
            info.create_system = 3  # unix: the mode below is read from external_attr
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, data)
    return archive


@pytest.mark.parametrize("name, data, symlink, reason", [
    ("../evil.png", b"evil", False, "'..' leads outside"),
    ("benign/../../evil.png", b"evil", False, "'..' leads outside"),
    ("/tmp/imgclust-abs-evil.png", b"evil", False, "absolute path"),
    ("C:/evil.png", b"evil", False, "absolute path"),
    ("benign/link.png", b"../../../etc/passwd", True, "symlink to '../../../etc/passwd'"),
    ("benign/abs-link.png", b"/etc/passwd", True, "symlink to '/etc/passwd'"),
])
def test_zip_slip_members_are_refused_naming_them(tmp_path, dataset, name, data, symlink, reason):
    archive = _zip_with(dataset, tmp_path / "dataset.zip", name, data, symlink)
    with pytest.raises(UnsafeArchiveError) as info:
        ingest(archive, tmp_path / "raw", tmp_path / "raw.csv", workers=1)
    assert repr(name) in str(info.value) and reason in str(info.value)
    assert not (tmp_path / "evil.png").exists() and not Path("/tmp/imgclust-abs-evil.png").exists()
    assert not (tmp_path / "raw").exists()


def test_a_zip_symlink_inside_the_target_is_not_extracted(tmp_path, dataset):
    archive = _zip_with(dataset, tmp_path / "dataset.zip", "benign/alias.png", b"benign (1).png", symlink=True)
    with source_folder(archive) as resolved:
        assert not (resolved.folder / "benign" / "alias.png").exists()
        assert (resolved.folder / "benign" / "benign (1).png").is_file()


# ----------------------------------------------------------------------------------------- download


@pytest.fixture
def http_server(tmp_path):
    """A real HTTP server on 127.0.0.1 serving ``tmp_path / 'served'``; yields its base URL."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002  (the base class's signature)
        pass


def test_a_url_is_downloaded_verified_and_ingested(tmp_path, dataset, http_server, no_temp_leftovers):
    served, base = http_server
    archive = _zip(dataset, served / "busi dataset.zip")
    url = f"{base}/busi%20dataset.zip"
    report = ingest(url, tmp_path / "raw", tmp_path / "raw.csv", workers=1, sha256=_sha256(archive).upper()).to_dict()
    ingest(dataset, tmp_path / "raw_folder", tmp_path / "folder.csv", workers=1)
    assert _raw_listing(tmp_path / "raw") == _raw_listing(tmp_path / "raw_folder")
    assert report["source"] == {"source": url, "archive_sha256": _sha256(archive)}


def test_a_download_with_a_wrong_sha256_is_refused(tmp_path, dataset, http_server, no_temp_leftovers):
    served, base = http_server
    archive = _zip(dataset, served / "dataset.zip")
    with pytest.raises(ChecksumError) as info:
        ingest(f"{base}/dataset.zip", tmp_path / "raw", tmp_path / "raw.csv", workers=1, sha256="1" * 64)
    assert f"{base}/dataset.zip" in str(info.value) and _sha256(archive) in str(info.value)
    assert not (tmp_path / "raw").exists()


def test_a_url_without_sha256_or_a_missing_file_is_refused(tmp_path, dataset, http_server):
    served, base = http_server
    _zip(dataset, served / "dataset.zip")
    with pytest.raises(ParamError, match="needs data.sha256"):
        ingest(f"{base}/dataset.zip", tmp_path / "raw", tmp_path / "raw.csv", workers=1)
    with pytest.raises(SourceError, match="404"):
        ingest(f"{base}/missing.zip", tmp_path / "raw", tmp_path / "raw.csv", workers=1, sha256="1" * 64)
    with pytest.raises(SourceError, match="must name a .zip"):
        ingest(f"{base}/", tmp_path / "raw", tmp_path / "raw.csv", workers=1, sha256="1" * 64)


def test_cli_ingest_from_a_url(tmp_path, dataset, http_server):
    served, base = http_server
    archive = _tgz(dataset, served / "dataset.tar.gz")
    args = ["ingest", "--out", str(tmp_path / "raw"), "--manifest", str(tmp_path / "raw.csv"),
            "--report", str(tmp_path / "ingest.json")]
    write_params(tmp_path, data__source=f"{base}/dataset.tar.gz", data__sha256="f" * 64)
    refused = run_cli(*args, cwd=tmp_path, check=False)
    assert refused.returncode == 2 and "sha256" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "raw").exists()
    write_params(tmp_path, data__source=f"{base}/dataset.tar.gz", data__sha256=_sha256(archive))
    run_cli(*args, cwd=tmp_path)
    with open(tmp_path / "raw.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 8
    assert json.loads((tmp_path / "ingest.json").read_text())["source"]["archive_sha256"] == _sha256(archive)
