"""Ultrasound-like phantom images, BUSI-like in layout and class balance.

Each image is keyed by (seed, class, index), so it never depends on generation order or on how
many images are made.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from imgclust.errors import ParamError

CLASS_FRACTIONS = {"benign": 0.56, "malignant": 0.27, "normal": 0.17}
MIN_PER_CLASS = 2
MIN_IMAGES = MIN_PER_CLASS * len(CLASS_FRACTIONS)
WIDTH_RANGE = (220, 340)
HEIGHT_RANGE = (180, 260)
SECOND_MASK_EVERY = 7


def class_counts(n_images: int) -> dict[str, int]:
    """Images per class: the minority classes by ``round``, benign takes the remainder."""
    if n_images < MIN_IMAGES:
        raise ParamError(
            f"synthesize.n_images must be at least {MIN_IMAGES} ({MIN_PER_CLASS} per class), got {n_images}"
        )
    counts = {
        name: max(MIN_PER_CLASS, round(fraction * n_images))
        for name, fraction in CLASS_FRACTIONS.items()
        if name != "benign"
    }
    return {"benign": n_images - sum(counts.values()), **counts}


def _image_rng(seed: int, class_name: str, index: int) -> np.random.Generator:
    # Keyed by (seed, class, index), so an image never depends on generation order or n_images.
    return np.random.default_rng([seed, list(CLASS_FRACTIONS).index(class_name), index])


def _blur(array: np.ndarray, sigma_y: float, sigma_x: float) -> np.ndarray:
    """Separable Gaussian blur with edge padding, as a sum of shifted copies (small sigmas)."""
    for axis, sigma in ((0, sigma_y), (1, sigma_x)):
        radius = int(np.ceil(3 * sigma))
        if radius < 1:
            continue
        taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
        taps /= taps.sum()
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        padded = np.pad(array, pad, mode="edge")
        size = array.shape[axis]
        out = np.zeros_like(array)
        for k, tap in enumerate(taps):
            out += tap * (padded[k : k + size] if axis == 0 else padded[:, k : k + size])
        array = out
    return array


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a coarse random grid upsampled bicubically."""
    h, w = shape
    grid = rng.standard_normal((max(2, cells * h // w), cells)).astype(np.float32)
    field = Image.fromarray(grid).resize((w, h), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(field, dtype=np.float64), -2.5, 2.5) / 2.5


def _tissue(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Echogenicity of breast tissue: bright skin and gland bands on top, darker with depth."""
    y = np.arange(h)[:, None] / h
    x = np.arange(w)[None, :] / w
    echo = np.full((h, w), 0.35)
    # (depth, thickness, level) of skin, gland and pectoral-muscle bands with wavy boundaries
    bands = [
        (rng.uniform(0.02, 0.05), rng.uniform(0.015, 0.03), rng.uniform(0.9, 1.1)),
        (rng.uniform(0.15, 0.3), rng.uniform(0.08, 0.16), rng.uniform(0.55, 0.8)),
        (rng.uniform(0.75, 0.88), rng.uniform(0.04, 0.08), rng.uniform(0.35, 0.55)),
    ]
    for depth, thickness, level in bands:
        phase = 2 * np.pi * rng.uniform(0.5, 2.0) * x + rng.uniform(0, 2 * np.pi)
        wave = rng.uniform(0.01, 0.04) * np.sin(phase)
        echo += level * np.exp(-0.5 * ((y - depth - wave) / thickness) ** 2)
    echo *= 1.0 + 0.35 * _smooth_field(rng, (h, w), cells=int(rng.integers(5, 9)))
    return echo * np.exp(-rng.uniform(0.8, 1.4) * y)  # attenuation with depth


def _sector(rng: np.random.Generator, h: int, w: int, grid) -> tuple[np.ndarray, float, float]:
    """Fan-shaped field of view of a curved probe (outside is black, as in scanner exports).

    Returns the fan mask, the apex height (above the image) and the half opening angle.
    """
    yy, xx = grid
    apex_y = -rng.uniform(0.6, 1.0) * h
    half_angle = float(np.arctan2(w / 2, h - apex_y)) + rng.uniform(0.0, 0.08)
    inside = np.abs(np.arctan2(xx - w / 2, yy - apex_y)) < half_angle
    inside &= np.hypot(xx - w / 2, yy - apex_y) < (h - apex_y) * rng.uniform(0.99, 1.02)
    return inside, apex_y, half_angle


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * z))  # tanh form: no overflow far from the border


def _boundary(rng: np.random.Generator, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Lesion radius (in ellipse units) sampled over the angle: 1 for benign, spiky for malignant."""
    theta = np.linspace(-np.pi, np.pi, 2049)
    radius = np.ones_like(theta)
    if kind == "malignant":
        for k in range(2, 7):  # lobulated, angular outline
            radius += rng.uniform(0.0, 0.1) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        for _ in range(int(rng.integers(6, 13))):  # spiculations
            gap = np.angle(np.exp(1j * (theta - rng.uniform(-np.pi, np.pi))))
            width = rng.uniform(0.05, 0.12)
            radius += rng.uniform(0.35, 0.9) * np.clip(1 - np.abs(gap) / width, 0, None)
    return theta, radius


def _draw_lesion(rng, echo, grid, kind, center, size):
    """Darken ``echo`` in place with one lesion and return its boolean mask."""
    yy, xx = grid
    cy, cx = center
    a = size * echo.shape[1]
    # benign: wider than tall; malignant: closer to round or taller than wide
    b = a * (rng.uniform(0.45, 0.75) if kind == "benign" else rng.uniform(0.8, 1.25))
    tilt = rng.uniform(-0.35, 0.35)
    dx, dy = xx - cx, yy - cy
    u = (dx * np.cos(tilt) + dy * np.sin(tilt)) / a
    v = (-dx * np.sin(tilt) + dy * np.cos(tilt)) / b
    rho = np.hypot(u, v)
    radius = np.interp(np.arctan2(v, u), *_boundary(rng, kind))
    mask = rho < radius
    if kind == "benign":
        inside = _sigmoid((radius - rho) / 0.03)  # sharp, well-defined border
        level = rng.uniform(0.12, 0.3)
        rim = rng.uniform(0.1, 0.3) * np.exp(-0.5 * ((rho - radius) / 0.06) ** 2)
        posterior = 1 + rng.uniform(0.15, 0.4)  # posterior acoustic enhancement
    else:
        inside = _sigmoid((radius - rho) / 0.1)  # blurred, infiltrating border
        level = rng.uniform(0.2, 0.35) * (1 + 0.5 * _smooth_field(rng, echo.shape, cells=12))
        rim = 0.0
        posterior = rng.uniform(0.5, 0.75)  # posterior acoustic shadow
    column = np.exp(-0.5 * ((xx[0] - cx) / (0.6 * a)) ** 2) * _sigmoid((yy[:, 0:1] - cy - 0.7 * b) / 3.0)
    echo *= 1 + (posterior - 1) * column * (1 - inside)
    echo *= 1 - (1 - level) * inside
    echo += rim * echo.mean()
    return mask


def _phantom(seed: int, class_name: str, index: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """One phantom: an 8-bit gray image and its lesion masks (one zero mask for normal)."""
    rng = _image_rng(seed, class_name, index)
    w = int(rng.integers(WIDTH_RANGE[0], WIDTH_RANGE[1] + 1))
    h = int(rng.integers(HEIGHT_RANGE[0], min(HEIGHT_RANGE[1], w - 20) + 1))  # never square
    grid = np.mgrid[0:h, 0:w].astype(np.float64)
    fan, apex_y, half_angle = _sector(rng, h, w, grid)
    echo = _tissue(rng, h, w)
    masks = []
    if class_name == "normal":
        masks.append(np.zeros((h, w), dtype=bool))
    else:
        side = rng.choice([-1.0, 1.0])
        center = (rng.uniform(0.4, 0.6) * h, (0.5 + side * rng.uniform(0.0, 0.12)) * w)
        masks.append(_draw_lesion(rng, echo, grid, class_name, center, rng.uniform(0.09, 0.15)))
        if index % SECOND_MASK_EVERY == 0:
            # a small satellite lesion on the other side, well inside the fan at its depth
            cy = rng.uniform(0.45, 0.65) * h
            reach = (cy - apex_y) * np.tan(half_angle) - 0.1 * w
            center = (cy, w / 2 - side * rng.uniform(0.6, 0.85) * reach)
            second = _draw_lesion(rng, echo, grid, class_name, center, rng.uniform(0.05, 0.07))
            masks.append(second & ~masks[0])
    # multiplicative Rayleigh speckle with mean 1, correlated laterally like a real PSF
    speckle = rng.rayleigh(np.sqrt(2 / np.pi), size=(h, w))
    image = _blur(echo * speckle, 0.6, 1.2)
    gain = rng.uniform(0.85, 1.15)
    image = 255 * np.clip(gain * 0.95 * image, 0, 1) ** 0.8 * fan
    return np.rint(image).astype(np.uint8), [mask & fan for mask in masks]


def write_phantom(job: tuple[str, int], folder: Path, seed: int) -> int:
    """Write one image and its masks; return the number of masks."""
    class_name, index = job
    gray, masks = _phantom(seed, class_name, index)
    stem = f"{class_name} ({index})"
    # RGB with three equal channels, like BUSI; level 3 is faster and smaller than 6 on speckle
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    Image.fromarray(rgb).save(folder / class_name / f"{stem}.png", compress_level=3)
    for k, mask in enumerate(masks):
        suffix = "_mask" if k == 0 else f"_mask_{k}"
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / class_name / f"{stem}{suffix}.png")
    return len(masks)
