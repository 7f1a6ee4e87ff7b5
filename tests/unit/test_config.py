"""params.yaml validation (imgclust.params) and its hook in front of every CLI command."""

from __future__ import annotations

import shutil

import pytest
import yaml

from conftest import REPO
from imgclust.errors import ParamError
from imgclust.params import BACKBONE_NAMES, load_params, validate_params
from test_pipeline_e2e import make_project, sh


@pytest.fixture
def params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def _set(params: dict, dotted: str, value) -> dict:
    node = params
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node[key]
    node[leaf] = value
    return params


def _rename(params: dict, dotted: str, new_leaf: str) -> dict:
    node = params
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node[key]
    node[new_leaf] = node.pop(leaf)
    return params


def _problems(params: dict) -> list[str]:
    with pytest.raises(ParamError) as info:
        validate_params(params)
    lines = str(info.value).splitlines()
    assert lines[0].startswith("params.yaml: ")
    return [line.strip()[2:] for line in lines[1:]]


def test_the_projects_params_yaml_is_accepted_exactly(params):
    assert load_params(REPO / "params.yaml") == params
    validate_params(params)


@pytest.mark.parametrize("dotted, value, expected", [
    ("featurize.method", "pixel", "featurize.method: 'pixel' is not one of 'pixels', 'cnn'. Did you mean 'pixels'?"),
    ("resize.mode", "grey", "resize.mode: 'grey' is not one of 'gray', 'rgb'. Did you mean 'gray'?"),
    ("protocol", "honset", "protocol: 'honset' is not one of 'honest', 'tutorial'. Did you mean 'honest'?"),
    ("resize.resample", "lancsoz", "Did you mean 'lanczos'?"),
    ("featurize.cnn.backbone", "mobilenetv2", "Did you mean 'mobilenet_v2'?"),
    ("train.pca.svd_solver", "ful", "Did you mean 'full'?"),
    ("augment.ops", ["rot180", "flip_rl"], "augment.ops.1: 'flip_rl' is not one of"),
    ("augment.ops", ["rot180", "rot180"], "augment.ops: ['rot180'] appear more than once"),
    ("augment.target", "maxi", "augment.target: must be 'max' or an integer >= 1, got 'maxi'. Did you mean 'max'?"),
    ("augment.target", True, "augment.target: must be 'max' or an integer >= 1, got True"),
    ("augment.tutorial_ops", ["malignant=rot18"], "unknown op 'rot18'. Did you mean 'rot180'?"),
    ("augment.tutorial_ops", ["malignant"], "entry 'malignant' must look like 'class=op+op'"),
    ("resize.width", -190, "resize.width: Input should be greater than or equal to 1 (got -190)."),
    ("resize.height", 0, "resize.height: Input should be greater than or equal to 1 (got 0)."),
    ("resize.width", 190.5, "resize.width: Input should be a valid integer"),
    ("split.test_size", 1.5, "split.test_size: Input should be less than 1 (got 1.5)."),
    ("split.test_size", -0.1, "split.test_size: Input should be greater than or equal to 0"),
    ("train.kmeans.n_clusters", 1, "train.kmeans.n_clusters: Input should be greater than or equal to 2"),
    ("train.pca.n_components", -1, "train.pca.n_components: Input should be greater than or equal to 0"),
    ("ingest.skip_corrupt", "yes", "ingest.skip_corrupt: Input should be a valid boolean (got 'yes')."),
    ("featurize.cnn.alpha", 0, "featurize.cnn.alpha: Input should be greater than 0"),
    ("strip_masks.patterns", [], "strip_masks.patterns: List should have at least 1 item"),
    ("data.source", "https://example.org/busi.zip", "data: source is a URL (https://example.org/busi.zip); set data.sha256"),
    ("data.sha256", "abc", "data.sha256: String should match pattern"),
])
def test_realistic_mistakes_are_named_with_a_fix(params, dotted, value, expected):
    problems = _problems(_set(params, dotted, value))
    assert len(problems) == 1, problems
    assert expected in problems[0]


def test_an_unknown_key_suggests_the_known_one(params):
    problems = _problems(_rename(params, "train.kmeans.n_clusters", "n_cluster"))
    assert "train.kmeans.n_cluster: unknown key. Did you mean 'n_clusters'?" in problems
    assert "train.kmeans.n_clusters: missing (required)." in problems


def test_an_unknown_key_without_a_close_match_lists_the_known_keys(params):
    params["resize"]["colour_depth"] = 8
    assert _problems(params) == ["resize.colour_depth: unknown key. Known keys here: width, height, mode, resample."]


def test_every_problem_is_listed_at_once(params):
    _set(params, "featurize.method", "pixel")
    _rename(params, "train.kmeans.n_clusters", "n_cluster")
    _set(params, "resize.mode", "grey")
    _set(params, "protocol", "honset")
    _set(params, "resize.width", -1)
    _set(params, "split.test_size", 1.5)
    params["evaluatee"] = {"thumbnails": 8}
    problems = _problems(params)
    assert {p.split(":", 1)[0] for p in problems} == {
        "featurize.method", "train.kmeans.n_cluster", "train.kmeans.n_clusters", "resize.mode", "protocol",
        "resize.width", "split.test_size", "evaluatee"}
    assert "evaluatee: unknown key. Did you mean 'evaluate'?" in problems


def test_a_url_source_with_a_sha256_is_accepted(params):
    _set(params, "data.source", "https://example.org/busi.zip")
    _set(params, "data.sha256", "ab" * 32)
    validate_params(params)


def test_a_missing_section_and_a_non_mapping_file_are_refused(params):
    del params["resize"]
    assert _problems(params) == ["resize: missing (required)."]
    assert "must be a mapping of parameter sections" in _problems(["not", "a", "mapping"])[0]


def test_load_params_names_the_file_of_a_yaml_syntax_error(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("resize:\n  width: [190\n")
    with pytest.raises(ParamError, match=f"{path}: not valid YAML"):
        load_params(path)
    with pytest.raises(ParamError, match="not found"):
        load_params(tmp_path / "missing.yaml")


def test_allowed_values_agree_with_the_modules_that_use_them():
    from imgclust.cnn import BACKBONES

    assert set(BACKBONE_NAMES) == set(BACKBONES)


# ----------------------------------------------------------------------------------- the CLI hook


@pytest.fixture
def workdir(tmp_path):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def _typo(workdir) -> None:
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    _set(params, "featurize.method", "pixel")
    _rename(params, "train.kmeans.n_clusters", "n_cluster")
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_every_command_refuses_an_invalid_params_yaml_before_working(workdir, run_cli):
    _typo(workdir)
    proc = run_cli("synthesize", "--out", "synth", "--n-images", "12", cwd=workdir, check=False)
    assert proc.returncode == 2
    assert "Did you mean 'pixels'?" in proc.stderr and "Did you mean 'n_clusters'?" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (workdir / "synth").exists()
    # --help still works, and the check can be switched off
    assert run_cli("synthesize", "--help", cwd=workdir).returncode == 0
    run_cli("synthesize", "--out", "synth", "--n-images", "12", cwd=workdir,
            env={"IMGCLUST_SKIP_PARAMS_CHECK": "1"})
    assert len(list((workdir / "synth").rglob("*.png"))) >= 12


def test_commands_run_where_there_is_no_params_yaml(tmp_path, run_cli):
    run_cli("synthesize", "--out", "synth", "--n-images", "12", cwd=tmp_path)
    assert (tmp_path / "synth").is_dir()


@pytest.mark.slow
def test_dvc_repro_stops_at_the_first_stage_on_a_typo(tmp_path):
    root = make_project(tmp_path / "project", resize__mode="grey")
    proc = sh("dvc", "repro", cwd=root, check=False)
    assert proc.returncode != 0
    assert "resize.mode: 'grey' is not one of 'gray', 'rgb'. Did you mean 'gray'?" in proc.stdout + proc.stderr
    assert not (root / "data" / "synthetic").exists(), "a stage did work despite invalid parameters"
    assert not (root / "dvc.lock").exists()
