"""Synthetic Kaggle COVID-19 Radiography Database: cartoon chest films and lung masks."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from medkfp.synth.archive import write_xlsx
from medkfp.synth.common import (
    COVID_TAG,
    check_seed,
    check_size,
    prepare_dir,
    progress_bar,
    resolve_counts,
    save_image,
    write_text,
)
from medkfp.synth.drawing import Grid, add_disc, add_gauss, finish, smooth_noise
from medkfp.vocab import COVID_CLASSES, COVID_ROOT

COVID_DEFAULT_PER_CLASS = 20
COVID_README = "README.md.txt"


def synth_covid(
    out_dir: str | os.PathLike,
    per_class: int | None = None,
    counts: Sequence[int] | None = None,
    size: int = 299,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, int]:
    """Write a synthetic Kaggle "COVID-19 Radiography Database" under `out_dir`.

    Layout, as in the real download::

        out_dir/COVID-19_Radiography_Dataset/
            README.md.txt
            <Class>.metadata.xlsx                  (only when an xlsx writer is installed)
            <Class>/images/<Class>-<n>.png         n = 1, 2, ...
            <Class>/masks/<Class>-<n>.png          binary lung mask, 0/255

    for the classes COVID, Lung_Opacity, Normal and "Viral Pneumonia" (with the space). Images
    and masks are 8-bit grayscale ("L") PNGs of `size` x `size` (the real masks are 256 x 256,
    whatever the image size). Each image is a cartoon chest
    film (dark background, two bright lungs, ribs, noise) with a class pattern: COVID has several
    bright round blobs in the lower/outer lung fields, Lung_Opacity one large diffuse haze,
    Normal clean lungs, Viral Pneumonia diagonal reticular streaks. Position, size, brightness
    and noise vary per image. Existing files with the same names are overwritten; other files
    are left alone.

    Args:
        out_dir: directory to write into (created if missing).
        per_class: images per class; default 20.
        counts: four image counts in COVID_CLASSES order; overrides `per_class`.
        size: image side in pixels, at least 16 (the real images are 299).
        seed: non-negative seed; the same seed gives byte-identical files.
        progress: show a rich progress bar.

    Returns:
        {class name: number of images written}, in COVID_CLASSES order.

    Raises:
        ValueError: on a bad count, size, seed or an `out_dir` that is a file.
    """
    n_per_class = resolve_counts(
        "synth_covid", COVID_CLASSES, per_class, counts, [COVID_DEFAULT_PER_CLASS] * 4
    )
    check_size("synth_covid", size)
    check_seed("synth_covid", seed)
    root = prepare_dir("synth_covid", out_dir) / COVID_ROOT
    root.mkdir(parents=True, exist_ok=True)

    result = dict(zip(COVID_CLASSES, n_per_class, strict=True))
    write_text(root / COVID_README, _covid_readme(result, size, seed))
    for name, count in result.items():
        (root / name / "images").mkdir(parents=True, exist_ok=True)
        (root / name / "masks").mkdir(parents=True, exist_ok=True)
        rows = [(f"{name}-{n}", "PNG", f"{size}*{size}", "synthetic") for n in range(1, count + 1)]
        write_xlsx(root / f"{name}.metadata.xlsx", ("FILE NAME", "FORMAT", "SIZE", "URL"), rows)

    grid = Grid(size)
    with progress_bar(progress, "COVID-19 radiography", sum(n_per_class)) as advance:
        for class_index, (name, count) in enumerate(result.items()):
            images, masks = root / name / "images", root / name / "masks"
            for n in range(1, count + 1):
                rng = np.random.default_rng([seed, COVID_TAG, class_index, n])
                image, mask = covid_image(rng, class_index, grid)
                save_image(image, images / f"{name}-{n}.png")
                save_image(mask, masks / f"{name}-{n}.png")
                advance()
    return result


def covid_image(rng: np.random.Generator, class_index: int, grid: Grid):
    """One cartoon chest film of class COVID_CLASSES[class_index] and its lung mask."""
    x, y, s = grid.x, grid.y, grid.size

    # Body: dark background, a brighter torso, a bright mediastinum down the middle.
    img = np.full((s, s), rng.uniform(5, 25), dtype=np.float32)
    torso = ((x - 0.5) / rng.uniform(0.42, 0.48)) ** 2 + ((y - 0.6) / rng.uniform(0.55, 0.65)) ** 2
    img += rng.uniform(30, 50) * np.clip((1.0 - torso) / 0.1, 0.0, 1.0)
    img += rng.uniform(25, 45) * np.exp(-0.5 * ((x - 0.5) / rng.uniform(0.04, 0.06)) ** 2)

    # Lungs: two ellipses, narrow at the apex, wide at the base.
    lung_level = rng.uniform(72, 90)
    mid_y = rng.uniform(0.46, 0.52)
    lungs = []
    for side in (-1, 1):  # -1: lung on the image's left, +1: on its right
        cx = 0.5 + side * rng.uniform(0.17, 0.21)
        cy = mid_y + rng.uniform(-0.015, 0.015)
        ax, ay = rng.uniform(0.11, 0.14), rng.uniform(0.26, 0.31)
        taper = np.clip((y - (cy - ay)) / (2 * ay), 0.0, 1.0)
        ellipse = ((x - cx) / (ax * (0.6 + 0.55 * taper))) ** 2 + ((y - cy) / ay) ** 2
        soft = np.clip((1.0 - ellipse) / 0.25, 0.0, 1.0)
        lungs.append(
            {
                "side": side,
                "cx": cx,
                "cy": cy,
                "ax": ax,
                "ay": ay,
                "soft": soft,
                "inside": ellipse < 1.0,
            }
        )
    both = np.maximum(lungs[0]["soft"], lungs[1]["soft"])
    img += lung_level * both

    # Ribs: faint curved horizontal bands over the lungs.
    period = rng.uniform(0.07, 0.09)
    phase = rng.uniform(0, 2 * np.pi)
    bands = 0.5 + 0.5 * np.cos(2 * np.pi * (y + 0.6 * (x - 0.5) ** 2) / period + phase)
    img += rng.uniform(4, 8) * bands * both

    name = COVID_CLASSES[class_index]
    pattern = np.zeros((s, s), dtype=np.float32)
    if name == "COVID":
        # Several bright round blobs in the lower, outer lung fields.
        for _ in range(int(rng.integers(4, 8))):
            lung = lungs[int(rng.integers(0, 2))]
            bx = lung["cx"] + lung["side"] * rng.uniform(0.2, 0.75) * lung["ax"]
            by = lung["cy"] + rng.uniform(0.05, 0.7) * lung["ay"]
            add_disc(pattern, grid, bx, by, rng.uniform(0.028, 0.05), rng.uniform(75, 110))
        pattern *= 0.3 + 0.7 * both
    elif name == "Lung_Opacity":
        # One large diffuse haze, mottled, confined to one lung.
        lung = lungs[int(rng.integers(0, 2))]
        hx = lung["cx"] + rng.uniform(-0.3, 0.3) * lung["ax"]
        hy = lung["cy"] + rng.uniform(-0.35, 0.3) * lung["ay"]
        add_gauss(
            pattern,
            grid,
            hx,
            hy,
            rng.uniform(0.065, 0.095),
            rng.uniform(0.11, 0.17),
            rng.uniform(85, 110),
            angle=rng.uniform(-0.3, 0.3),
        )
        mottling = np.clip(0.75 + 0.35 * smooth_noise(rng, s, 12), 0.3, 1.2)
        pattern *= mottling * lung["soft"]
    elif name == "Viral Pneumonia":
        # Diagonal streaks crossed by fainter ones: a reticular pattern over both lungs.
        angle = rng.choice([-1.0, 1.0]) * rng.uniform(0.55, 1.0)
        pitch = rng.uniform(0.10, 0.14)
        streaks = np.zeros((s, s), dtype=np.float32)
        for a, weight in ((angle, 1.0), (angle + np.pi / 2 + rng.uniform(-0.3, 0.3), 0.45)):
            u = x * np.float32(np.cos(a)) + y * np.float32(np.sin(a))
            wave = 0.5 + 0.5 * np.cos(2 * np.pi * u / pitch + rng.uniform(0, 2 * np.pi))
            streaks += weight * wave**3
        hilar = 0.6 + 0.4 * np.exp(-0.5 * ((x - 0.5) / 0.2) ** 2)
        pattern = rng.uniform(55, 80) * streaks * hilar * both
    # Normal: clean lungs.

    img += pattern
    img *= rng.uniform(0.95, 1.05)
    image = finish(img, rng, rng.uniform(3, 8))
    mask = np.where(lungs[0]["inside"] | lungs[1]["inside"], 255, 0).astype(np.uint8)
    return image, mask


def _covid_readme(result: dict[str, int], size: int, seed: int) -> str:
    lines = [
        "# COVID-19 Radiography Database (SYNTHETIC)",
        "",
        "Generated by medkfp.synth.synth_covid for tests and demos. These are NOT medical",
        "images: each is a cartoon chest film with a class-dependent pattern.",
        "",
        f"Image size: {size} x {size}, 8-bit grayscale PNG. Seed: {seed}.",
        "",
        "| Class | Images | Pattern |",
        "|---|---|---|",
    ]
    patterns = {
        "COVID": "several bright round blobs, lower/outer lung fields",
        "Lung_Opacity": "one large diffuse hazy region",
        "Normal": "clean lungs",
        "Viral Pneumonia": "diagonal reticular streaks",
    }
    lines += [f"| {name} | {count} | {patterns[name]} |" for name, count in result.items()]
    lines += [
        "",
        "Each class folder holds images/<Class>-<n>.png and masks/<Class>-<n>.png (binary",
        "lung masks, 0/255), numbered from 1.",
    ]
    return "\n".join(lines) + "\n"
