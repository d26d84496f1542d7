"""Drawing helpers shared by the cartoons: a pixel grid, soft shapes, smooth noise, film grain."""

from __future__ import annotations

import numpy as np
from PIL import Image


class Grid:
    """Pixel-centre coordinates in [0, 1]: x as a row vector, y (downwards) as a column."""

    def __init__(self, size: int):
        self.size = size
        c = (np.arange(size, dtype=np.float32) + 0.5) / size
        self.x = c[None, :]
        self.y = c[:, None]


def _window(grid: Grid, cx: float, cy: float, extent: float):
    """Slices of the square around (cx, cy) with half-side `extent`, and its dx, dy grids."""
    s = grid.size
    r0, r1 = max(0, int((cy - extent) * s)), min(s, int(np.ceil((cy + extent) * s)) + 1)
    c0, c1 = max(0, int((cx - extent) * s)), min(s, int(np.ceil((cx + extent) * s)) + 1)
    if r0 >= r1 or c0 >= c1:
        return None
    dx = grid.x[:, c0:c1] - np.float32(cx)
    dy = grid.y[r0:r1, :] - np.float32(cy)
    return (slice(r0, r1), slice(c0, c1)), dx, dy


def add_disc(img, grid, cx, cy, radius, amp, edge=0.2) -> None:
    """Add a soft-edged disc (logistic edge of width `edge`*radius, at least half a pixel)."""
    w = _window(grid, cx, cy, radius * 1.6 + 2.0 / grid.size)
    if w is None:
        return
    sl, dx, dy = w
    soft = max(edge * radius, 0.5 / grid.size)
    d = np.sqrt(dx * dx + dy * dy)
    img[sl] += amp / (1.0 + np.exp(np.clip((d - radius) / soft, -30, 30)))


def add_gauss(img, grid, cx, cy, sx, sy, amp, angle=0.0) -> None:
    """Add an (optionally rotated) anisotropic Gaussian, sigma at least half a pixel."""
    sx, sy = max(sx, 0.5 / grid.size), max(sy, 0.5 / grid.size)
    w = _window(grid, cx, cy, 3.2 * max(sx, sy))
    if w is None:
        return
    sl, dx, dy = w
    c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    u, v = dx * c + dy * s, -dx * s + dy * c
    img[sl] += amp * np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2))


def add_rays(img, grid, cx, cy, angles, lengths, width, amp) -> None:
    """Add thin bright rays from (cx, cy), fading towards their ends."""
    extent = float(np.max(lengths)) + 2.0 / grid.size
    w = _window(grid, cx, cy, extent)
    if w is None:
        return
    sl, dx, dy = w
    width = max(width, 0.7 / grid.size)
    ca = np.cos(angles).astype(np.float32)[:, None, None]
    sa = np.sin(angles).astype(np.float32)[:, None, None]
    along = dx[None] * ca + dy[None] * sa  # distance along each ray
    across = -dx[None] * sa + dy[None] * ca  # distance from its line
    length = np.asarray(lengths, dtype=np.float32)[:, None, None]
    fade = np.clip(1.0 - along / length, 0.0, 1.0) * (along > 0)
    rays = np.exp(-0.5 * (across / width) ** 2) * fade
    img[sl] += amp * rays.max(axis=0)


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise, about unit variance: `cells` x `cells` normals upsampled bilinearly."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    fine = Image.fromarray(coarse).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(fine, dtype=np.float32)


def finish(img: np.ndarray, rng: np.random.Generator, noise_sigma: float) -> np.ndarray:
    """Add Gaussian grain of `noise_sigma` grey levels to `img` (in place) and return it as uint8."""
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(noise_sigma)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
