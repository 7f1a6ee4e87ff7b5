"""split: stratified train/test listing of the resized originals (imgclust.core.protocols, stage imgclust.stages.split)."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclust.core.packs import write_pack
from imgclust.core.protocols import SPLIT_FIELDS, list_images, split_rows
from imgclust.errors import ImgclustError, InputDataError, ParamError
from support.cli import run_cli
from support.packs import pack_folder, unpacked
from support.project import write_params

COUNTS = {"benign": 40, "malignant": 20, "normal": 10}


def _items(counts: dict[str, int] = COUNTS) -> list[tuple[str, str]]:
    return [(f"{cls}/{cls} ({i}).png", cls) for cls, n in counts.items() for i in range(1, n + 1)]


def _folder(root: Path, counts: dict[str, int]) -> Path:
    """The pack resize writes, of ``counts`` images per class."""
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True)
        for i in range(1, n + 1):
            Image.fromarray(np.full((4, 4), i, np.uint8)).save(root / cls / f"{cls} ({i}).png")
    return pack_folder(root)


def test_list_images_lists_class_images_only(tmp_path):
    """The pack's items with their class, sorted; other files in the pack's folder are not items,
    and a pack cannot hold an image outside a class folder."""
    root = _folder(tmp_path / "resized", {"b": 2, "a": 3})
    (root / "notes.txt").write_text("x")
    (root / ".hidden.png").write_bytes(b"")
    (root / ".cache").mkdir()
    (root / ".cache" / "x.png").write_bytes(b"")
    loose = tmp_path / "loose"
    loose.mkdir()
    with pytest.raises(InputDataError, match="'loose.png' is not a relative path of the form class/name"):
        write_pack(loose, [("loose.png", b"")])
    assert list_images(root) == [
        ("a/a (1).png", "a"),
        ("a/a (2).png", "a"),
        ("a/a (3).png", "a"),
        ("b/b (1).png", "b"),
        ("b/b (2).png", "b"),
    ]


def test_split_is_stratified(tmp_path):
    rows = split_rows(_items(), 0.2, seed=0)
    assert [(r["path"], r["class"]) for r in rows] == _items(), "rows keep the input order"
    assert {r["split"] for r in rows} == {"train", "test"}
    test = Counter(r["class"] for r in rows if r["split"] == "test")
    assert sum(test.values()) == 14
    for cls, n in COUNTS.items():
        assert abs(test[cls] - 0.2 * n) <= 1, (cls, test[cls])
        assert test[cls] >= 1


def test_split_is_deterministic_for_a_seed_and_differs_across_seeds():
    first = split_rows(_items(), 0.25, seed=11)
    assert split_rows(_items(), 0.25, seed=11) == first
    other = split_rows(_items(), 0.25, seed=12)
    assert other != first
    assert Counter((r["class"], r["split"]) for r in other) == Counter((r["class"], r["split"]) for r in first)


def test_test_size_zero_puts_everything_in_train():
    rows = split_rows(_items(), 0, seed=0)
    assert len(rows) == 70 and all(r["split"] == "train" for r in rows)


@pytest.mark.parametrize("test_size", [1.0, 1.5, -0.1])
def test_out_of_range_test_size_is_a_param_error(test_size):
    with pytest.raises(ParamError, match="split.test_size"):
        split_rows(_items(), test_size, seed=0)


@pytest.mark.parametrize(
    "counts, test_size",
    [
        ({"benign": 10, "malignant": 5, "normal": 1}, 0.2),  # a class of one image
        ({"benign": 10, "malignant": 5, "normal": 5}, 0.1),  # 2 test slots for 3 classes
        ({"benign": 2, "malignant": 2, "normal": 2}, 0.7),  # 1 train slot for 3 classes
        ({"benign": 2, "malignant": 2, "normal": 2}, 0.9),  # no train slot at all
    ],
)
def test_impossible_stratification_is_a_param_error(counts, test_size):
    with pytest.raises(ParamError) as info:
        split_rows(_items(counts), test_size, seed=0)
    assert "test_size" in str(info.value)


def test_unstratified_split_takes_the_rounded_up_share():
    rows = split_rows(_items(), 0.1, seed=0, stratify=False)
    assert sum(r["split"] == "test" for r in rows) == 7


def test_missing_input_folder_is_an_imgclust_error_naming_it(tmp_path):
    missing = tmp_path / "data" / "resized"
    with pytest.raises(ImgclustError) as info:
        split_rows(list_images(missing), 0.1, seed=0)
    assert str(missing) in str(info.value)


def test_folder_without_images_is_an_imgclust_error(tmp_path):
    empty = tmp_path / "resized"
    empty.mkdir()
    with pytest.raises(ImgclustError) as info:  # not a pack: no index
        list_images(empty)
    assert str(empty) in str(info.value) and "dvc repro resize" in str(info.value)
    write_pack(empty, [])
    assert list_images(empty) == []
    with pytest.raises(ImgclustError):
        split_rows(list_images(empty), 0.1, seed=0)


# --------------------------------------------------------------------------------------------- CLI


def test_cli_writes_path_class_split_csv(tmp_path):
    root = _folder(tmp_path / "resized", {"benign": 12, "malignant": 6, "normal": 5})
    out = tmp_path / "manifests" / "split.csv"
    write_params(tmp_path, split__test_size=0.2, split__seed=3)
    proc = run_cli("split", "--in", str(root), "--out", str(out), cwd=tmp_path)
    with open(out, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == SPLIT_FIELDS == ("path", "class", "split")
        rows = list(reader)
    assert rows == split_rows(list_images(root), 0.2, seed=3)
    files = unpacked(root)
    assert all((files / r["path"]).is_file() and Path(r["path"]).parts[0] == r["class"] for r in rows)
    assert {r["class"] for r in rows if r["split"] == "test"} == {"benign", "malignant", "normal"}
    assert "test/normal" in proc.stdout


def test_cli_impossible_stratification_exits_2(tmp_path):
    root = _folder(tmp_path / "resized", {"benign": 6, "malignant": 1})
    write_params(tmp_path, split__test_size=0.3)
    proc = run_cli("split", "--in", str(root), "--out", str(tmp_path / "split.csv"), cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "split.test_size" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "split.csv").exists()
