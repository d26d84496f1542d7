"""Test data builders shared by the test modules (tests make their own data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_shapes_folder(root: Path, per_class: int = 12, size: int = 32, seed: int = 0) -> Path:
    """An imagefolder dataset: three classes of grayscale PNGs a small CNN tells apart."""
    rng = np.random.default_rng(seed)
    y, x = np.ogrid[:size, :size]
    for name in ("circles", "plain", "stripes"):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = rng.normal(70, 15, (size, size))
            if name == "stripes":
                image[:, int(rng.integers(0, 4)) :: 4] += 120
            if name == "circles":
                cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
                image[(y - cy) ** 2 + (x - cx) ** 2 < (size // 6) ** 2] += 140
            Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(folder / f"{name}-{i}.png")
    return root
