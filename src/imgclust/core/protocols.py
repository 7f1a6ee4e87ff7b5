"""Evaluation protocols: how originals are split into train and test, and which augmented copies
balance the classes.

Honest protocol: a stratified split of the ORIGINAL images first, then only TRAIN classes are
topped up with rotated/flipped copies, so no copy of a test image can reach training. Tutorial
protocol: the seed recipe, augmenting whole classes by fixed ops and splitting afterwards (copies of
one image can fall on both sides, as in the original).
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np

from imgclust.core.images import check_ops
from imgclust.errors import InputDataError, OutputCollisionError, ParamError

PROTOCOLS = ("honest", "tutorial")
SPLIT_FIELDS = ("path", "class", "split")
AUGMENTED_FIELDS = ("path", "class", "split", "source", "op")


def list_images(image_dir: Path) -> list[tuple[str, str]]:
    """(relative path, class) of every image of the pack ``image_dir``, sorted."""
    from imgclust.core.packs import Pack

    return [(path, path.split("/", 1)[0]) for path in Pack(image_dir, producer="resize").paths()]


def split_rows(items: list[tuple[str, str]], test_size: float, seed: int, stratify: bool = True) -> list[dict]:
    """Assign each (path, class) to train or test; stratified by class unless told otherwise.

    The same assignment as scikit-learn's ``train_test_split(..., random_state=seed)`` (stratified:
    ``StratifiedShuffleSplit``), drawn here with NumPy: importing scikit-learn costs the split
    stage's process about 2 s, ten times the rest of its work."""
    if not 0 <= test_size < 1:
        raise ParamError(f"split.test_size must be in [0, 1), got {test_size}.")
    if test_size == 0:
        return [{"path": p, "class": c, "split": "train"} for p, c in items]
    if not items:
        raise InputDataError("no image to split; check the resize stage's output folder.")
    labels = [c for _, c in items]
    n_test = math.ceil(test_size * len(items))  # as scikit-learn: the test share rounded up
    if stratify:
        smallest = min(Counter(labels).values())
        n_classes = len(set(labels))
        if smallest < 2 or n_test < n_classes or len(items) - n_test < n_classes:
            raise ParamError(
                f"cannot stratify {len(items)} images over {len(set(labels))} classes with "
                f"split.test_size={test_size} (smallest class: {smallest}); raise test_size or add images."
            )
        train = set(_stratified_train_indices(labels, len(items) - n_test, n_test, seed).tolist())
    else:
        if n_test >= len(items):
            raise ParamError(
                f"split.test_size={test_size} leaves no training image of {len(items)}; lower test_size or add images."
            )
        train = set(np.random.RandomState(seed).permutation(len(items))[n_test:].tolist())
    return [{"path": p, "class": c, "split": "train" if i in train else "test"} for i, (p, c) in enumerate(items)]


def _approximate_mode(class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """Per class, how many of ``n_draws`` to take: the mode of the multivariate hypergeometric,
    ties broken at random (scikit-learn's ``utils.extmath._approximate_mode``, same draws)."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need_to_add)
            floored[rng.choice(inds, size=add_now, replace=False)] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)


def _stratified_train_indices(labels: list[str], n_train: int, n_test: int, seed: int) -> np.ndarray:
    """The train indices of scikit-learn's ``StratifiedShuffleSplit(test_size=n_test,
    train_size=n_train, random_state=seed)``: the same random draws in the same order."""
    _, y_indices, class_counts = np.unique(np.asarray(labels), return_inverse=True, return_counts=True)
    class_indices = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(class_counts)[:-1])
    rng = np.random.RandomState(seed)
    n_i = _approximate_mode(class_counts, n_train, rng)
    _approximate_mode(class_counts - n_i, n_test, rng)  # the test counts: drawn only to advance rng alike
    train: list[int] = []
    for i in range(len(class_counts)):
        permutation = rng.permutation(class_counts[i])
        train.extend(class_indices[i].take(permutation, mode="clip")[: n_i[i]])
    return np.asarray(train, dtype=int)


def check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ParamError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}.")


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


def _copy_name(rel: str, op: str, taken: set[str]) -> str:
    """``a/x__rot180.png`` for the rot180 copy of ``a/x.png``; when a source (or an earlier copy)
    already has that name, ``a/x__rot180~2.png`` and so on: a copy never takes an existing name, so
    it is never written over an original that is hard-linked into the DVC cache. Adds the name to
    ``taken``."""
    path = Path(rel)
    name, n = path.with_name(f"{path.stem}__{op}{path.suffix}").as_posix(), 1
    while name in taken:
        n += 1
        name = path.with_name(f"{path.stem}__{op}~{n}{path.suffix}").as_posix()
    taken.add(name)
    return name


def check_unique_paths(plan: list[dict]) -> None:
    """Refuse a plan that lists one output path twice (two files would be written to one name)."""
    counts = Counter(row["path"] for row in plan)
    repeated = sorted(path for path, n in counts.items() if n > 1)
    if repeated:
        raise OutputCollisionError(
            f"{len(repeated)} output path(s) planned twice, e.g. {repeated[0]}; "
            "rename the source files that share a name."
        )


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
    taken = {row["path"] for row in split}
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
                plan.append(
                    {"path": _copy_name(source, op, taken), "class": cls, "split": "train", "source": source, "op": op}
                )
            needed -= min(needed, len(images))
    check_unique_paths(plan)
    return plan


def plan_tutorial(
    images: list[tuple[str, str]], class_ops: dict[str, list[str]], test_size: float, seed: int
) -> list[dict]:
    """The seed recipe: every image of a class gets each of its class's ops, then a plain
    (unstratified) random split over originals and copies together."""
    unknown = set(class_ops) - {cls for _, cls in images}
    if unknown:
        raise ParamError(f"augment.tutorial_ops names class(es) {sorted(unknown)} not in the data.")
    items = []
    taken = {rel for rel, _ in images}
    for rel, cls in images:
        items.append({"path": rel, "class": cls, "source": rel, "op": "none"})
        items.extend(
            {"path": _copy_name(rel, op, taken), "class": cls, "source": rel, "op": op} for op in class_ops.get(cls, [])
        )
    check_unique_paths(items)
    splits = split_rows([(it["path"], it["class"]) for it in items], test_size, seed, stratify=False)
    return [dict(item, split=s["split"]) for item, s in zip(items, splits)]
