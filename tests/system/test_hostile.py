"""Hostile parameter values and folder names run no command and are taken literally."""

from __future__ import annotations

import shutil

import yaml

from imgclust.core.packs import Pack
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
    assert sorted({p.split("/", 1)[0] for p in Pack(root / "data" / "raw").paths()}) == [
        "benign",
        "malignant",
        "normal",
    ]


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


def test_copy_names_that_exist_in_the_source_leave_the_dvc_cache_intact(tmp_path):
    """n.png balanced with rot180 and flip_lr beside n__rot180.png and n__flip_lr.png of other
    content: every object in the DVC cache still matches its md5, and the manifest lists each path once."""
    import hashlib

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    source = tmp_path / "source"
    layout = {
        "normal": ["n.png", "n__rot180.png", "n__flip_lr.png"],
        "benign": [f"b{i}.png" for i in range(12)],
        "malignant": [f"m{i}.png" for i in range(8)],
    }
    for cls, names in layout.items():
        (source / cls).mkdir(parents=True)
        for name in names:
            Image.fromarray(rng.integers(0, 256, (24, 24), dtype=np.uint8)).save(source / cls / name)
    root = make_project(
        tmp_path / "project", data__source=str(source), resize__width=24, resize__height=24, split__test_size=0.25
    )
    sh("dvc", "repro", "augment", cwd=root)
    paths = [line.split(",")[0] for line in (root / "data/manifests/augmented.csv").read_text().splitlines()[1:]]
    assert len(paths) == len(set(paths))
    objects = [p for p in (root / ".dvc" / "cache" / "files" / "md5").rglob("*") if p.is_file()]
    assert objects
    for obj in objects:
        if obj.suffix == ".dir":
            continue
        assert hashlib.md5(obj.read_bytes()).hexdigest() == obj.parent.name + obj.name, obj
    sh("dvc", "status", cwd=root)
    assert "up to date" in sh("dvc", "status", "augment", cwd=root).stdout
