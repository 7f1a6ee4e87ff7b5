"""Issue 16's speed targets, measured side by side in one run, printed as one Markdown table.

    python benchmarks/speed.py                       # every row, full sizes (about an hour on 2 cores)
    python benchmarks/speed.py --quick               # every row on small data (a few minutes)
    python benchmarks/speed.py --only flagship --flagship busi-sample busi256 --protocols honest tutorial
    python benchmarks/speed.py --only incremental cold iteration --size 20000
    python benchmarks/speed.py --repo ../main        # the pipeline (and venv) of another checkout

Rows (docs/performance.md explains each):

1. flagship: ``dvc repro evaluate`` from nothing in a fresh git + DVC copy of the project whose
   ``data.source`` is the folder, against the seed tutorial script (benchmarks/seed_script.py) on
   the same folder. Datasets: busi-sample, busi256, and "synthetic": 780 BUSI-like phantoms with
   masks, upscaled 2x to original-like sizes (generated before the timing).
2. incremental: on a ``--size`` synthetic source, the rerun after adding 1 % new images, as a
   fraction of the cold run; then the outputs are checked against a cold run on the new source in
   another fresh copy (every output hash in dvc.lock, and evaluation/metrics.json). The same for
   removing 1 % of the images.
3. cold: the cold run of row 2 against the naive script (benchmarks/naive_seed.py) on the same
   folder; both cluster the same images (``augment.target: 1`` in the project).
4. iteration: the rerun after setting ``train.kmeans.n_clusters`` to 4, against the naive script's
   full run.
5. big: ``--big`` images, ``dvc repro`` from nothing; the peak RSS of the model stages (featurize,
   train, evaluate), and a no-op ``dvc repro``. Each no-op (here and after row 2's cold run) is shown
   beside DVC alone: one stage that depends on the same source folder.

Peak RSS is the largest sum of the resident sets of the whole process tree (DVC, the stage command
and its workers), sampled every 50 ms. Each run reads back only dvc.lock, evaluation/metrics.json
and DVC's progress lines, never the files in ``data/``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from measure import (
    Timed,
    bare_dvc_project,
    differences,
    load_average,
    lock_nfiles,
    lock_outs,
    metrics,
    repro,
    timed,
)
from project_copy import REPO, bench_env, make_project, set_params, write_params

BENCHMARKS = Path(__file__).resolve().parent
DATASETS = REPO.parent / "shared" / "datasets"
FLAGSHIP = {"busi-sample": DATASETS / "busi-sample", "busi256": DATASETS / "busi256", "synthetic": None}
BUSI_IMAGES = 780  # BUSI's originals (437 benign, 210 malignant, 133 normal)
ROWS = ("flagship", "incremental", "cold", "iteration", "big")
GROUP = re.compile(r"^(.+?\(\d+\))")  # "benign (12)" of "benign (12).png", "benign (12)_mask_1.png"


class Details(list):
    """The per-run tables and notes: printed as they come (a long run that fails keeps them)."""

    def append(self, text: str) -> None:
        print(text, flush=True)
        super().append(text)


@dataclass
class Row:
    target: str
    imgclust_s: float | None
    reference_s: float | None
    ratio: float | None
    ratio_text: str
    goal: str
    met: bool
    imgclust_mib: float | None = None
    reference_mib: float | None = None
    note: str = ""

    def __post_init__(self) -> None:
        # each row as soon as it is measured, so a long run that fails keeps its figures
        print(f"<!-- {self.target}: {self.imgclust_s} s vs {self.reference_s} s, {self.ratio_text} -->", flush=True)


def speedup(reference: float, ours: float, goal: float, target: str, **extra) -> Row:
    ratio = reference / ours
    return Row(target, ours, reference, ratio, f"{ratio:.2f}x", f">= {goal:g}x", ratio >= goal, **extra)


# --- data (generated before any timing) -------------------------------------------------------


def synthesize(folder: Path, n_images: int, env: dict, repo: Path) -> float:
    """``imgclust synthesize`` of ``n_images`` phantoms (with masks) into ``folder``: seconds."""
    workdir = folder.with_name(folder.name + "-params")
    write_params(workdir, {"synthesize.n_images": n_images}, repo)
    wall = timed(["imgclust", "synthesize", "--out", str(folder)], workdir, env).wall_s
    shutil.rmtree(workdir)
    return wall


def _upscale(path: Path) -> None:
    from PIL import Image

    with Image.open(path) as image:
        resample = Image.Resampling.NEAREST if "_mask" in path.name else Image.Resampling.BICUBIC
        big = image.resize((image.width * 2, image.height * 2), resample)
    big.save(path, compress_level=6)


def busi_like(folder: Path, env: dict, repo: Path) -> Path:
    """780 phantoms with their masks, at twice the phantoms' size: about 560 x 440 pixels, BUSI's
    originals average 585 x 506 (busi-sample)."""
    synthesize(folder, BUSI_IMAGES, env, repo)
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        list(pool.map(_upscale, sorted(folder.glob("*/*.png")), chunksize=32))
    return folder


def groups(folder: Path) -> dict[str, list[Path]]:
    """The files of each image of a source folder (the image and its masks), by "class/name (i)"."""
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.glob("*/*")):
        match = GROUP.match(path.name)
        found.setdefault(f"{path.parent.name}/{match.group(1) if match else path.stem}", []).append(path)
    return found


def index_of(key: str) -> int:
    return int(key.rsplit("(", 1)[1].rstrip(")"))


def link_groups(keys: list[str], pool: dict[str, list[Path]], source: Path) -> None:
    for key in keys:
        for path in pool[key]:
            (source / path.parent.name).mkdir(parents=True, exist_ok=True)
            os.link(path, source / path.parent.name / path.name)


def unlink_groups(keys: list[str], source: Path) -> None:
    current = groups(source)
    for key in keys:
        for path in current[key]:
            path.unlink()


def warm(folder: Path) -> None:
    """Read every file once, so that neither side of a comparison pays the first disk read."""
    for path in folder.rglob("*"):
        if path.is_file():
            path.read_bytes()


# --- rows ----------------------------------------------------------------------------------------


def project(tmp: Path, name: str, params: dict, env: dict, repo: Path) -> Path:
    root = tmp / name
    root.mkdir()
    make_project(root, params, env, repo)
    return root


def script(name: str, folder: Path, env: dict) -> tuple[Timed, dict]:
    result = timed([sys.executable, str(BENCHMARKS / name), str(folder)], REPO, env)
    return result, json.loads(result.output.strip().splitlines()[-1])


def flagship(args, env: dict, tmp: Path, details: list[str]) -> list[Row]:
    rows = []
    for name in args.flagship:
        folder = FLAGSHIP[name] or busi_like(tmp / "busi-like", env, args.repo)
        if not folder.is_dir():
            details.append(f"<!-- flagship {name}: {folder} not present, skipped -->")
            continue
        warm(folder)
        seed, seed_out = script("seed_script.py", folder, env)
        for protocol in args.protocols:
            root = project(
                tmp, f"flagship-{name}-{protocol}", {"data.source": str(folder), "protocol": protocol}, env, args.repo
            )
            run = repro(root, env)
            found = metrics(root)
            rows.append(
                speedup(
                    seed.wall_s,
                    run.wall_s,
                    1.0,
                    f"1. flagship {name} ({protocol})",
                    imgclust_mib=run.tree_mib,
                    reference_mib=seed.tree_mib,
                    note=(
                        f"ARI train/test imgclust {found['train']['ari']:.3f}/{found.get('test', {}).get('ari', float('nan')):.3f}, "
                        f"seed script {seed_out['ari_train']:.3f}/{seed_out['ari_test']:.3f}; "
                        f"seed script {seed_out['n_originals']} originals -> {seed_out['n_images']} images"
                    ),
                )
            )
            details.append(steps_table(f"flagship {name} ({protocol}): `dvc repro` from nothing", run, root))
            shutil.rmtree(root)
    return rows


def scale_rows(args, env: dict, tmp: Path, details: list[str]) -> list[Row]:
    """Rows 2-4 on one ``--size`` project: cold run, no-op, iteration, adding 1 %, removing 1 %."""
    from imgclust.core.phantoms import class_counts

    want = set(args.only)
    size, added = args.size, max(1, args.size // 100)
    pool_dir = args.pool or tmp / "pool"
    marker = pool_dir / ".n_images"  # a --pool folder generated by an earlier run is reused
    if marker.is_file() and marker.read_text() == str(size + added):
        generated = 0.0
    else:
        if pool_dir.exists():
            shutil.rmtree(pool_dir)
        generated = synthesize(pool_dir, size + added, env, args.repo)
        marker.write_text(str(size + added))
    pool = groups(pool_dir)
    counts = class_counts(size)
    originals = [key for key in pool if index_of(key) <= counts[key.split("/")[0]]]
    new = [key for key in pool if key not in set(originals)]
    source = tmp / "source"
    link_groups(originals, pool, source)
    details.append(
        f"<!-- synthetic source: {len(originals)} images ({sum(len(pool[k]) for k in originals)} files) "
        f"+ {len(new)} added; generated in {generated:.0f} s, not counted -->"
    )
    warm(pool_dir)
    params = {"data.source": str(source), "augment.target": 1}
    root = project(tmp, "scale", params, env, args.repo)
    rows = []
    cold = repro(root, env)
    details.append(steps_table(f"cold run, {size} images (rows 2-4)", cold, root))
    noops = [repro(root, env) for _ in range(3)]  # about 2 s each on a shared machine: the median of 3
    noop = sorted(noops, key=lambda run: run.wall_s)[1]
    naive = naive_out = None
    if want & {"cold", "iteration"}:
        naive, naive_out = script("naive_seed.py", source, env)
        found = metrics(root)
        details.append(
            f"naive script on {naive_out['n_images']} images: {naive.wall_s:.1f} s (load {naive_out['load_s']:.1f} s, "
            f"model {naive_out['model_s']:.1f} s), peak {naive.tree_mib:,.0f} MiB; ARI train/test naive "
            f"{naive_out['ari_train']:.3f}/{naive_out['ari_test']:.3f}, imgclust "
            f"{found['train']['ari']:.3f}/{found['test']['ari']:.3f}"
        )
    if "cold" in want:
        rows.append(
            speedup(
                naive.wall_s,
                cold.wall_s,
                1.0,
                f"3. cold {size}",
                imgclust_mib=cold.tree_mib,
                reference_mib=naive.tree_mib,
            )
        )
    if "iteration" in want:
        set_param(root, "train.kmeans.n_clusters", 4)
        rerun = repro(root, env)
        details.append(
            steps_table(f"iteration: rerun after train.kmeans.n_clusters 3 -> 4, {size} images", rerun, root)
        )
        rows.append(
            speedup(
                naive.wall_s, rerun.wall_s, 5.0, f"4. iteration {size} (n_clusters 3 -> 4)", imgclust_mib=rerun.tree_mib
            )
        )
        set_param(root, "train.kmeans.n_clusters", 3)
        if "incremental" in want:
            repro(root, env)  # back to the cold run's outputs (not timed)
    if "incremental" in want:
        link_groups(new, pool, source)
        rows.append(incremental(f"2. incremental {size}: add {len(new)}", root, cold, params, env, tmp, args, details))
        removed = [key for key in originals[::100]][:added]
        unlink_groups(removed, source)
        rows.append(
            incremental(f"2. incremental {size}: remove {len(removed)}", root, cold, params, env, tmp, args, details)
        )
    rows.append(
        noop_row(
            f"5. no-op `dvc repro`, {size} images (median of 3)",
            [run.wall_s for run in noops],
            dvc_alone_noops(source, tmp, env),
            noop.tree_mib,
        )
    )
    shutil.rmtree(root)
    return rows


def incremental(label: str, root: Path, cold: Timed, params: dict, env, tmp: Path, args, details) -> Row:
    rerun = repro(root, env)
    fresh = project(tmp, "fresh", params, env, args.repo)
    fresh_run = repro(fresh, env)
    changed = differences(lock_outs(root), lock_outs(fresh))
    metrics_equal = metrics(root) == metrics(fresh)
    same = not changed and metrics_equal
    details.append(steps_table(f"{label}: rerun", rerun, root))
    details.append(
        f"{label}: a cold run on the new source took {fresh_run.wall_s:.1f} s; outputs "
        + (
            "identical (every output hash in dvc.lock, metrics.json)"
            if same
            else f"DIFFER: {changed or ''} metrics equal: {metrics_equal}"
        )
    )
    shutil.rmtree(fresh)
    ratio = rerun.wall_s / cold.wall_s
    return Row(
        label,
        rerun.wall_s,
        cold.wall_s,
        ratio,
        f"{ratio:.1%}",
        "<= 10 % of cold, same outputs",
        ratio <= 0.10 and same,
        rerun.tree_mib,
        cold.tree_mib,
        "outputs identical to a cold run" if same else "outputs DIFFER from a cold run",
    )


def big(args, env: dict, tmp: Path, details: list[str]) -> list[Row]:
    source = args.big_pool or tmp / "big"
    # a --big-pool folder generated before is reused; its marker lies beside it, outside the source
    marker = source.with_name(source.name + ".n_images")
    if args.big_pool and marker.is_file() and marker.read_text() == str(args.big):
        details.append(f"<!-- {args.big} synthetic images reused from {source} -->")
    else:
        if source.exists():
            shutil.rmtree(source)
        generated = synthesize(source, args.big, env, args.repo)
        details.append(f"<!-- {args.big} synthetic images generated in {generated:.0f} s, not counted -->")
        if args.big_pool:
            marker.write_text(str(args.big))
    warm(source)
    root = project(tmp, "big-project", {"data.source": str(source), "augment.target": 1}, env, args.repo)
    run = repro(root, env)
    details.append(steps_table(f"{args.big} images, `dvc repro` from nothing", run, root))
    model = [run.step(name) for name in ("featurize", "train", "evaluate")]
    peak = max(step.tree_mib for step in model if step)
    noops = [repro(root, env).wall_s for _ in range(3)]
    shutil.rmtree(root)
    alone = dvc_alone_noops(source, tmp, env)
    if not args.big_pool:
        shutil.rmtree(source)
    return [
        Row(
            f"5. {args.big} images: peak RSS of featurize, train, evaluate",
            sum(step.wall_s for step in model if step),
            None,
            None,
            f"{peak:,.0f} MiB",
            "<= 2,048 MiB",
            peak <= 2048,
            peak,
        ),
        noop_row(f"5. {args.big} images: no-op `dvc repro` (median of 3)", noops, alone),
    ]


def dvc_alone_noops(source: Path, tmp: Path, env: dict) -> list[float]:
    """Wall s of 3 no-op ``dvc repro`` runs of a pipeline that is DVC alone: one stage whose command
    writes one file and whose one dependency is ``source`` (as ingest's ``data.source`` is). What any
    pipeline whose dvc.lock records the source folder's content pays on every no-op."""
    write = "open('out', 'w').write('1')"
    stage = {"cmd": f'{sys.executable} -c "{write}"', "deps": [str(source)], "outs": ["out"]}
    root = bare_dvc_project(tmp / "dvc-alone", {"one": stage}, env)
    timed(["dvc", "repro"], root, env)  # the first run hashes the source: not a no-op
    noops = [timed(["dvc", "repro"], root, env).wall_s for _ in range(3)]
    shutil.rmtree(root)
    return noops


def noop_row(target: str, noops: list[float], alone: list[float], tree_mib: float | None = None) -> Row:
    """Row 5's no-op (median of 3) beside DVC alone on the same source (median of 3)."""
    noop, floor = sorted(noops)[1], sorted(alone)[1]
    return Row(
        target,
        noop,
        None,
        None,
        f"{noop:.2f} s",
        "< 2 s",
        noop < 2,
        tree_mib,
        note=(
            "runs: " + ", ".join(f"{s:.2f}" for s in noops) + f"; DVC alone, one stage depending on the "
            f"source folder: {floor:.2f} s ("
            + ", ".join(f"{s:.2f}" for s in alone)
            + ")"
            + ("; out of reach while dvc.lock records the source folder" if floor >= 2 else "")
        ),
    )


def set_param(root: Path, dotted: str, value) -> None:
    import yaml

    params = set_params(yaml.safe_load((root / "params.yaml").read_text()), {dotted: value})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


# --- output --------------------------------------------------------------------------------------


def steps_table(title: str, run: Timed, root: Path) -> str:
    lines = [
        f"**{title}**: {run.wall_s:.1f} s, peak {run.tree_mib:,.0f} MiB (process tree); load average after "
        f"{load_average()}",
        "",
    ]
    lines += ["| step | ran | wall s | peak RSS MiB (tree / largest process) |", "|---|---|---|---|"]
    for step in run.steps:
        ran = "yes" if step.ran else ("" if step.name.startswith("dvc") else "skipped")
        lines.append(f"| {step.name} | {ran} | {step.wall_s:.1f} | {step.tree_mib:,.0f} / {step.largest_mib:,.0f} |")
    nfiles = lock_nfiles(root)
    if nfiles:
        lines += ["", "files DVC versions per output: " + ", ".join(f"{path} {n:,}" for path, n in nfiles.items())]
    return "\n".join(lines) + "\n"


def fmt(value: float | None, unit: str = "") -> str:
    return "" if value is None else f"{value:,.1f}{unit}" if unit == " s" else f"{value:,.0f}{unit}"


def table(rows: list[Row]) -> str:
    lines = [
        "| target | imgclust s | reference s | ratio | goal | met | peak RSS MiB (imgclust / reference) | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        rss = " / ".join(fmt(v) for v in (row.imgclust_mib, row.reference_mib) if v is not None)
        lines.append(
            f"| {row.target} | {fmt(row.imgclust_s, ' s').removesuffix(' s')} | "
            f"{fmt(row.reference_s, ' s').removesuffix(' s')} | {row.ratio_text} | {row.goal} | "
            f"{'yes' if row.met else '**no**'} | {rss} | {row.note} |"
        )
    return "\n".join(lines)


def commit_of(repo: Path) -> str:
    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], cwd=repo, capture_output=True, text=True).stdout.strip()

    dirty = " + uncommitted changes" if git("status", "--porcelain", "--", "src", "dvc.yaml", "params.yaml") else ""
    return f"{git('rev-parse', '--short', 'HEAD')}{dirty}"


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=ROWS, default=list(ROWS), help="rows to measure")
    parser.add_argument("--quick", action="store_true", help="small sizes (--size 300 --big 600, busi-sample only)")
    parser.add_argument("--flagship", nargs="+", choices=list(FLAGSHIP), help="flagship datasets (default: all)")
    parser.add_argument("--protocols", nargs="+", default=["honest"], choices=["honest", "tutorial"])
    parser.add_argument("--size", type=int, help="images of rows 2-4 (default 20000)")
    parser.add_argument("--big", type=int, help="images of row 5 (default 100000)")
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout whose pipeline and .venv to run")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--tmp", type=Path, help="parent folder of the temporary projects and data")
    parser.add_argument(
        "--pool", type=Path, help="folder of the generated --size + 1 %% phantoms, kept and reused by later runs"
    )
    parser.add_argument(
        "--big-pool", type=Path, help="folder of the generated --big phantoms, kept and reused by later runs"
    )
    args = parser.parse_args(argv)
    args.repo = args.repo.resolve()
    args.flagship = args.flagship or (["busi-sample"] if args.quick else list(FLAGSHIP))
    args.size = args.size or (300 if args.quick else 20000)
    args.big = args.big or (600 if args.quick else 100000)
    env = bench_env(args.repo)
    started = time.perf_counter()
    print(f"<!-- commit {commit_of(args.repo)}, load average at start {load_average()} -->", flush=True)
    rows: list[Row] = []
    details = Details()
    with tempfile.TemporaryDirectory(prefix="imgclust-speed-", dir=args.tmp) as tmp_name:
        tmp = Path(tmp_name)
        if "flagship" in args.only:
            rows += flagship(args, env, tmp, details)
        if set(args.only) & {"incremental", "cold", "iteration"}:
            rows += scale_rows(args, env, tmp, details)
        if "big" in args.only:
            rows += big(args, env, tmp, details)
    rows.sort(key=lambda row: row.target.split(".")[0])  # in the order; stable within a target
    print("\n" + table(rows))
    print(
        f"\n<!-- commit {commit_of(args.repo)}, {time.perf_counter() - started:.0f} s in all; "
        f"load average at end {load_average()} (1, 5, 15 min; 2 cores) -->"
    )
    if args.json:
        args.json.write_text(json.dumps([asdict(row) for row in rows], indent=1))
    return rows


if __name__ == "__main__":
    main()
