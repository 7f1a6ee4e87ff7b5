"""Real images through the real data stages, for tests of the model stages."""

from __future__ import annotations

from pathlib import Path

BALANCING_OPS = ["rot180", "flip_lr", "flip_tb", "rot90", "rot270"]
TUTORIAL_OPS = ["malignant=rot180", "normal=rot180+flip_lr"]


def run_data_stages(
    root: Path, source: Path, mode: str = "gray", size: int = 32, test_size: float = 0.25
) -> dict[str, Path]:
    """Run the real data stages (ingest -> augment) on ``source`` into ``root``; return the paths
    the model stages need."""
    from imgclust.core.fsutil import write_csv
    from imgclust.core.protocols import SPLIT_FIELDS, list_images, split_rows
    from imgclust.stages.augment import augment
    from imgclust.stages.ingest import ingest
    from imgclust.stages.resize import resize_images
    from imgclust.stages.strip_masks import strip_masks

    root.mkdir(parents=True, exist_ok=True)
    ingest(source, root / "raw", root / "raw.csv", workers=1)
    strip_masks(root / "raw", root / "stripped", ["*_mask*.png"])
    resize_images(root / "stripped", root / "resized", size, size, mode, "lanczos", workers=1)
    write_csv(root / "split.csv", split_rows(list_images(root / "resized"), test_size, 0), SPLIT_FIELDS)
    augment(
        root / "resized",
        root / "split.csv",
        root / "augmented",
        root / "augmented.csv",
        protocol="honest",
        ops=BALANCING_OPS,
        target="max",
        seed=0,
        tutorial_ops=TUTORIAL_OPS,
        test_size=test_size,
        split_seed=0,
        workers=1,
    )
    return {"images": root / "augmented", "manifest": root / "augmented.csv", "split": root / "split.csv"}
