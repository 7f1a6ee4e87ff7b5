"""strip_masks: the pack data/raw without the segmentation masks, items passed on byte for byte
(imgclust.stages.strip_masks)."""

from __future__ import annotations

import fnmatch
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclust.core.packs import Pack
from imgclust.errors import EmptyClassError, ImgclustError, ParamError
from imgclust.stages.strip_masks import is_mask, strip_masks
from support.cli import run_cli
from support.packs import pack_folder, pack_of, unpacked
from support.project import write_params

DEFAULT = ["*_mask*.png"]


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _items(pack: Path) -> set[str]:
    """The item paths of a pack, read from its shards as files."""
    return _files(unpacked(pack))


def _png(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 8), value, np.uint8)).save(path)


def _raw(root: Path, pack: bool = True) -> Path:
    """Two classes named as in BUSI, with first, second and third masks: the pack ingest writes
    (``pack`` False: still a folder of files, to add more before packing)."""
    for cls in ("benign", "malignant"):
        for i in (1, 2, 3):
            _png(root / cls / f"{cls} ({i}).png", 10 * i)
            _png(root / cls / f"{cls} ({i})_mask.png", 255)
        _png(root / cls / f"{cls} (2)_mask_1.png", 255)
    _png(root / "benign" / "benign (3)_mask_2.png", 255)
    _png(root / "benign" / "benign (3)_mask_1.png", 255)
    return pack_folder(root) if pack else root


def test_masks_including_numbered_ones_are_stripped(tmp_path):
    raw = _raw(tmp_path / "raw")
    before = _tree_hashes(raw)
    out = tmp_path / "stripped"
    result = strip_masks(raw, out, DEFAULT)

    files = unpacked(out)
    assert _files(files) == {f"{cls}/{cls} ({i}).png" for cls in ("benign", "malignant") for i in (1, 2, 3)}
    assert not [p for p in files.rglob("*") if fnmatch.fnmatch(p.name, "*_mask*.png")]
    assert result["images_per_class"] == {"benign": 3, "malignant": 3}
    assert result["masks_per_class"] == {"benign": 6, "malignant": 4}
    assert (result["n_images"], result["n_masks"]) == (6, 10)
    raw_pack = Pack(raw)
    for rel in _files(files):
        assert (files / rel).read_bytes() == raw_pack.read(rel)
    assert _tree_hashes(raw) == before, "the raw pack is only read"


def test_kept_images_are_byte_identical_to_the_raw_items(tmp_path):
    """Images are passed on, never re-encoded: each kept item has its raw item's bytes and sha256
    (the index's and the one computed from the shard's bytes)."""
    raw = _raw(tmp_path / "raw")
    strip_masks(raw, tmp_path / "out", DEFAULT)
    raw_pack, out_pack = Pack(raw), Pack(tmp_path / "out")
    kept = out_pack.paths()
    assert len(kept) == 6
    for path in kept:
        assert out_pack.sha256(path) == raw_pack.sha256(path)
        assert hashlib.sha256(out_pack.read(path)).hexdigest() == hashlib.sha256(raw_pack.read(path)).hexdigest()


def test_synthetic_dataset_keeps_every_image_and_drops_every_mask(tmp_path, synthetic_dataset):
    source = _tree_hashes(synthetic_dataset)
    raw = pack_of(synthetic_dataset, tmp_path / "raw")
    before = _tree_hashes(raw)
    out = tmp_path / "stripped"
    result = strip_masks(raw, out, DEFAULT)
    images = {rel for rel in source if "_mask" not in rel}
    assert _items(out) == images
    assert result["n_images"] == 36 and result["n_masks"] == len(source) - 36
    assert _tree_hashes(raw) == before


def test_busi_sample_counts(tmp_path, busi_sample):
    raw = pack_of(busi_sample, tmp_path / "raw")
    before = _tree_hashes(raw)
    out = tmp_path / "stripped"
    result = strip_masks(raw, out, DEFAULT)
    assert (result["n_images"], result["n_masks"]) == (63, 68)
    assert result["images_per_class"] == {"benign": 22, "malignant": 21, "normal": 20}
    assert result["masks_per_class"] == {"benign": 26, "malignant": 22, "normal": 20}
    files = unpacked(out)
    assert len(_files(files)) == 63
    assert not [p for p in files.rglob("*") if "_mask" in p.name]
    assert _tree_hashes(raw) == before


def test_class_of_only_masks_is_an_empty_class_error(tmp_path):
    raw = _raw(tmp_path / "raw", pack=False)
    _png(raw / "normal" / "normal (1)_mask.png", 255)
    _png(raw / "normal" / "normal (2)_mask_1.png", 255)
    pack_folder(raw)
    with pytest.raises(EmptyClassError) as info:
        strip_masks(raw, tmp_path / "stripped", DEFAULT)
    assert str(raw / "normal") in str(info.value)
    assert "strip_masks.patterns" in str(info.value)
    assert not (tmp_path / "stripped").exists(), "a failed stage leaves no partial output"


def test_custom_patterns_are_case_insensitive_and_only_those_are_stripped(tmp_path):
    raw = tmp_path / "raw"
    _png(raw / "a" / "scan1.png")
    _png(raw / "a" / "scan1_seg.png")
    _png(raw / "a" / "SCAN2_SEG.PNG")
    _png(raw / "a" / "scan1_mask.png")
    _png(raw / "a" / "scan1_mask_1.png")
    _png(raw / "a" / "outline-scan1.png")
    pack_folder(raw)
    result = strip_masks(raw, tmp_path / "out", ["*_seg.png", "*_mask.png", "outline-*"])
    assert _items(tmp_path / "out") == {"a/scan1.png", "a/scan1_mask_1.png"}
    assert result["masks_per_class"] == {"a": 4}
    assert is_mask("X_MASK_2.PNG", DEFAULT) and not is_mask("x_mask.jpg", DEFAULT)


def test_empty_pattern_list_is_a_param_error(tmp_path):
    raw = _raw(tmp_path / "raw")
    with pytest.raises(ParamError, match="strip_masks.patterns"):
        strip_masks(raw, tmp_path / "out", [])
    assert not (tmp_path / "out").exists()


def test_missing_raw_folder_is_an_imgclust_error_naming_it(tmp_path):
    missing = tmp_path / "data" / "raw"
    with pytest.raises(ImgclustError) as info:
        strip_masks(missing, tmp_path / "out", DEFAULT)
    assert str(missing) in str(info.value)


# --------------------------------------------------------------------------------------------- CLI


def test_cli_round_trip_with_repeated_patterns(tmp_path):
    raw = _raw(tmp_path / "raw", pack=False)
    _png(raw / "malignant" / "malignant (1)_seg.png", 255)
    pack_folder(raw)
    out, report = tmp_path / "stripped", tmp_path / "reports" / "strip.json"
    write_params(tmp_path, strip_masks__patterns=["*_mask*.png", "*_seg.png"])
    proc = run_cli("strip-masks", "--raw", str(raw), "--out", str(out), "--report", str(report), cwd=tmp_path)
    assert "kept 6 images" in proc.stdout and "removed 11 masks" in proc.stdout
    files = unpacked(out)
    assert len(_files(files)) == 6 and not [p for p in files.rglob("*") if "_mask" in p.name or "_seg" in p.name]
    data = json.loads(report.read_text())
    assert data["masks_per_class"] == {"benign": 6, "malignant": 5}


def test_cli_class_of_only_masks_exits_2(tmp_path):
    raw = _raw(tmp_path / "raw", pack=False)
    _png(raw / "normal" / "normal (1)_mask.png", 255)
    pack_folder(raw)
    write_params(tmp_path)
    proc = run_cli(
        "strip-masks",
        "--raw",
        str(raw),
        "--out",
        str(tmp_path / "out"),
        "--report",
        str(tmp_path / "r.json"),
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 2
    assert str(raw / "normal") in proc.stderr and "Traceback" not in proc.stderr


def test_cli_missing_raw_folder_exits_2_naming_it(tmp_path):
    missing = tmp_path / "data" / "raw"
    write_params(tmp_path)
    proc = run_cli(
        "strip-masks",
        "--raw",
        str(missing),
        "--out",
        str(tmp_path / "out"),
        "--report",
        str(tmp_path / "r.json"),
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr[-400:]
    assert str(missing) in proc.stderr and "Traceback" not in proc.stderr
