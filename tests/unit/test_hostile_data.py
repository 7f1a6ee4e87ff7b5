"""Hostile data and hostile runs (issue 13), in-process: every case ends in a named imgclust error
(exit 2, a message, no traceback) or in a warning, never in a traceback or a silently wrong result.

Names too long for augmented copies, encrypted or unreadably compressed zips, a tar with a file and
a folder of one name, a full disk while extracting or ingesting, an unreadable file, a class named
like mathtext, huge resize sizes, zip bombs, a data.source that overlaps the pipeline's outputs;
metrics that are trivial (one class) or undefined, real images named like masks, PNGs whose image
data stops before the last row. Every bad input is generated here."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import pathlib
import shutil
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import joblib
import numpy as np
import pytest
import yaml
from PIL import Image, ImageFile

from imgclust import config
from imgclust.core import packs, plots
from imgclust.core.archives import Limits, extract_archive
from imgclust.core.clustering import fit_model
from imgclust.core.feature_store import load_features
from imgclust.core.fsutil import NAME_MAX, atomic_dir, class_folders, write_csv
from imgclust.core.images import COPY_NAME_RESERVE, MAX_IMAGE_SIDE, check_image, check_png_rows, load_array, open_image
from imgclust.core.protocols import SPLIT_FIELDS
from imgclust.errors import (
    CorruptImageError,
    ImgclustError,
    InputDataError,
    OutputWriteError,
    ParamError,
    SourceError,
    UnsafeArchiveError,
)
from imgclust.stages import evaluate as evaluate_stage
from imgclust.stages.featurize import cnn_params, featurize
from imgclust.stages.ingest import ingest
from imgclust.stages.resize import resize_images
from imgclust.stages.strip_masks import strip_masks
from imgclust.tracking import naming
from support.archives import zip_folder
from support.cli import run_cli
from support.data import run_data_stages
from support.packs import pack_folder
from support.paths import REPO
from support.project import write_params

INGEST = ("ingest", "--out", "data/raw", "--manifest", "data/manifests/raw.csv", "--report", "reports/ingest.json")
SHIPPED = config.load(path=REPO / "params.yaml")
BAD_CLASS = "$\\bad$ lesion"  # matplotlib's mathtext would parse it, and fail on \bad


# ------------------------------------------------------------------------------------------ helpers


def _png_bytes(value: int = 0, size: int = 16) -> bytes:
    rng = np.random.default_rng(value)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _image(path: Path, value: int = 0, size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_png_bytes(value, size))
    return path


def _source(root: Path, classes=("benign", "malignant")) -> Path:
    for c, cls in enumerate(classes):
        for i in range(3):
            _image(root / cls / f"{cls} ({i}).png", value=10 * c + i)
    return root


def _zip(folder: Path, archive: Path) -> Path:
    """``folder``'s files (no folder entries: the first member is a file) in a deflated zip."""
    return zip_folder(folder, archive, compression=zipfile.ZIP_DEFLATED, dirs=False)


def _patch_zip(archive: Path, local_offset: int, central_offset: int, fmt: str, value) -> None:
    """Set one field of the FIRST member's local header and central directory entry."""
    data = bytearray(archive.read_bytes())
    local, central = data.find(b"PK\x03\x04"), data.find(b"PK\x01\x02")
    size = struct.calcsize(fmt)
    for at in (local + local_offset, central + central_offset):
        old = struct.unpack(fmt, data[at : at + size])[0]
        data[at : at + size] = struct.pack(fmt, value(old))
    archive.write_bytes(bytes(data))


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(width: int, height: int, raw_rows: bytes, interlace: int = 0) -> bytes:
    """A gray 8-bit PNG whose (complete, CRC-valid) zlib stream holds ``raw_rows``."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, interlace)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw_rows)) + _chunk(b"IEND", b"")
    )


def _rows(pixels: np.ndarray) -> bytes:
    return b"".join(b"\x00" + row.tobytes() for row in pixels)


def _adam7_rows(pixels: np.ndarray) -> list[bytes]:
    """The filtered rows of each Adam7 pass of ``pixels`` (filter 0)."""
    passes = []
    for x0, y0, dx, dy in (
        (0, 0, 8, 8),
        (4, 0, 8, 8),
        (0, 4, 4, 8),
        (2, 0, 4, 4),
        (0, 2, 2, 4),
        (1, 0, 2, 2),
        (0, 1, 1, 2),
    ):
        sub = pixels[y0::dy, x0::dx]
        passes.append(_rows(sub) if sub.size else b"")
    return passes


def _project(tmp_path: Path, **overrides) -> Path:
    write_params(tmp_path, **overrides)
    return tmp_path


def _fails_cleanly(result, *needles: str) -> None:
    """Exit 2 with imgclust's message (no traceback) holding every needle."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


# ------------------------------------------------------------------ (7) a 250-character file name


def test_a_name_too_long_for_its_augmented_copies_is_refused_by_resize_naming_the_file(tmp_path):
    name = "b" * (250 - len(".png")) + ".png"
    source = _source(tmp_path / "source")
    _image(source / "benign" / name, value=99)
    ingest(source, tmp_path / "raw", tmp_path / "raw.csv", workers=1)  # the OS allows 250 bytes
    strip_masks(tmp_path / "raw", tmp_path / "stripped", ["*_mask*.png"])
    project = _project(tmp_path / "project", resize__width=16, resize__height=16)

    result = run_cli(
        "resize", "--in", str(tmp_path / "stripped"), "--out", str(tmp_path / "resized"), cwd=project, check=False
    )

    _fails_cleanly(result, name, "too long", str(NAME_MAX - COPY_NAME_RESERVE))
    assert not (tmp_path / "resized").exists()


def test_augment_refuses_a_planned_name_over_name_max_before_writing_anything(tmp_path):
    """A resized folder that holds such a name anyway (written by an older resize): augment names it
    instead of failing with ENAMETOOLONG halfway."""
    resized = tmp_path / "resized"
    long_name = "a" * (NAME_MAX - len(".png")) + ".png"  # 255 bytes: its copies cannot be written
    _image(resized / "a" / long_name, value=1)
    for i in range(3):
        _image(resized / "b" / f"b{i}.png", value=10 + i)
    pack_folder(resized)
    rows = [{"path": f"a/{long_name}", "class": "a", "split": "train"}] + [
        {"path": f"b/b{i}.png", "class": "b", "split": "train"} for i in range(3)
    ]
    write_csv(tmp_path / "split.csv", rows, SPLIT_FIELDS)
    project = _project(tmp_path / "project")

    result = run_cli(
        "augment",
        "--in",
        str(resized),
        "--split",
        str(tmp_path / "split.csv"),
        "--out",
        str(tmp_path / "augmented"),
        "--manifest",
        str(tmp_path / "augmented.csv"),
        "--report",
        str(tmp_path / "augment.json"),
        cwd=project,
        check=False,
    )

    _fails_cleanly(result, long_name, "rename the source image")
    assert not (tmp_path / "augmented").exists() and not (tmp_path / "augmented.csv").exists()


def test_a_too_long_name_while_writing_is_an_output_write_error(tmp_path):
    with pytest.raises(OutputWriteError, match="file name too long"):
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / ("x" * 300 + ".png")).write_bytes(b"")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- (7) hostile archives


def test_an_encrypted_zip_is_refused_naming_the_member(tmp_path, private_tmp):
    archive = _zip(_source(tmp_path / "dataset"), tmp_path / "dataset.zip")
    _patch_zip(archive, 6, 8, "<H", lambda bits: bits | 0x1)  # general purpose bit 0: encrypted
    project = _project(tmp_path / "project", data__source=str(archive))

    result = run_cli(*INGEST, cwd=project, check=False)

    _fails_cleanly(result, "benign/benign (0).png", "encrypted", str(archive))
    assert not (project / "data" / "raw").exists()


def test_a_zip_compressed_with_an_unsupported_method_is_refused(tmp_path, private_tmp):
    archive = _zip(_source(tmp_path / "dataset"), tmp_path / "dataset.zip")
    _patch_zip(archive, 8, 10, "<H", lambda _: 9)  # deflate64: zipfile cannot inflate it
    project = _project(tmp_path / "project", data__source=str(archive))

    result = run_cli(*INGEST, cwd=project, check=False)

    _fails_cleanly(result, "benign/benign (0).png", "method 9", "deflate")
    assert not (project / "data" / "raw").exists()


def _tar(archive: Path, members: list[tuple[str, bytes | None]]) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return archive


@pytest.mark.parametrize(
    "members",
    [
        [("d/benign/x.png", "file"), ("d/benign/x.png/y.png", "file"), ("d/malignant/m.png", "file")],
        [
            ("d/benign/x.png", None),
            ("d/benign/x.png/y.png", "file"),
            ("d/benign/x.png", "file"),
            ("d/malignant/m.png", "file"),
        ],
    ],
    ids=["file-then-folder", "folder-then-file"],
)
def test_a_tar_holding_a_file_and_a_folder_of_one_name_is_refused(tmp_path, private_tmp, members):
    archive = _tar(
        tmp_path / "dataset.tar.gz",
        [(name, None if kind is None else _png_bytes(i)) for i, (name, kind) in enumerate(members)],
    )
    project = _project(tmp_path / "project", data__source=str(archive))

    result = run_cli(*INGEST, cwd=project, check=False)

    _fails_cleanly(result, "d/benign/x.png", "nothing was extracted")
    assert "folder" in result.stderr


def test_a_member_listed_twice_is_refused(tmp_path):
    archive = _tar(tmp_path / "dataset.tar.gz", [("a/x.png", _png_bytes(1)), ("a/x.png", _png_bytes(2))])
    with pytest.raises(UnsafeArchiveError, match="two members named 'a/x.png'"):
        extract_archive(archive, tmp_path / "out")


def test_a_full_disk_while_extracting_is_an_output_write_error(tmp_path, private_tmp, monkeypatch):
    archive = _zip(_source(tmp_path / "dataset"), tmp_path / "dataset.zip")
    project = _project(tmp_path / "project", data__source=str(archive))

    def full(self, member, targetpath, pwd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(targetpath) / "x"))

    monkeypatch.setattr(zipfile.ZipFile, "_extract_member", full)
    result = run_cli(*INGEST, cwd=project, check=False)

    _fails_cleanly(result, str(archive), "disk filled up", "TMPDIR")
    assert not (project / "data" / "raw").exists()


def test_an_archive_larger_than_the_free_space_is_refused_before_extracting(tmp_path, private_tmp, monkeypatch):
    archive = _zip(_source(tmp_path / "dataset"), tmp_path / "dataset.zip")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 10, 10))
    with pytest.raises(OutputWriteError, match="only 10 bytes free"):
        extract_archive(archive, private_tmp / "out")
    shutil.rmtree(private_tmp / "out")


# ---------------------------------------------------------------------- (7) full disk, unreadable


class _FillingShard:
    """A shard being written on a disk that fills up as the item ``full_at`` is packed."""

    def __init__(self, fh, full_at: bytes):
        self.fh, self.full_at = fh, full_at

    def write(self, data):
        if self.full_at in data:  # the item's tar header names it
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as write(2) raises it: no file name
        return self.fh.write(data)

    def close(self):
        self.fh.close()


def test_a_full_disk_while_ingesting_is_an_output_write_error_and_leaves_nothing(tmp_path, monkeypatch):
    source = _source(tmp_path / "source")
    project = _project(tmp_path / "project", data__source=str(source))
    shards: list[str] = []

    def filling_open(file, mode="r", *args, **kwargs):
        fh = open(file, mode, *args, **kwargs)
        if Path(file).suffix == ".tar" and "b" in mode and "r" not in mode:
            shards.append(str(file))
            return _FillingShard(fh, b"benign (1).png")
        return fh

    monkeypatch.setattr(packs, "open", filling_open, raising=False)
    result = run_cli(*INGEST, cwd=project, check=False)

    assert shards, "the disk filled while a shard of data/raw was written"
    _fails_cleanly(result, "data/raw", "disk (or quota) is full", "nothing was kept")
    assert not (project / "data" / "raw").exists()
    assert not [p for p in (project / "data").iterdir() if p.name.startswith(".raw.tmp")]
    assert not list(project.rglob("raw.csv")), "no manifest for a snapshot that was not kept"


def _unreadable(monkeypatch, name: str) -> None:
    """Opening a file called ``name`` fails with EACCES (tests run as root, where chmod cannot)."""
    real = os.open

    def fake_open(path, flags, *args, **kwargs):
        if os.fsdecode(path).endswith("/" + name) and not flags & (os.O_WRONLY | os.O_RDWR):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)


def test_an_unreadable_file_fails_ingest_by_name_and_skip_corrupt_skips_it(tmp_path, monkeypatch):
    source = _source(tmp_path / "source")
    _unreadable(monkeypatch, "benign (2).png")

    refused = run_cli(*INGEST, cwd=_project(tmp_path / "strict", data__source=str(source)), check=False)
    _fails_cleanly(refused, "benign (2).png", "Permission denied", "skip_corrupt")

    skipping = _project(tmp_path / "skipping", data__source=str(source), ingest__skip_corrupt=True)
    run_cli(*INGEST, cwd=skipping)
    report = json.loads((skipping / "reports" / "ingest.json").read_text())
    assert [row["path"] for row in report["corrupt_skipped"]] == ["benign/benign (2).png"]
    assert report["files_per_class"] == {"benign": 2, "malignant": 3}


def test_an_unlistable_folder_is_a_named_error(tmp_path, monkeypatch):
    root = _source(tmp_path / "stripped")
    real = pathlib.Path.iterdir

    def iterdir(self):
        if self == root:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real(self)

    monkeypatch.setattr(pathlib.Path, "iterdir", iterdir)
    with pytest.raises(InputDataError, match="cannot be listed"):
        class_folders(root)


# ------------------------------------------------------------------- (7) a class named as mathtext


def test_plots_draw_a_mathtext_class_name_as_plain_text(tmp_path):
    labels = [BAD_CLASS, "normal", BAD_CLASS, "normal"]
    clusters = np.array([0, 1, 0, 1])
    plots.plot_contingency(clusters, labels, tmp_path / "contingency.png", title=BAD_CLASS)
    plots.plot_scatter(np.arange(8, dtype=float).reshape(4, 2), clusters, labels, tmp_path / "scatter.png")
    thumbs = {0: [np.zeros((8, 8), np.uint8)], 1: [np.zeros((8, 8), np.uint8)]}
    plots.plot_thumbnails(thumbs, tmp_path / "thumbnails.png", {0: [BAD_CLASS], 1: ["normal"]})
    for name in ("contingency", "scatter", "thumbnails"):
        assert Image.open(tmp_path / f"{name}.png").size[0] > 0


@pytest.fixture(scope="module")
def mathtext_project(synthetic_dataset, tmp_path_factory):
    """The synthetic dataset with its 'benign' folder renamed to a mathtext string, through the data
    stages, featurize and train (pixels, PCA 5, k=3)."""
    root = tmp_path_factory.mktemp("mathtext")
    source = root / "source"
    shutil.copytree(synthetic_dataset, source)
    (source / "benign").rename(source / BAD_CLASS)
    return _trained(root, source)


def _trained(root: Path, source: Path, n_clusters: int = 3) -> Path:
    data = run_data_stages(root / "data", source, "gray", 32, 0.25)
    featurize(
        data["images"],
        data["manifest"],
        root / "features",
        method="pixels",
        cnn_params=cnn_params(SHIPPED.featurize.cnn),
        batch_size=SHIPPED.featurize.batch_size,
    )
    features, index, _ = load_features(root / "features")
    model = fit_model(
        np.asarray(features),
        np.array([r["split"] == "train" for r in index]),
        method="pixels",
        pca={**SHIPPED.train.pca.model_dump(), "n_components": 5},
        kmeans={**SHIPPED.train.kmeans.model_dump(), "n_clusters": n_clusters, "n_init": 2},
        scalable=SHIPPED.train.scalable.model_dump(),
        pca_on_all=False,
    )
    joblib.dump(model, root / "model.joblib")
    write_params(root)
    return root


def _evaluate(root: Path, *extra: str, check: bool = True):
    return run_cli(
        "evaluate",
        "--features",
        "features",
        "--model",
        "model.joblib",
        "--images",
        "data/augmented",
        "--metrics",
        "evaluation/metrics.json",
        "--plots",
        "evaluation/plots",
        "--predictions",
        "evaluation/predictions.csv",
        "--run-info",
        "evaluation/mlflow_run.json",
        *extra,
        cwd=root,
        check=check,
    )


def test_evaluate_succeeds_with_a_mathtext_class_folder(mathtext_project):
    _evaluate(mathtext_project, "--no-mlflow")
    for name in ("contingency", "scatter", "thumbnails"):
        assert (mathtext_project / "evaluation" / "plots" / f"{name}.png").is_file()
    metrics = json.loads((mathtext_project / "evaluation" / "metrics.json").read_text())
    assert set(metrics) == {"train", "test", "originals"}


def test_a_failing_plot_leaves_metrics_json_as_it_was(mathtext_project, monkeypatch):
    metrics = mathtext_project / "evaluation" / "metrics.json"
    metrics.parent.mkdir(exist_ok=True)
    metrics.write_text('{"earlier": "run"}\n')

    def broken(*args, **kwargs):
        raise ValueError("plot failed")

    monkeypatch.setattr(plots, "plot_thumbnails", broken)
    with pytest.raises(ValueError, match="plot failed"):
        _evaluate(mathtext_project, "--no-mlflow")
    assert metrics.read_text() == '{"earlier": "run"}\n'


# -------------------------------------------------------------------------- (7) resize.width 40000


def test_resize_width_beyond_the_bound_is_a_param_error_not_a_memory_error(tmp_path):
    _source(tmp_path / "stripped")
    project = _project(tmp_path / "project", resize__width=40000)
    result = run_cli(
        "resize", "--in", str(tmp_path / "stripped"), "--out", str(tmp_path / "resized"), cwd=project, check=False
    )
    _fails_cleanly(result, "resize.width", str(MAX_IMAGE_SIDE))
    with pytest.raises(ParamError, match=str(MAX_IMAGE_SIDE)):
        resize_images(tmp_path / "stripped", tmp_path / "resized", 16, 40000, "gray", "lanczos", workers=1)
    assert not (tmp_path / "resized").exists()


def test_the_largest_allowed_side_is_accepted(tmp_path):
    write_params(tmp_path, resize__width=MAX_IMAGE_SIDE, resize__height=MAX_IMAGE_SIDE)
    assert config.load(("resize",), path=tmp_path / "params.yaml").resize.width == MAX_IMAGE_SIDE


# ---------------------------------------------------------------- (9) trivial and undefined metrics


def _fake_log_run(monkeypatch) -> dict:
    """runs.RunLogger and the git/dvc tags replaced in-process: what evaluate passes to tracking."""
    seen: dict = {}

    class FakeLogger(contextlib.AbstractContextManager):
        def __exit__(self, *exc_info):
            pass

        def log_run(self, **kwargs):
            seen.update(kwargs)
            return {"run_id": "r", "experiment_id": "0", "tracking_uri": "sqlite:///x"}

    monkeypatch.setattr(evaluate_stage.runs, "RunLogger", FakeLogger)
    monkeypatch.setattr(evaluate_stage.runs, "pipeline_tags", lambda *args: {"kind": "pipeline"})
    return seen


@pytest.fixture(scope="module")
def one_class_project(synthetic_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("one_class")
    source = root / "source"
    shutil.copytree(synthetic_dataset / "benign", source / "benign")
    return _trained(root, source)


def test_one_class_warns_on_the_console_and_tags_the_run(one_class_project, monkeypatch):
    seen = _fake_log_run(monkeypatch)
    result = _evaluate(one_class_project)
    assert "warning: test: all" in result.stderr and "one class ('benign')" in result.stderr
    assert "trivial" in result.stderr
    tag = seen["tags"][naming.METRIC_WARNINGS_TAG]
    assert "one class ('benign')" in tag and "train:" in tag and "test:" in tag
    assert seen["summary"]["metric_warnings"]


def test_several_classes_and_clusters_give_no_warning(mathtext_project, monkeypatch):
    seen = _fake_log_run(monkeypatch)
    result = _evaluate(mathtext_project)
    assert "warning" not in result.stderr
    assert naming.METRIC_WARNINGS_TAG not in seen["tags"]


def test_one_cluster_and_nan_metrics_are_warned_about():
    nan = float("nan")
    values = {"ari": 0.0, "nmi": 0.0, "cluster_accuracy": 0.5, "silhouette": nan, "n_samples": 4, "n_clusters_found": 1}
    result = {"metrics": {"test": values}, "rows": {"test": np.ones(4, bool)}, "labels": np.array(["a", "b", "a", "b"])}
    warnings = evaluate_stage.metric_warnings(result)
    assert len(warnings) == 1 and "one cluster" in warnings[0] and "silhouette is undefined" in warnings[0]
    values.update(n_clusters_found=4, silhouette=nan)
    assert "silhouette undefined" in evaluate_stage.metric_warnings(result)[0]


# ------------------------------------------------------------------ (9) images named like masks


def test_strip_masks_lists_per_pattern_and_warns_about_masks_without_an_image(tmp_path):
    raw = tmp_path / "raw"
    for name in (
        "benign (1).png",
        "benign (1)_mask.png",
        "benign (1)_mask_1.png",
        "scan_mask.png",
        "thumb.png",
        "thumb_small.png",
    ):
        _image(raw / "benign" / name)
    _image(raw / "normal" / "normal (1).png")
    pack_folder(raw)
    project = _project(tmp_path / "project", strip_masks__patterns=["*_mask*.png", "*_small.png"])

    result = run_cli(
        "strip-masks",
        "--raw",
        str(raw),
        "--out",
        str(tmp_path / "stripped"),
        "--report",
        str(tmp_path / "strip_masks.json"),
        cwd=project,
    )

    report = json.loads((tmp_path / "strip_masks.json").read_text())
    assert report["removed_by_pattern"] == {
        "*_mask*.png": ["benign/benign (1)_mask.png", "benign/benign (1)_mask_1.png", "benign/scan_mask.png"],
        "*_small.png": ["benign/thumb_small.png"],
    }
    assert report["n_removed_by_pattern"] == {"*_mask*.png": 3, "*_small.png": 1}
    assert report["masks_without_image"] == ["benign/scan_mask.png"]
    assert "3 by '*_mask*.png', 1 by '*_small.png'" in result.stdout
    assert "scan_mask.png was removed as a mask, but no image of its name is beside it" in result.stderr
    assert "benign (1)_mask" not in result.stderr


# ------------------------------------------------------------------- (9) PNG rows that stop early


def test_pillow_still_refuses_truncated_images():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_a_png_whose_complete_stream_holds_half_the_rows_is_refused(tmp_path):
    pixels = np.full((16, 16), 200, np.uint8)
    short = tmp_path / "short.png"
    short.write_bytes(_png(16, 16, _rows(pixels[:8])))
    whole = tmp_path / "whole.png"
    whole.write_bytes(_png(16, 16, _rows(pixels)))

    for decode in (lambda p: check_image(p, p.read_bytes()), open_image, lambda p: load_array(p, "gray", (8, 8))):
        with pytest.raises(CorruptImageError, match="stops early"):
            decode(short)
        decode(whole)
    assert (np.asarray(open_image(whole)) == 200).all()


def test_interlaced_pngs_are_checked_pass_by_pass():
    pixels = np.random.default_rng(0).integers(0, 256, (13, 11), dtype=np.uint8)
    passes = _adam7_rows(pixels)
    complete = _png(11, 13, b"".join(passes), interlace=1)
    assert (np.asarray(Image.open(io.BytesIO(complete))) == pixels).all()  # the encoder is right
    check_png_rows(complete)
    with pytest.raises(OSError, match="stops early"):
        check_png_rows(_png(11, 13, b"".join(passes[:-1]), interlace=1))


def test_ingest_names_a_png_with_missing_rows(tmp_path):
    source = _source(tmp_path / "source")
    (source / "benign" / "short.png").write_bytes(_png(16, 16, _rows(np.zeros((3, 16), np.uint8))))
    result = run_cli(*INGEST, cwd=_project(tmp_path / "project", data__source=str(source)), check=False)
    _fails_cleanly(result, "short.png", "stops early")


# ------------------------------------------------------------------------------- (9) zip bombs


def test_a_zip_bomb_is_refused_by_ratio_before_anything_is_written(tmp_path, private_tmp):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("benign/a.png", _png_bytes(1))
        zf.writestr("benign/b.bmp", b"\0" * (8 << 20))  # 8 MiB of zeros: ~8 KiB compressed
    project = _project(tmp_path / "project", data__source=str(archive))

    result = run_cli(*INGEST, cwd=project, check=False)

    _fails_cleanly(result, str(archive), "ingest.max_compression_ratio", "nothing was extracted")
    assert not (project / "data" / "raw").exists()


def test_a_tar_bomb_is_refused_by_size(tmp_path):
    archive = _tar(tmp_path / "bomb.tar.gz", [("a/x.png", _png_bytes(1)), ("a/big.bmp", b"\0" * (1 << 20))])
    with pytest.raises(UnsafeArchiveError, match="ingest.max_archive_bytes"):
        extract_archive(archive, tmp_path / "out", limits=Limits(max_bytes=1 << 20, max_ratio=10**6))
    assert not list((tmp_path / "out").rglob("*"))
    extract_archive(archive, tmp_path / "ok", limits=Limits(max_bytes=2 << 20, max_ratio=10**6))


def test_archive_limits_are_bounded_parameters_with_safe_defaults(tmp_path):
    shipped = yaml.safe_load((REPO / "params.yaml").read_text())["ingest"]
    assert shipped["max_archive_bytes"] == Limits().max_bytes
    assert shipped["max_compression_ratio"] == Limits().max_ratio
    for key, bad in (("max_archive_bytes", 0), ("max_compression_ratio", 0.5)):
        write_params(tmp_path, **{f"ingest__{key}": bad})
        with pytest.raises(ParamError, match=f"ingest.{key}"):
            config.load(("ingest",), path=tmp_path / "params.yaml")


def test_ingest_reads_the_archive_limits_from_params_yaml(tmp_path, private_tmp):
    archive = _zip(_source(tmp_path / "dataset"), tmp_path / "dataset.zip")
    project = _project(tmp_path / "project", data__source=str(archive), ingest__max_archive_bytes=100)
    result = run_cli(*INGEST, cwd=project, check=False)
    _fails_cleanly(result, "ingest.max_archive_bytes")


# ----------------------------------------------------------- (9) data.source overlapping outputs


@pytest.mark.parametrize("source", ["/", ".", "..", "data", "data/raw", "data/raw/benign", "reports", "{project}"])
def test_a_source_that_overlaps_the_pipeline_outputs_names_data_source(tmp_path, source):
    project = tmp_path / "project"
    _source(project / "data" / "raw")
    write_params(project, data__source=source.format(project=project))
    for args in (INGEST, ("split", "--in", "data/resized", "--out", "data/manifests/split.csv")):
        result = run_cli(*args, cwd=project, check=False)
        _fails_cleanly(result, "data.source", "both a dependency and an output")


def test_the_synthetic_default_and_outside_folders_are_accepted(tmp_path):
    for source in ("data/synthetic", "data/synthetic/benign", "../elsewhere", str(tmp_path / "x")):
        write_params(tmp_path / "project", data__source=source)
        config.load(("data",), path=tmp_path / "project" / "params.yaml")


def test_a_missing_source_names_data_source(tmp_path):
    project = _project(tmp_path / "project", data__source="/nonexistent/imgclust-source")
    result = run_cli(*INGEST, cwd=project, check=False)
    _fails_cleanly(result, "/nonexistent/imgclust-source", "data.source")
    with pytest.raises(ParamError, match="data.source '/nonexistent/imgclust-source' does not exist"):
        config.check_source(config.load(path=project / "params.yaml").data, project)


def test_the_outputs_data_source_may_not_overlap_are_those_of_dvc_yaml():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    outs = {
        next(iter(o)) if isinstance(o, dict) else o
        for name, spec in stages.items()
        if name != "synthesize"
        for o in spec.get("outs", [])
    }
    assert all(any(o == p or o.startswith(p + "/") for p in config.PIPELINE_OUTPUTS) for o in outs), outs
    assert all(any(o == p or o.startswith(p + "/") for o in outs) for p in config.PIPELINE_OUTPUTS)
    assert not any(o.startswith("data/synthetic") for o in outs)


def test_every_case_here_is_an_imgclust_error():
    for cls in (OutputWriteError, UnsafeArchiveError, SourceError, ParamError, InputDataError, CorruptImageError):
        assert issubclass(cls, ImgclustError)
