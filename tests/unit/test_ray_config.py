"""featurize.engine and featurize.ray.* in params.yaml: validated with a fix in the message, passed to
the ray engine as they are; without Ray installed, the ray engine fails before anything is written.
(The engine itself runs on a real Ray in tests/system/test_ray_engine.py.)"""

from __future__ import annotations

import sys

import pytest
import yaml

from imgclust import config
from imgclust.core.ray_engine import ENGINES, RaySettings
from imgclust.errors import ParamError
from support.paths import REPO


@pytest.fixture
def params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def _problems(params: dict) -> list[str]:
    with pytest.raises(ParamError) as info:
        config.validate(params)
    return [line.strip()[2:] for line in str(info.value).splitlines()[1:]]


def test_the_default_engine_is_local_and_the_ray_section_becomes_the_engines_settings(params):
    from imgclust.stages.featurize import ray_settings

    featurize = config.validate(params).featurize
    assert featurize.engine == "local" and ENGINES == ("local", "ray")
    settings = ray_settings(featurize.ray)
    assert settings == RaySettings(**params["featurize"]["ray"])
    assert isinstance(settings.num_cpus, float) and settings.num_actors >= 1


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("engine", "Ray", "featurize.engine: 'Ray' is not one of 'local', 'ray'. Did you mean 'ray'?"),
        ("ray.num_actors", 0, "featurize.ray.num_actors: Input should be greater than or equal to 1"),
        ("ray.num_cpus", 0, "featurize.ray.num_cpus: Input should be greater than 0"),
        ("ray.num_gpus", -1, "featurize.ray.num_gpus: Input should be greater than or equal to 0"),
        ("ray.batch_size", 0, "featurize.ray.batch_size: Input should be greater than or equal to 1"),
        ("ray.max_retries", -1, "featurize.ray.max_retries: Input should be greater than or equal to 0"),
        ("ray.num_actors", "2", "featurize.ray.num_actors: Input should be a valid integer"),
    ],
)
def test_engine_mistakes_are_named(params, key, value, expected):
    node = params["featurize"]
    *parents, leaf = key.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value
    problems = _problems(params)
    assert len(problems) == 1 and expected in problems[0], problems


def test_fractional_gpus_per_actor_are_accepted(params):
    params["featurize"]["ray"].update(num_gpus=0.5, num_cpus=0.5)
    assert config.validate(params).featurize.ray.num_gpus == 0.5


def test_a_misspelt_ray_key_suggests_the_known_one(params):
    params["featurize"]["ray"]["num_actor"] = params["featurize"]["ray"].pop("num_actors")
    problems = _problems(params)
    assert "featurize.ray.num_actor: unknown key. Did you mean 'num_actors'?" in problems


def test_without_ray_the_ray_engine_names_the_extra_and_writes_nothing(monkeypatch, tmp_path):
    from imgclust.stages.featurize import featurize

    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without the extra sees
    out = tmp_path / "features"
    with pytest.raises(ParamError, match=r"needs Ray, which is not installed.*--extra ray.*featurize.engine: local"):
        featurize(
            tmp_path / "images",
            tmp_path / "never-read.csv",
            out,
            method="pixels",
            cnn_params={},
            batch_size=8,
            engine="ray",
            ray_settings=RaySettings(),
        )
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_an_s3_argument_of_predict_stays_a_uri_and_a_path_stays_a_path():
    from pathlib import Path

    from imgclust.tools.predict import _excluded, from_argument

    assert from_argument(Path("s3://bucket/new images/")) == "s3://bucket/new images"
    assert from_argument(Path("folder/s3:/x")) == Path("folder/s3:/x")
    assert from_argument(Path("images")) == Path("images")
    assert _excluded("s3://bucket/a/x_mask.png", ["*_mask*"]) and not _excluded("s3://bucket/a_mask/x.png", ["*_mask*"])
