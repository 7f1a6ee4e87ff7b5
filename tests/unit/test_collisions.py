"""A copy's name never takes a source's name, and no stage writes through an existing file (which
may be hard-linked into the DVC cache)."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
from PIL import Image

from imgclust.core.fsutil import write_csv
from imgclust.core.images import save_new_png
from imgclust.core.protocols import SPLIT_FIELDS, check_unique_paths, plan_honest, plan_tutorial
from imgclust.errors import OutputCollisionError
from imgclust.stages.augment import augment
from support.data import BALANCING_OPS, TUTORIAL_OPS
from support.packs import items, pack_folder, unpacked

# names that the naive copy names of n.png would take
NORMAL = ["n.png", "n__rot180.png", "n__flip_lr.png"]


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def linked_source(tmp_path):
    """A resized pack whose files (shards, index) are hard links of a 'cache' folder, as DVC leaves them."""
    rng = np.random.default_rng(0)
    cache, resized = tmp_path / "cache", tmp_path / "resized"
    layout = {"normal": NORMAL, "benign": [f"b{i}.png" for i in range(8)], "malignant": [f"m{i}.png" for i in range(5)]}
    for cls, names in layout.items():
        (cache / cls).mkdir(parents=True)
        for name in names:
            Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(cache / cls / name)
    pack_folder(cache)
    resized.mkdir()
    for path in cache.iterdir():
        os.link(path, resized / path.name)
    return cache, resized


def test_copy_names_skip_every_source_name():
    split = [{"path": f"normal/{name}", "class": "normal", "split": "train"} for name in NORMAL]
    split += [{"path": f"benign/b{i}.png", "class": "benign", "split": "train"} for i in range(9)]
    plan = plan_honest(split, ["rot180", "flip_lr", "flip_tb"], "max", 0)
    paths = [row["path"] for row in plan]
    assert len(paths) == len(set(paths))
    copies = {row["path"]: row for row in plan if row["op"] != "none"}
    assert not set(copies) & {row["path"] for row in split}
    assert copies["normal/n__rot180~2.png"]["source"] == "normal/n.png"


def test_tutorial_copy_names_skip_every_source_name():
    images = [("normal/" + name, "normal") for name in NORMAL] + [
        (f"malignant/m{i}.png", "malignant") for i in range(4)
    ]
    plan = plan_tutorial(images, {"normal": ["rot180", "flip_lr"], "malignant": ["rot180"]}, 0.25, 0)
    paths = [row["path"] for row in plan]
    assert len(paths) == len(set(paths)) == len(images) + 2 * 3 + 4


def test_a_plan_listing_a_path_twice_is_refused():
    row = {"path": "a/x.png", "class": "a", "split": "train", "source": "a/x.png", "op": "none"}
    with pytest.raises(OutputCollisionError, match="a/x.png"):
        check_unique_paths([row, dict(row, op="rot180")])


@pytest.mark.parametrize("protocol", ["honest", "tutorial"])
def test_augment_leaves_linked_inputs_intact(linked_source, tmp_path, protocol):
    cache, resized = linked_source
    before = {p: _digest(p) for p in cache.iterdir()}
    assert len(before) >= 2  # an index and its shard(s)
    images = items(resized)
    assert len(images) == len(NORMAL) + 8 + 5
    rows = [{"path": path, "class": path.split("/")[0], "split": "train"} for path in sorted(images)]
    write_csv(tmp_path / "split.csv", rows, SPLIT_FIELDS)
    augment(
        resized,
        tmp_path / "split.csv",
        tmp_path / "augmented",
        tmp_path / "augmented.csv",
        protocol=protocol,
        ops=BALANCING_OPS,
        target="max",
        seed=0,
        tutorial_ops=TUTORIAL_OPS + ["benign=flip_tb"],
        test_size=0.2,
        split_seed=0,
        workers=1,
    )
    assert {p: _digest(p) for p in cache.iterdir()} == before
    assert {p.name: _digest(p) for p in resized.iterdir()} == {p.name: digest for p, digest in before.items()}
    assert items(resized) == images
    files = unpacked(tmp_path / "augmented")
    written = sorted(p.relative_to(files).as_posix() for p in files.rglob("*.png"))
    manifest = (tmp_path / "augmented.csv").read_text().splitlines()[1:]
    assert len(written) == len(manifest) == len({line.split(",")[0] for line in manifest})


def test_save_new_png_never_writes_through_an_existing_file(tmp_path):
    target = tmp_path / "x.png"
    target.write_bytes(b"original")
    with pytest.raises(OutputCollisionError, match="x.png"):
        save_new_png(np.zeros((4, 4), np.uint8), target)
    assert target.read_bytes() == b"original"
