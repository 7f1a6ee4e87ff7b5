"""What the training images looked like, so new images that differ can be flagged.

``training_profile`` summarises the original images a model was trained and tested on: their size
and mode as ingested, and the per-channel mean and standard deviation of their pixels as the model
sees them (resized, in its colour mode). ``differences`` says, for one new image, which of these fall
outside the training range. A model applied to images unlike its training set still returns a
cluster for each; these checks are what tells the user.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

CHANNEL_STATS = ("mean", "std")


def pixel_stats(array: np.ndarray) -> dict[str, list[float]]:
    """Per-channel mean and standard deviation of a uint8 image (HxW or HxWxC), 0-255."""
    pixels = np.asarray(array, dtype=np.float64)
    pixels = pixels.reshape(-1, 1) if pixels.ndim == 2 else pixels.reshape(-1, pixels.shape[-1])
    return {"mean": pixels.mean(axis=0).round(3).tolist(), "std": pixels.std(axis=0).round(3).tolist()}


def _range(values: Iterable[float]) -> list[float]:
    values = list(values)
    return [min(values), max(values)] if values else []


def training_profile(
    arrays: Iterable[np.ndarray], originals: list[dict], model_input: dict[str, object]
) -> dict[str, object]:
    """Sizes and modes of ``originals`` (rows with width, height, mode, as ingest recorded them),
    per-channel pixel statistic ranges of ``arrays`` (the same images as the model sees them, read
    one by one) and ``model_input`` (width, height, color_mode, resample)."""
    stats = [pixel_stats(a) for a in arrays]
    channels = len(stats[0]["mean"]) if stats else 0
    return {
        "n_images": len(stats),
        "width": _range(int(r["width"]) for r in originals),
        "height": _range(int(r["height"]) for r in originals),
        "modes": sorted({str(r["mode"]) for r in originals}),
        **{f"channel_{name}": [_range(s[name][c] for s in stats) for c in range(channels)] for name in CHANNEL_STATS},
        "model_input": model_input,
    }


def differences(profile: dict, width: int, height: int, mode: str, array: np.ndarray | None) -> list[str]:
    """How one image (its size and mode as read, ``array`` as the model sees it) falls outside the
    training images of ``profile``; empty when it does not."""
    found = []
    for name, value in (("width", width), ("height", height)):
        bounds = profile.get(name) or []
        if bounds and not bounds[0] <= value <= bounds[1]:
            found.append(f"{name} {value} px outside the training range {bounds[0]}-{bounds[1]}")
    modes = profile.get("modes") or []
    if modes and mode not in modes:
        found.append(f"mode {mode} not among the training modes {', '.join(modes)}")
    if array is not None:
        stats = pixel_stats(array)
        for name in CHANNEL_STATS:
            for channel, (value, bounds) in enumerate(zip(stats[name], profile.get(f"channel_{name}") or [])):
                if bounds and not bounds[0] <= value <= bounds[1]:
                    which = f" of channel {channel}" if len(stats[name]) > 1 else ""
                    found.append(
                        f"pixel {name}{which} {value:.1f} outside the training range {bounds[0]:.1f}-{bounds[1]:.1f}"
                    )
    return found
