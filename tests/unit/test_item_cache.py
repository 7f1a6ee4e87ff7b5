"""The per-image cache (imgclust.core.item_cache) and the stages that use it: a second run on the
same input computes nothing and writes the same bytes; a changed image is the only one computed."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclust import config
from imgclust.core.fsutil import write_csv
from imgclust.core.item_cache import NO_CACHE, ItemCache, cached, code_version, writable
from imgclust.core.protocols import SPLIT_FIELDS
from imgclust.errors import OutputWriteError
from imgclust.stages import augment as augment_stage
from imgclust.stages import featurize as featurize_stage
from imgclust.stages.resize import resize_images
from support.cli import run_cli
from support.packs import edited_copy, items, pack_of
from support.project import tree_hashes, write_params


def _entries(root: Path) -> dict[str, tuple[str, int, int]]:
    """Every entry of every namespace under ``root``: "namespace/key" -> (segment, offset, size);
    an entry written again lands elsewhere (segments are only appended to)."""
    return {
        f"{index.parent.name}/{key}": where
        for index in root.rglob("index.sqlite")
        for key, where in ItemCache(root, index.parent.name, {}).entries().items()
    }


# ------------------------------------------------------------------------------------- ItemCache


def test_a_miss_then_a_put_then_a_hit(tmp_path):
    cache = ItemCache(tmp_path / "cache", "resize", {"settings": [32, 32]})
    key = cache.key("ab" * 32)
    assert cache.get(key) is None and not cache.has(key)
    cache.put(key, b"resized bytes")
    assert cache.get(key) == b"resized bytes" and cache.has(key)
    assert list(_entries(tmp_path / "cache")) == [f"resize/{key}"]
    cache.put(key, b"")  # an empty result is a result, not a miss
    assert cache.get(key) == b""
    assert ItemCache(tmp_path / "cache", "resize", {"settings": [32, 32]}).get(key) == b"", "kept across instances"


@pytest.mark.parametrize(
    "damage",
    [
        lambda blob: blob[:-1],  # truncated segment
        lambda blob: blob[:10],  # cut short
        lambda blob: b"",  # empty segment
        lambda blob: blob[:-1] + bytes([blob[-1] ^ 1]),  # one bit of the last byte flipped
        lambda blob: bytes([blob[0] ^ 1]) + blob[1:],  # one bit of the first byte flipped
    ],
    ids=["truncated", "cut-short", "empty", "last-byte-altered", "first-byte-altered"],
)
def test_a_damaged_entry_is_a_miss(tmp_path, damage):
    cache = ItemCache(tmp_path, "s", {})
    key = cache.key("d")
    cache.put(key, b"some result bytes")
    (segment,) = list((tmp_path / "s").glob("seg-*.bin"))
    segment.write_bytes(damage(segment.read_bytes()))
    fresh = ItemCache(tmp_path, "s", {})  # another process, reading what is on disk
    assert fresh.get(key) is None
    assert not fresh.has(key), "a damaged entry is forgotten, so the next run computes it again"
    fresh.put(key, b"some result bytes")  # and is simply written again
    assert ItemCache(tmp_path, "s", {}).get(key) == b"some result bytes"


def test_no_cache_keeps_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    key = NO_CACHE.key("d")
    NO_CACHE.put(key, b"x")
    assert NO_CACHE.get(key) is None and not NO_CACHE.has(key) and NO_CACHE.root is None
    assert ItemCache(None, "resize", {"a": 1}).get(key) is None
    assert list(tmp_path.iterdir()) == []


def test_a_cache_that_cannot_be_written_is_skipped(tmp_path):
    (tmp_path / "cache").write_bytes(b"a file where the folder should be")
    cache = ItemCache(tmp_path / "cache", "s", {})
    cache.put(cache.key("d"), b"x")  # no error: the cache only saves time
    assert cache.get(cache.key("d")) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_the_key_changes_with_the_item_the_version_and_nothing_else(tmp_path):
    version = {"code": "c1", "settings": {"width": 32, "mode": "gray"}}
    cache = ItemCache(tmp_path, "resize", version)
    same = ItemCache(tmp_path / "elsewhere", "other", {"settings": {"mode": "gray", "width": 32}, "code": "c1"})
    assert cache.key("d1") == same.key("d1"), "key order, root and namespace do not matter"
    keys = {
        cache.key("d1"),
        cache.key("d2"),
        cache.key("d1", "rot90"),
        ItemCache(tmp_path, "resize", {**version, "code": "c2"}).key("d1"),
        ItemCache(tmp_path, "resize", {**version, "settings": {"width": 33, "mode": "gray"}}).key("d1"),
    }
    assert len(keys) == 5
    cache.put(cache.key("d1"), b"x")
    other = ItemCache(tmp_path, "resize", {**version, "code": "c2"})
    assert other.get(other.key("d1")) is None, "new code misses the old entry"


def test_code_version_follows_the_files_and_the_libraries(tmp_path):
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("x = 1\n")
    b.write_text("y = 2\n")
    first = code_version([a, b])
    assert code_version([b, a]) == first
    assert code_version([a, b], libraries=("numpy",)) != first
    a.write_text("x = 1  # a comment is code too\n")
    assert code_version([a, b]) != first


def test_the_stage_cache_is_keyed_by_its_code_and_settings_and_can_be_off(tmp_path, monkeypatch):
    stage_file = tmp_path / "resize.py"
    stage_file.write_text("VERSION = 1\n")
    monkeypatch.setenv(config.CACHE_ENV, str(tmp_path / "cache"))
    cache = config.item_cache("resize", str(stage_file), {"width": 32})
    assert cache.root == tmp_path / "cache" / "resize"
    assert config.item_cache("resize", str(stage_file), {"width": 32}).key("d") == cache.key("d")
    assert config.item_cache("resize", str(stage_file), {"width": 33}).key("d") != cache.key("d")
    stage_file.write_text("VERSION = 2\n")
    assert config.item_cache("resize", str(stage_file), {"width": 32}).key("d") != cache.key("d")
    monkeypatch.setenv(config.CACHE_ENV, "off")
    assert config.item_cache("resize", str(stage_file), {"width": 32}).root is None
    monkeypatch.delenv(config.CACHE_ENV)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    assert config.item_cache("resize", str(stage_file), {}).root == tmp_path / ".imgclust" / "cache" / "resize"


def test_writable_gives_a_scratch_cache_beside_the_output_and_removes_it(tmp_path):
    with writable(NO_CACHE, tmp_path / "data") as scratch:
        scratch.put(scratch.key("d"), b"x")
        assert cached(scratch, scratch.key("d"), "a/x.png") == b"x"
        assert [p.name.startswith(".imgclust-scratch-") for p in (tmp_path / "data").iterdir()] == [True]
    assert list((tmp_path / "data").iterdir()) == []
    real = ItemCache(tmp_path / "cache", "s", {})
    with writable(real, tmp_path / "data") as same:
        assert same is real


def test_an_entry_gone_while_the_stage_ran_is_an_output_write_error(tmp_path):
    cache = ItemCache(tmp_path, "resize", {})
    with pytest.raises(OutputWriteError) as info:
        cached(cache, cache.key("d"), "benign/x.png")
    assert "benign/x.png" in str(info.value) and str(tmp_path / "resize") in str(info.value)
    assert "rerun" in str(info.value)


# ---------------------------------------------------------------------------------------- stages


def _save(path: Path, shape, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)).save(path)


def _image_files(root: Path, n: int = 12, shape=(20, 24)) -> Path:
    """``n`` random images in the classes a, b, c."""
    for i in range(n):
        _save(root / ("a", "b", "c")[i % 3] / f"{i:02d}.png", shape, seed=i)
    return root


def _repaint(rel: str, value: int = 7):
    def edit(files: Path) -> None:
        with Image.open(files / rel) as image:
            size = image.size
        Image.fromarray(np.full(size[::-1], value, np.uint8)).save(files / rel)

    return edit


def _digests(pack: Path) -> dict[str, str]:
    return {path: hashlib.sha256(data).hexdigest() for path, data in items(pack).items()}


def test_resize_computes_only_what_the_cache_lacks_and_writes_the_same_pack(tmp_path):
    stripped = pack_of(_image_files(tmp_path / "files"), tmp_path / "stripped")
    cache = ItemCache(tmp_path / "cache", "resize", {"code": "test"})

    def resize(src, out, cache, width=8):
        return resize_images(src, tmp_path / out, width, 8, "gray", "lanczos", workers=1, cache=cache)

    assert resize(stripped, "first", cache)["n_computed"] == 12
    entries = _entries(tmp_path / "cache")
    again = resize(stripped, "again", cache)
    assert again["n_computed"] == 0 and again["n_images"] == 12
    assert _entries(tmp_path / "cache") == entries, "nothing was computed or written again"
    assert tree_hashes(tmp_path / "again") == tree_hashes(tmp_path / "first")
    resize(stripped, "cold", NO_CACHE)
    assert tree_hashes(tmp_path / "cold") == tree_hashes(tmp_path / "first"), "a cached run is a cold run"

    # one changed image: only it is resized; the pack is the cold run's on the new input
    changed = edited_copy(stripped, tmp_path / "stripped2", _repaint("b/04.png"))
    assert resize(changed, "changed", cache)["n_computed"] == 1
    resize(changed, "changed-cold", NO_CACHE)
    assert tree_hashes(tmp_path / "changed") == tree_hashes(tmp_path / "changed-cold")
    before, after = _digests(tmp_path / "first"), _digests(tmp_path / "changed")
    assert {path for path in before if before[path] != after[path]} == {"b/04.png"}

    # one added image: only it is resized
    grown = edited_copy(stripped, tmp_path / "stripped3", lambda files: _save(files / "a" / "99.png", (20, 24), 99))
    assert resize(grown, "grown", cache)["n_computed"] == 1
    assert set(_digests(tmp_path / "grown")) == set(before) | {"a/99.png"}

    # other settings are other entries
    assert resize(stripped, "wider", cache, width=9)["n_computed"] == 12


def test_a_worker_pool_keeps_every_result(tmp_path):
    """With a pool (from 32 images), every result reaches the cache and the pack: the workers
    return them and one process writes them. (Workers writing the SQLite index themselves lost
    entries to lock contention: "vanished from the cache", found by benchmarks/speed.py.)"""
    stripped = pack_of(_image_files(tmp_path / "files", n=48), tmp_path / "stripped")
    cache = ItemCache(tmp_path / "cache", "resize", {"code": "test"})
    first = resize_images(stripped, tmp_path / "first", 8, 8, "gray", "lanczos", workers=2, cache=cache)
    assert first["n_computed"] == 48 and len(_entries(tmp_path / "cache")) == 48
    again = resize_images(stripped, tmp_path / "again", 8, 8, "gray", "lanczos", workers=2, cache=cache)
    assert again["n_computed"] == 0
    assert tree_hashes(tmp_path / "again") == tree_hashes(tmp_path / "first")


def test_the_resize_stage_keeps_its_cache_where_imgclust_cache_dir_says(tmp_path, monkeypatch):
    stripped = pack_of(_image_files(tmp_path / "files", n=6), tmp_path / "stripped")
    monkeypatch.setenv(config.CACHE_ENV, str(tmp_path / "cache"))
    write_params(tmp_path / "work", resize__width=8, resize__height=8)
    for out in ("r1", "r2"):
        proc = run_cli("resize", "--in", str(stripped), "--out", str(tmp_path / out), cwd=tmp_path / "work")
        assert "6 images" in proc.stdout
        if out == "r1":
            entries = _entries(tmp_path / "cache")
    assert len(entries) == 6 and all(name.startswith("resize/") for name in entries)
    assert _entries(tmp_path / "cache") == entries
    assert tree_hashes(tmp_path / "r1") == tree_hashes(tmp_path / "r2")


def _augment(resized: Path, tmp_path: Path, out: str, cache) -> list[dict]:
    augment_stage.augment(
        resized,
        tmp_path / "split.csv",
        tmp_path / out,
        tmp_path / f"{out}.csv",
        protocol="honest",
        ops=["rot180", "flip_lr", "flip_tb"],
        target="max",
        seed=0,
        tutorial_ops=[],
        test_size=0.1,
        split_seed=0,
        workers=1,
        cache=cache,
    )
    with open(tmp_path / f"{out}.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_augment_computes_only_the_copies_the_cache_lacks(tmp_path, monkeypatch):
    files = tmp_path / "files"
    for cls, n in {"a": 6, "b": 3, "c": 2}.items():
        for i in range(n):
            _save(files / cls / f"{i}.png", (16, 16), seed=10 * n + i)
    resized = pack_of(files, tmp_path / "resized")
    write_csv(
        tmp_path / "split.csv",
        [{"path": p, "class": p.split("/")[0], "split": "train"} for p in sorted(items(resized))],
        SPLIT_FIELDS,
    )
    applied: list[str] = []
    real = augment_stage.apply_op
    monkeypatch.setattr(augment_stage, "apply_op", lambda array, op: applied.append(op) or real(array, op))
    cache = ItemCache(tmp_path / "cache", "augment", {"code": "test"})

    plan = _augment(resized, tmp_path, "first", cache)
    copies = [row for row in plan if row["op"] != "none"]
    assert len(applied) == len(copies) > 0
    entries = _entries(tmp_path / "cache")
    assert len(entries) == len(copies)
    assert _augment(resized, tmp_path, "again", cache) == plan
    assert len(applied) == len(copies) and _entries(tmp_path / "cache") == entries, "nothing computed again"
    assert tree_hashes(tmp_path / "again") == tree_hashes(tmp_path / "first")
    _augment(resized, tmp_path, "cold", NO_CACHE)
    assert tree_hashes(tmp_path / "cold") == tree_hashes(tmp_path / "first")
    assert len(applied) == 2 * len(copies)

    source = copies[0]["source"]
    changed = edited_copy(resized, tmp_path / "resized2", _repaint(source))
    n_before = len(applied)
    assert _augment(changed, tmp_path, "changed", cache) == plan
    assert len(applied) - n_before == sum(row["source"] == source for row in copies)
    _augment(changed, tmp_path, "changed-cold", NO_CACHE)
    assert tree_hashes(tmp_path / "changed") == tree_hashes(tmp_path / "changed-cold")
    before, after = _digests(tmp_path / "first"), _digests(tmp_path / "changed")
    assert {path for path in before if before[path] != after[path]} == {
        row["path"] for row in plan if row["source"] == source
    }


def _featurize(images: Path, manifest: Path, out: Path, cache) -> dict:
    return featurize_stage.featurize(images, manifest, out, method="pixels", cnn_params={}, batch_size=5, cache=cache)


def test_featurize_computes_only_the_rows_the_cache_lacks(tmp_path, monkeypatch):
    images = pack_of(_image_files(tmp_path / "files", n=12, shape=(8, 8)), tmp_path / "augmented")
    rows = [
        {"path": p, "class": p.split("/")[0], "split": "train", "source": p, "op": "none"}
        for p in sorted(items(images))
    ]
    manifest = tmp_path / "augmented.csv"
    write_csv(manifest, rows, ("path", "class", "split", "source", "op"))
    computed: list[int] = []
    real = featurize_stage._compute_local

    def counting(pack, todo, *args):
        computed.append(len(todo))
        yield from real(pack, todo, *args)

    monkeypatch.setattr(featurize_stage, "_compute_local", counting)
    cache = ItemCache(tmp_path / "cache", "featurize", {"code": "test"})

    meta = _featurize(images, manifest, tmp_path / "first", cache)
    assert computed == [12] and len(_entries(tmp_path / "cache")) == 12
    entries = _entries(tmp_path / "cache")
    assert _featurize(images, manifest, tmp_path / "again", cache) == meta
    assert computed == [12, 0] and _entries(tmp_path / "cache") == entries
    assert tree_hashes(tmp_path / "again") == tree_hashes(tmp_path / "first")
    _featurize(images, manifest, tmp_path / "cold", NO_CACHE)
    assert tree_hashes(tmp_path / "cold") == tree_hashes(tmp_path / "first")

    changed = edited_copy(images, tmp_path / "augmented2", _repaint("c/05.png"))
    _featurize(changed, manifest, tmp_path / "changed", cache)
    assert computed[-1] == 1
    _featurize(changed, manifest, tmp_path / "changed-cold", NO_CACHE)
    assert tree_hashes(tmp_path / "changed") == tree_hashes(tmp_path / "changed-cold")
    first = np.load(tmp_path / "first" / "features.npy")
    later = np.load(tmp_path / "changed" / "features.npy")
    differs = [rows[i]["path"] for i in range(len(rows)) if not np.array_equal(first[i], later[i])]
    assert differs == ["c/05.png"]
    np.testing.assert_array_equal(later[[r["path"] for r in rows].index("c/05.png")], np.full(64, 7, np.uint8))
