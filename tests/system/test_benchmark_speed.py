"""benchmarks/speed.py, smallest real run: the flagship row on busi-sample (a real ``dvc repro`` in a
fresh git + DVC copy, against the seed tutorial script), and benchmarks/floor.py on the same folder,
so the issue-16 table and its floor keep running as the pipeline changes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from support.paths import BUSI_SAMPLE, REPO

STAGES = ("ingest", "strip_masks", "resize", "split", "augment", "featurize", "train", "evaluate")


@pytest.mark.skipif(not BUSI_SAMPLE.is_dir(), reason="needs ../shared/datasets/busi-sample")
def test_flagship_row_times_the_whole_pipeline_against_the_seed_script(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "speed.py"),
            "--only",
            "flagship",
            "--flagship",
            "busi-sample",
            "--json",
            str(tmp_path / "rows.json"),
            "--tmp",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (row,) = json.loads((tmp_path / "rows.json").read_text())
    assert row["target"] == "1. flagship busi-sample (honest)"
    assert row["ratio"] == pytest.approx(row["reference_s"] / row["imgclust_s"])
    assert row["met"] == (row["ratio"] >= 1.0)
    # the process tree is sampled (DVC plus the stage commands: more than DVC alone)
    assert row["imgclust_mib"] > 100 and row["reference_mib"] > 50
    # every stage ran from nothing, each timed from DVC's own progress lines
    for stage in STAGES:
        assert f"| {stage} | yes |" in out.stdout
    assert "63 originals" in row["note"]
    assert "| 1. flagship busi-sample (honest) |" in out.stdout


@pytest.mark.skipif(not BUSI_SAMPLE.is_dir(), reason="needs ../shared/datasets/busi-sample")
def test_floor_sums_its_measured_parts_against_the_seed_script(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "floor.py"), "busi-sample", "--tmp", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = dict(
        line.strip("|").rsplit("|", 1)
        for line in out.stdout.splitlines()
        if line.startswith("| ") and not line.startswith("| part")
    )
    seconds = {name.strip(): float(value) for name, value in rows.items()}
    parts = list(seconds.values())[:7]
    assert len(seconds) == 11 and all(s > 0 for s in seconds.values()), seconds
    assert seconds["**floor (sum)**"] == pytest.approx(sum(parts), abs=0.02)
    floor, seed = seconds["**floor (sum)**"], seconds["seed script, whole process"]
    assert ("(out of reach)" if floor > seed else "(not shown out of reach)") in out.stdout
    # a lower bound of the pipeline's own time, measured in the same run
    assert floor < seconds["the pipeline, `dvc repro` from nothing"]
