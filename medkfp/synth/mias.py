"""Synthetic mini-MIAS mammography set: cartoon films as PGM and their Info.txt rows."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from medkfp.synth.common import (
    MIAS_IMAGE_TAG,
    MIAS_LAYOUT_TAG,
    check_seed,
    check_size,
    prepare_dir,
    progress_bar,
    resolve_counts,
    save_image,
    write_text,
)
from medkfp.synth.drawing import Grid, add_disc, add_gauss, add_rays, finish, smooth_noise
from medkfp.vocab import MIAS_CLASSES, MIAS_DIR, MIAS_INFO_FILE

MIAS_INFO_HEADER = "REFNUM BG CLASS SEVERITY X Y RADIUS"
# Info.txt coordinates are in the 1024 x 1024 frame of the real films, origin bottom-left.
MIAS_COORDINATE_SIZE = 1024
# Images per class in the study (322 films in all).
MIAS_STUDY_COUNTS = {
    "ARCH": 19,
    "ASYM": 15,
    "CALC": 25,
    "CIRC": 23,
    "MISC": 14,
    "NORM": 207,
    "SPIC": 19,
}
MIAS_MAX_IMAGES = 999  # mdbNNN has three digits

# Lesion radius ranges in the 1024 frame, per MIAS class: within the range of the real radii
# but on the large side, so that shapes survive downscaling to 32-64 px.
_MIAS_RADIUS = {
    "ARCH": (70, 150),
    "ASYM": (90, 170),
    "CALC": (60, 130),
    "CIRC": (50, 120),
    "MISC": (60, 140),
    "SPIC": (50, 120),
}
# Sigma of one calcification, as a fraction of the side (6-9 px of a 1024 film).
_SPECK_SIGMA = (0.006, 0.009)
_TISSUES = ("F", "G", "D")
# tissue -> (base level, texture amplitude)
_TISSUE_LOOK = {"F": (70.0, 12.0), "G": (92.0, 20.0), "D": (118.0, 28.0)}


def synth_mias(
    out_dir: str | os.PathLike,
    per_class: int | None = None,
    counts: Sequence[int] | None = None,
    size: int = 1024,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, int]:
    """Write a synthetic mini-MIAS mammography set under `out_dir`.

    Layout, as in the real download::

        out_dir/all-mias/Info.txt
        out_dir/all-mias/mdb001.pgm, mdb002.pgm, ...   binary (P5) 8-bit PGM, size x size

    Info.txt starts with the header ``REFNUM BG CLASS SEVERITY X Y RADIUS`` followed by one row
    per abnormality: reference, background tissue (F/G/D), class, severity (B/M), x, y, radius.
    x, y and radius are in the 1024 x 1024 frame of the real films with the origin at the
    bottom-left, whatever `size` is. NORM rows stop after the class with a trailing blank
    (``mdb003 D NORM ``); a few images have two rows (two lesions of the same class); a few
    CALC rows have a severity but no centre (``mdb238 F CALC M``) and their calcifications are
    scattered over the whole breast. Films come in left/right pairs (mdb001+mdb002, ...): the
    two films of a pair share the tissue type and are mirrored (odd numbers have the chest wall
    on the left edge); their classes are drawn independently. Each lesion is a bright shape at
    its centre: a sharp disc (CIRC), a star with a dense core (SPIC), speckles (CALC), a
    lobulated ill-defined mass (MISC), converging lines without a core (ARCH) or a large faint
    elongated density (ASYM); NORM films have none.

    Args:
        out_dir: directory to write into (created if missing).
        per_class: images per class; default: the study's counts (MIAS_STUDY_COUNTS, 322).
        counts: seven image counts in MIAS_CLASSES order; overrides `per_class`.
        size: image side in pixels, at least 16 (the real films are 1024).
        seed: non-negative seed; the same seed gives byte-identical files.
        progress: show a rich progress bar.

    Returns:
        {class name: number of images whose (first) Info.txt row has that class}, in
        MIAS_CLASSES order.

    Raises:
        ValueError: on a bad count, more than 999 images, a bad size or seed, or an
            `out_dir` that is a file.
    """
    n_per_class = resolve_counts(
        "synth_mias",
        MIAS_CLASSES,
        per_class,
        counts,
        [MIAS_STUDY_COUNTS[c] for c in MIAS_CLASSES],
    )
    total = sum(n_per_class)
    if total > MIAS_MAX_IMAGES:
        raise ValueError(
            f"synth_mias: {total} images requested but mdbNNN names hold at most "
            f"{MIAS_MAX_IMAGES}; lower per_class/counts"
        )
    check_size("synth_mias", size)
    check_seed("synth_mias", seed)
    folder = prepare_dir("synth_mias", out_dir) / MIAS_DIR
    folder.mkdir(parents=True, exist_ok=True)

    films = _mias_layout(n_per_class, seed)
    grid = Grid(size)
    lines = [MIAS_INFO_HEADER]
    with progress_bar(progress, "mini-MIAS", total) as advance:
        for film in films:
            rng = np.random.default_rng([seed, MIAS_IMAGE_TAG, film["number"]])
            image, rows = _mias_image(rng, grid, film)
            save_image(image, folder / f"{film['ref']}.pgm")
            lines.extend(rows)
            advance()
    write_text(folder / MIAS_INFO_FILE, "\n".join(lines) + "\n")
    return dict(zip(MIAS_CLASSES, n_per_class, strict=True))


def _mias_layout(n_per_class: Sequence[int], seed: int) -> list[dict]:
    """Films in number order: class, tissue, side, severity, lesion count, centre or not."""
    rng = np.random.default_rng([seed, MIAS_LAYOUT_TAG])
    labels = [c for c, n in zip(MIAS_CLASSES, n_per_class, strict=True) for _ in range(n)]
    labels = [labels[i] for i in rng.permutation(len(labels))]
    films = []
    tissue = "F"
    for i, label in enumerate(labels):
        number = i + 1
        if number % 2 == 1:  # a new left/right pair: one woman, one tissue type
            tissue = _TISSUES[int(rng.integers(0, 3))]
        films.append(
            {
                "number": number,
                "ref": f"mdb{number:03d}",
                "class": label,
                "tissue": tissue,
                "left": number % 2 == 1,
                "severity": None if label == "NORM" else ("B", "M")[int(rng.integers(0, 2))],
                "lesions": 0 if label == "NORM" else 1,
                "centre": label != "NORM",
            }
        )
    # A few CALC films list a severity but no centre: diffuse calcifications.
    calc = [f for f in films if f["class"] == "CALC"]
    if len(calc) >= 2:
        for i in rng.choice(len(calc), size=max(1, len(calc) // 8), replace=False):
            calc[int(i)]["centre"] = False
    # A few films have two abnormalities of the same class: two Info.txt rows.
    located = [f for f in films if f["centre"]]
    if len(located) >= 3:
        for i in rng.choice(len(located), size=max(1, len(located) // 12), replace=False):
            located[int(i)]["lesions"] = 2
    return films


def _mias_image(rng: np.random.Generator, grid: Grid, film: dict):
    """One cartoon mammogram for `film` and its Info.txt rows."""
    x, y, s = grid.x, grid.y, grid.size
    u = x if film["left"] else 1.0 - x  # distance from the chest wall

    # Breast: a half ellipse on the chest wall; pectoral muscle in the upper corner.
    a, b = rng.uniform(0.62, 0.8), rng.uniform(0.40, 0.47)
    cy0 = 0.5 + rng.uniform(-0.04, 0.04)
    ellipse = (u / a) ** 2 + ((y - cy0) / b) ** 2
    breast = np.clip((1.0 - ellipse) / 0.06, 0.0, 1.0)
    pa, pb = rng.uniform(0.18, 0.3), rng.uniform(0.3, 0.45)
    pectoral = np.clip((1.0 - (u / pa + y / pb)) / 0.04, 0.0, 1.0)

    base, texture_amp = _TISSUE_LOOK[film["tissue"]]
    texture = 0.6 * smooth_noise(rng, s, 10) + 0.4 * smooth_noise(rng, s, 28)
    glandular = np.clip(1.0 - ellipse, 0.0, 1.0) ** 0.5  # denser towards the chest wall
    tissue = base * rng.uniform(0.9, 1.1) * (0.75 + 0.25 * glandular) + texture_amp * texture
    img = rng.uniform(2, 12) + breast * (tissue + rng.uniform(35, 55) * pectoral)
    img = img.astype(np.float32)

    def inside_point(limit: float) -> tuple[float, float]:
        """(x, y) inside the breast (ellipse value < limit) and off the pectoral muscle."""
        for _ in range(1000):
            pu, py = rng.uniform(0.03, a), rng.uniform(cy0 - b, cy0 + b)
            if (pu / a) ** 2 + ((py - cy0) / b) ** 2 < limit and pu / pa + py / pb > 1.25:
                break
        else:  # unreachable in practice; stays deterministic
            pu, py = 0.3 * a, cy0
        return (pu if film["left"] else 1.0 - pu), py

    label, ref, bg = film["class"], film["ref"], film["tissue"]
    if label == "NORM":
        return finish(img, rng, rng.uniform(2, 5)), [f"{ref} {bg} NORM "]

    rows = []
    if not film["centre"]:  # diffuse calcifications over the whole breast
        for _ in range(int(rng.integers(40, 80))):
            _add_speck(img, grid, rng, *inside_point(0.8), (110, 150))
        rows.append(f"{ref} {bg} CALC {film['severity']}")
        return finish(img, rng, rng.uniform(2, 5)), rows

    centres: list[tuple[float, float, float]] = []
    for _ in range(film["lesions"]):
        lo, hi = _MIAS_RADIUS[label]
        radius = int(rng.integers(lo, hi + 1))
        for _ in range(50):  # keep a second lesion clear of the first
            px, py = inside_point(0.55)
            X = int(round(px * MIAS_COORDINATE_SIZE))
            Y = int(round((1.0 - py) * MIAS_COORDINATE_SIZE))
            if all(np.hypot(X - cx, Y - cy) > radius + r for cx, cy, r in centres):
                break
        centres.append((X, Y, radius))
        rows.append(f"{ref} {bg} {label} {film['severity']} {X} {Y} {radius}")
        # Back to the image frame: y origin top-left, coordinates as fractions of the side.
        _draw_lesion(
            img,
            grid,
            rng,
            label,
            X / MIAS_COORDINATE_SIZE,
            1.0 - Y / MIAS_COORDINATE_SIZE,
            radius / MIAS_COORDINATE_SIZE,
        )
    return finish(img, rng, rng.uniform(2, 5)), rows


def _draw_lesion(img, grid, rng, label: str, cx: float, cy: float, r: float) -> None:
    """Add the class-specific bright shape of radius `r` centred on (cx, cy), image fractions."""
    if label == "CIRC":  # well-defined round mass
        add_disc(img, grid, cx, cy, r, rng.uniform(85, 115), edge=0.06)
    elif label == "SPIC":  # dense core with long radiating spicules
        add_disc(img, grid, cx, cy, 0.35 * r, rng.uniform(90, 110), edge=0.3)
        _add_star(img, grid, rng, cx, cy, r, (8, 14), (1.1, 1.8), (70, 95))
    elif label == "CALC":  # cluster of small bright specks
        for _ in range(int(rng.integers(10, 25))):
            _add_speck(img, grid, rng, *_near(rng, cx, cy, r), (120, 160))
    elif label == "MISC":  # ill-defined lobulated mass
        for _ in range(int(rng.integers(3, 6))):
            px, py = _near(rng, cx, cy, 0.45 * r)
            sigma = r * rng.uniform(0.3, 0.45)
            add_gauss(img, grid, px, py, sigma, sigma, rng.uniform(45, 65))
    elif label == "ARCH":  # converging lines, no central mass
        _add_star(img, grid, rng, cx, cy, r, (10, 16), (1.0, 1.7), (65, 85))
    elif label == "ASYM":  # large faint elongated density
        add_gauss(
            img,
            grid,
            cx,
            cy,
            r * rng.uniform(0.6, 0.9),
            r * rng.uniform(0.3, 0.45),
            rng.uniform(55, 75),
            angle=rng.uniform(0, np.pi),
        )
    else:  # pragma: no cover - the layout only produces MIAS_CLASSES
        raise ValueError(f"unknown MIAS class {label!r}")


def _near(rng: np.random.Generator, cx: float, cy: float, spread: float) -> tuple[float, float]:
    """A point drawn uniformly from the disc of radius `spread` around (cx, cy)."""
    rho, phi = spread * np.sqrt(rng.uniform()), rng.uniform(0, 2 * np.pi)
    return cx + rho * np.cos(phi), cy + rho * np.sin(phi)


def _add_speck(img, grid, rng, x: float, y: float, amp: tuple[float, float]) -> None:
    """Add one calcification at (x, y): a small round Gaussian, brightness drawn from `amp`."""
    sigma = rng.uniform(*_SPECK_SIGMA)
    add_gauss(img, grid, x, y, sigma, sigma, rng.uniform(*amp))


def _add_star(img, grid, rng, cx, cy, r: float, count, reach, amp) -> None:
    """Add rays in random directions from (cx, cy), spicules or converging lines.

    Their number, length (times `r`) and brightness are drawn from the ranges `count`, `reach`
    and `amp`.
    """
    k = int(rng.integers(*count))
    angles = rng.uniform(0, 2 * np.pi, k)
    add_rays(img, grid, cx, cy, angles, r * rng.uniform(*reach, k), 0.07 * r, rng.uniform(*amp))
