"""A corpus of awkward and broken inputs for the data stages, generated on the spot (used by
tests/unit/test_bad_inputs.py stage by stage, and by tests/system/test_data_stages_dvc.py under
``dvc repro``).

Each file of the corpus carries its expected fate: an image is processed, a mask is kept in
data/raw and stripped, a corrupt file is listed with its path and reason (and fails the stage
unless ingest.skip_corrupt), a link is ignored without being followed."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image


def noise(shape, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def _truncated(path: Path, fmt: str, seed: int) -> None:
    buffer = io.BytesIO()
    Image.fromarray(noise((48, 48, 3), seed)).save(buffer, format=fmt)
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


def write_bomb(path: Path) -> None:
    """A real PNG above Pillow's decompression-bomb limit (2 x 89.5 Mpx): 20000 x 20000 all-black
    1-bit pixels compress to about 50 kB."""
    Image.new("1", (20000, 20000)).save(path, format="PNG")


# relative path -> (fate, detail): image (processed), mask (raw only), corrupt (reason), ignored
def build_corpus(root: Path, outside: Path, dangling_link: bool = True) -> dict[str, tuple[str, str]]:
    expected: dict[str, tuple[str, str]] = {}
    outside.mkdir(parents=True, exist_ok=True)
    write_png(outside / "secret.png", np.full((9, 9), 77, np.uint8))
    write_png(outside / "folder" / "also secret.png", np.full((9, 9), 78, np.uint8))

    def image(rel: str, array: np.ndarray | None = None, seed: int = 0, writer=None, detail: str = "") -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if writer is not None:
            writer(path)
        else:
            write_png(path, array if array is not None else noise((24, 30, 3), seed))
        expected[rel] = ("image", detail)

    def mask(rel: str) -> None:
        # a lesion-like blob at a per-mask place: masks differ, as real ones do
        blob = np.zeros((24, 30), np.uint8)
        offset = 2 * sum(kind == "mask" for kind, _ in expected.values())
        blob[offset : offset + 8, offset : offset + 10] = 255
        write_png(root / rel, blob)
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
    image(
        "benign/jpeg named.png",
        writer=lambda p: Image.fromarray(noise((24, 30, 3), 5)).save(p, format="JPEG"),
        detail="wrong extension",
    )
    image("benign/gray16.png", writer=_gray16, detail="16-bit")
    image("benign/palette transparent.png", writer=_palette_transparent, detail="palette")
    image("benign/nested/deeper/inner (4).png", seed=6)
    duplicate = noise((24, 30, 3), 99)
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
    image(
        "malignant/cmyk.jpg",
        writer=lambda p: Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(p, quality=95),
        detail="cmyk red",
    )
    image("malignant/exif rotated.jpg", writer=_exif_rotated, detail="exif 6")
    image("malignant/one pixel.png", np.full((1, 1), 123, np.uint8), detail="1x1")
    image("malignant/elongated.png", noise((3, 2000), 8), detail="2000x3")
    image("malignant/dup copy.png", duplicate)
    image("malignant/no mask (5).png", seed=9)  # an image without a mask
    corrupt("malignant/truncated.jpg", lambda p: _truncated(p, "JPEG", 10), "truncated")
    corrupt("malignant/text.png", lambda p: p.write_text("this is not a PNG\n"), "cannot identify image file")
    corrupt("malignant/bomb.png", write_bomb, "decompression bomb")
    # normal: plain images, some with masks
    for i in range(7):
        image(f"normal/normal ({i}).png", seed=20 + i)
        if i % 2:
            mask(f"normal/normal ({i})_mask.png")
    return expected


def by_fate(expected: dict, fate: str) -> set[str]:
    return {rel for rel, (kind, _) in expected.items() if kind == fate}
