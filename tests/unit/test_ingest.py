"""Ingest: snapshot a folder of class subfolders into the pack data/raw with a manifest (imgclust.stages.ingest)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclust.core.packs import Pack
from imgclust.errors import CorruptImageError, EmptyClassError, SourceError
from imgclust.stages.ingest import MANIFEST_FIELDS, ingest, scan_source
from support.cli import run_cli
from support.packs import unpacked
from support.project import write_params

JUNK = {".DS_Store": b"\x00\x00\x00\x01Bud1", "notes.txt": b"scanner notes\n", "labels.csv": b"a,b\n1,2\n"}


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def _read_manifest(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == MANIFEST_FIELDS
        return list(reader)


def _make_source(root: Path, counts: dict[str, int] | None = None, junk: bool = True) -> Path:
    """Class folders of PNG/JPEG images of assorted sizes and modes, plus non-image files."""
    counts = counts or {"benign": 4, "malignant": 3, "normal": 2}
    rng = np.random.default_rng(0)
    for c, (cls, n) in enumerate(sorted(counts.items())):
        folder = root / cls
        folder.mkdir(parents=True)
        for i in range(n):
            h, w = 20 + 3 * i, 30 + 2 * c
            if i % 3 == 0:
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{cls} ({i}).jpg")
            elif i % 3 == 1:
                Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(folder / f"{cls} ({i}).png")
            else:
                Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA").save(
                    folder / f"{cls} ({i}).png"
                )
        if junk:
            for name, data in JUNK.items():
                (folder / name).write_bytes(data)
    return root


def _assert_manifest_agrees(source: Path, raw: Path, rows: list[dict]) -> None:
    listed = {row["path"] for row in rows}
    assert len(listed) == len(rows), "a file is listed twice"
    files = unpacked(raw)
    present = {p.relative_to(files).as_posix() for p in files.rglob("*") if p.is_file()}
    assert listed == present
    for row in rows:
        copy = files / row["path"]
        assert copy.read_bytes() == (source / row["path"]).read_bytes()
        assert row["sha256"] == hashlib.sha256(copy.read_bytes()).hexdigest()
        assert row["class"] == Path(row["path"]).parts[0]
        with Image.open(copy) as image:
            assert (int(row["width"]), int(row["height"]), row["mode"]) == (image.width, image.height, image.mode)


# ------------------------------------------------------------------------------------ pure function


def test_ingest_copies_images_byte_identical_with_a_true_manifest(tmp_path):
    source = _make_source(tmp_path / "src")
    raw, manifest = tmp_path / "raw", tmp_path / "m" / "raw.csv"
    report = ingest(source, raw, manifest, workers=1)

    rows = _read_manifest(manifest)
    assert len(rows) == 9
    _assert_manifest_agrees(source, raw, rows)
    assert {row["mode"] for row in rows} == {"RGB", "L", "RGBA"}
    summary = report.to_dict()
    assert summary["files_per_class"] == {"benign": 4, "malignant": 3, "normal": 2}
    assert summary["n_files"] == 9 and summary["n_corrupt_skipped"] == 0


def test_non_image_files_are_ignored_and_counted(tmp_path):
    source = _make_source(tmp_path / "src")
    report = ingest(source, tmp_path / "raw", tmp_path / "raw.csv", workers=1).to_dict()
    expected = sorted(f"{cls}/{name}" for cls in ("benign", "malignant", "normal") for name in JUNK)
    assert sorted(report["ignored"]) == expected
    assert report["n_ignored"] == 9
    copied = {p.name for p in unpacked(tmp_path / "raw").rglob("*") if p.is_file()}
    assert copied and not copied & set(JUNK)


def test_hidden_images_loose_files_and_hidden_folders_stay_out_of_the_pack(tmp_path):
    """What list_images once skipped in a folder of files (a hidden image, an image beside the class
    folders, a hidden folder) is ingest's to leave out: later stages see only the pack's items."""
    source = _make_source(tmp_path / "src", junk=False)
    Image.new("L", (8, 8)).save(source / "benign" / ".hidden.png")
    Image.new("L", (8, 8)).save(source / "loose.png")
    (source / ".cache").mkdir()
    Image.new("L", (8, 8)).save(source / ".cache" / "x.png")
    report = ingest(source, tmp_path / "raw", tmp_path / "raw.csv", workers=1).to_dict()
    assert report["ignored_reasons"] == {"benign/.hidden.png": "hidden file", "loose.png": "not in a class folder"}
    assert report["files_per_class"] == {"benign": 4, "malignant": 3, "normal": 2}
    packed = Pack(tmp_path / "raw").paths()
    assert len(packed) == 9 and not [path for path in packed if "hidden" in path or "loose" in path or "x.png" in path]


def test_source_is_unchanged_by_ingest(tmp_path):
    source = _make_source(tmp_path / "src")
    (source / "normal" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    before = _tree_hashes(source)
    mtimes = {p: p.stat().st_mtime_ns for p in source.rglob("*")}
    ingest(source, tmp_path / "raw", tmp_path / "raw.csv", skip_corrupt=True, workers=1)
    assert _tree_hashes(source) == before
    assert {p: p.stat().st_mtime_ns for p in source.rglob("*")} == mtimes


def test_reingest_replaces_the_previous_snapshot(tmp_path):
    source = _make_source(tmp_path / "src")
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "stale.png").write_bytes(b"old")
    ingest(source, raw, tmp_path / "raw.csv", workers=1)
    assert not (raw / "stale.png").exists()
    assert "stale.png" not in Pack(raw).paths()
    _assert_manifest_agrees(source, raw, _read_manifest(tmp_path / "raw.csv"))


def _bad_source(kind: str, tmp_path: Path) -> tuple[Path, type, Path]:
    if kind == "missing":
        return tmp_path / "no_such_folder", SourceError, tmp_path / "no_such_folder"
    if kind == "file":
        path = tmp_path / "dataset.zip"
        path.write_bytes(b"PK\x03\x04")
        return path, SourceError, path
    if kind == "no_classes":
        source = tmp_path / "flat"
        source.mkdir()
        Image.new("L", (8, 8)).save(source / "loose.png")
        return source, SourceError, source
    source = _make_source(tmp_path / "src", {"benign": 2, "malignant": 2}, junk=False)
    (source / "normal").mkdir()
    (source / "normal" / "readme.txt").write_text("no images here")
    return source, EmptyClassError, source / "normal"


@pytest.mark.parametrize("kind", ["missing", "file", "no_classes", "empty_class"])
def test_bad_source_raises_a_specific_error_naming_the_path(tmp_path, kind):
    source, error, named = _bad_source(kind, tmp_path)
    with pytest.raises(error) as info:
        ingest(source, tmp_path / "raw", tmp_path / "raw.csv", workers=1)
    assert str(named) in str(info.value)
    assert not (tmp_path / "raw").exists() and not (tmp_path / "raw.csv").exists()


def _truncate_one(source: Path) -> Path:
    victim = source / "malignant" / "malignant (1).png"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    return victim


def test_truncated_image_fails_the_stage_listing_its_path(tmp_path):
    source = _make_source(tmp_path / "src")
    victim = _truncate_one(source)
    with pytest.raises(CorruptImageError) as info:
        ingest(source, tmp_path / "raw", tmp_path / "raw.csv", workers=1)
    assert str(victim) in str(info.value)
    assert info.value.paths == [str(victim)]
    assert "skip_corrupt" in str(info.value)
    assert not (tmp_path / "raw").exists() and not (tmp_path / "raw.csv").exists()


def test_skip_corrupt_skips_and_reports_the_truncated_image(tmp_path):
    source = _make_source(tmp_path / "src")
    victim = _truncate_one(source)
    raw, manifest = tmp_path / "raw", tmp_path / "raw.csv"
    report = ingest(source, raw, manifest, skip_corrupt=True, workers=1).to_dict()
    rel = victim.relative_to(source).as_posix()
    assert report["n_corrupt_skipped"] == 1
    assert report["corrupt_skipped"][0]["path"] == rel
    assert "truncated" in report["corrupt_skipped"][0]["error"]
    assert report["files_per_class"]["malignant"] == 2
    rows = _read_manifest(manifest)
    assert rel not in {row["path"] for row in rows}
    _assert_manifest_agrees(source, raw, rows)


# ---------------------------------------------------------------------------------------- symlinks


def _outside(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.fromarray(np.full((9, 9), 77, np.uint8)).save(outside / "secret.png")
    return outside


def test_symlinked_file_pointing_outside_is_ignored_not_copied(tmp_path):
    source = _make_source(tmp_path / "src", junk=False)
    outside = _outside(tmp_path)
    os.symlink(outside / "secret.png", source / "benign" / "linked.png")
    raw = tmp_path / "raw"
    report = ingest(source, raw, tmp_path / "raw.csv", workers=1).to_dict()
    assert "benign/linked.png" in report["ignored"]
    assert not (unpacked(raw) / "benign" / "linked.png").exists()
    assert "benign/linked.png" not in {row["path"] for row in _read_manifest(tmp_path / "raw.csv")}


def test_symlinked_folder_inside_a_class_is_not_followed_and_is_listed(tmp_path):
    source = _make_source(tmp_path / "src", junk=False)
    outside = _outside(tmp_path)
    os.symlink(outside, source / "benign" / "more", target_is_directory=True)
    raw = tmp_path / "raw"
    report = ingest(source, raw, tmp_path / "raw.csv", workers=1).to_dict()
    assert not (unpacked(raw) / "benign" / "more").exists()
    assert report["files_per_class"]["benign"] == 4
    assert "benign/more" in report["ignored"], "a skipped symlink must be reported as ignored"


def test_symlinked_class_folder_pointing_outside_is_not_followed(tmp_path):
    source = _make_source(tmp_path / "src", junk=False)
    outside = _outside(tmp_path)
    os.symlink(outside, source / "elsewhere", target_is_directory=True)
    files, ignored = scan_source(source)
    assert "elsewhere" not in files, "nothing outside the source may be read through a symlink"
    assert "elsewhere" in ignored


# --------------------------------------------------------------------------------------- BUSI sample


def test_busi_sample_ingest_matches_the_folder(tmp_path, busi_sample):
    before = _tree_hashes(busi_sample)
    raw, manifest = tmp_path / "raw", tmp_path / "raw.csv"
    report = ingest(busi_sample, raw, manifest).to_dict()
    rows = _read_manifest(manifest)
    assert report["n_files"] == len(rows) == 131
    masks = [row for row in rows if "_mask" in row["path"]]
    assert len(masks) == 68 and len(rows) - len(masks) == 63
    assert report["files_per_class"] == {"benign": 48, "malignant": 43, "normal": 40}
    assert {row["path"] for row in rows} == set(before)
    _assert_manifest_agrees(busi_sample, raw, rows)
    assert _tree_hashes(busi_sample) == before


# --------------------------------------------------------------------------------------------- CLI


def test_cli_ingest_round_trip(tmp_path):
    source = _make_source(tmp_path / "src")
    raw, manifest, report = tmp_path / "data" / "raw", tmp_path / "raw.csv", tmp_path / "reports" / "ingest.json"
    write_params(tmp_path, data__source=str(source), ingest__skip_corrupt=False)
    proc = run_cli("ingest", "--out", str(raw), "--manifest", str(manifest), "--report", str(report), cwd=tmp_path)
    assert "9 files" in proc.stdout and "9 non-image" in proc.stdout
    _assert_manifest_agrees(source, raw, _read_manifest(manifest))
    data = json.loads(report.read_text())
    assert data["files_per_class"] == {"benign": 4, "malignant": 3, "normal": 2}
    assert data["n_ignored"] == 9


@pytest.mark.parametrize("kind", ["missing", "empty_class"])
def test_cli_bad_source_exits_2_naming_the_path(tmp_path, kind):
    source, _, named = _bad_source(kind, tmp_path)
    write_params(tmp_path, data__source=str(source))
    proc = run_cli(
        "ingest",
        "--out",
        str(tmp_path / "raw"),
        "--manifest",
        str(tmp_path / "raw.csv"),
        "--report",
        str(tmp_path / "r.json"),
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert str(named) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "raw").exists()


def test_cli_truncated_image_fails_then_skip_corrupt_true_skips_it(tmp_path):
    source = _make_source(tmp_path / "src")
    victim = _truncate_one(source)
    args = [
        "ingest",
        "--out",
        str(tmp_path / "raw"),
        "--manifest",
        str(tmp_path / "raw.csv"),
        "--report",
        str(tmp_path / "r.json"),
    ]
    write_params(tmp_path, data__source=str(source), ingest__skip_corrupt=False)
    failed = run_cli(*args, cwd=tmp_path, check=False)
    assert failed.returncode == 2
    assert str(victim) in failed.stderr and "skip_corrupt" in failed.stderr
    assert not (tmp_path / "raw").exists()

    write_params(tmp_path, data__source=str(source), ingest__skip_corrupt=True)
    run_cli(*args, cwd=tmp_path)
    data = json.loads((tmp_path / "r.json").read_text())
    assert [row["path"] for row in data["corrupt_skipped"]] == [victim.relative_to(source).as_posix()]
    assert not (unpacked(tmp_path / "raw") / "malignant" / victim.name).exists()
