"""resize: every image of a pack to one size and color mode, packed as PNG (imgclust.stages.resize)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclust.core.images import RESAMPLE_FILTERS, load_array
from imgclust.errors import CorruptImageError, ImgclustError, OutputCollisionError, ParamError
from imgclust.stages.resize import resize_images
from support.cli import run_cli
from support.packs import pack_folder, pack_of, unpacked
from support.project import write_params

EXIF_ORIENTATION = 0x0112


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _mixed(root: Path) -> Path:
    """Images of many modes, sizes and formats in two class folders (one nested), as files (the
    notes and hidden file are ingest's to leave out: tests/unit/test_ingest.py)."""
    rng = np.random.default_rng(0)
    a, b = root / "benign", root / "malignant"
    a.mkdir(parents=True)
    (b / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (50, 70), dtype=np.uint8)).save(a / "gray.png")
    Image.fromarray(rng.integers(0, 256, (80, 60, 3), dtype=np.uint8)).save(a / "color.jpg")
    Image.fromarray(rng.integers(0, 256, (33, 41, 4), dtype=np.uint8), "RGBA").save(a / "alpha.png")
    Image.fromarray(rng.integers(0, 65536, (40, 40), dtype=np.uint16)).save(a / "deep.png")
    Image.new("CMYK", (30, 20), (0, 255, 255, 0)).save(b / "cmyk.jpg")
    palette = Image.new("P", (25, 35), 1)
    palette.putpalette([255, 255, 255, 0, 0, 255] + [0] * 762)
    palette.save(b / "pal.gif", transparency=0)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    Image.fromarray(rng.integers(0, 256, (20, 60), dtype=np.uint8)).save(b / "sub" / "rotated.jpg", exif=exif)
    Image.fromarray(rng.integers(0, 2, (17, 23)).astype(bool)).save(b / "sub" / "bits.bmp")
    (b / "notes.txt").write_text("not an image")
    (b / ".DS_Store").write_bytes(b"\x00")
    return root


EXPECTED_NAMES = {
    "benign/gray.png",
    "benign/color.png",
    "benign/alpha.png",
    "benign/deep.png",
    "malignant/cmyk.png",
    "malignant/pal.png",
    "malignant/sub/rotated.png",
    "malignant/sub/bits.png",
}


@pytest.fixture(scope="module")
def mixed_files(tmp_path_factory) -> Path:
    """The images of ``mixed`` as files, to compare with."""
    return _mixed(tmp_path_factory.mktemp("resize") / "stripped.src")


@pytest.fixture(scope="module")
def mixed(mixed_files) -> Path:
    """The pack strip_masks writes of ``_mixed``'s images."""
    return pack_of(mixed_files, mixed_files.with_name("stripped"))


@pytest.mark.parametrize("color_mode, pil", [("gray", "L"), ("rgb", "RGB")])
def test_every_output_is_190x190_png_in_the_requested_mode(tmp_path, mixed, color_mode, pil):
    out = tmp_path / "resized"
    result = resize_images(mixed, out, 190, 190, color_mode, "lanczos", workers=1)
    files = unpacked(out)
    assert _files(files) == EXPECTED_NAMES, "outputs keep the inputs' names with a .png suffix"
    for rel in EXPECTED_NAMES:
        with Image.open(files / rel) as image:
            assert image.format == "PNG"
            assert image.size == (190, 190) and image.mode == pil
    assert result["images_per_class"] == {"benign": 4, "malignant": 4}
    assert result["n_images"] == 8


def test_output_pixels_are_the_decoded_resized_input(tmp_path, mixed, mixed_files):
    out = tmp_path / "resized"
    resize_images(mixed, out, 64, 48, "gray", "bicubic", workers=1)
    files = unpacked(out)
    for rel in EXPECTED_NAMES:
        source = next((mixed_files / rel).parent.glob(Path(rel).stem + ".*"))
        expected = load_array(source, "gray", (64, 48), "bicubic")
        np.testing.assert_array_equal(np.asarray(Image.open(files / rel)), expected)


def test_non_square_size_is_width_by_height(tmp_path, mixed):
    out = tmp_path / "resized"
    resize_images(mixed, out, 64, 48, "rgb", "lanczos", workers=1)
    files = unpacked(out)
    for rel in EXPECTED_NAMES:
        with Image.open(files / rel) as image:
            assert (image.width, image.height) == (64, 48)
            assert np.asarray(image).shape == (48, 64, 3)


@pytest.mark.parametrize("resample", sorted(RESAMPLE_FILTERS))
def test_every_resample_filter_works(tmp_path, resample):
    src = tmp_path / "in"
    (src / "c").mkdir(parents=True)
    image = np.random.default_rng(3).integers(0, 256, (30, 40), dtype=np.uint8)
    Image.fromarray(image).save(src / "c" / "x.png")
    pack_folder(src)
    resize_images(src, tmp_path / "out", 20, 15, "gray", resample, workers=1)
    resized = np.asarray(Image.open(unpacked(tmp_path / "out") / "c" / "x.png"))
    expected = np.asarray(Image.fromarray(image).resize((20, 15), RESAMPLE_FILTERS[resample]))
    np.testing.assert_array_equal(resized, expected)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(resample="cubic"), "resample"),
        (dict(color_mode="grey"), "color mode"),
        (dict(width=0), "resize.width"),
        (dict(height=-5), "resize.height"),
    ],
)
def test_bad_params_are_param_errors_before_any_output(tmp_path, mixed, kwargs, match):
    args = dict(width=32, height=32, color_mode="gray", resample="lanczos") | kwargs
    with pytest.raises(ParamError, match=match):
        resize_images(mixed, tmp_path / "out", workers=1, **args)
    assert not (tmp_path / "out").exists()


def test_jpg_and_png_with_the_same_stem_collide(tmp_path):
    src = tmp_path / "in"
    (src / "benign").mkdir(parents=True)
    Image.new("L", (10, 10), 1).save(src / "benign" / "benign (1).png")
    Image.new("RGB", (10, 10), (1, 2, 3)).save(src / "benign" / "benign (1).jpg")
    pack_folder(src)
    with pytest.raises(OutputCollisionError) as info:
        resize_images(src, tmp_path / "out", 8, 8, "gray", "lanczos", workers=1)
    message = str(info.value)
    assert str(src / "benign" / "benign (1).png") in message
    assert str(src / "benign" / "benign (1).jpg") in message
    assert "rename" in message
    assert not (tmp_path / "out").exists()


def test_forty_images_through_the_process_pool(tmp_path):
    src = tmp_path / "in"
    rng = np.random.default_rng(7)
    sources = []
    for i in range(40):
        cls = ("a", "b", "c")[i % 3]
        path = src / cls / f"img{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (24 + i, 30, 3), dtype=np.uint8)).save(path)
        sources.append(path)
    pack_of(src, tmp_path / "stripped")
    out = tmp_path / "out"
    result = resize_images(tmp_path / "stripped", out, 16, 12, "gray", "bilinear", workers=2)
    assert result["n_images"] == 40
    assert result["images_per_class"] == {"a": 14, "b": 13, "c": 13}
    files = unpacked(out)
    for path in sources:
        rel = path.relative_to(src)
        expected = load_array(path, "gray", (16, 12), "bilinear")
        np.testing.assert_array_equal(np.asarray(Image.open(files / rel)), expected)


def test_missing_input_folder_is_an_imgclust_error_naming_it(tmp_path):
    missing = tmp_path / "data" / "stripped"
    with pytest.raises(ImgclustError) as info:
        resize_images(missing, tmp_path / "out", 8, 8, "gray", "lanczos", workers=1)
    assert str(missing) in str(info.value)


# --------------------------------------------------------------------------------------------- CLI


def test_cli_round_trip(tmp_path, mixed):
    out = tmp_path / "resized"
    write_params(tmp_path, resize__width=64, resize__height=48, resize__mode="rgb", resize__resample="hamming")
    proc = run_cli("resize", "--in", str(mixed), "--out", str(out), cwd=tmp_path)
    assert "8 images" in proc.stdout
    files = unpacked(out)
    assert _files(files) == EXPECTED_NAMES
    for rel in EXPECTED_NAMES:
        with Image.open(files / rel) as image:
            assert (image.size, image.mode) == ((64, 48), "RGB")


def test_cli_collision_exits_2_naming_both_files(tmp_path):
    src = tmp_path / "in"
    (src / "normal").mkdir(parents=True)
    Image.new("L", (10, 10)).save(src / "normal" / "n.png")
    Image.new("L", (10, 10)).save(src / "normal" / "n.jpg")
    pack_folder(src)
    write_params(tmp_path)
    proc = run_cli("resize", "--in", str(src), "--out", str(tmp_path / "out"), cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert str(src / "normal" / "n.png") in proc.stderr and str(src / "normal" / "n.jpg") in proc.stderr
    assert "Traceback" not in proc.stderr


def test_corrupt_image_in_the_pool_is_reported_by_path(tmp_path):
    src = tmp_path / "in"
    rng = np.random.default_rng(8)
    for i in range(36):
        path = src / ("a", "b")[i % 2] / f"img{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8)).save(path)
    victim = src / "b" / "img07.png"
    victim.write_bytes(victim.read_bytes()[:60])
    pack_folder(src)
    with pytest.raises(CorruptImageError) as info:
        resize_images(src, tmp_path / "out", 8, 8, "gray", "lanczos", workers=2)
    assert str(victim) in str(info.value)
    assert not (tmp_path / "out").exists()
