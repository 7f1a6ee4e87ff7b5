"""The synthetic BUSI-like phantom dataset: layout, naming, masks, contrast and determinism."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclust.core import phantoms
from imgclust.errors import ParamError
from imgclust.stages import synthesize
from support.cli import run_cli
from support.project import write_params

CLASSES = ("benign", "malignant", "normal")
IMAGE_NAME = re.compile(r"^(benign|malignant|normal) \((\d+)\)\.png$")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "data"
    return out, synthesize.synthesize(out, 40, seed=3)


def _images(root: Path, class_name: str) -> list[Path]:
    return sorted(p for p in (root / class_name).iterdir() if IMAGE_NAME.match(p.name))


def _mask_path(image: Path, suffix: str = "_mask") -> Path:
    return image.with_name(f"{image.stem}{suffix}.png")


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(steps):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


@pytest.mark.parametrize("n", [6, 7, 10, 40, 120, 121, 500])
def test_class_counts_sum_ratios_and_minimum(n):
    counts = phantoms.class_counts(n)
    assert list(counts) == list(phantoms.CLASS_FRACTIONS)
    assert sum(counts.values()) == n
    assert min(counts.values()) >= 2
    if n >= 40:
        for name, fraction in phantoms.CLASS_FRACTIONS.items():
            assert abs(counts[name] / n - fraction) < 0.03
        assert counts["benign"] > counts["malignant"] > counts["normal"]


def test_class_counts_rejects_too_few_images():
    with pytest.raises(ParamError, match=r"synthesize\.n_images.*6"):
        phantoms.class_counts(5)


def test_synthesize_rejects_too_few_images_without_writing(tmp_path):
    with pytest.raises(ParamError):
        synthesize.synthesize(tmp_path / "out", 3, seed=0)
    assert not (tmp_path / "out").exists()


def test_summary_and_layout(dataset):
    root, summary = dataset
    assert summary["n_images"] == 40 and summary["seed"] == 3
    assert summary["images"] == phantoms.class_counts(40)
    assert sorted(p.name for p in root.iterdir()) == list(CLASSES)
    n_masks = 0
    for name in CLASSES:
        images = _images(root, name)
        numbers = sorted(int(IMAGE_NAME.match(p.name).group(2)) for p in images)
        assert numbers == list(range(1, summary["images"][name] + 1))
        masks = sorted(p for p in (root / name).iterdir() if "_mask" in p.name)
        n_masks += len(masks)
        # every file is an image or one of its masks, named BUSI style with spaces and parentheses
        assert len(images) + len(masks) == len(list((root / name).iterdir()))
        for image in images:
            assert " (" in image.name and image.name.endswith(").png")
            assert _mask_path(image).is_file()
    assert summary["masks"] == n_masks


def test_some_lesion_images_have_a_second_mask(dataset):
    root, _ = dataset
    second = [p for name in CLASSES for p in (root / name).glob("*_mask_1.png")]
    assert second, "expected a few `_mask_1.png` files"
    for mask_1 in second:
        assert not mask_1.name.startswith("normal")
        image = mask_1.with_name(mask_1.name.replace("_mask_1.png", ".png"))
        assert image.is_file()
        first = np.asarray(Image.open(_mask_path(image))) > 0
        extra = np.asarray(Image.open(mask_1)) > 0
        assert extra.any() and not (first & extra).any()


def test_images_are_rgb_gray_varied_and_not_square(dataset):
    root, _ = dataset
    sizes = set()
    for name in CLASSES:
        for path in _images(root, name):
            with Image.open(path) as image:
                assert image.mode == "RGB"
                array = np.asarray(image)
            assert (array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all()
            h, w = array.shape[:2]
            assert w != h
            assert 220 <= w <= 340 and 180 <= h <= 260
            sizes.add((w, h))
    assert len(sizes) > 10


def test_masks_match_their_image_and_class(dataset):
    root, _ = dataset
    for name in CLASSES:
        for path in _images(root, name):
            with Image.open(path) as image:
                size = image.size
            for mask_path in [_mask_path(path), _mask_path(path, "_mask_1")]:
                if not mask_path.exists():
                    continue
                with Image.open(mask_path) as mask_image:
                    assert mask_image.mode == "L" and mask_image.size == size
                    mask = np.asarray(mask_image)
                assert set(np.unique(mask)) <= {0, 255}
                if name == "normal":
                    assert not mask.any()
                else:
                    assert mask.any()


def test_lesions_are_darker_than_surrounding_tissue(dataset):
    root, _ = dataset
    for name in ("benign", "malignant"):
        for path in _images(root, name):
            gray = np.asarray(Image.open(path))[..., 0].astype(float)
            lesion = np.asarray(Image.open(_mask_path(path))) > 0
            ring = _dilate(lesion, 12) & ~_dilate(lesion, 3) & (gray > 0)  # skip the black fan edge
            assert gray[lesion].mean() < 0.75 * gray[ring].mean(), path.name


def test_same_seed_gives_identical_bytes(tmp_path):
    a = synthesize.synthesize(tmp_path / "a", 14, seed=7)
    b = synthesize.synthesize(tmp_path / "b", 14, seed=7)
    assert a == b
    assert _tree_hashes(tmp_path / "a") == _tree_hashes(tmp_path / "b")


def test_images_do_not_depend_on_dataset_size(tmp_path):
    synthesize.synthesize(tmp_path / "small", 6, seed=7)
    synthesize.synthesize(tmp_path / "large", 14, seed=7)
    small, large = _tree_hashes(tmp_path / "small"), _tree_hashes(tmp_path / "large")
    assert small.items() <= large.items()


def test_different_seed_gives_different_bytes(tmp_path):
    synthesize.synthesize(tmp_path / "a", 6, seed=0)
    synthesize.synthesize(tmp_path / "b", 6, seed=1)
    a, b = _tree_hashes(tmp_path / "a"), _tree_hashes(tmp_path / "b")
    assert a.keys() == b.keys()
    images = [k for k in a if "_mask" not in k]
    assert all(a[k] != b[k] for k in images)


def test_rerun_replaces_the_output_folder(tmp_path):
    out = tmp_path / "out"
    synthesize.synthesize(out, 20, seed=0)
    synthesize.synthesize(out, 6, seed=0)
    assert sum(len(_images(out, name)) for name in CLASSES) == 6
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp folder left behind


def test_cli_command(tmp_path):
    out = tmp_path / "cli"
    write_params(tmp_path, synthesize__n_images=8, synthesize__seed=2)
    result = run_cli("synthesize", "--out", str(out), cwd=tmp_path)
    assert "8 images" in result.stdout
    assert len((result.stdout + result.stderr).strip().splitlines()) == 1
    assert sum(len(_images(out, name)) for name in CLASSES) == 8


def test_cli_rejects_too_few_images(tmp_path):
    write_params(tmp_path, synthesize__n_images=2)
    result = run_cli("synthesize", "--out", str(tmp_path / "x"), cwd=tmp_path, check=False)
    assert result.returncode == 2  # a ParamError (an ImgclustError), reported without a traceback
    assert "synthesize.n_images" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x").exists()


def test_module_doc_first_line_is_the_cli_help(tmp_path):
    first_line = "Stage synthesize: generate the embedded synthetic BUSI-like phantom dataset."
    assert synthesize.__doc__.splitlines()[0] == first_line
    assert first_line in run_cli("synthesize", "--help", cwd=tmp_path).stdout
