"""Archives as sources (imgclust.core.archives): checksum before extraction, safe extraction, downloads."""

from __future__ import annotations

import csv
import json
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from imgclust.core.archives import ChecksumError, UnsafeArchiveError, extract_archive, source_folder
from imgclust.errors import ParamError, SourceError
from imgclust.stages.ingest import ingest
from support.archives import append_tar_member, make_dataset, sha256_of, tar_member, tgz_folder, zip_folder
from support.cli import run_cli
from support.packs import unpacked
from support.paths import BUSI_SAMPLE
from support.project import tree_hashes, write_params


def _raw_listing(raw: Path) -> dict[str, str]:
    """Path -> sha256 of every item of the pack ``raw``, exported as files."""
    files = unpacked(raw)
    return {p.relative_to(files).as_posix(): sha256_of(p) for p in files.rglob("*") if p.is_file()}


@pytest.fixture
def dataset(tmp_path) -> Path:
    return make_dataset(tmp_path / "dataset")


# ------------------------------------------------------------------------------------ local archives


@pytest.mark.parametrize("kind", ["zip", "tar.gz", "tgz"])
def test_a_local_archive_ingests_like_its_folder(tmp_path, dataset, kind, private_tmp):
    archive = (zip_folder if kind == "zip" else tgz_folder)(dataset, tmp_path / f"dataset.{kind}")
    ingest(dataset, tmp_path / "raw_folder", tmp_path / "folder.csv", workers=1)
    report = ingest(archive, tmp_path / "raw", tmp_path / "raw.csv", workers=1, sha256=sha256_of(archive)).to_dict()
    assert _raw_listing(tmp_path / "raw") == _raw_listing(tmp_path / "raw_folder")
    assert report["source"] == {"source": str(archive), "archive_sha256": sha256_of(archive)}
    assert report["files_per_class"] == {"benign": 4, "malignant": 4}


def test_a_single_top_folder_and_macos_junk_are_unwrapped(tmp_path, dataset):
    archive = zip_folder(dataset, tmp_path / "Dataset_BUSI_with_GT.zip", prefix="Dataset_BUSI_with_GT/")
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("__MACOSX/Dataset_BUSI_with_GT/benign/._benign (0).png", b"\x00\x05\x16\x07")
    ingest(archive, tmp_path / "raw", tmp_path / "raw.csv", workers=1)  # no sha256: optional locally
    assert sorted(p.name for p in unpacked(tmp_path / "raw").iterdir()) == ["benign", "malignant"]


def test_a_wrong_sha256_is_refused_before_anything_is_extracted(tmp_path, dataset, private_tmp):
    # the archive also holds a traversal member: the checksum error proves it was never opened
    archive = tgz_folder(dataset, tmp_path / "dataset.tgz")
    append_tar_member(archive, tarfile.TarInfo("../escaped.png"), b"x")
    with pytest.raises(ChecksumError) as info:
        ingest(archive, tmp_path / "raw", tmp_path / "raw.csv", workers=1, sha256="0" * 64)
    assert str(archive) in str(info.value) and sha256_of(archive) in str(info.value)
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
    archive = zip_folder(BUSI_SAMPLE, tmp_path / "busi.zip", prefix="Dataset_BUSI_with_GT/")
    ingest(archive, tmp_path / "raw", tmp_path / "raw.csv", sha256=sha256_of(archive))
    assert _raw_listing(tmp_path / "raw") == tree_hashes(BUSI_SAMPLE)


# ---------------------------------------------------------------------------------- hostile archives


@pytest.mark.parametrize(
    "member, reason",
    [
        (tar_member("../evil.png"), "'..' leads outside"),
        (tar_member("benign/../../evil.png"), "'..' leads outside"),
        (tar_member("/tmp/imgclust-abs-evil.png"), "absolute path"),
        (tar_member("benign/link.png", tarfile.SYMTYPE, "/etc/passwd"), "symlink to '/etc/passwd'"),
        (tar_member("benign/up", tarfile.SYMTYPE, "../.."), "symlink to '../..'"),
        (tar_member("benign/hard.png", tarfile.LNKTYPE, "../outside.png"), "hard link to '../outside.png'"),
        (tar_member("benign/tty", tarfile.CHRTYPE), "not a regular file"),
    ],
)
def test_tar_members_leaving_the_target_are_refused_naming_them(tmp_path, dataset, member, reason, private_tmp):
    archive = tgz_folder(dataset, tmp_path / "dataset.tgz")
    append_tar_member(archive, member, b"evil")
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
        tar.addfile(tar_member("cls", tarfile.DIRTYPE))
        tar.addfile(tar_member("cls/a", tarfile.SYMTYPE, "."))
        tar.addfile(tar_member("cls/b", tarfile.SYMTYPE, "a/../.."))
    with pytest.raises(UnsafeArchiveError) as info:
        extract_archive(archive, tmp_path / "target")
    assert "'cls/b'" in str(info.value)


def _zip_with(dataset: Path, archive: Path, name: str, data: bytes = b"evil", symlink: bool = False) -> Path:
    zip_folder(dataset, archive)
    with zipfile.ZipFile(archive, "a") as zf:
        info = zipfile.ZipInfo(name)
        if symlink:
            info.create_system = 3  # unix: the mode below is read from external_attr
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, data)
    return archive


@pytest.mark.parametrize(
    "name, data, symlink, reason",
    [
        ("../evil.png", b"evil", False, "'..' leads outside"),
        ("benign/../../evil.png", b"evil", False, "'..' leads outside"),
        ("/tmp/imgclust-abs-evil.png", b"evil", False, "absolute path"),
        ("C:/evil.png", b"evil", False, "absolute path"),
        ("benign/link.png", b"../../../etc/passwd", True, "symlink to '../../../etc/passwd'"),
        ("benign/abs-link.png", b"/etc/passwd", True, "symlink to '/etc/passwd'"),
    ],
)
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


def test_a_url_is_downloaded_verified_and_ingested(tmp_path, dataset, http_server, private_tmp):
    served, base = http_server
    archive = zip_folder(dataset, served / "busi dataset.zip")
    url = f"{base}/busi%20dataset.zip"
    report = ingest(url, tmp_path / "raw", tmp_path / "raw.csv", workers=1, sha256=sha256_of(archive).upper()).to_dict()
    ingest(dataset, tmp_path / "raw_folder", tmp_path / "folder.csv", workers=1)
    assert _raw_listing(tmp_path / "raw") == _raw_listing(tmp_path / "raw_folder")
    assert report["source"] == {"source": url, "archive_sha256": sha256_of(archive)}


def test_a_download_with_a_wrong_sha256_is_refused(tmp_path, dataset, http_server, private_tmp):
    served, base = http_server
    archive = zip_folder(dataset, served / "dataset.zip")
    with pytest.raises(ChecksumError) as info:
        ingest(f"{base}/dataset.zip", tmp_path / "raw", tmp_path / "raw.csv", workers=1, sha256="1" * 64)
    assert f"{base}/dataset.zip" in str(info.value) and sha256_of(archive) in str(info.value)
    assert not (tmp_path / "raw").exists()


def test_a_url_without_sha256_or_a_missing_file_is_refused(tmp_path, dataset, http_server):
    served, base = http_server
    zip_folder(dataset, served / "dataset.zip")
    with pytest.raises(ParamError, match="needs data.sha256"):
        ingest(f"{base}/dataset.zip", tmp_path / "raw", tmp_path / "raw.csv", workers=1)
    with pytest.raises(SourceError, match="404"):
        ingest(f"{base}/missing.zip", tmp_path / "raw", tmp_path / "raw.csv", workers=1, sha256="1" * 64)
    with pytest.raises(SourceError, match="must name a .zip"):
        ingest(f"{base}/", tmp_path / "raw", tmp_path / "raw.csv", workers=1, sha256="1" * 64)


def test_cli_ingest_from_a_url(tmp_path, dataset, http_server):
    served, base = http_server
    archive = tgz_folder(dataset, served / "dataset.tar.gz")
    args = [
        "ingest",
        "--out",
        str(tmp_path / "raw"),
        "--manifest",
        str(tmp_path / "raw.csv"),
        "--report",
        str(tmp_path / "ingest.json"),
    ]
    write_params(tmp_path, data__source=f"{base}/dataset.tar.gz", data__sha256="f" * 64)
    refused = run_cli(*args, cwd=tmp_path, check=False)
    assert refused.returncode == 2 and "sha256" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "raw").exists()
    write_params(tmp_path, data__source=f"{base}/dataset.tar.gz", data__sha256=sha256_of(archive))
    run_cli(*args, cwd=tmp_path)
    with open(tmp_path / "raw.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 8
    assert json.loads((tmp_path / "ingest.json").read_text())["source"]["archive_sha256"] == sha256_of(archive)
