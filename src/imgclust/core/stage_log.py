"""Wall time and peak memory of the pipeline's stage processes, kept in a git-ignored side file.

Each stage process that DVC runs appends one JSON line (stage, wall seconds, peak resident memory)
to ``STAGE_LOG`` when it succeeds; evaluate reads the lines written since the last pipeline run was
logged, adds its own figures and logs them as MLflow metrics. Timings differ on every run, so they
are never part of a DVC output or a committed file.
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

LOCAL_DIR = Path(".imgclust")  # git-ignored: per-checkout settings, stage timings, third-party logs
STAGE_LOG = LOCAL_DIR / "stage_times.jsonl"

_IMPORTED_AT = time.time()  # fallback start time where /proc is missing


def process_start_time() -> float:
    """When this process started (epoch seconds): /proc's start time, which includes the seconds
    Python spent importing before any imgclust code ran."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(
            float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED_AT


def peak_memory_mb() -> float:
    """Peak resident memory of this process or of its largest finished child (worker pools), MiB."""
    peaks = [resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return round(max(peaks) / 1024, 1)  # Linux reports KiB


def measure(stage: str) -> dict:
    """This process's figures so far: {stage, wall_s, peak_mb}."""
    return {
        "stage": stage,
        "wall_s": round(max(time.time() - process_start_time(), 0.0), 3),
        "peak_mb": peak_memory_mb(),
    }


def append(record: dict, path: Path = STAGE_LOG) -> None:
    """Append one record (never fails the stage: the figures are informative only)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
    except OSError:
        pass


def read(path: Path = STAGE_LOG) -> dict[str, dict]:
    """The latest record of each stage in ``path`` (stage -> record); unreadable lines skipped."""
    latest: dict[str, dict] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return latest
    for line in lines:
        try:
            record = json.loads(line)
            latest[str(record["stage"])] = {"wall_s": float(record["wall_s"]), "peak_mb": float(record["peak_mb"])}
        except (ValueError, KeyError, TypeError):
            continue
    return latest


def consume(path: Path = STAGE_LOG) -> None:
    """Start afresh after a logged run, so its stages are not counted again in the next one."""
    try:
        Path(path).unlink()
    except OSError:
        pass
