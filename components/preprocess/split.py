"""Leakage-safe train/val/test split: stratified by class, grouped so no group spans two splits.

A group is a set of images that must stay together: the two films of a MIAS patient, or
files with identical content. Without any group of two or more the split is sklearn's
stratified `train_test_split` (test first, then val out of the rest), which reproduces
the COVID study's Table II totals exactly. With groups, per-class targets are computed
the same way, groups of two or more are placed first (those holding the rarest classes
first) into the split they fill least, and single images then fill each class's
remaining test and val places, the rest going to train. Where that left a class out of test
or val, whole groups of it move there from train. Every class ends with an image in every
split, or the split is refused naming what to change.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from medkfp.errors import InvalidInputError

TRAIN, VAL, TEST = 0, 1, 2
SPLIT_NAMES = np.array(["train", "val", "test"], dtype=object)
MIN_PER_CLASS = 3  # one image (or group) for each of train, val and test


def split_examples(
    labels: pd.Series,
    test_fraction: float,
    val_fraction: float,
    seed: int,
    groups: pd.Series | None = None,
) -> pd.Series:
    """Stratified (and grouped) train/val/test assignment: test first, then val out of the rest.

    Args:
        labels: class per image.
        test_fraction, val_fraction: in (0, 1); val is a fraction of what test leaves.
        seed: the same seed gives the same split.
        groups: leakage group per image (aligned with labels); None = every image alone.

    Returns:
        split name per image ("train", "val", "test"), aligned with `labels`.

    Raises:
        ValueError: a fraction out of range, or a class with fewer than 3 images (groups).
    """
    for name, value in (("test", test_fraction), ("val", val_fraction)):
        if not 0 < value < 1:
            raise InvalidInputError(f"--{name}-fraction must be between 0 and 1, got {value}")
    if groups is None or not groups.duplicated().any():
        return _stratified_split(labels, test_fraction, val_fraction, seed)
    return _grouped_split(labels, groups, test_fraction, val_fraction, seed)


def _stratified_split(labels: pd.Series, test_fraction, val_fraction, seed) -> pd.Series:
    counts = labels.value_counts()
    if counts.min() < MIN_PER_CLASS:
        raise InvalidInputError(
            f"class {counts.idxmin()!r} has {counts.min()} image(s): a stratified "
            f"train/val/test split needs at least {MIN_PER_CLASS} per class"
        )
    classes = len(counts)
    test_count = _check_stratifiable(len(labels), classes, test_fraction, "test", 2 * classes, "images")
    left = len(labels) - test_count
    _check_stratifiable(left, classes, val_fraction, "val", classes, "images the test split leaves")
    index = labels.index.to_numpy()
    rest, test = train_test_split(index, test_size=test_fraction, stratify=labels, random_state=seed)
    _, val = train_test_split(rest, test_size=val_fraction, stratify=labels.loc[rest], random_state=seed)
    split = pd.Series("train", index=labels.index)
    split.loc[val] = "val"
    split.loc[test] = "test"
    return split


def _check_stratifiable(
    total: int, classes: int, fraction: float, split: str, leave: int, of_what: str
) -> int:
    """The images `split` takes out of `total` (as train_test_split counts them).

    sklearn's stratified split needs every class on both sides of a cut, and the side left
    over must still hold `leave` images for the cuts after it. Raises InvalidInputError,
    naming the fraction (two decimals, checked against the same count) that fixes it, when
    the cut falls outside that range.
    """
    held = math.ceil(fraction * total)
    if classes <= held <= total - leave:
        return held
    # total >= classes + leave: every class has MIN_PER_CLASS images, and the test cut leaves 2 * classes
    if held < classes:  # the least f with ceil(f * total) >= classes: f > (classes - 1) / total
        least = (100 * (classes - 1) // total + 1) / 100
        fix = f"raise --{split}-fraction to at least {least:.2f}, or add images"
    else:
        fix = f"lower --{split}-fraction to at most {100 * (total - leave) // total / 100:.2f}"
    raise InvalidInputError(
        f"the {split} split would take {held} of the {total} {of_what} for {classes} classes, and a "
        f"stratified split needs every class in every split: {fix}"
    )


def _grouped_split(labels: pd.Series, groups: pd.Series, test_fraction, val_fraction, seed) -> pd.Series:
    rng = np.random.default_rng(seed)
    class_codes, classes = pd.factorize(labels, sort=True)
    group_codes, _ = pd.factorize(groups)
    composition = np.zeros((group_codes.max() + 1, len(classes)), dtype=np.int64)
    np.add.at(composition, (group_codes, class_codes), 1)
    groups_per_class = (composition > 0).sum(axis=0)
    if groups_per_class.min() < MIN_PER_CLASS:
        worst = int(groups_per_class.argmin())
        raise InvalidInputError(
            f"class {classes[worst]!r} has images in {groups_per_class[worst]} group(s) (patients, "
            f"duplicate files): a grouped train/val/test split needs at least {MIN_PER_CLASS}"
        )
    targets = split_targets(composition.sum(axis=0), test_fraction, val_fraction, rng)
    assigned = np.full(len(composition), -1)
    have = np.zeros_like(targets)
    _place_groups(composition, targets, have, assigned, rng)
    _fill_singles(composition, targets, have, assigned, rng)
    _cover_every_split(composition, have, assigned, rng)
    empty = np.argwhere(have == 0)
    if len(empty):  # groups of mixed classes that no move out of train could untangle
        split, c = (int(i) for i in empty[0])
        raise InvalidInputError(
            f"class {classes[c]!r} would have no image in the {SPLIT_NAMES[split]} split: its "
            f"{groups_per_class[c]} group(s) (patients, duplicate files) must stay whole, and this "
            "placement could not give every split one; add images of it, or try another --seed"
        )
    return pd.Series(SPLIT_NAMES[assigned[group_codes]], index=labels.index)


def split_targets(class_counts: np.ndarray, test_fraction, val_fraction, rng) -> np.ndarray:
    """Images per (split, class), [3, C]: totals as train_test_split computes them."""
    n = int(class_counts.sum())
    test = _allocate(class_counts, math.ceil(test_fraction * n), rng)
    rest = class_counts - test
    val = _allocate(rest, math.ceil(val_fraction * int(rest.sum())), rng)
    return np.stack([rest - val, val, test])


def _allocate(counts: np.ndarray, total: int, rng) -> np.ndarray:
    """Split `total` over classes in proportion to `counts` (largest remainder, seeded ties)."""
    exact = counts * total / max(int(counts.sum()), 1)
    floor = np.floor(exact).astype(np.int64)
    remainder = exact - floor
    order = np.lexsort((rng.permutation(len(counts)), -remainder))
    floor[order[: total - int(floor.sum())]] += 1
    return np.minimum(floor, counts)


def _place_groups(composition, targets, have, assigned, rng) -> None:
    """Put each group of 2+ images where its classes are least filled relative to target."""
    sizes = composition.sum(axis=1)
    multi = np.flatnonzero(sizes > 1)
    class_totals = composition.sum(axis=0)
    rarity = np.where(composition[multi] > 0, class_totals, np.iinfo(np.int64).max).min(axis=1)
    order = multi[np.lexsort((rng.permutation(len(multi)), -sizes[multi], rarity))]
    for g in order:
        present = composition[g] > 0
        after = (have[:, present] + composition[g, present]) / np.maximum(targets[:, present], 0.5)
        fill = after.max(axis=1)
        # Ties go to a seeded random split, so equal groups do not all land in train.
        candidates = np.flatnonzero(np.isclose(fill, fill.min()))
        split = int(rng.choice(candidates))
        assigned[g] = split
        have[split] += composition[g]


def _fill_singles(composition, targets, have, assigned, rng) -> None:
    """Single images fill each class's remaining test, then val places; the rest is train."""
    singles = np.flatnonzero(composition.sum(axis=1) == 1)
    single_class = composition[singles].argmax(axis=1)
    for c in range(composition.shape[1]):
        members = rng.permutation(singles[single_class == c])
        need_test = int(max(0, targets[TEST, c] - have[TEST, c]))
        need_val = int(max(0, targets[VAL, c] - have[VAL, c]))
        assigned[members[:need_test]] = TEST
        assigned[members[need_test : need_test + need_val]] = VAL
        assigned[members[need_test + need_val :]] = TRAIN
        for split in (TRAIN, VAL, TEST):
            have[split, c] += int((assigned[members] == split).sum())


def _cover_every_split(composition, have, assigned, rng) -> None:
    """Move whole groups out of train until every class has an image in test and in val.

    With few groups, filling to targets can leave a class out of a split: a pair would
    overshoot a target of one image there. For each such (split, class), the smallest group
    of that class in train moves over, provided train keeps an image of every class the
    group holds; ties go to a seeded random pick.
    """
    for split in (TEST, VAL):
        for c in np.flatnonzero(have[split] == 0):
            if have[split, c]:  # a mixed group moved for an earlier class brought it along
                continue
            in_train = np.flatnonzero((assigned == TRAIN) & (composition[:, c] > 0))
            movable = [g for g in in_train if (have[TRAIN] - composition[g])[composition[g] > 0].min() >= 1]
            if not movable:
                continue
            sizes = composition[movable].sum(axis=1)
            smallest = np.flatnonzero(sizes == sizes.min())
            g = movable[int(rng.choice(smallest))]
            assigned[g] = split
            have[TRAIN] -= composition[g]
            have[split] += composition[g]


def groups_across_splits(groups: pd.Series, split: pd.Series) -> int:
    """How many groups have images in more than one split (0 for a leakage-safe split)."""
    return int((split.groupby(groups.to_numpy()).nunique() > 1).sum())
