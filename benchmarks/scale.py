"""Speed and memory of the imgclust pipeline against the naive seed approach, on the same images.

    python benchmarks/scale.py --sizes 1000 20000          # synthetic datasets of these sizes
    python benchmarks/scale.py --busi256                   # ../shared/datasets/busi256
    python benchmarks/scale.py --sizes 100000 --model-only # featurize -> train -> evaluate only

For each dataset a fresh temporary git + DVC copy of this project is made. The synthetic images are
generated first (not timed); then every stage runs as ``dvc repro --single-item STAGE`` in its own
measuring process, reporting wall time, images/s and peak RSS (of the largest process the stage
started: DVC, the imgclust command or one of its workers).
The naive approach (benchmarks/naive_seed.py) runs on the same source folder in the same run.
Fixed start-up costs (interpreter + imports of the CLI, DVC's own start, MLflow import) are
measured separately. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from project_copy import REPO, make_project

BUSI256 = REPO.parent / "shared" / "datasets" / "busi256"
STAGES = ("ingest", "strip_masks", "resize", "split", "augment", "featurize", "train", "evaluate")
MEASURE = """
import resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
wall = time.perf_counter() - start
if code.returncode:
    sys.stderr.write(code.stderr[-3000:])
    sys.exit(code.returncode)
print(wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def measured(cmd: list[str], cwd: Path, env: dict) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB of the largest process) of ``cmd``."""
    out = subprocess.run([sys.executable, "-c", MEASURE, *cmd], cwd=cwd, env=env, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    wall, rss_kib = out.stdout.split()
    return float(wall), int(rss_kib) / 1024


def count_rows(path: Path) -> int:
    with open(path) as fh:
        return sum(1 for _ in fh) - 1


def bench_dataset(label: str, params: dict, env: dict, stages: tuple[str, ...], naive: bool) -> list[str]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="imgclust-scale-") as tmp:
        root = Path(tmp)
        make_project(root, params, env)
        if params.get("data.source", "data/synthetic") == "data/synthetic":
            wall, _ = measured(["dvc", "repro", "--single-item", "synthesize"], root, env)
            print(f"<!-- {label}: generated in {wall:.0f} s (not counted) -->", flush=True)
        if stages[0] != "ingest":  # model-only: prepare the data stages without timing them
            for stage in STAGES[:STAGES.index(stages[0])]:
                measured(["dvc", "repro", "--single-item", stage], root, env)
        total = 0.0
        peak = 0.0
        for stage in stages:
            wall, rss = measured(["dvc", "repro", "--single-item", stage], root, env)
            total += wall
            peak = max(peak, rss)
            # ingest and strip_masks handle every file (masks too); resize and split the images
            if stage == "resize":
                n = sum(1 for _ in (root / "data" / "resized").rglob("*.png"))
            else:
                listing = {"ingest": "raw.csv", "strip_masks": "raw.csv", "split": "split.csv"}
                n = count_rows(root / "data" / "manifests" / listing.get(stage, "augmented.csv"))
            rows.append(f"| {label} | imgclust: {stage} | {n} | {wall:.1f} | {n / wall:.0f} | {rss:.0f} |")
            print(rows[-1], flush=True)
        metrics = json.loads((root / "metrics.json").read_text())
        rows.append(f"| {label} | **imgclust: all stages** | | **{total:.1f}** | | **{peak:.0f}** |")
        print(rows[-1] + f" <!-- ARI train {metrics['train']['ari']:.3f} test {metrics['test']['ari']:.3f} -->", flush=True)
        if naive:
            source = params.get("data.source", str(root / "data" / "synthetic"))
            source = source if Path(source).is_absolute() else str(root / source)
            wall, rss = measured([sys.executable, str(REPO / "benchmarks" / "naive_seed.py"), source], root, env)
            rows.append(f"| {label} | **naive seed script** | | **{wall:.1f}** | | **{rss:.0f}** |")
            print(rows[-1] + f" <!-- speed-up {wall / total:.2f}x -->", flush=True)
    return rows


def bench_model_stages(size: int, env: dict, workdir: Path | None = None) -> None:
    """featurize -> train -> evaluate on ``size`` synthetic images, each stage measured alone.

    The data is prepared with the stage commands directly (not through DVC, whose cache would hold
    a second copy of every folder), deleting each folder once the next one exists. With
    ``workdir``, the data is prepared there and kept, and a folder already prepared is reused.
    """
    with contextlib.ExitStack() as stack:
        root = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="imgclust-scale-")))
        root.mkdir(parents=True, exist_ok=True)
        if (root / "augmented.csv").is_file() and count_rows(root / "augmented.csv") == size:
            _measure_model_stages(root, size, env)
            return
        start = time.perf_counter()
        prepare = [
            ["imgclust", "synthesize", "--out", "synthetic", "--n-images", str(size)],
            ["imgclust", "strip-masks", "--raw", "synthetic", "--out", "stripped", "--report", "strip.json"],
            ["imgclust", "resize", "--in", "stripped", "--out", "resized"],
            ["imgclust", "split", "--in", "resized", "--out", "split.csv"],
            ["imgclust", "augment", "--in", "resized", "--split", "split.csv", "--out", "augmented",
             "--manifest", "augmented.csv", "--report", "augment.json", "--target", "1"],
        ]
        for cmd in prepare:
            measured(cmd, root, env)
            for done in ("synthetic", "stripped") if cmd[1] in ("resize",) else ():
                shutil.rmtree(root / done)
        print(f"<!-- synthetic {size}: data prepared in {time.perf_counter() - start:.0f} s (not counted) -->", flush=True)
        _measure_model_stages(root, size, env)


def _measure_model_stages(root: Path, size: int, env: dict) -> None:
    (root / "params.yaml").write_text((REPO / "params.yaml").read_text())
    env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    stages = {
        "featurize": ["imgclust", "featurize", "--in", "augmented", "--manifest", "augmented.csv", "--out", "features"],
        "train": ["imgclust", "train", "--features", "features", "--out", "model.joblib"],
        "evaluate": ["imgclust", "evaluate", "--features", "features", "--model", "model.joblib",
                     "--images", "augmented", "--params", "params.yaml", "--metrics", "metrics.json",
                     "--plots", "plots", "--predictions", "predictions.csv", "--run-info", "run.json"],
    }
    total, peak = 0.0, 0.0
    for stage, cmd in stages.items():
        wall, rss = measured(cmd, root, env)
        total, peak = total + wall, max(peak, rss)
        print(f"| synthetic {size} | imgclust: {stage} | {size} | {wall:.1f} | {size / wall:.0f} | {rss:.0f} |", flush=True)
    metrics = json.loads((root / "metrics.json").read_text())
    print(f"| synthetic {size} | **featurize -> train -> evaluate** | {size} | **{total:.1f}** | | **{peak:.0f}** |"
          f" <!-- ARI train {metrics['train']['ari']:.3f} test {metrics['test']['ari']:.3f} -->", flush=True)


def startup_costs(env: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for label, cmd in (("python + imgclust CLI import", ["imgclust", "--help"]),
                           ("dvc start (`dvc --version`)", ["dvc", "--version"]),
                           ("python + import mlflow", [sys.executable, "-c", "import mlflow"]),
                           ("python + import keras/tensorflow", [sys.executable, "-c", "import keras"])):
            wall, rss = measured(cmd, Path(tmp), env)
            print(f"| fixed cost | {label} | | {wall:.1f} | | {rss:.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[])
    parser.add_argument("--busi256", action="store_true")
    parser.add_argument("--model-only", action="store_true", help="time featurize, train, evaluate only")
    parser.add_argument("--no-naive", action="store_true")
    parser.add_argument("--workdir", type=Path, help="with --model-only: prepare (or reuse) the data here")
    args = parser.parse_args()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@localhost"}
    env.pop("MLFLOW_TRACKING_URI", None)
    stages = STAGES[STAGES.index("featurize"):] if args.model_only else STAGES
    print("| dataset | step | files or images | wall s | per s | peak RSS MiB |")
    print("|---|---|---|---|---|---|")
    startup_costs(env)
    # no balancing copies (augment.target 1): both approaches cluster exactly the same images
    if args.busi256 and BUSI256.is_dir():
        bench_dataset("busi256", {"data.source": str(BUSI256), "augment.target": 1}, env, stages, not args.no_naive)
    for size in args.sizes:
        if args.model_only:
            bench_model_stages(size, env, args.workdir)
            continue
        params = {"synthesize.n_images": size, "augment.target": 1}
        bench_dataset(f"synthetic {size}", params, env, stages, not args.no_naive and not args.model_only)


if __name__ == "__main__":
    main()
