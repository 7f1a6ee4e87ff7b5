"""Hostile parameter values and folder names run no command and are taken literally."""

from __future__ import annotations

import shutil

import yaml

from support.project import make_project, sh


def _source_named(tmp_path, synthetic_dataset, name: str):
    folder = tmp_path / name
    shutil.copytree(synthetic_dataset, folder)
    return folder


def test_shell_text_in_data_source_is_a_folder_name(tmp_path, synthetic_dataset):
    source = _source_named(tmp_path, synthetic_dataset, 'inj"; touch PWNED; echo "')
    root = make_project(tmp_path / "project", data__source=str(source))
    sh("dvc", "repro", "ingest", cwd=root)
    assert not list(tmp_path.rglob("PWNED"))
    assert sorted(p.name for p in (root / "data" / "raw").iterdir()) == ["benign", "malignant", "normal"]


def test_a_dollar_in_the_source_path_is_taken_literally(tmp_path, synthetic_dataset):
    source = _source_named(tmp_path, synthetic_dataset, "share$1")
    (tmp_path / "share").mkdir()  # what a shell would have expanded share$1 to
    root = make_project(tmp_path / "project", data__source=str(source))
    sh("dvc", "repro", "ingest", cwd=root)
    report = yaml.safe_load((root / "reports" / "ingest.json").read_text())
    assert report["source"]["source"] == str(source)
    assert report["n_files"] > 0
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert str(source) in [dep["path"] for dep in lock["stages"]["ingest"]["deps"]]


def test_shell_text_in_the_weights_runs_nothing(tmp_path):
    root = make_project(
        tmp_path / "project",
        synthesize__n_images=30,
        resize__width=32,
        resize__height=32,
        featurize__method="cnn",
        featurize__cnn__weights="imagenet; touch PWNED; echo",
    )
    failed = sh("dvc", "repro", "featurize", cwd=root, check=False)
    assert failed.returncode != 0
    assert "weights file" in failed.stdout + failed.stderr
    assert not list(tmp_path.rglob("PWNED"))
