"""The data stages under ``dvc repro`` of a real git + DVC project: archive and URL sources, and
the corpus of awkward and broken inputs. (Their pure functions are tested in tests/unit:
test_archives.py and test_bad_inputs.py; the inputs of both are built by support/archives.py and
support/corpus.py.)"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import yaml
from PIL import Image

from imgclust.core.packs import Pack
from support.archives import append_tar_member, make_dataset, sha256_of, tar_member, tgz_folder, zip_folder
from support.corpus import build_corpus, by_fate
from support.project import make_project, sh, tree_hashes

SIZE = 32  # resize target of the corpus project: small keeps it fast, square allows every op


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------------------------------- dvc repro


def test_dvc_repro_from_a_local_archive(tmp_path):
    dataset = make_dataset(tmp_path / "dataset")
    archive = tgz_folder(dataset, tmp_path / "dataset.tgz")
    root = make_project(tmp_path / "project", data__source=str(archive))
    sh("dvc", "repro", "strip_masks", cwd=root)
    assert [p for p in Pack(root / "data" / "stripped").paths() if p.startswith("benign/")] == [
        f"benign/benign ({i}).png" for i in range(3)
    ]
    assert "up to date" in sh("dvc", "status", "ingest", cwd=root).stdout
    shutil.copy(archive, tmp_path / "old.tgz")
    append_tar_member(
        archive, tar_member("benign/benign (9).png"), (dataset / "benign" / "benign (1).png").read_bytes()
    )
    assert "modified" in sh("dvc", "status", "ingest", cwd=root).stdout


def test_dvc_repro_from_a_url_with_sha256(tmp_path, http_server):
    served, base = http_server
    archive = zip_folder(make_dataset(tmp_path / "dataset"), served / "dataset.zip")
    root = make_project(tmp_path / "project", data__source=f"{base}/dataset.zip", data__sha256="0" * 64)
    failed = sh("dvc", "repro", "ingest", cwd=root, check=False)
    assert failed.returncode != 0 and sha256_of(archive) in failed.stdout + failed.stderr
    assert not (root / "data" / "raw").exists()
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"]["sha256"] = sha256_of(archive)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("dvc", "repro", "strip_masks", cwd=root)
    assert len(Pack(root / "data" / "stripped")) == 6
    lock = (root / "dvc.lock").read_text()
    assert f"{base}/dataset.zip" in lock


def test_dvc_repro_on_the_corpus(tmp_path):
    # DVC hashes an external dependency folder itself: it fails on a dangling link, so none here
    source = tmp_path / "corpus"
    expected = build_corpus(source, tmp_path / "outside", dangling_link=False)
    before = tree_hashes(source)
    root = make_project(tmp_path / "project", data__source=str(source), resize__width=SIZE, resize__height=SIZE)

    failed = sh("dvc", "repro", "augment", cwd=root, check=False)
    assert failed.returncode != 0
    output = failed.stdout + failed.stderr
    for rel in by_fate(expected, "corrupt"):
        assert str(source / rel) in output, rel
    assert "decompression bomb" in output and "skip_corrupt" in output
    assert not (root / "data" / "raw").exists()

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["ingest"]["skip_corrupt"] = True
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("dvc", "repro", "augment", cwd=root)
    report = json.loads((root / "reports" / "ingest.json").read_text())
    assert {row["path"] for row in report["corrupt_skipped"]} == by_fate(expected, "corrupt")
    assert set(report["ignored"]) == by_fate(expected, "ignored")
    assert report["n_duplicates_across_classes"] == 1
    resized = Pack(root / "data" / "resized")
    assert set(resized.paths()) == {Path(rel).with_suffix(".png").as_posix() for rel in by_fate(expected, "image")}
    assert {Image.open(io.BytesIO(data)).size for _, data in resized.iter_items()} == {(SIZE, SIZE)}
    augmented = _read_csv(root / "data" / "manifests" / "augmented.csv")
    assert all(row["class"] == row["source"].split("/", 1)[0] for row in augmented)
    assert "up to date" in sh("dvc", "status", "augment", cwd=root).stdout
    assert tree_hashes(source) == before
