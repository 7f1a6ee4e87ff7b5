"""Stage augment: balance the training classes with rotations and flips, writing the pack
data/augmented (originals and copies), its manifest and a report, by the protocol of ``protocol`` (see ``imgclust.core.protocols``)."""

from __future__ import annotations

from collections import Counter, defaultdict
from functools import partial
from pathlib import Path

import numpy as np
import typer

from imgclust import config
from imgclust.core.fsutil import NAME_MAX, atomic_dir, long_names, read_image_listing, write_csv, write_json
from imgclust.core.images import apply_op, check_ops, open_image, png_bytes
from imgclust.core.item_cache import NO_CACHE, ItemCache, cached, writable
from imgclust.core.packs import open_pack, write_pack
from imgclust.core.parallel import pmap_each
from imgclust.core.protocols import AUGMENTED_FIELDS, check_protocol, parse_tutorial_ops, plan_honest, plan_tutorial
from imgclust.errors import InputDataError

# the keys of params.yaml this stage reads: its `params` in dvc.yaml, and all it may read
PARAMS = ("protocol", "augment", "split")


def _augment_one(jobs: list[tuple[str, str, str]], in_dir: Path) -> list[tuple[str, bytes]]:
    """(key, PNG bytes) of the planned copies ``(source, op, key)`` of ONE source image, decoding
    the source once."""
    pack = open_pack(in_dir)
    array = np.asarray(open_image(pack.name(jobs[0][0]), data=pack.read(jobs[0][0]), from_pack=True))
    return [(key, png_bytes(apply_op(array, op))) for _, op, key in jobs]


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
    cache: ItemCache = NO_CACHE,
) -> dict:
    """Write the planned originals and copies to ``out_dir`` and the plan to ``manifest_path``.
    ``test_size`` and ``split_seed``: the tutorial protocol's split (the honest one reads ``split_csv``).
    Copies that ``cache`` holds (same source content, op and code) are not computed again."""
    check_protocol(protocol)
    in_dir = Path(in_dir)
    split = read_image_listing(split_csv, in_dir, ("path", "class", "split"), "split")
    first = open_image(in_dir / split[0]["path"], data=open_pack(in_dir).read(split[0]["path"]), from_pack=True)
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
    resized = open_pack(in_dir, producer="resize")
    # a copy is keyed by its source's content and its op: its name is not part of it
    keys = {row["path"]: cache.key(resized.sha256(row["source"]), row["op"]) for row in plan if row["op"] != "none"}
    with writable(cache, Path(out_dir).parent) as store:
        jobs: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
        for row in plan:
            if row["op"] != "none" and not store.has(keys[row["path"]]):
                jobs[row["source"]].append((row["source"], row["op"], keys[row["path"]]))
        work = partial(_augment_one, in_dir=resized.folder)
        # the workers make the copies, this process alone writes the cache
        for copies in pmap_each(
            work, [jobs[source] for source in sorted(jobs)], desc="augment", unit="source", workers=workers
        ):
            for key, data in copies:
                store.put(key, data)

        def item(row: dict) -> tuple:
            if row["op"] == "none":  # an original, passed on with the digest its read was checked against
                return row["path"], resized.read(row["source"]), resized.sha256(row["source"])
            return row["path"], cached(store, keys[row["path"]], row["path"])

        with atomic_dir(out_dir) as tmp:
            write_pack(tmp, (item(row) for row in sorted(plan, key=lambda row: row["path"])))
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
        cache=config.item_cache("augment", __file__, {}),
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
