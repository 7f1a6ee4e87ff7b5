"""Stage synthesize: generate the embedded synthetic BUSI-like phantom dataset.

Writes ``benign/``, ``malignant/`` and ``normal/`` class folders of ultrasound-like phantoms
named as in BUSI (``benign (1).png`` with ``benign (1)_mask.png`` and sometimes a second
``benign (1)_mask_1.png``), so the whole pipeline can run offline without the real data.
The same ``synthesize.n_images`` and ``synthesize.seed`` give byte-identical files.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import typer

from imgclust import config
from imgclust.core.fsutil import atomic_dir
from imgclust.core.parallel import pmap
from imgclust.core.phantoms import class_counts, write_phantom
from imgclust.errors import ParamError

# the keys of params.yaml this stage reads: its `params` in dvc.yaml, and all it may read
PARAMS = ("synthesize",)


def synthesize(out_dir: Path, n_images: int, seed: int) -> dict:
    """Write the phantom dataset to ``out_dir`` atomically and return a summary."""
    if seed < 0:
        raise ParamError(f"synthesize.seed must be a non-negative integer, got {seed}")
    counts = class_counts(n_images)
    with atomic_dir(Path(out_dir)) as tmp:
        for class_name in counts:
            (tmp / class_name).mkdir()
        jobs = [(class_name, index) for class_name, count in counts.items() for index in range(1, count + 1)]
        n_masks = sum(pmap(partial(write_phantom, folder=tmp, seed=seed), jobs, desc="synthesize"))
    return {"images": counts, "masks": n_masks, "n_images": n_images, "seed": seed}


def run(out: Path, params: config.SynthesizeParams) -> dict:
    return synthesize(out, params.n_images, params.seed)


def command(out: Path = typer.Option(..., help="Output folder; replaced as a whole.")) -> None:
    summary = run(out, config.load(PARAMS).synthesize)
    per_class = ", ".join(f"{name} {count}" for name, count in summary["images"].items())
    typer.echo(f"wrote {summary['n_images']} images ({per_class}) and {summary['masks']} masks to {out}")
