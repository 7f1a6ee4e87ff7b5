"""Balance the training classes with rotations and flips, writing data/augmented and its manifest.

Honest protocol (default): only TRAIN images are augmented, after the split, so no copy of a test
image can reach training. Tutorial protocol: the seed recipe, augmenting whole classes by fixed
ops and splitting afterwards (copies of one image can fall on both sides, as in the original).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from functools import partial
from pathlib import Path

import numpy as np
import typer
from PIL import Image

from imgclust.errors import InputDataError, ParamError
from imgclust.fsutil import atomic_dir, link_or_copy, read_image_listing, write_csv, write_json
from imgclust.images import PNG_COMPRESS_LEVEL, open_image
from imgclust.parallel import pmap
from imgclust.split import split_rows

PROTOCOLS = ("honest", "tutorial")
AUGMENTED_FIELDS = ("path", "class", "split", "source", "op")

# op name -> array transform; each is a symmetry of the square, so labels are unchanged
OPS = {
    "rot90": lambda a: np.rot90(a, 1),
    "rot180": lambda a: np.rot90(a, 2),
    "rot270": lambda a: np.rot90(a, 3),
    "flip_lr": lambda a: a[:, ::-1],
    "flip_tb": lambda a: a[::-1],
    "transpose": lambda a: np.swapaxes(a, 0, 1),
    "transverse": lambda a: np.swapaxes(a[::-1, ::-1], 0, 1),
}
SHAPE_CHANGING_OPS = frozenset({"rot90", "rot270", "transpose", "transverse"})


def apply_op(array: np.ndarray, op: str) -> np.ndarray:
    return np.ascontiguousarray(OPS[op](array))


def check_ops(ops: list[str], square: bool = True) -> None:
    unknown = [op for op in ops if op not in OPS]
    if unknown:
        raise ParamError(f"unknown augment op(s) {unknown}; use any of {', '.join(OPS)}.")
    if len(set(ops)) != len(ops):
        raise ParamError(f"augment ops {ops} repeat an op; each op may appear once.")
    if not square and SHAPE_CHANGING_OPS & set(ops):
        raise ParamError(
            f"ops {sorted(SHAPE_CHANGING_OPS & set(ops))} change the shape of non-square images; "
            "use rot180/flip_lr/flip_tb or resize to a square."
        )


def parse_tutorial_ops(specs: list[str]) -> dict[str, list[str]]:
    """``["malignant=rot180", "normal=rot180+flip_lr"]`` -> {class: [ops]}."""
    mapping: dict[str, list[str]] = {}
    for spec in specs:
        cls, sep, ops = spec.partition("=")
        if not sep or not cls.strip():
            raise ParamError(f"augment.tutorial_ops entry {spec!r} must look like 'class=op+op'.")
        mapping[cls.strip()] = [op.strip() for op in ops.split("+") if op.strip()]
    for ops in mapping.values():
        check_ops(ops)
    return mapping


def _copy_name(rel: str, op: str) -> str:
    path = Path(rel)
    return path.with_name(f"{path.stem}__{op}{path.suffix}").as_posix()


def plan_honest(split: list[dict], ops: list[str], target: str | int, seed: int) -> list[dict]:
    """Every original keeps its split; TRAIN classes are topped up to ``target`` images each by
    applying ops in order (a seeded random order of images per op), never one op twice per image."""
    train_counts = Counter(row["class"] for row in split if row["split"] == "train")
    if not train_counts:
        raise InputDataError("the split has no train image; lower split.test_size.")
    if target == "max":
        goal = max(train_counts.values())
    else:
        try:
            goal = int(target)
        except ValueError:
            raise ParamError(f"augment.target must be 'max' or an integer, got {target!r}.") from None
    rng = np.random.default_rng(seed)
    plan = [dict(row, source=row["path"], op="none") for row in split]
    for cls in sorted(train_counts):
        images = sorted(row["path"] for row in split if row["split"] == "train" and row["class"] == cls)
        needed = goal - len(images)
        if needed > len(images) * len(ops):
            raise ParamError(
                f"class {cls!r} has {len(images)} train images; {len(ops)} op(s) can add at most "
                f"{len(images) * len(ops)} of the {needed} needed to reach {goal}. "
                "Add ops to augment.ops or lower augment.target."
            )
        for op in ops:
            if needed <= 0:
                break
            for source in (images[i] for i in rng.permutation(len(images))[:needed]):
                plan.append({"path": _copy_name(source, op), "class": cls, "split": "train",
                             "source": source, "op": op})
            needed -= min(needed, len(images))
    return plan


def plan_tutorial(images: list[tuple[str, str]], class_ops: dict[str, list[str]],
                  test_size: float, seed: int) -> list[dict]:
    """The seed recipe: every image of a class gets each of its class's ops, then a plain
    (unstratified) random split over originals and copies together."""
    unknown = set(class_ops) - {cls for _, cls in images}
    if unknown:
        raise ParamError(f"augment.tutorial_ops names class(es) {sorted(unknown)} not in the data.")
    items = []
    for rel, cls in images:
        items.append({"path": rel, "class": cls, "source": rel, "op": "none"})
        items.extend({"path": _copy_name(rel, op), "class": cls, "source": rel, "op": op}
                     for op in class_ops.get(cls, []))
    splits = split_rows([(it["path"], it["class"]) for it in items], test_size, seed, stratify=False)
    return [dict(item, split=s["split"]) for item, s in zip(items, splits)]


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
        Image.fromarray(apply_op(array, item["op"])).save(target, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def augment(in_dir: Path, split_csv: Path, out_dir: Path, manifest_path: Path, *, protocol: str = "honest",
            ops: list[str] | None = None, target: str | int = "max", seed: int = 0,
            tutorial_ops: list[str] | None = None, test_size: float = 0.1, split_seed: int = 0,
            workers: int | None = None) -> dict:
    if protocol not in PROTOCOLS:
        raise ParamError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}.")
    in_dir = Path(in_dir)
    split = read_image_listing(split_csv, in_dir, ("path", "class", "split"), "split")
    first = open_image(in_dir / split[0]["path"])
    square = first.width == first.height
    if protocol == "honest":
        ops = list(ops or [])
        check_ops(ops, square)
        plan = plan_honest(split, ops, target, seed)
    else:
        class_ops = parse_tutorial_ops(tutorial_ops or [])
        for cls_ops in class_ops.values():
            check_ops(cls_ops, square)
        plan = plan_tutorial([(r["path"], r["class"]) for r in split], class_ops, test_size, split_seed)
    with atomic_dir(out_dir) as tmp:
        by_source: dict[str, list[dict]] = defaultdict(list)
        for item in plan:
            by_source[item["source"]].append(item)
        pmap(partial(_materialise, in_dir=in_dir, out_dir=tmp), list(by_source.values()), desc="augment",
             unit="source", workers=workers)
    write_csv(manifest_path, plan, AUGMENTED_FIELDS)
    counts = Counter((row["split"], row["class"]) for row in plan)
    summary: dict = defaultdict(dict)
    for (split_name, cls), n in sorted(counts.items()):
        summary[split_name][cls] = n
    return {"protocol": protocol, "n_images": len(plan), "per_split_class": dict(summary),
            "n_augmented": sum(row["op"] != "none" for row in plan)}


def command(
    src: Path = typer.Option(Path("data/resized"), "--in", help="Folder of resized images."),
    split_csv: Path = typer.Option(Path("data/manifests/split.csv"), "--split", help="Split listing."),
    out: Path = typer.Option(Path("data/augmented"), help="Output folder."),
    manifest: Path = typer.Option(Path("data/manifests/augmented.csv"), help="Manifest CSV to write."),
    report: Path = typer.Option(Path("reports/augment.json"), help="Stage report (counts)."),
    protocol: str = typer.Option("honest", help="honest (split, then augment train) or tutorial (seed recipe)."),
    ops: list[str] = typer.Option(["rot180", "flip_lr", "flip_tb", "rot90", "rot270"], "--ops",
                                  help="Ops used in order to balance classes (repeatable)."),
    target: str = typer.Option("max", help="Images per train class: 'max' (largest class) or a number."),
    seed: int = typer.Option(0, help="Seed choosing which images get each op."),
    tutorial_ops: list[str] = typer.Option(["malignant=rot180", "normal=rot180+flip_lr"],
                                           "--tutorial-ops", "--tutorial_ops",
                                           help="Tutorial protocol: 'class=op+op' (repeatable)."),
    test_size: float = typer.Option(0.1, help="Tutorial protocol: test fraction of the augmented set."),
    split_seed: int = typer.Option(0, help="Tutorial protocol: seed of the split."),
) -> None:
    result = augment(src, split_csv, out, manifest, protocol=protocol, ops=ops, target=target, seed=seed,
                     tutorial_ops=tutorial_ops, test_size=test_size, split_seed=split_seed)
    write_json(report, result)
    typer.echo(f"augment ({protocol}): {result['n_images']} images "
               f"({result['n_augmented']} augmented) -> {out}: {result['per_split_class']}")
