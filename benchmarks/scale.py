"""Speed and memory of the imgclust pipeline against the naive seed approach, on the same images.

    python benchmarks/scale.py --sizes 20000               # synthetic datasets of these sizes
    python benchmarks/scale.py --busi256                   # ../shared/datasets/busi256
    python benchmarks/scale.py --sizes 100000 --model-only # featurize -> train -> evaluate only

For each dataset a fresh temporary git + DVC copy of this project is made, whose ``data.source`` is
the dataset folder (synthetic images are generated there first, not timed). The whole pipeline then
runs as ONE ``dvc repro evaluate``; each stage's wall time is read from the moment DVC announces it
("Running stage ...") to the next announcement, so it includes DVC hashing and caching the stage's
outputs, and "dvc: start" is DVC's own start and checks before the first stage. Peak RSS is the
largest single process (DVC, a stage command or one of its workers), sampled every 50 ms.
The naive approach (benchmarks/naive_seed.py) runs on the same folder in the same run.

Fixed start-up costs are measured by running the same pipeline, and the naive script, on a tiny
synthetic dataset (``--tiny`` images): what remains at that size is process start, imports, DVC's
own work and MLflow logging, not compute. Each stage's "fixed" column is its time in that run.
Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import psutil
import yaml
from project_copy import REPO, make_project, set_params

BUSI256 = REPO.parent / "shared" / "datasets" / "busi256"
START = "dvc: start"
MEASURE = """
import resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
wall = time.perf_counter() - start
if code.returncode:
    sys.stderr.write(code.stderr[-3000:])
    sys.exit(code.returncode)
print(wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.stderr.write(code.stdout)
"""


def measured(cmd: list[str], cwd: Path, env: dict) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MiB of the largest process, stdout) of ``cmd``."""
    out = subprocess.run([sys.executable, "-c", MEASURE, *cmd], cwd=cwd, env=env, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    wall, rss_kib = out.stdout.split()
    return float(wall), int(rss_kib) / 1024, out.stderr


def _largest_rss(process: psutil.Process) -> int:
    largest = 0
    with contextlib.suppress(psutil.Error):
        for proc in [process, *process.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                largest = max(largest, proc.memory_info().rss)
    return largest


def timed_repro(root: Path, env: dict) -> tuple[float, list[tuple[str, float, float]]]:
    """Run ``dvc repro evaluate`` in ``root``: (total wall s, [(step, wall s, peak RSS MiB)])."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        ["dvc", "repro", "evaluate"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    marks = [(START, start)]
    output: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            output.append(line)
            found = re.match(r"Running stage '([^']+)'", line)
            if found:
                marks.append((found.group(1), time.perf_counter()))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    peaks: dict[str, int] = defaultdict(int)
    watched = psutil.Process(proc.pid)
    while proc.poll() is None:
        step = marks[-1][0]
        peaks[step] = max(peaks[step], _largest_rss(watched))
        time.sleep(0.05)
    end = time.perf_counter()
    reader.join()
    if proc.returncode:
        sys.exit(f"dvc repro failed in {root}:\n{''.join(output)[-4000:]}")
    bounds = [t for _, t in marks[1:]] + [end]
    steps = [(name, bound - t, peaks[name] / 2**20) for (name, t), bound in zip(marks, bounds)]
    return end - start, steps


def count_rows(path: Path) -> int:
    with open(path) as fh:
        return sum(1 for _ in fh) - 1


def _stage_sizes(root: Path) -> dict[str, tuple[int, str]]:
    """Files or images each stage handled (ingest and strip_masks: every file, masks too)."""
    raw = count_rows(root / "data" / "manifests" / "raw.csv")
    resized = count_rows(root / "data" / "manifests" / "split.csv")
    augmented = count_rows(root / "data" / "manifests" / "augmented.csv")
    return {
        "ingest": (raw, "files"),
        "strip_masks": (raw, "files"),
        "resize": (resized, "images"),
        "split": (resized, "images"),
        "augment": (augmented, "images"),
        "featurize": (augmented, "images"),
        "train": (augmented, "images"),
        "evaluate": (augmented, "images"),
    }


def run_dataset(source: Path, env: dict) -> dict:
    """The pipeline and the naive script on the images of ``source``."""
    with tempfile.TemporaryDirectory(prefix="imgclust-scale-") as tmp:
        root = Path(tmp) / "project"
        # no balancing copies (augment.target 1): both approaches cluster exactly the same images
        make_project(root, {"data.source": str(source), "augment.target": 1}, env)
        total, steps = timed_repro(root, env)
        sizes = _stage_sizes(root)
        metrics = json.loads((root / "evaluation" / "metrics.json").read_text())
    naive_wall, naive_rss, naive_out = measured(
        [sys.executable, str(REPO / "benchmarks" / "naive_seed.py"), str(source)], REPO, env
    )
    return {
        "total": total,
        "steps": steps,
        "sizes": sizes,
        "metrics": metrics,
        "naive": (naive_wall, naive_rss, json.loads(naive_out)),
    }


def write_params(folder: Path, overrides: dict) -> None:
    """The project's params.yaml with ``overrides`` in ``folder``: what stage commands run there read."""
    folder.mkdir(parents=True, exist_ok=True)
    params = set_params(yaml.safe_load((REPO / "params.yaml").read_text()), overrides)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def synthetic_source(folder: Path, size: int, env: dict) -> Path:
    workdir = folder.with_name(folder.name + "-params")
    write_params(workdir, {"synthesize.n_images": size})
    wall, _, _ = measured(["imgclust", "synthesize", "--out", str(folder)], workdir, env)
    print(f"<!-- synthetic {size}: generated in {wall:.0f} s (not counted) -->", flush=True)
    return folder


def report(label: str, result: dict, fixed: dict | None = None) -> None:
    """A table of ``result``; with ``fixed`` (the tiny run), each step's fixed cost beside it."""
    fixed = fixed or result
    fixed_steps = {name: wall for name, wall, _ in fixed["steps"]}
    print(f"\n**{label}**\n")
    print("| step | files or images | wall s | fixed s | per s | peak RSS MiB |")
    print("|---|---|---|---|---|---|")
    for name, wall, rss in result["steps"]:
        n, unit = result["sizes"].get(name, (0, ""))
        rate = f"{n / wall:,.0f}" if n else ""
        count = f"{n:,} {unit}" if n else ""
        print(f"| {name} | {count} | {wall:.1f} | {fixed_steps.get(name, 0):.1f} | {rate} | {rss:,.0f} |")
    peak = max(rss for _, _, rss in result["steps"])
    metrics = result["metrics"]
    naive_wall, naive_rss, naive = result["naive"]
    print(
        f"| **imgclust: `dvc repro` (all stages)** | | **{result['total']:.1f}** | {fixed['total']:.1f} | "
        f"| **{peak:,.0f}** |"
    )
    print(
        f"| **naive seed script** (load {naive['load_s']:.1f} s, model {naive['model_s']:.1f} s) | "
        f"{naive['n_images']:,} images | **{naive_wall:.1f}** | {fixed['naive'][0]:.1f} | "
        f"{naive['n_images'] / naive_wall:,.0f} | **{naive_rss:,.0f}** |"
    )
    if fixed is result:
        return
    compute = result["total"] - fixed["total"]
    naive_compute = naive_wall - fixed["naive"][0]
    print(
        f"\nspeed-up of imgclust over the naive script: **{naive_wall / result['total']:.2f}x** "
        f"({result['total']:.1f} s vs {naive_wall:.1f} s); without the fixed costs: "
        f"{compute:.1f} s vs {naive_compute:.1f} s ({naive_compute / compute:.2f}x). "
        f"ARI train/test: imgclust {metrics['train']['ari']:.3f}/{metrics['test']['ari']:.3f}, "
        f"naive {naive['ari_train']:.3f}/{naive['ari_test']:.3f}.",
        flush=True,
    )


def bench_model_stages(size: int, env: dict, workdir: Path | None = None) -> None:
    """featurize -> train -> evaluate on ``size`` synthetic images, each stage measured alone.

    The data is prepared with the stage commands directly (not through DVC, whose cache would hold
    a second copy of every folder), deleting each folder once the next one exists. With
    ``workdir``, the data is prepared there and kept, and a folder already prepared is reused.
    """
    with contextlib.ExitStack() as stack:
        root = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="imgclust-scale-")))
        root.mkdir(parents=True, exist_ok=True)
        # the stage commands read their values from params.yaml in their folder: the project's, with
        # no balancing copies (augment.target 1) and the synthetic size
        write_params(root, {"synthesize.n_images": size, "augment.target": 1})
        if (root / "augmented.csv").is_file() and count_rows(root / "augmented.csv") == size:
            _measure_model_stages(root, size, env)
            return
        start = time.perf_counter()
        prepare = [
            ["imgclust", "synthesize", "--out", "synthetic"],
            ["imgclust", "strip-masks", "--raw", "synthetic", "--out", "stripped", "--report", "strip.json"],
            ["imgclust", "resize", "--in", "stripped", "--out", "resized"],
            ["imgclust", "split", "--in", "resized", "--out", "split.csv"],
            [
                "imgclust",
                "augment",
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
        ]
        for cmd in prepare:
            measured(cmd, root, env)
            for done in ("synthetic", "stripped") if cmd[1] in ("resize",) else ():
                shutil.rmtree(root / done)
        print(
            f"<!-- synthetic {size}: data prepared in {time.perf_counter() - start:.0f} s (not counted) -->", flush=True
        )
        _measure_model_stages(root, size, env)


def _measure_model_stages(root: Path, size: int, env: dict) -> None:
    env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    stages = {
        "featurize": ["imgclust", "featurize", "--in", "augmented", "--manifest", "augmented.csv", "--out", "features"],
        "train": ["imgclust", "train", "--features", "features", "--out", "model.joblib"],
        "evaluate": [
            "imgclust",
            "evaluate",
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
            "run.json",
        ],
    }
    total, peak = 0.0, 0.0
    for stage, cmd in stages.items():
        wall, rss, _ = measured(cmd, root, env)
        total, peak = total + wall, max(peak, rss)
        print(
            f"| synthetic {size} | imgclust: {stage} | {size} | {wall:.1f} | {size / wall:.0f} | {rss:.0f} |",
            flush=True,
        )
    metrics = json.loads((root / "metrics.json").read_text())
    print(
        f"| synthetic {size} | **featurize -> train -> evaluate** | {size} | **{total:.1f}** | | **{peak:.0f}** |"
        f" <!-- ARI train {metrics['train']['ari']:.3f} test {metrics['test']['ari']:.3f} -->",
        flush=True,
    )


def startup_costs(env: dict) -> None:
    print("| fixed cost | wall s | peak RSS MiB |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for label, cmd in (
            ("python + imgclust CLI import", ["imgclust", "--help"]),
            ("dvc start (`dvc --version`)", ["dvc", "--version"]),
            ("python + import sklearn", [sys.executable, "-c", "import sklearn.decomposition"]),
            ("python + import mlflow", [sys.executable, "-c", "import mlflow"]),
            ("python + import keras/tensorflow", [sys.executable, "-c", "import keras"]),
        ):
            wall, rss, _ = measured(cmd, Path(tmp), env)
            print(f"| {label} | {wall:.1f} | {rss:.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[])
    parser.add_argument("--busi256", action="store_true")
    parser.add_argument("--tiny", type=int, default=60, help="images of the fixed-cost run")
    parser.add_argument("--model-only", action="store_true", help="time featurize, train, evaluate only")
    parser.add_argument("--workdir", type=Path, help="with --model-only: prepare (or reuse) the data here")
    args = parser.parse_args()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@localhost",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@localhost",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    if args.model_only:
        print("| dataset | step | images | wall s | per s | peak RSS MiB |")
        print("|---|---|---|---|---|---|")
        for size in args.sizes:
            bench_model_stages(size, env, args.workdir)
        return
    startup_costs(env)
    with tempfile.TemporaryDirectory(prefix="imgclust-sources-") as tmp:
        fixed = run_dataset(synthetic_source(Path(tmp) / "tiny", args.tiny, env), env)
        report(f"fixed costs: the same run on {args.tiny} synthetic images", fixed)
        if args.busi256:
            if not BUSI256.is_dir():
                sys.exit(f"{BUSI256} not found")
            report("busi256 (780 images, no masks)", run_dataset(BUSI256, env), fixed)
        for size in args.sizes:
            source = synthetic_source(Path(tmp) / f"synthetic-{size}", size, env)
            report(f"synthetic {size} (images + masks)", run_dataset(source, env), fixed)
            shutil.rmtree(source)


if __name__ == "__main__":
    main()
