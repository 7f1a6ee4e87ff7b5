"""params.yaml validation (imgclust.config), the declared keys a stage may read (ParamsView), and
how the stage commands refuse an invalid params.yaml. (``dvc repro`` on a typo is in
tests/system/test_model_stages_dvc.py.)"""

from __future__ import annotations

import importlib
import shutil

import pytest
import yaml

from imgclust import config
from imgclust.cli import COMMANDS
from imgclust.config import UndeclaredParamError
from imgclust.core.backbones import BACKBONES
from imgclust.errors import ParamError
from support.cli import run_cli
from support.paths import REPO


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
        config.validate(params)
    lines = str(info.value).splitlines()
    assert lines[0].startswith("params.yaml: ")
    return [line.strip()[2:] for line in lines[1:]]


def test_the_projects_params_yaml_is_accepted_exactly(params):
    assert config.read(REPO / "params.yaml") == params
    assert config.load(path=REPO / "params.yaml").model_dump() == params
    assert config.validate(params).model_dump() == params


@pytest.mark.parametrize(
    "dotted, value, expected",
    [
        (
            "featurize.method",
            "pixel",
            "featurize.method: 'pixel' is not one of 'pixels', 'cnn'. Did you mean 'pixels'?",
        ),
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
        (
            "data.source",
            "https://example.org/busi.zip",
            "data: source is a URL (https://example.org/busi.zip); set data.sha256",
        ),
        ("data.sha256", "abc", "data.sha256: String should match pattern"),
    ],
)
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
        "featurize.method",
        "train.kmeans.n_cluster",
        "train.kmeans.n_clusters",
        "resize.mode",
        "protocol",
        "resize.width",
        "split.test_size",
        "evaluatee",
    }
    assert "evaluatee: unknown key. Did you mean 'evaluate'?" in problems


def test_a_url_source_with_a_sha256_is_accepted(params):
    _set(params, "data.source", "https://example.org/busi.zip")
    _set(params, "data.sha256", "ab" * 32)
    assert config.validate(params).data.sha256 == "ab" * 32


def test_a_missing_section_and_a_non_mapping_file_are_refused(params):
    del params["resize"]
    assert _problems(params) == ["resize: missing (required)."]
    assert "must be a mapping of parameter sections" in _problems(["not", "a", "mapping"])[0]


def test_load_names_the_file_of_a_yaml_syntax_error(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("resize:\n  width: [190\n")
    with pytest.raises(ParamError, match=f"{path}: not valid YAML"):
        config.load(path=path)
    with pytest.raises(ParamError, match="not found"):
        config.load(path=tmp_path / "missing.yaml")


def test_load_names_the_file_of_invalid_values(params, tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(_set(params, "resize.mode", "grey"), sort_keys=False))
    with pytest.raises(ParamError) as info:
        config.load(path=path)
    assert str(info.value).startswith(f"{path}: 1 invalid parameter(s):")
    assert "resize.mode: 'grey' is not one of 'gray', 'rgb'. Did you mean 'gray'?" in str(info.value)


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_every_backbone_of_the_cnn_module_is_accepted(params, backbone):
    assert config.validate(_set(params, "featurize.cnn.backbone", backbone)).featurize.cnn.backbone == backbone


def test_a_backbone_the_cnn_module_lacks_is_refused(params):
    assert "resnet101" not in BACKBONES
    problems = _problems(_set(params, "featurize.cnn.backbone", "resnet101"))
    assert len(problems) == 1 and problems[0].startswith("featurize.cnn.backbone: 'resnet101' is not one of")
    assert all(repr(name) in problems[0] for name in BACKBONES)


# ----------------------------------------------------------------------- a stage's declared keys


@pytest.fixture
def pipeline_params():
    return config.load(path=REPO / "params.yaml")


def test_a_view_reads_the_declared_sections(pipeline_params):
    view = config.load(("protocol", "train"), path=REPO / "params.yaml")
    assert view.protocol == pipeline_params.protocol
    assert view.train == pipeline_params.train
    assert view.train.kmeans.n_clusters == pipeline_params.train.kmeans.n_clusters


def test_a_view_refuses_an_undeclared_key(pipeline_params):
    view = config.load(("evaluate", "mlflow", "resize.resample"), path=REPO / "params.yaml")
    assert view.resize.resample == pipeline_params.resize.resample
    assert view.evaluate.thumbnails == pipeline_params.evaluate.thumbnails
    with pytest.raises(UndeclaredParamError, match=r"train is not among the declared parameters"):
        view.train  # noqa: B018
    with pytest.raises(
        UndeclaredParamError,
        match=r"resize\.width is not among the declared parameters "
        r"evaluate, mlflow, resize\.resample",
    ):
        view.resize.width  # noqa: B018


def test_a_view_still_validates_the_whole_file(params, tmp_path):
    """A stage reads its own keys only, but refuses a params.yaml invalid anywhere."""
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(_set(params, "train.pca.svd_solver", "ful"), sort_keys=False))
    with pytest.raises(ParamError, match="train.pca.svd_solver: 'ful' is not one of"):
        config.load(("resize",), path=path)


STAGES = [name for name, module in COMMANDS.items() if module.startswith("imgclust.stages.")]


@pytest.mark.parametrize("name", STAGES)
def test_every_stage_reads_only_keys_of_params_yaml(name, pipeline_params):
    keys = importlib.import_module(COMMANDS[name]).PARAMS
    assert keys
    view = config.load(keys, path=REPO / "params.yaml")
    for key in keys:
        node, model = view, pipeline_params
        for part in key.split("."):
            node, model = getattr(node, part), getattr(model, part)
        assert node == model, key


# ------------------------------------------------------- stage commands and an invalid params.yaml


@pytest.fixture
def workdir(tmp_path):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def _typo(workdir) -> None:
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    _set(params, "featurize.method", "pixel")
    _rename(params, "train.kmeans.n_clusters", "n_cluster")
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


# every stage command with its (required) path options, all inside the working folder
STAGE_ARGS = {
    "synthesize": ["--out", "synth"],
    "ingest": ["--out", "raw", "--manifest", "raw.csv", "--report", "ingest.json"],
    "strip-masks": ["--raw", "raw", "--out", "stripped", "--report", "strip.json"],
    "resize": ["--in", "stripped", "--out", "resized"],
    "split": ["--in", "resized", "--out", "split.csv"],
    "augment": [
        "--in",
        "resized",
        "--split",
        "split.csv",
        "--out",
        "augmented",
        "--manifest",
        "augmented.csv",
        "--report",
        "augment.json",
    ],
    "featurize": ["--in", "augmented", "--manifest", "augmented.csv", "--out", "features"],
    "train": ["--features", "features", "--out", "model.joblib"],
    "evaluate": [
        "--features",
        "features",
        "--model",
        "model.joblib",
        "--images",
        "augmented",
        "--metrics",
        "metrics.json",
        "--plots",
        "plots",
        "--predictions",
        "predictions.csv",
        "--run-info",
        "mlflow_run.json",
        "--no-mlflow",
    ],
}


def test_the_stage_arguments_cover_every_stage():
    assert sorted(STAGE_ARGS) == sorted(STAGES)


@pytest.mark.parametrize("name", STAGE_ARGS)
def test_every_stage_refuses_an_invalid_params_yaml_before_working(workdir, name):
    """Each stage validates the whole file, so a typo in any section stops every stage (even one
    that does not read that section), with the key named and a fix suggested."""
    _typo(workdir)
    proc = run_cli(name, *STAGE_ARGS[name], cwd=workdir, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: params.yaml: 3 invalid parameter(s):")
    assert "featurize.method: 'pixel' is not one of 'pixels', 'cnn'. Did you mean 'pixels'?" in proc.stderr
    assert "train.kmeans.n_cluster: unknown key. Did you mean 'n_clusters'?" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in workdir.iterdir()) == ["params.yaml"]  # nothing was written


def test_a_stage_runs_with_a_valid_params_yaml(workdir):
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    (workdir / "params.yaml").write_text(yaml.safe_dump(_set(params, "synthesize.n_images", 12), sort_keys=False))
    run_cli("synthesize", "--out", "synth", cwd=workdir)
    assert len(list((workdir / "synth").rglob("*.png"))) >= 12


@pytest.mark.parametrize("name", COMMANDS)
def test_help_works_without_a_params_yaml(tmp_path, name):
    proc = run_cli(name, "--help", cwd=tmp_path)
    assert proc.returncode == 0 and "Usage" in proc.stdout
    assert list(tmp_path.iterdir()) == []


def test_help_works_with_an_invalid_params_yaml(workdir):
    _typo(workdir)
    assert run_cli("synthesize", "--help", cwd=workdir).returncode == 0
    assert run_cli("--help", cwd=workdir).returncode == 0


def test_a_stage_without_a_params_yaml_says_where_to_run(tmp_path):
    proc = run_cli("synthesize", "--out", "synth", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "params.yaml: not found; run imgclust from the project folder" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "synth").exists()
