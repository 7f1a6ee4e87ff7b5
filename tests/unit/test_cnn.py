"""KerasFeatureExtractor: sklearn contract, pretrained MobileNet features, pickling, offline failures.

Keras reads KERAS_HOME once, when it is first imported (keras.src.backend.config._KERAS_DIR), so
setting the environment variable inside a test is too late when another test imported Keras first.
The fixtures below therefore set the variable AND point Keras's already-read home at the folder
(monkeypatch undoes both). No test can download: ``urlretrieve`` of Keras's get_file is replaced by
one that refuses, for every test of this module. (That importing imgclust.core.cnn does not load
Keras is checked in a fresh interpreter by tests/system/test_model_stages_dvc.py.)
"""

from __future__ import annotations

import os
import pickle
import urllib.error
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.cluster import KMeans
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import make_pipeline

from imgclust.core.cnn import (
    BACKBONES,
    KerasFeatureExtractor,
    backbone_label,
    check_weights_available,
)
from imgclust.errors import InputDataError, ParamError, WeightsUnavailableError
from support.paths import KERAS_HOME

SHARED_KERAS = KERAS_HOME
MOBILENET_025 = SHARED_KERAS / "models" / "mobilenet_2_5_224_tf_no_top.h5"
V2_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"


def point_keras_home(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    monkeypatch.setenv("KERAS_HOME", str(home))
    from keras.src.backend import config

    if hasattr(config, "_KERAS_DIR"):  # read at import: override the value Keras already holds
        monkeypatch.setattr(config, "_KERAS_DIR", str(home))


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every download attempt fails at once, as offline; the attempted URLs are recorded."""
    from keras.src.utils import file_utils

    attempts: list[str] = []

    def refuse(url, *args, **kwargs):
        attempts.append(url)
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(file_utils, "urlretrieve", refuse)
    return attempts


@pytest.fixture
def shared_home(monkeypatch):
    if not MOBILENET_025.is_file():
        pytest.skip(f"no shared Keras home with {MOBILENET_025.name} at {SHARED_KERAS}")
    point_keras_home(monkeypatch, SHARED_KERAS)
    return SHARED_KERAS


@pytest.fixture
def pretrained(shared_home):
    return KerasFeatureExtractor(backbone="mobilenet", alpha=0.25).fit()


def gray_image(h: int, w: int, kind: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    if kind == 0:
        values = 255.0 * x / max(w - 1, 1)  # horizontal ramp
    elif kind == 1:
        values = np.where(((y // 8) + (x // 8)) % 2 == 0, 230.0, 20.0)  # checkerboard
    elif kind == 2:
        values = np.where((y - h / 2) ** 2 + (x - w / 2) ** 2 < (min(h, w) / 3) ** 2, 255.0, 0.0)  # disk
    else:
        values = 127.5 + 127.5 * np.sin(y / 3.0)  # horizontal stripes
    return values.astype(np.uint8)


def rgb_image(h: int, w: int, kind: int) -> np.ndarray:
    return np.stack(
        [gray_image(h, w, kind), gray_image(h, w, (kind + 1) % 4), gray_image(h, w, (kind + 2) % 4)], axis=-1
    )


def mixed_images() -> list[np.ndarray]:
    return [
        gray_image(64, 80, 0),
        rgb_image(100, 120, 1),
        gray_image(240, 200, 2),
        rgb_image(50, 50, 3),
        gray_image(90, 90, 1),
    ]


# --- sklearn contract -----------------------------------------------------------------------------


def test_init_only_stores_params():
    ext = KerasFeatureExtractor(
        backbone="no-such-net", weights="x.h5", alpha=-3, input_size=5, pooling="mean", batch_size=0, progress=True
    )
    assert ext.get_params() == {
        "backbone": "no-such-net",
        "weights": "x.h5",
        "alpha": -3,
        "input_size": 5,
        "pooling": "mean",
        "batch_size": 0,
        "progress": True,
        "power": 1.0,
        "l2": False,
        "flip": False,
        "layers": (),
    }
    assert not hasattr(ext, "model_")


def test_clone_and_get_params_round_trip():
    ext = KerasFeatureExtractor(backbone="resnet50", weights=None, input_size=(64, 48), pooling="max", batch_size=4)
    copy = clone(ext)
    assert copy is not ext and copy.get_params() == ext.get_params()
    again = KerasFeatureExtractor(**ext.get_params())
    assert again.get_params() == ext.get_params()
    assert copy.set_params(alpha=0.5, batch_size=8).get_params()["batch_size"] == 8
    assert ext.batch_size == 4


def test_fit_keeps_params_and_sets_learned_attributes():
    ext = KerasFeatureExtractor(alpha=0.25, weights="none", input_size=64)
    before = ext.get_params()
    assert ext.fit() is ext
    assert ext.get_params() == before
    assert ext.input_size_ == (64, 64) and ext.n_features_out_ == 256
    assert ext.model_.output_shape == (None, 256)
    assert clone(ext).get_params() == before and not hasattr(clone(ext), "model_")
    names = ext.get_feature_names_out()
    assert len(names) == 256 and names[0] == "mobilenet0"


def test_transform_requires_fit():
    with pytest.raises(NotFittedError):
        KerasFeatureExtractor(weights=None).transform(np.zeros((1, 32, 32), np.uint8))


def test_backbone_label():
    assert backbone_label("mobilenet", 0.25) == "mobilenet(alpha=0.25)"
    assert backbone_label("mobilenet_v2", 1.0) == "mobilenet_v2(alpha=1)"
    assert backbone_label("resnet50", 0.25) == "resnet50"


# --- parameter and input errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, suggestion", [("mobilenetv2", "mobilenet_v2"), ("resnet", "resnet50"), ("efficientnet", "efficientnet_b0")]
)
def test_unknown_backbone_suggests(name, suggestion):
    with pytest.raises(ParamError) as info:
        KerasFeatureExtractor(backbone=name, weights=None).fit()
    message = str(info.value)
    assert f"Did you mean {suggestion!r}" in message
    assert all(known in message for known in BACKBONES)
    with pytest.raises(ParamError, match="Did you mean"):
        check_weights_available(name, None, 1.0, None)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"alpha": 0}, "alpha"),
        ({"input_size": 16}, "too small"),
        ({"backbone": "inception_v3", "input_size": 64}, ">= 75"),
        ({"input_size": (64, 64, 3)}, "input_size"),
        ({"pooling": "mean"}, "pooling"),
        ({"batch_size": 0}, "batch_size"),
        ({"weights": 3}, "weights"),
    ],
)
def test_bad_params(params, match):
    with pytest.raises(ParamError, match=match):
        KerasFeatureExtractor(**{"weights": None, **params}).fit()


def test_keras_rejection_is_a_param_error(shared_home):
    # ImageNet MobileNet weights exist for alpha 0.25/0.5/0.75/1 only: Keras's ValueError -> ParamError
    with pytest.raises(ParamError, match="mobilenet"):
        KerasFeatureExtractor(alpha=0.3).fit()


def test_missing_weights_path(tmp_path):
    missing = tmp_path / "nope" / "mobilenet.weights.h5"
    with pytest.raises(WeightsUnavailableError, match=str(missing)):
        KerasFeatureExtractor(weights=str(missing)).fit()
    with pytest.raises(WeightsUnavailableError, match="not found"):
        check_weights_available("mobilenet", missing, 1.0, None)


def test_mismatched_weights_file(tmp_path):
    path = tmp_path / "small.weights.h5"
    KerasFeatureExtractor(alpha=0.25, weights=None, input_size=32).fit().model_.save_weights(path)
    with pytest.raises(WeightsUnavailableError, match="cannot be loaded"):
        KerasFeatureExtractor(alpha=0.5, weights=str(path), input_size=32).fit()


@pytest.mark.parametrize(
    "images",
    [
        np.zeros((2, 32, 32), np.float32),
        np.zeros((2, 32, 32, 4), np.uint8),
        [np.zeros((32, 32, 2), np.uint8)],
        [np.zeros((0, 32), np.uint8)],
        ["not an image"],
    ],
)
def test_bad_images(images):
    ext = KerasFeatureExtractor(alpha=0.25, weights=None, input_size=32).fit()
    with pytest.raises(InputDataError):
        ext.transform(images)


def test_empty_input():
    ext = KerasFeatureExtractor(alpha=0.25, weights=None, input_size=32).fit()
    for empty in ([], np.zeros((0, 32, 32), np.uint8)):
        out = ext.transform(empty)
        assert out.shape == (0, 256) and out.dtype == np.float32


# --- pretrained MobileNet 0.25 from the shared Keras home -----------------------------------------


def test_pretrained_features(pretrained, no_network):
    images = mixed_images()
    features = pretrained.transform(images)
    assert features.dtype == np.float32 and features.shape == (len(images), 256)
    assert np.isfinite(features).all()
    assert features.min() >= 0 and features.max() <= 6  # avg of ReLU6 activations
    assert np.array_equal(features, pretrained.transform(images))  # deterministic
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            assert not np.allclose(features[i], features[j], atol=1e-3), (i, j)
    assert no_network == []  # loaded from the cache, nothing was downloaded


def test_gray_equals_replicated_rgb(pretrained):
    gray = np.stack([gray_image(60, 70, k) for k in range(4)])
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    expected = pretrained.transform(rgb)
    assert np.array_equal(pretrained.transform(gray), expected)
    assert np.allclose(pretrained.transform(list(gray)), expected, atol=1e-5)
    assert np.allclose(pretrained.transform([g[..., None] for g in gray]), expected, atol=1e-5)


def test_batching_and_progress(pretrained, capsys):
    images = mixed_images()
    expected = pretrained.transform(images)
    small = clone(pretrained).set_params(batch_size=2, progress=True).fit()
    assert np.allclose(small.transform(images), expected, rtol=1e-4, atol=1e-5)
    assert "img" in capsys.readouterr().err  # tqdm bar with unit img (rate in img/s)


@pytest.mark.slow  # builds the backbone three times
def test_pipeline_pickle_round_trip(pretrained, tmp_path):
    images = np.stack([gray_image(96, 96, k % 2 * 2) for k in range(8)])  # ramps and disks
    pipe = make_pipeline(pretrained, KMeans(2, n_init=1, random_state=0))
    labels = pipe.fit_predict(images)
    assert len(set(labels)) == 2
    features = pipe[0].transform(images)

    blob = pickle.dumps(pipe)
    assert len(blob) < 100_000  # the Keras model (1 MB of weights) is not in the pickle
    reloaded = pickle.loads(blob)
    assert "model_" not in reloaded[0].__dict__
    assert np.array_equal(reloaded.predict(images), labels)
    assert np.array_equal(reloaded[0].transform(images), features)

    joblib.dump(pipe, tmp_path / "pipe.joblib")
    from_disk = joblib.load(tmp_path / "pipe.joblib")
    assert np.array_equal(from_disk.predict(images), labels)


def test_random_init_pickle_keeps_weights():
    ext = KerasFeatureExtractor(alpha=0.25, weights=None, input_size=64).fit()
    images = [gray_image(64, 64, k) for k in range(3)]
    reloaded = pickle.loads(pickle.dumps(ext))
    assert np.array_equal(reloaded.transform(images), ext.transform(images))


def test_read_only_keras_home_falls_back_to_its_file(pretrained, monkeypatch, no_network):
    # a non-root user cannot write the shared home: Keras then looks in /tmp/.keras/models instead
    images = mixed_images()
    expected = pretrained.transform(images)
    real_access = os.access
    monkeypatch.setattr(
        os,
        "access",
        lambda path, mode, **kw: (
            False if mode == os.W_OK and str(path).startswith(str(SHARED_KERAS)) else real_access(path, mode, **kw)
        ),
    )
    ext = KerasFeatureExtractor(alpha=0.25).fit()
    assert np.array_equal(ext.transform(images), expected)
    if not Path("/tmp/.keras/models", MOBILENET_025.name).is_file():
        assert [url.rsplit("/", 1)[-1] for url in no_network] == [MOBILENET_025.name]  # Keras tried /tmp first


# --- weights from a file, offline ImageNet failure ------------------------------------------------


@pytest.mark.slow  # builds the backbone three times
def test_weights_path_round_trip(tmp_path):
    saver = KerasFeatureExtractor(alpha=0.25, weights=None, input_size=64).fit()
    path = tmp_path / "mobilenet_025.weights.h5"
    saver.model_.save_weights(path)
    loader = KerasFeatureExtractor(alpha=0.25, weights=str(path), input_size=64).fit()
    images = mixed_images()
    assert np.array_equal(loader.transform(images), saver.transform(images))
    check_weights_available("mobilenet", path, 0.25, 64)
    reloaded = pickle.loads(pickle.dumps(loader))  # rebuilt from the file
    assert np.array_equal(reloaded.transform(images), saver.transform(images))


def test_offline_imagenet_failure(tmp_path, monkeypatch, no_network):
    point_keras_home(monkeypatch, tmp_path)
    for call in (
        lambda: KerasFeatureExtractor(backbone="mobilenet_v2").fit(),
        lambda: check_weights_available("mobilenet_v2", "imagenet", 1.0, None),
    ):
        with pytest.raises(WeightsUnavailableError) as info:
            call()
        message = str(info.value)
        for part in ("mobilenet_v2", V2_FILE, str(tmp_path / "models"), "KERAS_HOME", "featurize.cnn.weights"):
            assert part in message, part
    assert len(no_network) == 2 and all(url.endswith(V2_FILE) for url in no_network)
    assert not any((tmp_path / "models").iterdir())  # no partial file left behind


def test_offline_failure_names_alpha(tmp_path, monkeypatch):
    point_keras_home(monkeypatch, tmp_path)
    with pytest.raises(WeightsUnavailableError, match=r"mobilenet\(alpha=0.5\).*mobilenet_5_0_224_tf_no_top\.h5"):
        check_weights_available("mobilenet", "imagenet", 0.5, None)


# --- every backbone builds (random weights) with its feature dimension ----------------------------


@pytest.mark.parametrize(
    "backbone, input_size, n_features",
    [
        ("mobilenet", 64, 1024),
        ("mobilenet_v2", 64, 1280),
        pytest.param("resnet50", 64, 2048, marks=pytest.mark.slow),  # large: seconds to build
        pytest.param("efficientnet_b0", 64, 1280, marks=pytest.mark.slow),  # large: seconds to build
        ("vgg16", 64, 512),
        pytest.param("inception_v3", 75, 2048, marks=pytest.mark.slow),  # large: seconds to build
        pytest.param("densenet121", 64, 1024, marks=pytest.mark.slow),  # large: seconds to build
    ],
)
def test_backbone_dimensions(backbone, input_size, n_features):
    ext = KerasFeatureExtractor(backbone=backbone, weights=None, input_size=input_size, batch_size=2).fit()
    assert ext.n_features_out_ == n_features
    features = ext.transform([gray_image(40, 50, 0), rgb_image(80, 70, 2)])
    assert features.shape == (2, n_features) and features.dtype == np.float32
    assert np.isfinite(features).all()


def test_default_input_sizes():
    assert BACKBONES["inception_v3"][2] == (299, 299)
    assert all(size == (224, 224) for name, (_, _, size) in BACKBONES.items() if name != "inception_v3")
