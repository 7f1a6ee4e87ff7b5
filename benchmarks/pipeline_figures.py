"""Run the real pipeline (``dvc repro`` in a fresh temporary git + DVC copy of this project) on
several datasets / protocols / feature methods and print a Markdown table of the figures.

    python benchmarks/pipeline_figures.py                      # synthetic + busi256, both protocols
    python benchmarks/pipeline_figures.py --only busi256 --methods pixels cnn

Figures: feature matrix shape, ARI train/test, featurize throughput (images/s, from the stage's own
wall time including process start-up), and the wall time of the whole ``dvc repro``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from project_copy import REPO, bench_env, make_project

SHARED = REPO.parent / "shared"
DATASETS = {"synthetic": "data/synthetic", "busi256": str(SHARED / "datasets" / "busi256")}
CNN = {"backbone": "mobilenet", "alpha": 0.25, "weights": "imagenet"}


def run(cmd: list[str], cwd: Path, env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed in {cwd}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return elapsed, proc.stdout


def measure(dataset: str, protocol: str, method: str, env: dict, overrides: dict | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="imgclust-bench-") as tmp:
        root = Path(tmp)
        make_project(
            root,
            {
                "data.source": DATASETS[dataset],
                "protocol": protocol,
                "featurize.method": method,
                **{f"featurize.cnn.{key}": value for key, value in CNN.items()},
                **(overrides or {}),
            },
            env,
        )
        # upstream stages first, so that featurize is timed on its own
        total, _ = run(["dvc", "repro", "augment"], root, env)
        featurize_s, log = run(["dvc", "repro", "featurize"], root, env)
        compute_rate = float(re.search(r"\((\d+) images/s", log).group(1))
        rest, _ = run(["dvc", "repro"], root, env)
        meta = json.loads((root / "data" / "features" / "meta.json").read_text())
        metrics = json.loads((root / "evaluation" / "metrics.json").read_text())
    return {
        "dataset": dataset,
        "protocol": protocol,
        "method": method,
        "shape": f"{meta['n_samples']} x {meta['n_features']}",
        "ari_train": metrics["train"]["ari"],
        "ari_test": metrics.get("test", {}).get("ari", float("nan")),
        "ari_originals": metrics.get("originals", {}).get("ari", float("nan")),
        "featurize_img_s": meta["n_samples"] / featurize_s,
        "featurize_compute_img_s": compute_rate,
        "total_s": total + featurize_s + rest,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--protocols", nargs="*", default=["honest", "tutorial"])
    parser.add_argument("--methods", nargs="*", default=["pixels"])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="params.yaml values (YAML).")
    args = parser.parse_args()
    import yaml

    overrides = {key: yaml.safe_load(value) for key, _, value in (item.partition("=") for item in args.set)}
    env = bench_env()
    if "KERAS_HOME" not in env and (SHARED / "keras").is_dir():
        # Keras writes keras.json into its home: use a private copy of the read-only shared one
        env["KERAS_HOME"] = str(Path(tempfile.mkdtemp(prefix="imgclust-keras-")) / "keras")
        shutil.copytree(SHARED / "keras", env["KERAS_HOME"])
    print(
        "| dataset | protocol | features | matrix | ARI train | ARI test | ARI originals | featurize img/s "
        "(stage / in-process) | dvc repro s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for dataset in args.only:
        if dataset != "synthetic" and not Path(DATASETS[dataset]).is_dir():
            print(f"<!-- {dataset}: {DATASETS[dataset]} not present, skipped -->")
            continue
        for protocol in args.protocols:
            for method in args.methods:
                r = measure(dataset, protocol, method, env, overrides)
                label = "pixels + PCA(50)" if method == "pixels" else "MobileNet-0.25 + PCA(50)"
                print(
                    f"| {dataset} | {protocol} | {label} | {r['shape']} | {r['ari_train']:.3f} | "
                    f"{r['ari_test']:.3f} | {r['ari_originals']:.3f} | {r['featurize_img_s']:.0f} / {r['featurize_compute_img_s']:.0f} | {r['total_s']:.0f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
