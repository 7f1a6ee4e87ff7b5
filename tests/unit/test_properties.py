"""Property-based tests (hypothesis) of resize and augment over random small images and sizes."""

from __future__ import annotations

import csv
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from imgclust.core.fsutil import write_csv
from imgclust.core.images import OPS, apply_op
from imgclust.core.protocols import SPLIT_FIELDS, plan_honest
from imgclust.errors import ParamError
from imgclust.stages.augment import augment
from imgclust.stages.resize import resize_images
from support.data import TUTORIAL_OPS
from support.packs import pack_folder, pack_of, unpacked

FAST = settings(max_examples=30, deadline=None)
CLASSES = ("benign", "malignant", "normal")


def images(min_side: int = 1, max_side: int = 12, square: bool = False):
    """uint8 arrays (H, W) gray or (H, W, 3) RGB with random sides and pixels."""

    def shape(draw_sides):
        h, w, rgb = draw_sides
        return (h, h if square else w, 3) if rgb else (h, h if square else w)

    sides = st.tuples(st.integers(min_side, max_side), st.integers(min_side, max_side), st.booleans())
    return sides.map(shape).flatmap(lambda s: arrays(np.uint8, s))


def _save(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def _load(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image)


# ------------------------------------------------------------------------------------------- resize


@FAST
@given(
    items=st.lists(st.tuples(st.sampled_from(CLASSES), images()), min_size=1, max_size=5),
    width=st.integers(1, 16),
    height=st.integers(1, 16),
    mode=st.sampled_from(["gray", "rgb"]),
    resample=st.sampled_from(["nearest", "bilinear", "lanczos"]),
)
def test_resize_gives_the_requested_size_and_mode_and_keeps_the_class(items, width, height, mode, resample):
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "src", Path(tmp) / "out"
        for i, (cls, array) in enumerate(items):
            _save(array, src / cls / f"img {i}.png")
        pack_folder(src)
        report = resize_images(src, out, width, height, mode, resample, workers=1)
        files = unpacked(out)
        produced = sorted(p.relative_to(files).as_posix() for p in files.rglob("*.png"))
        assert produced == sorted(f"{cls}/img {i}.png" for i, (cls, _) in enumerate(items))
        assert report["images_per_class"] == dict(Counter(cls for cls, _ in items))
        for path in files.rglob("*.png"):
            array = _load(path)
            assert array.shape == ((height, width) if mode == "gray" else (height, width, 3))


@FAST
@given(value=st.integers(0, 255), h=st.integers(1, 12), w=st.integers(1, 12), size=st.integers(1, 16))
def test_resizing_a_uniform_gray_image_keeps_its_value(value, h, w, size):
    with tempfile.TemporaryDirectory() as tmp:
        _save(np.full((h, w), value, np.uint8), Path(tmp) / "src" / "a" / "x.png")
        pack_folder(Path(tmp) / "src")
        resize_images(Path(tmp) / "src", Path(tmp) / "out", size, size, "gray", "lanczos", workers=1)
        assert np.abs(_load(unpacked(Path(tmp) / "out") / "a" / "x.png").astype(int) - value).max() <= 1


# ------------------------------------------------------------------------------------------ the ops


@FAST
@given(array=images(max_side=9))
def test_ops_are_the_symmetries_of_the_square(array):
    same = lambda a, b: a.shape == b.shape and np.array_equal(a, b)  # noqa: E731
    rotated = array
    for _ in range(4):
        rotated = apply_op(rotated, "rot90")
    assert same(rotated, array)
    assert same(apply_op(apply_op(array, "flip_lr"), "flip_lr"), array)
    assert same(apply_op(apply_op(array, "flip_tb"), "flip_tb"), array)
    assert same(apply_op(array, "rot180"), apply_op(apply_op(array, "flip_lr"), "flip_tb"))
    assert same(apply_op(array, "rot270"), apply_op(apply_op(apply_op(array, "rot90"), "rot90"), "rot90"))
    assert same(apply_op(apply_op(array, "rot90"), "rot270"), array)
    assert same(apply_op(apply_op(array, "transpose"), "transpose"), array)
    for op in OPS:  # a permutation of the pixels: nothing lost, nothing invented
        assert sorted(apply_op(array, op).ravel()) == sorted(array.ravel())


# ------------------------------------------------------------------------------------------ augment


@FAST
@given(
    counts=st.lists(st.integers(1, 6), min_size=2, max_size=3),
    ops=st.lists(
        st.sampled_from(["rot180", "flip_lr", "flip_tb", "rot90", "rot270"]), min_size=1, max_size=5, unique=True
    ),
    seed=st.integers(0, 2**16),
)
def test_plan_honest_never_repeats_an_op_per_source_and_balances_train(counts, ops, seed):
    split = [
        {"path": f"{cls}/{i}.png", "class": cls, "split": "train"}
        for cls, n in zip(CLASSES, counts, strict=False)
        for i in range(n)
    ]
    goal = max(counts)
    if any(goal - n > n * len(ops) for n in counts):
        with pytest.raises(ParamError):
            plan_honest(split, ops, "max", seed)
        return
    plan = plan_honest(split, ops, "max", seed)
    per_source = Counter((row["source"], row["op"]) for row in plan)
    assert max(per_source.values()) == 1
    assert all(row["class"] == row["source"].split("/")[0] for row in plan)
    assert set(Counter(row["class"] for row in plan).values()) == {goal}
    assert len({row["path"] for row in plan}) == len(plan)


@FAST
@given(
    side=st.integers(1, 8),
    counts=st.lists(st.integers(1, 4), min_size=2, max_size=3),
    n_test=st.integers(0, 1),
    seed=st.integers(0, 1000),
    data=st.data(),
)
def test_augment_copies_are_the_op_of_their_source_in_the_same_class(side, counts, n_test, seed, data):
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "resized.src"  # the images as files; augment reads their pack
        split = []
        for cls, n in zip(CLASSES, counts, strict=False):
            for i in range(n):
                rel = f"{cls}/{i}.png"
                _save(data.draw(arrays(np.uint8, (side, side))), src / rel)
                split.append({"path": rel, "class": cls, "split": "test" if i < n_test and n > 1 else "train"})
        write_csv(Path(tmp) / "split.csv", split, SPLIT_FIELDS)
        ops = ["rot180", "flip_lr", "flip_tb", "rot90", "rot270"]
        augment(
            pack_of(src, Path(tmp) / "resized"),
            Path(tmp) / "split.csv",
            Path(tmp) / "out",
            Path(tmp) / "aug.csv",
            protocol="honest",
            ops=ops,
            target="max",
            seed=seed,
            tutorial_ops=TUTORIAL_OPS,
            test_size=0.1,
            split_seed=0,
            workers=1,
        )
        with open(Path(tmp) / "aug.csv", newline="") as fh:
            plan = list(csv.DictReader(fh))
        tests = {row["path"] for row in split if row["split"] == "test"}
        out = unpacked(Path(tmp) / "out")
        for row in plan:
            original = _load(src / row["source"])
            want = original if row["op"] == "none" else apply_op(original, row["op"])
            assert np.array_equal(_load(out / row["path"]), want)
            assert row["class"] == row["source"].split("/")[0]
            if row["source"] in tests:  # honest protocol: a test image is never augmented
                assert row["op"] == "none" and row["split"] == "test"
        assert max(Counter((r["source"], r["op"]) for r in plan).values()) == 1
        train = Counter(r["class"] for r in plan if r["split"] == "train")
        assert len(set(train.values())) == 1
