"""featurize (pixels method): the feature matrix, its index and meta, load_features, and input errors.

The data are real: the synthetic dataset run through the real ingest -> strip_masks -> resize (32x32)
-> split -> augment stages, then featurize. (The cnn method is covered by tests/unit/test_cnn.py.)
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from imgclust import config
from imgclust.core.feature_store import INDEX_FIELDS, check_method, load_features
from imgclust.core.fsutil import read_csv, write_csv
from imgclust.errors import InputDataError, ParamError
from imgclust.stages.featurize import cnn_params, featurize
from support.cli import run_cli
from support.data import run_data_stages
from support.packs import edited_copy, unpacked
from support.paths import REPO
from support.project import write_params

SIZE = 32
OPS = ["rot180", "flip_lr", "flip_tb", "rot90", "rot270"]
# the project's featurize.cnn.* as the stage passes them (the pixels method ignores them)
CNN_PARAMS = cnn_params(config.load(path=REPO / "params.yaml").featurize.cnn)
BATCH_SIZE = 256  # the project's featurize.batch_size


@pytest.fixture(scope="module")
def gray_data(synthetic_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("featurize_gray")
    data = run_data_stages(root, synthetic_dataset, "gray", SIZE)
    data["features"] = root / "features"
    data["meta"] = featurize(
        data["images"], data["manifest"], data["features"], method="pixels", cnn_params=CNN_PARAMS, batch_size=256
    )
    return data


@pytest.fixture(scope="module")
def rgb_data(synthetic_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("featurize_rgb")
    data = run_data_stages(root, synthetic_dataset, "rgb", SIZE)
    data["features"] = root / "features"
    # a batch size that does not divide the row count: batch boundaries must not shift rows
    data["meta"] = featurize(
        data["images"], data["manifest"], data["features"], method="pixels", cnn_params=CNN_PARAMS, batch_size=7
    )
    return data


# ---------------------------------------------------------------- the feature matrix


@pytest.mark.parametrize("name, channels", [("gray_data", 1), ("rgb_data", 3)])
def test_features_are_uint8_flattened_images_in_manifest_order(request, name, channels):
    data = request.getfixturevalue(name)
    manifest = read_csv(data["manifest"])
    features = np.load(data["features"] / "features.npy")
    assert features.dtype == np.uint8
    assert features.shape == (len(manifest), SIZE * SIZE * channels)
    assert len(manifest) > 36  # originals plus augmented copies
    images = unpacked(data["images"])
    for row, vector in zip(manifest, features, strict=True):
        pixels = np.asarray(Image.open(images / row["path"]))
        assert pixels.shape == ((SIZE, SIZE) if channels == 1 else (SIZE, SIZE, 3))
        np.testing.assert_array_equal(vector, pixels.reshape(-1), err_msg=row["path"])


def test_batch_size_does_not_change_the_features(gray_data, tmp_path):
    meta = featurize(
        gray_data["images"], gray_data["manifest"], tmp_path / "f", method="pixels", cnn_params=CNN_PARAMS, batch_size=5
    )
    assert meta == gray_data["meta"]
    np.testing.assert_array_equal(
        np.load(tmp_path / "f" / "features.npy"), np.load(gray_data["features"] / "features.npy")
    )
    assert (tmp_path / "f" / "index.csv").read_bytes() == (gray_data["features"] / "index.csv").read_bytes()


@pytest.mark.parametrize("name", ["gray_data", "rgb_data"])
def test_index_agrees_with_augmented_manifest(request, name):
    data = request.getfixturevalue(name)
    manifest = read_csv(data["manifest"])
    with open(data["features"] / "index.csv", encoding="utf-8") as fh:
        header = fh.readline().strip().split(",")
    assert header == ["file", "class", "split", "source", "op"] == list(INDEX_FIELDS)
    index = read_csv(data["features"] / "index.csv")
    assert len(index) == len(manifest)
    for entry, row in zip(index, manifest, strict=True):
        assert entry == {
            "file": row["path"],
            "class": row["class"],
            "split": row["split"],
            "source": row["source"],
            "op": row["op"],
        }
    # honest protocol: every test row is an original, augmented copies are train only
    assert {r["op"] for r in index if r["split"] == "test"} == {"none"}
    assert any(r["op"] != "none" for r in index if r["split"] == "train")


@pytest.mark.parametrize(
    "name, shape, mode", [("gray_data", [SIZE, SIZE], "gray"), ("rgb_data", [SIZE, SIZE, 3], "rgb")]
)
def test_meta_json(request, name, shape, mode):
    data = request.getfixturevalue(name)
    meta = json.loads((data["features"] / "meta.json").read_text())
    n = len(read_csv(data["manifest"]))
    assert meta == {
        "method": "pixels",
        "n_samples": n,
        "n_features": int(np.prod(shape)),
        "dtype": "uint8",
        "image_shape": shape,
        "color_mode": mode,
        "extractor": {},
    }
    assert meta == data["meta"]  # the returned dict is what was written


def test_output_folder_holds_only_the_three_files(gray_data):
    assert sorted(p.name for p in gray_data["features"].iterdir()) == ["features.npy", "index.csv", "meta.json"]
    assert not list(gray_data["features"].parent.glob(".features.tmp-*"))
    assert not list(gray_data["features"].parent.glob(".imgclust-scratch-*")), "the scratch cache is removed"


# ---------------------------------------------------------------- load_features


def test_load_features_memory_maps(gray_data):
    features, index, meta = load_features(gray_data["features"])
    assert isinstance(features, np.memmap)
    assert not features.flags.writeable
    assert features.dtype == np.uint8 and features.shape == (meta["n_samples"], meta["n_features"])
    assert index == read_csv(gray_data["features"] / "index.csv")
    assert meta == gray_data["meta"]

    loaded, index2, meta2 = load_features(gray_data["features"], mmap=False)
    assert not isinstance(loaded, np.memmap)
    np.testing.assert_array_equal(loaded, features)
    assert index2 == index and meta2 == meta


def test_load_features_missing_folder(tmp_path):
    with pytest.raises(InputDataError, match="featurize"):
        load_features(tmp_path / "nowhere")


def test_load_features_row_count_mismatch(gray_data, copy_of):
    copy = copy_of(gray_data["features"], "features")
    rows = read_csv(copy / "index.csv")
    write_csv(copy / "index.csv", rows[:-1], INDEX_FIELDS)
    with pytest.raises(InputDataError, match=rf"{len(rows)} feature rows but {len(rows) - 1} index rows"):
        load_features(copy)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "method, hint",
    [("pixel", "Did you mean 'pixels'?"), ("Pixels", "Did you mean 'pixels'?"), ("cnnn", "Did you mean 'cnn'?")],
)
def test_check_method_suggests_the_close_name(method, hint):
    with pytest.raises(ParamError) as info:
        check_method(method)
    assert hint in str(info.value)
    assert repr(method) in str(info.value) and "pixels, cnn" in str(info.value)


def test_check_method_unknown_without_close_match():
    with pytest.raises(ParamError) as info:
        check_method("hog")
    assert "Did you mean" not in str(info.value)
    assert "use one of pixels, cnn" in str(info.value)


@pytest.mark.parametrize("method", ["pixels", "cnn"])
def test_check_method_accepts_known_methods(method):
    assert check_method(method) is None


def test_featurize_unknown_method_writes_nothing(gray_data, tmp_path):
    with pytest.raises(ParamError, match="Did you mean 'pixels'"):
        featurize(
            gray_data["images"],
            gray_data["manifest"],
            tmp_path / "out",
            method="pixel",
            cnn_params=CNN_PARAMS,
            batch_size=BATCH_SIZE,
        )
    assert not (tmp_path / "out").exists()


def test_featurize_missing_image(gray_data, tmp_path):
    victim = read_csv(gray_data["manifest"])[3]["path"]
    images = edited_copy(gray_data["images"], tmp_path / "augmented", lambda files: (files / victim).unlink())
    out = tmp_path / "features"
    with pytest.raises(InputDataError) as info:
        featurize(images, gray_data["manifest"], out, method="pixels", cnn_params=CNN_PARAMS, batch_size=BATCH_SIZE)
    assert victim in str(info.value) and "1 image(s)" in str(info.value)
    assert not out.exists()


def test_featurize_missing_image_keeps_previous_output(gray_data, copy_of, tmp_path):
    victim = read_csv(gray_data["manifest"])[0]["path"]
    images = edited_copy(gray_data["images"], tmp_path / "augmented", lambda files: (files / victim).unlink())
    out = copy_of(gray_data["features"], "features")
    before = (out / "features.npy").read_bytes()
    with pytest.raises(InputDataError):
        featurize(images, gray_data["manifest"], out, method="pixels", cnn_params=CNN_PARAMS, batch_size=BATCH_SIZE)
    assert (out / "features.npy").read_bytes() == before


def test_featurize_missing_manifest(gray_data, tmp_path):
    with pytest.raises(InputDataError, match="file not found"):
        featurize(
            gray_data["images"],
            tmp_path / "nope.csv",
            tmp_path / "out",
            method="pixels",
            cnn_params=CNN_PARAMS,
            batch_size=BATCH_SIZE,
        )


def test_featurize_empty_manifest(gray_data, tmp_path):
    write_csv(tmp_path / "empty.csv", [], ("path", "class", "split", "source", "op"))
    with pytest.raises(InputDataError, match="lists no image"):
        featurize(
            gray_data["images"],
            tmp_path / "empty.csv",
            tmp_path / "out",
            method="pixels",
            cnn_params=CNN_PARAMS,
            batch_size=BATCH_SIZE,
        )


def test_featurize_images_of_different_sizes(gray_data, tmp_path):
    victim = read_csv(gray_data["manifest"])[-1]["path"]

    def widen(files):
        Image.open(files / victim).resize((SIZE + 3, SIZE)).save(files / victim)

    images = edited_copy(gray_data["images"], tmp_path / "augmented", widen)
    with pytest.raises(InputDataError, match="differ in shape"):
        featurize(images, gray_data["manifest"], tmp_path / "out", method="pixels", cnn_params=CNN_PARAMS, batch_size=8)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- CLI


def test_cli_featurize_pixels(gray_data, tmp_path):
    work = tmp_path / "work"
    write_params(work, featurize__method="pixels", featurize__batch_size=16)
    out = tmp_path / "features"
    proc = run_cli(
        "featurize",
        "--in",
        str(gray_data["images"]),
        "--manifest",
        str(gray_data["manifest"]),
        "--out",
        str(out),
        cwd=work,
    )
    n = gray_data["meta"]["n_samples"]
    assert f"{n} x {SIZE * SIZE} uint8" in proc.stdout
    np.testing.assert_array_equal(np.load(out / "features.npy"), np.load(gray_data["features"] / "features.npy"))
    assert json.loads((out / "meta.json").read_text()) == gray_data["meta"]


def test_cli_featurize_bad_method_exits_2(gray_data, tmp_path):
    work = tmp_path / "work"
    write_params(work, featurize__method="pixel")
    out = tmp_path / "features"
    proc = run_cli(
        "featurize",
        "--in",
        str(gray_data["images"]),
        "--manifest",
        str(gray_data["manifest"]),
        "--out",
        str(out),
        cwd=work,
        check=False,
    )
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "Did you mean 'pixels'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_every_route_writes_the_same_store(gray_data, tmp_path):
    """Pixel rows written in place by the workers (no cache, the stage's route), through a per-image
    cache, and streamed into the store by this process (the route of a CNN with the cache off, or
    of the ray engine): byte for byte the same store, with batches that do not divide the rows."""
    from imgclust.core.item_cache import ItemCache
    from imgclust.core.packs import open_pack
    from imgclust.stages import featurize as featurize_stage

    routes = {
        "in place": {},
        "cache": {"cache": ItemCache(tmp_path / "cache", "featurize", {"code": "test"})},
    }
    for name, extra in routes.items():
        featurize(
            gray_data["images"], gray_data["manifest"], tmp_path / name, method="pixels", cnn_params={},
            batch_size=7, **extra,
        )  # fmt: skip
    rows, first = featurize_stage._listing(gray_data["manifest"], gray_data["images"])
    pack = open_pack(gray_data["images"])
    extractor = featurize_stage._fitted_extractor("pixels", {})
    featurize_stage._stream(
        pack, rows, first, extractor, "pixels", {}, 7, None, tmp_path / "stream", featurize_stage._compute_local,
        "featurize",
    )  # fmt: skip
    expected = {p.name: p.read_bytes() for p in gray_data["features"].iterdir()}
    assert len(rows) % 7 and set(expected) == {"features.npy", "index.csv", "meta.json"}
    for name in (*routes, "stream"):
        assert {p.name: p.read_bytes() for p in (tmp_path / name).iterdir()} == expected, name


@pytest.mark.slow  # a fresh Python process
def test_the_pixel_route_runs_without_importing_scikit_learn(gray_data, tmp_path):
    """Importing scikit-learn took 1.3-1.7 s, most of the stage's time on 1,000 images: the pixels
    method (the default) makes its rows without it, the same rows as ``PixelFeatures``."""
    out = tmp_path / "features"
    code = (
        "import sys; from pathlib import Path; from imgclust.stages.featurize import featurize; "
        "featurize(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), method='pixels', cnn_params={}, "
        "batch_size=7); print(sorted(name for name in sys.modules if name.split('.')[0] == 'sklearn'))"
    )
    args = [sys.executable, "-c", code, str(gray_data["images"]), str(gray_data["manifest"]), str(out)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {
        p.name: p.read_bytes() for p in gray_data["features"].iterdir()
    }
