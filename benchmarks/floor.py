"""The least time the pipeline, as it is built, can take on a folder, against the seed script's time
there: a measured lower bound for target 1 of benchmarks/speed.py (the flagship row).

What the pipeline must do that the seed script does not, each part measured on its own here, in
fresh processes:

* DVC runs eight stages, each a new process: ``dvc repro`` of eight chained stages whose commands
  only write one small file (``python -c``);
* the process that logs the MLflow run (evaluate's helper, ``runs.RunLogger``) imports MLflow, its
  SQL store and skops (``runs._import_mlflow``), then logs the run (``runs.log_run``, timed inside
  the evaluate stage run in-process on the project made here); evaluate's own scoring and plots run
  meanwhile in the stage's process and are not counted;
* train, a process of its own, imports scikit-learn and fits the model (``stages.train.run``
  without the PCA cache, which includes reading the features and writing the model).

* each of the eight stage processes imports Typer, the CLI each stage is a command of (the median of
  five fresh ``python -c "import typer"``, less that of a bare interpreter, which DVC's part holds).

And the work both do: decoding and resizing the images, counted as the seed script's own load time
halved (two cores; the pipeline's stages decode in two worker processes). Not counted at all: the
rest of each stage's start (numpy, imgclust's own modules: about 0.2 s each), ingest, strip_masks,
augment, featurize, DVC hashing the datasets, evaluate's scoring. The sum is a lower bound of the pipeline's
wall time; where it exceeds the seed script's time, measured in the same run, target 1 cannot be met
on that folder without changing what the pipeline is (eight DVC stages, a logged MLflow run).

    python benchmarks/floor.py [FOLDER ...] [--tmp DIR]     # default: busi256 and busi-sample
    # FOLDER: a path, a name in ../shared/datasets (busi256), or "synthetic": speed.py's BUSI-like
    # phantoms (780, with masks)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from measure import bare_dvc_project, repro, timed
from project_copy import bench_env, make_project

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"
DEFAULT_FOLDERS = (DATASETS / "busi256", DATASETS / "busi-sample")
N_STAGES = 8  # ingest, strip_masks, resize, split, augment, featurize, train, evaluate

# run in the project, in a fresh process: the helper's imports, then evaluate with its log_run timed
LOGGING = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    start = time.perf_counter()
    from imgclust.tracking import runs
    runs._import_mlflow()
    imported = time.perf_counter() - start
    spent = []
    log_run = runs.log_run
    def timed_log_run(**kwargs):
        began = time.perf_counter()
        try:
            return log_run(**kwargs)
        finally:
            spent.append(time.perf_counter() - began)
    runs.log_run = timed_log_run
    from imgclust import config
    from imgclust.stages import evaluate
    out = Path(sys.argv[1])
    reports = [Path("reports") / f"{name}.json" for name in ("ingest", "strip_masks", "augment")]
    evaluate.run(Path("data/features"), Path("models/model.joblib"), Path("data/augmented"), out / "metrics.json",
                 out / "plots", out / "predictions.csv", out / "run.json", reports, config.load(evaluate.PARAMS),
                 raw_manifest=Path("data/manifests/raw.csv"))
    print(json.dumps({"imports_s": imported, "log_run_s": spent[0]}))
    """
)

# run in the project, in a fresh process: train's scikit-learn import, then its fit (no PCA cache)
TRAIN = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    start = time.perf_counter()
    import sklearn.cluster, sklearn.decomposition, sklearn.pipeline
    imported = time.perf_counter() - start
    from imgclust import config
    from imgclust.stages import train
    began = time.perf_counter()
    train.run(Path("data/features"), Path(sys.argv[1]), config.load(train.PARAMS), cache=None)
    print(json.dumps({"sklearn_import_s": imported, "fit_s": time.perf_counter() - began}))
    """
)


def trivial_stages(tmp: Path, env: dict) -> float:
    """Wall s of ``dvc repro`` running N_STAGES chained stages that each write one small file."""
    stages = {}
    for i in range(N_STAGES):
        write = f"open('o{i}', 'w').write('{i}')"
        stages[f"s{i}"] = {
            "cmd": f'{sys.executable} -c "{write}"',
            "deps": [f"o{i - 1}"] if i else [],
            "outs": [f"o{i}"],
        }
    return timed(["dvc", "repro"], bare_dvc_project(tmp / "trivial", stages, env), env).wall_s


def import_s(code: str, env: dict, runs: int = 5) -> float:
    """Median wall s of ``python -c CODE`` in a fresh process."""
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
        times.append(time.perf_counter() - began)
    return sorted(times)[runs // 2]


def in_project(code: str, root: Path, env: dict, *args: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=root, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode:
        sys.exit(f"measuring in {root} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def floor_of(folder: Path, tmp: Path, env: dict) -> list[tuple[str, float]]:
    seed = timed([sys.executable, str(REPO / "benchmarks" / "seed_script.py"), str(folder)], REPO, env)
    seed_out = json.loads(seed.output.strip().splitlines()[-1])
    root = tmp / f"project-{folder.name}"
    root.mkdir()
    make_project(root, {"data.source": str(folder), "protocol": "honest"}, env)
    pipeline = repro(root, env)
    dvc_s = trivial_stages(tmp, env)
    logging = in_project(LOGGING, root, env, str(tmp / f"evaluation-{folder.name}"))
    train = in_project(TRAIN, root, env, str(tmp / f"model-{folder.name}.joblib"))
    typer_s = max(import_s("import typer", env) - import_s("pass", env), 0.0)
    reference = [("for comparison: the seed script's model step (PCA, KMeans), not counted", seed_out["model_s"])]
    parts = [
        (f"DVC running {N_STAGES} stages that each write one file (`python -c`)", dvc_s),
        ("the logging process: imports of MLflow, its SQL store, skops", logging["imports_s"]),
        ("the logging process: log_run (two models, datasets, artifacts)", logging["log_run_s"]),
        ("train: import scikit-learn", train["sklearn_import_s"]),
        ("train: read the features, fit, write the model (no PCA cache)", train["fit_s"]),
        ("the seed script's load (decode, resize, balance), halved: two cores", seed_out["load_s"] / 2),
        (f"the {N_STAGES} stage processes: import Typer", N_STAGES * typer_s),
    ]
    floor = sum(s for _, s in parts)
    return [
        *parts,
        ("**floor (sum)**", floor),
        ("seed script, whole process", seed.wall_s),
        ("the pipeline, `dvc repro` from nothing", pipeline.wall_s),
        *reference,
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="*", type=Path, default=list(DEFAULT_FOLDERS))
    parser.add_argument("--tmp", type=Path, help="where the temporary projects go (default: the system's)")
    args = parser.parse_args(argv)
    env = bench_env()
    for folder in args.folders:
        with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
            if str(folder) == "synthetic":
                from speed import busi_like

                folder = busi_like(Path(tmp) / "synthetic", env, REPO)
            elif not folder.is_dir() and (DATASETS / folder).is_dir():  # a name in ../shared/datasets
                folder = DATASETS / folder
            if not folder.is_dir():
                print(f"<!-- {folder} not present, skipped -->")
                continue
            started = time.strftime("%H:%M UTC", time.gmtime())
            rows = floor_of(folder, Path(tmp), env)
        floor, seed = rows[-4][1], rows[-3][1]
        verdict = "out of reach" if floor > seed else "not shown out of reach"
        print(f"\n### {folder.name}: floor {floor:.1f} s against the seed script's {seed:.1f} s ({verdict})")
        print(f"\n(started {started})\n\n| part | s |\n|---|---|")
        for name, seconds in rows:
            print(f"| {name} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
