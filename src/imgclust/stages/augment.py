"""Stage augment: balance the training classes with rotations and flips, writing data/augmented,
its manifest and a report, by the protocol of ``protocol`` (see ``imgclust.core.protocols``)."""

from __future__ import annotations

from collections import Counter, defaultdict
from functools import partial
from pathlib import Path

import numpy as np
import typer

from imgclust import config
from imgclust.core.fsutil import (
    NAME_MAX,
    atomic_dir,
    link_or_copy,
    long_names,
    read_image_listing,
    write_csv,
    write_json,
)
from imgclust.core.images import apply_op, check_ops, open_image, save_new_png
from imgclust.core.parallel import pmap
from imgclust.core.protocols import AUGMENTED_FIELDS, check_protocol, parse_tutorial_ops, plan_honest, plan_tutorial
from imgclust.errors import InputDataError

# the keys of params.yaml this stage reads: its `params` in dvc.yaml, and all it may read
PARAMS = ("protocol", "augment", "split")


def _materialise(items: list[dict], in_dir: Path, out_dir: Path) -> None:
    """Write every planned file of ONE source image, decoding the source at most once."""
    array = None
    for item in items:
        target = out_dir / item["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        if item["op"] == "none":
            link_or_copy(in_dir / item["source"], target)
            continue
        if array is None:
            array = np.asarray(open_image(in_dir / item["source"]))
        save_new_png(apply_op(array, item["op"]), target)


def augment(
    in_dir: Path,
    split_csv: Path,
    out_dir: Path,
    manifest_path: Path,
    *,
    protocol: str,
    ops: list[str],
    target: str | int,
    seed: int,
    tutorial_ops: list[str],
    test_size: float,
    split_seed: int,
    workers: int | None = None,
) -> dict:
    """Write the planned originals and copies to ``out_dir`` and the plan to ``manifest_path``.
    ``test_size`` and ``split_seed``: the tutorial protocol's split (the honest one reads ``split_csv``)."""
    check_protocol(protocol)
    in_dir = Path(in_dir)
    split = read_image_listing(split_csv, in_dir, ("path", "class", "split"), "split")
    first = open_image(in_dir / split[0]["path"])
    square = first.width == first.height
    if protocol == "honest":
        check_ops(ops, square)
        plan = plan_honest(split, ops, target, seed)
    else:
        class_ops = parse_tutorial_ops(tutorial_ops)
        for cls_ops in class_ops.values():
            check_ops(cls_ops, square)
        plan = plan_tutorial([(r["path"], r["class"]) for r in split], class_ops, test_size, split_seed)
    too_long = [row for row in plan if long_names([row["path"]])]
    if too_long:
        row = too_long[0]
        raise InputDataError(
            f"{len(too_long)} planned file name(s) are longer than the {NAME_MAX} bytes the file system allows, "
            f"e.g. {row['path']!r} (from {in_dir / row['source']}); rename the source image(s) to a shorter "
            "name and rerun the pipeline."
        )
    with atomic_dir(out_dir) as tmp:
        by_source: dict[str, list[dict]] = defaultdict(list)
        for item in plan:
            by_source[item["source"]].append(item)
        pmap(
            partial(_materialise, in_dir=in_dir, out_dir=tmp),
            list(by_source.values()),
            desc="augment",
            unit="source",
            workers=workers,
        )
    write_csv(manifest_path, plan, AUGMENTED_FIELDS)
    counts = Counter((row["split"], row["class"]) for row in plan)
    summary: dict = defaultdict(dict)
    for (split_name, cls), n in sorted(counts.items()):
        summary[split_name][cls] = n
    return {
        "protocol": protocol,
        "n_images": len(plan),
        "per_split_class": dict(summary),
        "n_augmented": sum(row["op"] != "none" for row in plan),
    }


def run(src: Path, split_csv: Path, out: Path, manifest: Path, report: Path, params: config.PipelineParams) -> dict:
    """Reads ``protocol``, ``augment.*`` and (tutorial protocol) ``split.*``."""
    augment_params = params.augment
    result = augment(
        src,
        split_csv,
        out,
        manifest,
        protocol=params.protocol,
        ops=augment_params.ops,
        target=augment_params.target,
        seed=augment_params.seed,
        tutorial_ops=augment_params.tutorial_ops,
        test_size=params.split.test_size,
        split_seed=params.split.seed,
    )
    write_json(report, result)
    return result


def command(
    src: Path = typer.Option(..., "--in", help="Folder of resized images."),
    split_csv: Path = typer.Option(..., "--split", help="Split listing."),
    out: Path = typer.Option(..., help="Output folder."),
    manifest: Path = typer.Option(..., help="Manifest CSV to write."),
    report: Path = typer.Option(..., help="Stage report (counts)."),
) -> None:
    result = run(src, split_csv, out, manifest, report, config.load(PARAMS))
    typer.echo(
        f"augment ({result['protocol']}): {result['n_images']} images "
        f"({result['n_augmented']} augmented) -> {out}: {result['per_split_class']}"
    )
