"""augment: balance TRAIN classes with rotations/flips (honest) or the seed recipe (tutorial); the
resized pack in, the augmented pack out."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclust.core.protocols import (
    AUGMENTED_FIELDS,
    SPLIT_FIELDS,
    list_images,
    parse_tutorial_ops,
    plan_honest,
    plan_tutorial,
    split_rows,
)
from imgclust.errors import ImgclustError, InputDataError, ParamError
from imgclust.stages.augment import augment as augment_stage
from support.cli import run_cli
from support.packs import pack_folder, unpacked
from support.project import write_params

COUNTS = {"benign": 10, "malignant": 6, "normal": 4}
ALL_OPS = ["rot180", "flip_lr", "flip_tb", "rot90", "rot270"]
# independent reference transforms, written with numpy's own names
REFERENCE = {
    "rot90": lambda a: np.rot90(a, k=1),
    "rot180": lambda a: np.rot90(a, k=2),
    "rot270": lambda a: np.rot90(a, k=3),
    "flip_lr": np.fliplr,
    "flip_tb": np.flipud,
}


# augment() now takes every value explicitly; these are the values the tests leave unsaid
AUGMENT_DEFAULTS = {
    "protocol": "honest",
    "ops": [],
    "target": "max",
    "seed": 0,
    "tutorial_ops": [],
    "test_size": 0.1,
    "split_seed": 0,
}


def augment(in_dir: Path, split_csv: Path, out_dir: Path, manifest_path: Path, **values) -> dict:
    return augment_stage(in_dir, split_csv, out_dir, manifest_path, **{**AUGMENT_DEFAULTS, **values})


def _dataset(root: Path, counts: dict[str, int] = COUNTS, shape=(16, 16), seed=0) -> Path:
    """The pack resize writes, of ``counts`` random images per class."""
    rng = np.random.default_rng(seed)
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True)
        for i in range(1, n + 1):
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / cls / f"{cls} ({i}).png")
    return pack_folder(root)


def _write_split(image_dir: Path, csv_path: Path, test_size=0.25, seed=0) -> list[dict]:
    rows = split_rows(list_images(image_dir), test_size, seed)
    with open(csv_path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=SPLIT_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def _read(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == AUGMENTED_FIELDS
        return list(reader)


def _check_manifest_matches_folder(rows: list[dict], out: Path) -> None:
    listed = [row["path"] for row in rows]
    assert len(listed) == len(set(listed)), "a path is listed twice"
    files = unpacked(out)
    present = {p.relative_to(files).as_posix() for p in files.rglob("*") if p.is_file()}
    assert set(listed) == present


def _check_pixels(rows: list[dict], src: Path, out: Path) -> None:
    """Originals are the source's bytes; copies are the op applied to the source's pixels (both
    packs exported as files)."""
    src, out = unpacked(src), unpacked(out)
    for row in rows:
        if row["op"] == "none":
            assert row["source"] == row["path"]
            assert (out / row["path"]).read_bytes() == (src / row["path"]).read_bytes()
        else:
            source = np.asarray(Image.open(src / row["source"]))
            copy = np.asarray(Image.open(out / row["path"]))
            np.testing.assert_array_equal(copy, REFERENCE[row["op"]](source))


@pytest.fixture(scope="module")
def resized(tmp_path_factory) -> tuple[Path, Path, list[dict]]:
    root = tmp_path_factory.mktemp("augment")
    image_dir = _dataset(root / "resized")
    split = _write_split(image_dir, root / "split.csv")
    return image_dir, root / "split.csv", split


# ------------------------------------------------------------------------------------------- honest


def test_honest_balances_train_classes_to_the_largest(tmp_path, resized):
    src, split_csv, split = resized
    out, manifest = tmp_path / "augmented", tmp_path / "augmented.csv"
    result = augment(src, split_csv, out, manifest, ops=ALL_OPS, seed=0, workers=1)
    rows = _read(manifest)

    train = Counter(r["class"] for r in rows if r["split"] == "train")
    largest = max(Counter(r["class"] for r in split if r["split"] == "train").values())
    assert set(train.values()) == {largest} and set(train) == set(COUNTS)
    test_before = Counter(r["class"] for r in split if r["split"] == "test")
    assert Counter(r["class"] for r in rows if r["split"] == "test") == test_before
    assert result["per_split_class"]["train"] == {cls: largest for cls in COUNTS}
    assert result["n_images"] == len(rows) and result["n_augmented"] == len(rows) - len(split)
    _check_manifest_matches_folder(rows, out)


def test_honest_never_augments_test_images_nor_repeats_an_op(tmp_path, resized):
    src, split_csv, split = resized
    out, manifest = tmp_path / "augmented", tmp_path / "augmented.csv"
    augment(src, split_csv, out, manifest, ops=ALL_OPS, seed=1, workers=1)
    rows = _read(manifest)
    test_paths = {r["path"] for r in split if r["split"] == "test"}
    train_paths = {r["path"] for r in split if r["split"] == "train"}
    copies = [r for r in rows if r["op"] != "none"]
    assert copies, "the fixture needs augmentation"
    assert all(r["split"] == "train" for r in copies)
    assert not {r["source"] for r in copies} & test_paths
    assert {r["source"] for r in copies} <= train_paths
    assert all(r["class"] == Path(r["source"]).parts[0] for r in copies)
    assert max(Counter((r["source"], r["op"]) for r in copies).values()) == 1
    # every original is kept with its split
    originals = {(r["path"], r["split"]) for r in rows if r["op"] == "none"}
    assert originals == {(r["path"], r["split"]) for r in split}


def test_augmented_pixels_equal_the_op_applied_to_the_source(tmp_path, resized):
    src, split_csv, _ = resized
    out, manifest = tmp_path / "augmented", tmp_path / "augmented.csv"
    augment(src, split_csv, out, manifest, ops=ALL_OPS, target=12, seed=0, workers=1)
    rows = _read(manifest)
    assert {r["op"] for r in rows} >= {"none", "rot180", "flip_lr"}
    _check_pixels(rows, src, out)


def test_rgb_non_square_images_with_shape_preserving_ops(tmp_path):
    rng = np.random.default_rng(5)
    src = tmp_path / "resized"
    for cls, n in {"a": 6, "b": 2}.items():
        (src / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)).save(src / cls / f"{i}.png")
    pack_folder(src)
    _write_split(src, tmp_path / "split.csv", test_size=0)
    out, manifest = tmp_path / "aug", tmp_path / "aug.csv"
    augment(src, tmp_path / "split.csv", out, manifest, ops=["rot180", "flip_lr", "flip_tb"], workers=1)
    rows = _read(manifest)
    assert Counter(r["class"] for r in rows) == {"a": 6, "b": 6}
    _check_pixels(rows, src, out)
    with pytest.raises(ParamError, match="rot90"):
        augment(src, tmp_path / "split.csv", tmp_path / "aug2", tmp_path / "aug2.csv", ops=["rot90"], workers=1)


@pytest.mark.parametrize("target", [14, "14"])
def test_integer_target(tmp_path, resized, target):
    src, split_csv, split = resized
    out, manifest = tmp_path / "augmented", tmp_path / "augmented.csv"
    augment(src, split_csv, out, manifest, ops=ALL_OPS, target=target, workers=1)
    rows = _read(manifest)
    assert Counter(r["class"] for r in rows if r["split"] == "train") == {cls: 14 for cls in COUNTS}
    _check_manifest_matches_folder(rows, out)


def test_honest_plan_is_deterministic_for_a_seed():
    split = [{"path": f"{c}/{i}.png", "class": c, "split": "train"} for c, n in COUNTS.items() for i in range(n)]
    first = plan_honest(split, ALL_OPS, "max", seed=4)
    assert plan_honest(split, ALL_OPS, "max", seed=4) == first
    assert any(plan_honest(split, ALL_OPS, "max", seed=s) != first for s in range(5, 10))


def test_infeasible_target_names_augment_ops(tmp_path, resized):
    src, split_csv, _ = resized
    with pytest.raises(ParamError, match="augment.ops") as info:
        augment(src, split_csv, tmp_path / "out", tmp_path / "m.csv", ops=["rot180"], target=100, workers=1)
    assert "augment.target" in str(info.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.csv").exists()


@pytest.mark.parametrize(
    "ops, match",
    [
        (["rot180", "shear"], "shear"),
        (["rot180", "rot180"], "repeat"),
    ],
)
def test_bad_ops_are_param_errors(tmp_path, resized, ops, match):
    src, split_csv, _ = resized
    with pytest.raises(ParamError, match=match):
        augment(src, split_csv, tmp_path / "out", tmp_path / "m.csv", ops=ops, workers=1)


def test_bad_target_protocol_and_empty_train(tmp_path, resized):
    src, split_csv, split = resized
    with pytest.raises(ParamError, match="augment.target"):
        augment(src, split_csv, tmp_path / "o", tmp_path / "m.csv", ops=ALL_OPS, target="most", workers=1)
    with pytest.raises(ParamError, match="protocol"):
        augment(src, split_csv, tmp_path / "o", tmp_path / "m.csv", protocol="leaky", workers=1)
    with pytest.raises(InputDataError):
        plan_honest([dict(r, split="test") for r in split], ALL_OPS, "max", 0)


def test_split_listing_an_image_missing_from_the_folder_is_an_input_error(tmp_path, resized):
    src, _, split = resized
    stale = tmp_path / "split.csv"
    rows = [dict(split[0], path="benign/gone.png")] + split
    with open(stale, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=SPLIT_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(ImgclustError) as info:
        augment(src, stale, tmp_path / "out", tmp_path / "m.csv", ops=ALL_OPS, workers=1)
    assert "gone.png" in str(info.value)


# ----------------------------------------------------------------------------------------- tutorial


def test_tutorial_plan_arithmetic_on_the_full_busi_counts():
    items = [
        (f"{cls}/{cls} ({i}).png", cls)
        for cls, n in {"benign": 437, "malignant": 210, "normal": 133}.items()
        for i in range(1, n + 1)
    ]
    class_ops = parse_tutorial_ops(["malignant=rot180", "normal=rot180+flip_lr"])
    assert class_ops == {"malignant": ["rot180"], "normal": ["rot180", "flip_lr"]}
    plan = plan_tutorial(items, class_ops, test_size=0.1, seed=0)

    assert len(plan) == 437 + 2 * 210 + 3 * 133 == 1256
    assert Counter(r["class"] for r in plan) == {"benign": 437, "malignant": 420, "normal": 399}
    assert Counter((r["class"], r["op"]) for r in plan) == {
        ("benign", "none"): 437,
        ("malignant", "none"): 210,
        ("malignant", "rot180"): 210,
        ("normal", "none"): 133,
        ("normal", "rot180"): 133,
        ("normal", "flip_lr"): 133,
    }
    n_test = sum(r["split"] == "test" for r in plan)
    assert n_test == math.ceil(0.1 * 1256) == 126
    assert len({r["path"] for r in plan}) == 1256
    assert plan == plan_tutorial(items, class_ops, test_size=0.1, seed=0)


def test_tutorial_protocol_materialises_the_recipe(tmp_path, resized):
    src, split_csv, split = resized
    out, manifest = tmp_path / "augmented", tmp_path / "augmented.csv"
    result = augment(
        src,
        split_csv,
        out,
        manifest,
        protocol="tutorial",
        tutorial_ops=["malignant=rot180", "normal=rot180+flip_lr"],
        test_size=0.2,
        split_seed=0,
        workers=1,
    )
    rows = _read(manifest)
    assert Counter(r["class"] for r in rows) == {"benign": 10, "malignant": 12, "normal": 12}
    assert sum(r["split"] == "test" for r in rows) == math.ceil(0.2 * 34)
    assert result["protocol"] == "tutorial" and result["n_augmented"] == 6 + 8
    _check_manifest_matches_folder(rows, out)
    _check_pixels(rows, src, out)


@pytest.mark.parametrize(
    "specs, match",
    [
        (["rot180"], "class=op"),
        (["=rot180"], "class=op"),
        (["normal=rot180+blur"], "blur"),
        (["normal=rot180+rot180"], "repeat"),
    ],
)
def test_bad_tutorial_ops_are_param_errors(specs, match):
    with pytest.raises(ParamError, match=match):
        parse_tutorial_ops(specs)


def test_tutorial_ops_naming_an_absent_class(tmp_path, resized):
    src, split_csv, _ = resized
    with pytest.raises(ParamError, match="cancer"):
        augment(
            src,
            split_csv,
            tmp_path / "o",
            tmp_path / "m.csv",
            protocol="tutorial",
            tutorial_ops=["cancer=rot180"],
            workers=1,
        )


# --------------------------------------------------------------------------------------------- CLI


def _cli_paths(tmp_path: Path) -> dict[str, Path]:
    return {
        "out": tmp_path / "augmented",
        "manifest": tmp_path / "m" / "augmented.csv",
        "report": tmp_path / "reports" / "augment.json",
    }


def _cli_args(src: Path, split_csv: Path, paths: dict[str, Path]) -> list[str]:
    return [
        "augment",
        "--in",
        str(src),
        "--split",
        str(split_csv),
        "--out",
        str(paths["out"]),
        "--manifest",
        str(paths["manifest"]),
        "--report",
        str(paths["report"]),
    ]


def test_cli_honest_with_repeated_ops(tmp_path, resized):
    src, split_csv, split = resized
    paths = _cli_paths(tmp_path)
    write_params(
        tmp_path, protocol="honest", augment__ops=["rot180", "flip_lr"], augment__target="max", augment__seed=2
    )
    proc = run_cli(*_cli_args(src, split_csv, paths), cwd=tmp_path)
    rows = _read(paths["manifest"])
    assert {r["op"] for r in rows} <= {"none", "rot180", "flip_lr"}
    largest = max(Counter(r["class"] for r in split if r["split"] == "train").values())
    assert Counter(r["class"] for r in rows if r["split"] == "train") == {cls: largest for cls in COUNTS}
    _check_manifest_matches_folder(rows, paths["out"])
    _check_pixels(rows, src, paths["out"])
    report = json.loads(paths["report"].read_text())
    assert report["protocol"] == "honest" and report["n_images"] == len(rows)
    assert "augment (honest)" in proc.stdout


def test_cli_tutorial_ops_spelling(tmp_path, resized):
    """The tutorial protocol reads augment.tutorial_ops and its split from split.* of params.yaml."""
    src, split_csv, _ = resized
    paths = _cli_paths(tmp_path)
    write_params(
        tmp_path, protocol="tutorial", augment__tutorial_ops=["malignant=rot180"], split__test_size=0.1, split__seed=1
    )
    run_cli(*_cli_args(src, split_csv, paths), cwd=tmp_path)
    rows = _read(paths["manifest"])
    assert Counter(r["class"] for r in rows) == {"benign": 10, "malignant": 12, "normal": 4}
    assert {(r["class"], r["op"]) for r in rows if r["op"] != "none"} == {("malignant", "rot180")}
    assert sum(r["split"] == "test" for r in rows) == math.ceil(0.1 * 26)
    _check_manifest_matches_folder(rows, paths["out"])


def test_cli_infeasible_target_exits_2(tmp_path, resized):
    src, split_csv, _ = resized
    paths = _cli_paths(tmp_path)
    write_params(tmp_path, augment__ops=["rot180"], augment__target=500)
    proc = run_cli(*_cli_args(src, split_csv, paths), cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "augment.ops" in proc.stderr and "Traceback" not in proc.stderr
    assert not paths["out"].exists()


def test_cli_unknown_op_exits_2(tmp_path, resized):
    src, split_csv, _ = resized
    paths = _cli_paths(tmp_path)
    write_params(tmp_path, augment__ops=["rot180", "zoom"])
    proc = run_cli(*_cli_args(src, split_csv, paths), cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "zoom" in proc.stderr and "Traceback" not in proc.stderr
