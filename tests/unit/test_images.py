"""Decoding images of every Pillow mode to 8-bit gray/RGB arrays (imgclust.core.images)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclust.core.images import (
    RESAMPLE_FILTERS,
    check_image,
    convert,
    load_array,
    open_image,
    pil_mode,
    png_bytes,
    resample_filter,
    save_new_png,
)
from imgclust.errors import CorruptImageError, ParamError

EXIF_ORIENTATION = 0x0112


def _rng_gray(shape=(24, 32), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _check_8bit(array: np.ndarray, color_mode: str, hw: tuple[int, int]) -> None:
    assert array.dtype == np.uint8
    assert array.shape == (hw if color_mode == "gray" else (*hw, 3))


# ---------------------------------------------------------------------------------------- modes


@pytest.mark.parametrize("color_mode", ["gray", "rgb"])
def test_rgba_png_is_composited_onto_black(tmp_path, color_mode):
    rgba = np.zeros((4, 6, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red everywhere
    rgba[:2, :, 3] = 255  # top half opaque
    rgba[2:, :, 3] = 0  # bottom half fully transparent
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, mode="RGBA").save(path)

    assert open_image(path).mode == "RGBA"
    out = load_array(path, color_mode)
    _check_8bit(out, color_mode, (4, 6))
    if color_mode == "rgb":
        assert (out[:2] == [255, 0, 0]).all()
        assert (out[2:] == 0).all()
    else:
        red_as_gray = np.asarray(Image.new("RGB", (1, 1), (255, 0, 0)).convert("L"))[0, 0]
        assert (out[:2] == red_as_gray).all() and red_as_gray > 0
        assert (out[2:] == 0).all()


def test_palette_png_with_transparency_index(tmp_path):
    palette = Image.new("P", (4, 2), 1)
    palette.putpalette([255, 255, 255, 0, 255, 0] + [0] * (256 * 3 - 6))
    palette.putpixel((0, 0), 0)  # index 0 (white) is the transparent one
    path = tmp_path / "pal.png"
    palette.save(path, transparency=0)

    image = open_image(path)
    assert image.mode == "P" and "transparency" in image.info
    rgb = load_array(path, "rgb")
    _check_8bit(rgb, "rgb", (2, 4))
    assert (rgb[0, 0] == 0).all(), "the transparent (white) pixel must become black"
    assert (rgb[0, 1] == [0, 255, 0]).all() and (rgb[1] == [0, 255, 0]).all()
    gray = load_array(path, "gray")
    assert gray[0, 0] == 0 and gray[1, 3] > 100


def test_palette_png_without_transparency(tmp_path):
    palette = Image.new("P", (3, 3), 0)
    palette.putpalette([10, 20, 250] + [0] * (256 * 3 - 3))
    path = tmp_path / "pal_opaque.png"
    palette.save(path)
    assert (load_array(path, "rgb") == [10, 20, 250]).all()


def test_16bit_grayscale_png_maps_full_range_without_clipping(tmp_path):
    values = np.array([[0, 1000, 16384, 32768], [49152, 65535, 255, 256]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert open_image(path).mode.startswith("I;16")

    gray = load_array(path, "gray")
    expected = np.rint(values / 65535.0 * 255.0).astype(np.uint8)
    np.testing.assert_array_equal(gray, expected)
    # not clipped: values above 255 keep their order instead of all becoming 255
    assert gray[0, 1] < gray[0, 2] < gray[0, 3] < gray[1, 0] < gray[1, 1] == 255
    rgb = load_array(path, "rgb")
    _check_8bit(rgb, "rgb", values.shape)
    np.testing.assert_array_equal(rgb[..., 0], gray)
    np.testing.assert_array_equal(rgb[..., 2], gray)


def test_cmyk_jpeg_is_decoded_to_rgb(tmp_path):
    cmyk = Image.new("CMYK", (16, 8), (0, 255, 255, 0))  # pure red
    path = tmp_path / "cmyk.jpg"
    cmyk.save(path, quality=95)
    assert open_image(path).mode == "CMYK"
    rgb = load_array(path, "rgb").astype(int)
    _check_8bit(rgb.astype(np.uint8), "rgb", (8, 16))
    assert np.abs(rgb - [255, 0, 0]).max() <= 4
    gray = load_array(path, "gray")
    _check_8bit(gray, "gray", (8, 16))


@pytest.mark.parametrize("orientation, bright_half", [(6, "top"), (8, "bottom")])
def test_exif_rotated_jpeg_is_turned_upright(tmp_path, orientation, bright_half):
    stored = np.zeros((20, 30), dtype=np.uint8)  # stored 30 wide, 20 tall
    stored[:, :15] = 230  # left half bright
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    path = tmp_path / f"rot{orientation}.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    with Image.open(path) as raw:
        assert raw.size == (30, 20)

    image = open_image(path)
    assert image.size == (20, 30), "width and height are swapped by the EXIF rotation"
    gray = load_array(path, "gray")
    assert gray.shape == (30, 20)
    top, bottom = gray[:15].mean(), gray[15:].mean()
    # orientation 6: rotate 90 deg clockwise to display (left -> top); 8: counter-clockwise
    assert (top > 200 and bottom < 30) if bright_half == "top" else (bottom > 200 and top < 30)
    assert load_array(path, "rgb").shape == (30, 20, 3)


def test_la_png_composites_gray_with_alpha(tmp_path):
    la = np.stack([np.full((2, 2), 200, np.uint8), np.array([[255, 0], [128, 255]], np.uint8)], axis=-1)
    path = tmp_path / "la.png"
    Image.fromarray(la, mode="LA").save(path)
    assert open_image(path).mode == "LA"
    np.testing.assert_array_equal(load_array(path, "gray"), [[200, 0], [100, 200]])
    assert load_array(path, "rgb").shape == (2, 2, 3)


def test_1bit_png_becomes_0_or_255(tmp_path):
    bits = np.array([[True, False, True], [False, False, True]])
    path = tmp_path / "bits.png"
    Image.fromarray(bits).save(path)
    assert open_image(path).mode == "1"
    np.testing.assert_array_equal(load_array(path, "gray"), bits.astype(np.uint8) * 255)
    rgb = load_array(path, "rgb")
    np.testing.assert_array_equal(rgb[..., 1], bits.astype(np.uint8) * 255)


def test_float_tiff_is_scaled_by_its_value_range(tmp_path):
    values = np.array([[-1.0, 0.0], [1.0, 3.0]], dtype=np.float32)
    path = tmp_path / "float.tif"
    Image.fromarray(values, mode="F").save(path)
    assert open_image(path).mode == "F"
    np.testing.assert_array_equal(load_array(path, "gray"), [[0, 64], [128, 255]])


def test_convert_in_memory_modes():
    gray = _rng_gray((5, 7))
    assert convert(Image.fromarray(gray), "gray").mode == "L"
    rgb = convert(Image.fromarray(gray), "rgb")
    assert rgb.mode == "RGB" and rgb.size == (7, 5)
    np.testing.assert_array_equal(np.asarray(rgb)[..., 0], gray)
    as32 = Image.fromarray(np.array([[0, 65535], [32768, 1]], dtype=np.int32), mode="I")
    np.testing.assert_array_equal(np.asarray(convert(as32, "gray")), [[0, 255], [128, 0]])
    constant = Image.fromarray(np.full((2, 2), 5.0, np.float32), mode="F")
    np.testing.assert_array_equal(np.asarray(convert(constant, "gray")), np.zeros((2, 2)))


def test_load_array_resizes_to_width_height(tmp_path):
    path = tmp_path / "g.png"
    Image.fromarray(_rng_gray((24, 32))).save(path)
    for name in RESAMPLE_FILTERS:
        out = load_array(path, "gray", size=(64, 48), resample=name)
        assert out.shape == (48, 64) and out.dtype == np.uint8
    assert load_array(path, "rgb", size=(10, 12)).shape == (12, 10, 3)
    # no size: the original pixels, untouched
    np.testing.assert_array_equal(load_array(path, "gray"), _rng_gray((24, 32)))


# --------------------------------------------------------------------------------------- errors


def _truncated(tmp_path: Path, suffix: str) -> Path:
    rgb = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    whole = tmp_path / f"whole{suffix}"
    Image.fromarray(rgb).save(whole)
    data = whole.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    return cut


@pytest.mark.parametrize("kind", ["truncated_png", "truncated_jpg", "text_png", "empty_png"])
def test_undecodable_files_raise_corrupt_image_error_naming_the_path(tmp_path, kind):
    if kind == "truncated_png":
        path = _truncated(tmp_path, ".png")
    elif kind == "truncated_jpg":
        path = _truncated(tmp_path, ".jpg")
    elif kind == "text_png":
        path = tmp_path / "notes.png"
        path.write_text("this is not an image\n")
    else:
        path = tmp_path / "empty.png"
        path.write_bytes(b"")
    for call in (lambda: open_image(path), lambda: open_image(path, "gray"), lambda: load_array(path, "rgb")):
        with pytest.raises(CorruptImageError) as info:
            call()
        assert str(path) in str(info.value)
        assert info.value.paths == [str(path)]


@pytest.mark.parametrize("kind", ["truncated_png", "truncated_jpg", "text_png", "empty_png", "altered_png"])
def test_check_image_refuses_what_open_image_refuses_and_an_altered_png(tmp_path, kind):
    """ingest's integrity check: a PNG whose pixel data changed fails its chunk CRC, without
    the pixels being decoded; the other failures are those of a full decode."""
    if kind == "altered_png":
        path = tmp_path / "altered.png"
        Image.fromarray(_rng_gray((40, 40))).save(path)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF  # inside IDAT
        path.write_bytes(bytes(data))
    elif kind.startswith("truncated"):
        path = _truncated(tmp_path, ".png" if kind == "truncated_png" else ".jpg")
    else:
        path = tmp_path / "not.png"
        path.write_bytes(b"" if kind == "empty_png" else b"this is not an image\n")
    with pytest.raises(CorruptImageError) as info:
        check_image(path, path.read_bytes())
    assert str(path) in str(info.value) and info.value.paths == [str(path)]
    if kind.startswith("truncated"):
        assert "truncated" in str(info.value)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF"])
def test_check_image_reports_the_displayed_size_and_mode_as_open_image(tmp_path, fmt):
    """EXIF orientation 6 (a quarter turn) swaps width and height, for a JPEG and for a PNG whose
    eXIf chunk precedes its pixels; the mode is the stored one. (Pillow orients a TIFF on its own
    way; check_image must only agree with open_image there.)"""
    path = tmp_path / f"rotated.{fmt.lower()}"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_rng_gray((20, 40))).save(path, format=fmt, exif=exif.tobytes())
    image = open_image(path)
    assert check_image(path, path.read_bytes()) == (image.width, image.height, image.mode)
    if fmt != "TIFF":
        assert (image.width, image.height, image.mode) == (20, 40, "L")


def test_unknown_resample_or_mode_is_a_param_error(tmp_path):
    path = tmp_path / "g.png"
    Image.fromarray(_rng_gray()).save(path)
    with pytest.raises(ParamError, match="lanczos"):
        resample_filter("cubic-ish")
    with pytest.raises(ParamError, match="nearest"):
        load_array(path, "gray", size=(8, 8), resample="sharpest")
    with pytest.raises(ParamError, match="gray"):
        pil_mode("cmyk")
    with pytest.raises(ParamError, match="rgb"):
        convert(Image.fromarray(_rng_gray()), "grey")
    with pytest.raises(ParamError):
        open_image(path, "L")
    with pytest.raises(ParamError):
        load_array(path, "color")


@pytest.mark.parametrize(
    "shape", [(1, 1), (1, 7), (5, 1), (190, 190), (33, 250), (1, 1, 3), (2, 9, 3), (190, 190, 3)], ids=str
)
def test_png_bytes_decode_to_the_array_itself(shape, tmp_path):
    """The stages' own PNG writer (gray and RGB, "Sub" filter): any reader gets the very pixels back,
    whatever the array's memory layout; check_image accepts what it writes."""
    array = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    for variant in (array, np.asfortranarray(array), array[::-1], np.ascontiguousarray(array[:, ::-1])):
        data = png_bytes(variant)
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "PNG" and image.mode == ("L" if len(shape) == 2 else "RGB")
            assert np.array_equal(np.asarray(image), variant)
    path = tmp_path / "a.png"
    save_new_png(array, path)
    assert path.read_bytes() == png_bytes(array)
    assert check_image(path, path.read_bytes()) == (shape[1], shape[0], "L" if len(shape) == 2 else "RGB")


def test_png_bytes_of_other_arrays_go_through_pillow():
    """16-bit gray and RGBA are not the stages' images; they are still written losslessly."""
    for array in (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000, np.full((3, 4, 4), 7, np.uint8)):
        with Image.open(io.BytesIO(png_bytes(array))) as image:
            assert np.array_equal(np.asarray(image), array)
