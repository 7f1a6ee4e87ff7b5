"""KerasFeatureExtractor's post-processing: GeM pooling, power and L2 normalisation, flip
test-time augmentation, and their params.yaml keys (random weights: no download, no files)."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from imgclust import config
from imgclust.core.cnn import KerasFeatureExtractor, combine, normalise, pool_maps
from imgclust.errors import ParamError
from support.paths import REPO


def images(n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, size=(40, 48), dtype=np.uint8) for _ in range(n)]


def test_pool_maps():
    maps = np.random.default_rng(0).uniform(0, 6, size=(2, 3, 4, 5)).astype(np.float32)
    avg, top, gem = (pool_maps(maps, p) for p in ("avg", "max", "gem"))
    assert avg.shape == top.shape == gem.shape == (2, 5)
    assert np.allclose(avg, maps.mean(axis=(1, 2))) and np.array_equal(top, maps.max(axis=(1, 2)))
    assert (gem >= avg - 1e-5).all() and (gem <= top + 1e-5).all()  # a generalised mean lies between
    assert np.allclose(pool_maps(np.full((1, 2, 2, 3), 2.0), "gem"), 2.0)
    assert pool_maps(maps, None).shape == (2, 60)
    with pytest.raises(ParamError, match="featurize.cnn.pooling"):
        pool_maps(maps, "mean")


def test_normalise():
    rows = np.array([[4.0, -9.0], [0.0, 0.0], [3.0, 4.0]], dtype=np.float32)
    assert np.array_equal(normalise(rows), rows)
    assert np.allclose(normalise(rows, power=0.5), [[2, -3], [0, 0], [3**0.5, 2]])
    unit = normalise(rows, l2=True)
    assert np.allclose(np.linalg.norm(unit, axis=1), [1, 0, 1]) and np.allclose(unit[2], [0.6, 0.8])
    assert normalise(rows, 0.5, True).dtype == np.float32


def test_extractor_applies_gem_flip_power_and_l2():
    ext = KerasFeatureExtractor(alpha=0.25, weights=None, input_size=32, pooling="gem").fit()
    base = ext.transform(images())
    assert base.shape == (3, 256) and ext.n_features_out_ == 256
    mirrored = ext.transform([np.ascontiguousarray(a[:, ::-1]) for a in images()])
    # flip, power and l2 act after the network: the same fitted model serves every setting
    flipped = ext.set_params(flip=True).transform(images())
    np.testing.assert_allclose(flipped, (base + mirrored) / 2, rtol=1e-5, atol=1e-6)
    processed = ext.set_params(power=0.5, l2=True).transform(images())
    np.testing.assert_allclose(processed, normalise((base + mirrored) / 2, 0.5, True), rtol=1e-4, atol=1e-6)
    assert np.allclose(np.linalg.norm(processed, axis=1), 1.0)

    # a model pickled before these parameters existed transforms as before (plain pooled rows)
    state = ext.set_params(flip=False, power=1.0, l2=False).__getstate__()
    for key in ("power", "l2", "flip"):
        state.pop(key)
    old = KerasFeatureExtractor.__new__(KerasFeatureExtractor)
    old.__setstate__(state)
    assert (old.power, old.l2, old.flip) == (1.0, False, False)
    old.model_ = ext.model_  # the same network (weights=None would otherwise draw new ones)
    np.testing.assert_array_equal(old.transform(images()), base)


def test_combine_weighs_blocks_equally():
    small, large = np.array([[3.0, 4.0]]), np.array([[0.0, 100.0, 0.0]])
    assert np.array_equal(combine([small]), small.astype(np.float32))
    joined = combine([small, large], l2=True)
    assert np.allclose(joined, [[0.6, 0.8, 0, 1, 0]] / np.sqrt(2)) and np.isclose(np.linalg.norm(joined), 1)


def test_extra_layers_are_pooled_and_appended():
    ext = KerasFeatureExtractor(alpha=0.25, weights=None, input_size=32, layers=["conv_pw_11_relu"]).fit()
    features = ext.transform(images(2))
    assert features.shape == (2, 128 + 256) == (2, ext.n_features_out_)  # conv_pw_11 then the last layer
    assert [s[-1] for s in ext.model_.output_shape] == [128, 256]
    with pytest.raises(ParamError, match=r"no layer 'conv_pw_11_rel'.*Did you mean 'conv_pw_11_relu'"):
        KerasFeatureExtractor(alpha=0.25, weights=None, input_size=32, layers=["conv_pw_11_rel"]).fit()
    with pytest.raises(ParamError, match="featurize.cnn.layers needs a pooling"):
        KerasFeatureExtractor(weights=None, pooling=None, layers=["conv_pw_11_relu"]).fit()


@pytest.mark.parametrize(
    "params, match", [({"power": 0}, "power"), ({"power": 1.5}, "power"), ({"l2": "yes"}, "l2"), ({"flip": 1}, "flip")]
)
def test_bad_post_processing_is_refused_at_fit(params, match):
    with pytest.raises(ParamError, match=f"featurize.cnn.{match}"):
        KerasFeatureExtractor(weights=None, **params).fit()


def test_params_yaml_keys():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["featurize"]["cnn"].update(pooling="gem", power=0.5, l2=True, flip=True, layers=["conv_pw_11_relu"])
    assert config.validate(params).featurize.cnn.pooling == "gem"
    params["featurize"]["cnn"].update(power=0, pooling="geom")
    with pytest.raises(ParamError) as info:
        config.validate(params)
    assert "featurize.cnn.power" in str(info.value) and "did you mean 'gem'" in str(info.value).lower()
