"""A corpus of awkward and broken inputs, generated here, pushed through every data stage.

Each file of the corpus carries its expected fate: an image is processed, a mask is kept in
data/raw and stripped, a corrupt file is listed with its path and reason (and fails the stage
unless ingest.skip_corrupt), a link is ignored without being followed. The corpus goes through the
pure functions stage by stage here, and once through ``dvc repro`` of a real project in
tests/system/test_data_stages_dvc.py.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclust.core.fsutil import write_csv
from imgclust.core.images import apply_op
from imgclust.core.protocols import SPLIT_FIELDS, list_images, split_rows
from imgclust.errors import CorruptImageError, EmptyClassError
from imgclust.stages.augment import augment
from imgclust.stages.ingest import ingest
from imgclust.stages.resize import resize_images
from imgclust.stages.strip_masks import strip_masks
from support.data import BALANCING_OPS, TUTORIAL_OPS
from support.project import tree_hashes

MASK_PATTERNS = ["*_mask*.png"]
SIZE = 32  # resize target in these tests: small keeps them fast, square allows every op


# ------------------------------------------------------------------------------------------- corpus


def _noise(shape, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def _truncated(path: Path, fmt: str, seed: int) -> None:
    import io

    buffer = io.BytesIO()
    Image.fromarray(_noise((48, 48, 3), seed)).save(buffer, format=fmt)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def _exif_rotated(path: Path) -> None:
    """Stored 40 wide x 20 high, left half black, right half white, EXIF orientation 6 (display
    rotated 90 degrees clockwise): shown 20 x 40, top half black, bottom half white."""
    array = np.zeros((20, 40), np.uint8)
    array[:, 20:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(array).save(path, format="JPEG", quality=95, exif=exif.tobytes())


def _gray16(path: Path) -> None:
    """A horizontal 16-bit gradient 0..65535: 8-bit output must span 0..255, not saturate."""
    Image.fromarray(np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (16, 1))).save(path)


def _palette_transparent(path: Path) -> None:
    """Palette image: left half index 0 (white, transparent), right half index 1 (white, opaque)."""
    image = Image.new("P", (20, 20), 0)
    image.putpalette([255, 255, 255] * 2 + [0] * 762)
    image.paste(1, (10, 0, 20, 20))
    image.save(path, transparency=0)


def _bomb(path: Path) -> None:
    """A real PNG above Pillow's decompression-bomb limit (2 x 89.5 Mpx): 20000 x 20000 all-black
    1-bit pixels compress to about 50 kB."""
    Image.new("1", (20000, 20000)).save(path, format="PNG")


# relative path -> (fate, detail): image (processed), mask (raw only), corrupt (reason), ignored
def build_corpus(root: Path, outside: Path, dangling_link: bool = True) -> dict[str, tuple[str, str]]:
    expected: dict[str, tuple[str, str]] = {}
    outside.mkdir(parents=True, exist_ok=True)
    _png(outside / "secret.png", np.full((9, 9), 77, np.uint8))
    _png(outside / "folder" / "also secret.png", np.full((9, 9), 78, np.uint8))

    def image(rel: str, array: np.ndarray | None = None, seed: int = 0, writer=None, detail: str = "") -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if writer is not None:
            writer(path)
        else:
            _png(path, array if array is not None else _noise((24, 30, 3), seed))
        expected[rel] = ("image", detail)

    def mask(rel: str) -> None:
        # a lesion-like blob at a per-mask place: masks differ, as real ones do
        blob = np.zeros((24, 30), np.uint8)
        offset = 2 * sum(kind == "mask" for kind, _ in expected.values())
        blob[offset:offset + 8, offset:offset + 10] = 255
        _png(root / rel, blob)
        expected[rel] = ("mask", "")

    def corrupt(rel: str, writer, reason: str) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        writer(path)
        expected[rel] = ("corrupt", reason)

    def ignored(rel: str, make) -> None:
        make(root / rel)
        expected[rel] = ("ignored", "")

    # benign: awkward names, modes and layout
    image("benign/benign (1).png", seed=1)
    mask("benign/benign (1)_mask.png")
    image("benign/with space (2).png", seed=2)
    image("benign/ünïcødé 超声 (3).png", seed=3)
    image("benign/-leading-dash.png", seed=4)
    image("benign/jpeg named.png", writer=lambda p: Image.fromarray(_noise((24, 30, 3), 5)).save(p, format="JPEG"),
          detail="wrong extension")
    image("benign/gray16.png", writer=_gray16, detail="16-bit")
    image("benign/palette transparent.png", writer=_palette_transparent, detail="palette")
    image("benign/nested/deeper/inner (4).png", seed=6)
    duplicate = _noise((24, 30, 3), 99)
    image("benign/dup.png", duplicate)
    mask("benign/lonely (9)_mask.png")  # a mask without its image
    corrupt("benign/zero.png", lambda p: p.write_bytes(b""), "cannot identify image file")
    corrupt("benign/truncated.png", lambda p: _truncated(p, "PNG", 7), "truncated")
    ignored("benign/outside link.png", lambda p: os.symlink(outside / "secret.png", p))
    ignored("benign/outside folder", lambda p: os.symlink(outside / "folder", p, target_is_directory=True))
    ignored("benign/notes.txt", lambda p: p.write_text("scanner notes\n"))
    if dangling_link:
        ignored("benign/dangling.png", lambda p: os.symlink(outside / "gone.png", p))
    # malignant: modes and shapes
    image("malignant/cmyk.jpg", writer=lambda p: Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(p, quality=95),
          detail="cmyk red")
    image("malignant/exif rotated.jpg", writer=_exif_rotated, detail="exif 6")
    image("malignant/one pixel.png", np.full((1, 1), 123, np.uint8), detail="1x1")
    image("malignant/elongated.png", _noise((3, 2000), 8), detail="2000x3")
    image("malignant/dup copy.png", duplicate)
    image("malignant/no mask (5).png", seed=9)  # an image without a mask
    corrupt("malignant/truncated.jpg", lambda p: _truncated(p, "JPEG", 10), "truncated")
    corrupt("malignant/text.png", lambda p: p.write_text("this is not a PNG\n"), "cannot identify image file")
    corrupt("malignant/bomb.png", _bomb, "decompression bomb")
    # normal: plain images, some with masks
    for i in range(7):
        image(f"normal/normal ({i}).png", seed=20 + i)
        if i % 2:
            mask(f"normal/normal ({i})_mask.png")
    return expected


def by_fate(expected: dict, fate: str) -> set[str]:
    return {rel for rel, (kind, _) in expected.items() if kind == fate}


def detail(expected: dict, text: str) -> str:
    return next(rel for rel, (_, d) in expected.items() if d == text)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    base = tmp_path_factory.mktemp("corpus")
    root = base / "source"
    expected = build_corpus(root, base / "outside")
    hashes = tree_hashes(root)
    yield root, expected
    assert tree_hashes(root) == hashes, "a stage changed its source"


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# -------------------------------------------------------------------------------- stage by stage


def test_ingest_fails_listing_every_corrupt_file_with_its_reason(corpus, tmp_path):
    source, expected = corpus
    with pytest.raises(CorruptImageError) as info:
        ingest(source, tmp_path / "raw", tmp_path / "raw.csv", workers=1)
    assert sorted(info.value.paths) == sorted(str(source / rel) for rel in by_fate(expected, "corrupt"))
    message = str(info.value)
    for rel in by_fate(expected, "corrupt"):
        line = next(line for line in message.splitlines() if str(source / rel) in line)
        assert expected[rel][1] in line, line
    assert not (tmp_path / "raw").exists() and not (tmp_path / "raw.csv").exists()


@pytest.fixture(scope="module")
def stages(corpus, tmp_path_factory):
    """The corpus through ingest (skip_corrupt) -> strip_masks -> resize -> split -> augment."""
    source, _ = corpus
    work = tmp_path_factory.mktemp("stages")
    out = {"work": work}
    out["ingest"] = ingest(source, work / "raw", work / "raw.csv", skip_corrupt=True, workers=1).to_dict()
    out["strip"] = strip_masks(work / "raw", work / "stripped", MASK_PATTERNS)
    out["resize"] = resize_images(work / "stripped", work / "resized", SIZE, SIZE, "gray", "lanczos", workers=1)
    split = split_rows(list_images(work / "resized"), 0.1, 0)
    write_csv(work / "split.csv", split, SPLIT_FIELDS)
    out["split"] = split
    out["augment"] = augment(work / "resized", work / "split.csv", work / "augmented", work / "augmented.csv",
                             protocol="honest", ops=BALANCING_OPS, target="max", seed=0,
                             tutorial_ops=TUTORIAL_OPS, test_size=0.1, split_seed=0, workers=1)
    return out


def test_ingest_skip_corrupt_reports_corrupt_ignored_and_duplicates(corpus, stages):
    source, expected = corpus
    report, work = stages["ingest"], stages["work"]
    assert {row["path"]: row["error"] for row in report["corrupt_skipped"]}.keys() == by_fate(expected, "corrupt")
    for row in report["corrupt_skipped"]:
        assert expected[row["path"]][1] in row["error"], row
    assert set(report["ignored"]) == by_fate(expected, "ignored")
    dup_hash = hashlib.sha256((source / "benign/dup.png").read_bytes()).hexdigest()
    assert report["duplicates_across_classes"] == [
        {"sha256": dup_hash, "paths": ["benign/dup.png", "malignant/dup copy.png"]}]
    # data/raw: every image and mask, byte for byte; nothing else
    kept = by_fate(expected, "image") | by_fate(expected, "mask")
    raw = work / "raw"
    assert {p.relative_to(raw).as_posix() for p in raw.rglob("*") if p.is_file()} == kept
    for rel in kept:
        assert (raw / rel).read_bytes() == (source / rel).read_bytes()
    assert {row["path"] for row in _read_csv(work / "raw.csv")} == kept
    assert not [p for p in raw.rglob("*") if p.is_symlink()]


def test_strip_masks_keeps_images_with_or_without_masks(corpus, stages):
    _, expected = corpus
    stripped = stages["work"] / "stripped"
    assert {p.relative_to(stripped).as_posix() for p in stripped.rglob("*") if p.is_file()} == by_fate(expected, "image")
    assert stages["strip"]["n_masks"] == len(by_fate(expected, "mask"))


def test_resize_converts_every_mode_and_shape_correctly(corpus, stages):
    _, expected = corpus
    resized = stages["work"] / "resized"

    def out(rel: str) -> np.ndarray:
        with Image.open(resized / Path(rel).with_suffix(".png")) as image:
            assert image.size == (SIZE, SIZE) and image.mode == "L", rel
            return np.asarray(image)

    produced = {p.relative_to(resized).as_posix() for p in resized.rglob("*.png")}
    assert produced == {Path(rel).with_suffix(".png").as_posix() for rel in by_fate(expected, "image")}
    for rel in by_fate(expected, "image"):
        out(rel)
    rotated = out(detail(expected, "exif 6")).astype(int)  # EXIF applied: top black, bottom white
    assert rotated[:12].max() < 40 and rotated[-12:].min() > 215
    gradient = out(detail(expected, "16-bit")).astype(int)  # scaled by range, not clipped to white
    assert gradient[:, 0].max() < 10 and gradient[:, -1].min() > 245 and 100 < gradient.mean() < 155
    palette = out(detail(expected, "palette")).astype(int)  # transparent -> black background
    assert palette[:, :12].max() < 10 and palette[:, -12:].min() > 245
    assert abs(out(detail(expected, "cmyk red")).astype(int) - 76).max() <= 6  # luma of pure red
    assert abs(out(detail(expected, "1x1")).astype(int) - 123).max() <= 1
    assert out(detail(expected, "2000x3")).std() > 0
    assert out(detail(expected, "wrong extension")).std() > 0


def test_split_and_augment_keep_every_image_in_its_class(corpus, stages):
    _, expected = corpus
    images = {Path(rel).with_suffix(".png").as_posix(): rel.split("/", 1)[0] for rel in by_fate(expected, "image")}
    assert {row["path"]: row["class"] for row in stages["split"]} == images
    work = stages["work"]
    plan = _read_csv(work / "augmented.csv")
    for row in plan:
        assert row["class"] == images[row["source"]], row
        with Image.open(work / "augmented" / row["path"]) as copy, \
                Image.open(work / "resized" / row["source"]) as original:
            op = row["op"]
            want = np.asarray(original) if op == "none" else apply_op(np.asarray(original), op)
            assert np.array_equal(np.asarray(copy), want), row
    train = Counter(row["class"] for row in plan if row["split"] == "train")
    assert len(set(train.values())) == 1, train


# ------------------------------------------------------------------------------------ edge cases


def test_nothing_outside_the_source_is_opened_through_a_link(corpus, tmp_path):
    source, _ = corpus
    outside = source.parent / "outside"
    opened: list[str] = []

    def hook(event: str, args: tuple) -> None:
        if recording and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            opened.append(os.path.realpath(os.fsdecode(args[0])))

    recording = True
    sys.addaudithook(hook)  # audit hooks cannot be removed: this one stops recording below
    try:
        ingest(source, tmp_path / "raw", tmp_path / "raw.csv", skip_corrupt=True, workers=1)
    finally:
        recording = False
    assert any(path.startswith(str(source.resolve())) for path in opened), "the hook saw no file"
    assert not [path for path in opened if path.startswith(str(outside.resolve()))]


def test_empty_class_folder_fails_even_with_skip_corrupt(corpus, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(corpus[0], source, symlinks=True)
    (source / "cysts").mkdir()
    (source / "cysts" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    with pytest.raises(EmptyClassError) as info:
        ingest(source, tmp_path / "raw", tmp_path / "raw.csv", skip_corrupt=True, workers=1)
    assert str(source / "cysts") in str(info.value)
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize("pixels, expected", [(1500, "DecompressionBombWarning"), (3000, "exceeds limit")])
def test_decompression_bomb_band_is_refused_by_ingest(tmp_path, monkeypatch, pixels, expected):
    """Pillow raises above twice its limit but only warns between 1x and 2x: ingest refuses both."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    source = tmp_path / "source"
    for cls in ("a", "b"):
        _png(source / cls / "small.png", _noise((20, 20), 1))
    _png(source / "a" / "large.png", _noise((pixels // 50, 50), 2))
    with pytest.raises(CorruptImageError) as info:
        ingest(source, tmp_path / "raw", tmp_path / "raw.csv", workers=1)
    assert info.value.paths == [str(source / "a" / "large.png")]
    report = ingest(source, tmp_path / "raw", tmp_path / "raw.csv", skip_corrupt=True, workers=1).to_dict()
    assert [row["path"] for row in report["corrupt_skipped"]] == ["a/large.png"]
    assert "decompression bomb" in report["corrupt_skipped"][0]["error"]
    assert not (tmp_path / "raw" / "a" / "large.png").exists()


def test_resize_refuses_a_decompression_bomb_that_reached_it(tmp_path):
    folder = tmp_path / "stripped" / "a"
    folder.mkdir(parents=True)
    _bomb(folder / "bomb.png")
    with pytest.raises(CorruptImageError) as info:
        resize_images(tmp_path / "stripped", tmp_path / "resized", SIZE, SIZE, "gray", "lanczos", workers=1)
    assert "bomb.png" in str(info.value) and "decompression bomb" in str(info.value)
    assert not (tmp_path / "resized").exists()
