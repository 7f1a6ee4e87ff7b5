"""Wall time and peak memory of a command and of its whole process tree, and ``dvc repro`` timed
stage by stage; what the benchmarks read back from a project (dvc.lock, evaluation/metrics.json).

Only DVC's and the pipeline's own records are read, never the files inside ``data/``: the layout
of the datasets may change (folders of images, packed shards) without changing the benchmarks.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

SAMPLE_S = 0.05
START = "dvc: start"
STAGE_LINE = re.compile(r"(?:Running stage '([^']+)'|Stage '([^']+)' (didn't change|is cached))")


def _tree_rss_psutil(pid: int) -> tuple[int, int]:
    import psutil

    total = largest = 0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0, 0
    for proc in procs:
        try:
            rss = proc.memory_info().rss
        except psutil.Error:
            continue
        total, largest = total + rss, max(largest, rss)
    return total, largest


def _tree_rss_proc(pid: int) -> tuple[int, int]:
    """The same from /proc, where psutil is not installed (Linux)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            children.setdefault(int(fields[1]), []).append(int(entry.name))
            rss[int(entry.name)] = int(fields[21]) * 4096
        except (OSError, ValueError, IndexError):
            continue
    total = largest = 0
    todo = [pid]
    while todo:
        current = todo.pop()
        total, largest = total + rss.get(current, 0), max(largest, rss.get(current, 0))
        todo += children.get(current, [])
    return total, largest


def tree_rss(pid: int) -> tuple[int, int]:
    """(sum, largest) resident set size in bytes of ``pid`` and all its descendants."""
    try:
        return _tree_rss_psutil(pid)
    except ImportError:
        return _tree_rss_proc(pid)


@dataclass
class Step:
    name: str
    wall_s: float
    tree_mib: float  # peak of the summed RSS of the process tree (DVC and the stage command)
    largest_mib: float  # peak RSS of the largest single process
    ran: bool  # the stage's command ran (not skipped as unchanged, nor restored from DVC's run cache)


@dataclass
class Timed:
    wall_s: float
    tree_mib: float
    largest_mib: float
    output: str
    steps: list[Step] = field(default_factory=list)

    def step(self, name: str) -> Step | None:
        return next((step for step in self.steps if step.name == name), None)


def timed(cmd: list[str], cwd: Path, env: dict, *, stages: bool = False) -> Timed:
    """Run ``cmd``, sampling its process tree's RSS every 50 ms; exit with its output if it fails.

    With ``stages`` (a ``dvc repro``), DVC's progress lines split the time into steps: each from the
    line that names a stage ("Running stage", "didn't change", "is cached") to the next one, so a
    stage's time includes DVC hashing and caching its outputs; "dvc: start" is DVC's own start."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    marks: list[tuple[str, float, bool]] = [(START, start, False)]
    output: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            output.append(line)
            found = STAGE_LINE.search(line) if stages else None
            if found:
                marks.append((found.group(1) or found.group(2), time.perf_counter(), bool(found.group(1))))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    peaks: dict[str, tuple[int, int]] = {}
    while proc.poll() is None:
        label = marks[-1][0]
        total, largest = tree_rss(proc.pid)
        old_total, old_largest = peaks.get(label, (0, 0))
        peaks[label] = (max(old_total, total), max(old_largest, largest))
        time.sleep(SAMPLE_S)
    end = time.perf_counter()
    reader.join()
    text = "".join(output)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed in {cwd} (exit {proc.returncode}):\n{text[-4000:]}")
    bounds = [t for _, t, _ in marks[1:]] + [end]
    steps = [
        Step(name, bound - t, peaks.get(name, (0, 0))[0] / 2**20, peaks.get(name, (0, 0))[1] / 2**20, ran)
        for (name, t, ran), bound in zip(marks, bounds, strict=True)
    ]
    tree = max((p[0] for p in peaks.values()), default=0) / 2**20
    largest = max((p[1] for p in peaks.values()), default=0) / 2**20
    return Timed(end - start, tree, largest, text, steps if stages else [])


def repro(root: Path, env: dict, target: str = "evaluate") -> Timed:
    """``dvc repro TARGET`` in ``root``, timed stage by stage."""
    return timed(["dvc", "repro", target], root, env, stages=True)


def bare_dvc_project(root: Path, stages: dict, env: dict) -> Path:
    """A new git + DVC repository at ``root`` whose dvc.yaml holds ``stages`` and nothing else:
    what the benchmarks compare the pipeline against (DVC's own cost)."""
    root.mkdir()
    (root / "dvc.yaml").write_text(json.dumps({"stages": stages}))
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
    return root


def lock_outs(root: Path) -> dict[str, str]:
    """Every output's hash recorded in ``root``'s dvc.lock: {"stage: path": md5}."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    return {
        f"{stage}: {out['path']}": out.get("md5") or out.get("hash", "")
        for stage, entry in lock["stages"].items()
        for out in entry.get("outs", [])
    }


def lock_nfiles(root: Path) -> dict[str, int]:
    """Files DVC versions per output folder of ``root``'s dvc.lock: {"path": nfiles}."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    return {
        out["path"]: out["nfiles"]
        for entry in lock["stages"].values()
        for out in entry.get("outs", [])
        if "nfiles" in out
    }


def metrics(root: Path) -> dict:
    return json.loads((root / "evaluation" / "metrics.json").read_text())


def differences(left: dict, right: dict) -> list[str]:
    """Keys whose values differ (or are missing on one side)."""
    return sorted(key for key in left.keys() | right.keys() if left.get(key) != right.get(key))


def load_average() -> str:
    with open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])
