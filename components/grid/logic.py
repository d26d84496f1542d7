"""Expand a grid name (`quick`, `paper`) or a JSON/YAML list of candidates into candidate dicts.

The run-level settings (--epochs, --image-size, --weights, --freeze-backbone) are applied
here, so every candidate dict that reaches training is complete. One run writes one set of
shards, so all candidates share one image size: --image-size when given, else the grid's
(the paper grids: 224 px for covid19-radiography, 256 px for mias), else 64.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import yaml

from medkfp import vocab
from medkfp.errors import InvalidInputError

GRID_NAMES = (*vocab.GRIDS, vocab.PAPER_GRID)


def named_grid(grid: str, dataset: str | None) -> tuple[vocab.Candidate, ...] | None:
    """The built-in grid called `grid` (the paper grid is per dataset), or None."""
    if grid in vocab.GRIDS:
        return vocab.GRIDS[grid]
    if grid != vocab.PAPER_GRID:
        return None
    if dataset not in vocab.PAPER_GRIDS:
        raise InvalidInputError(
            f"the paper grid exists for {' and '.join(vocab.PAPER_GRIDS)} (the two studies), not "
            f"{dataset!r}: use --grid quick or a grid file"
        )
    return vocab.PAPER_GRIDS[dataset]


def file_grid(grid: str) -> tuple[vocab.Candidate, ...]:
    """Candidates from a JSON list, or a YAML/JSON file holding a list (or {candidates: [...]})."""
    text = grid
    if not grid.lstrip().startswith("[") and Path(grid).is_file():
        text = Path(grid).read_text()
    try:
        entries = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise InvalidInputError(f"grid {grid!r} is not a grid name or a readable grid file: {e}") from None
    if isinstance(entries, dict):
        entries = entries.get("candidates")
    if not isinstance(entries, list) or not entries:
        raise InvalidInputError(
            f"grid {grid!r} is neither one of {', '.join(GRID_NAMES)} nor a non-empty list of "
            "candidates ({architecture, balancing}) in a JSON/YAML file"
        )
    candidates = []
    for entry in entries:
        if not isinstance(entry, dict) or {"architecture", "balancing"} - set(entry):
            raise InvalidInputError(f"grid entry {entry!r} needs 'architecture' and 'balancing'")
        candidate = vocab.Candidate.from_dict(entry)
        if entry.get("name", candidate.name) != candidate.name:
            raise InvalidInputError(
                f"grid entry {entry!r}: candidates are named <architecture>-<balancing> "
                f"({candidate.name}); drop 'name'"
            )
        candidates.append(candidate)
    return tuple(candidates)


def check_weights(weights: str) -> None:
    if weights not in vocab.WEIGHTS and not weights.endswith(".h5"):
        raise InvalidInputError(
            f"weights {weights!r}: use imagenet, none, or the s3:// URI or path of a .weights.h5 / .h5 file"
        )


def check_candidate(c: vocab.Candidate) -> None:
    """Raise ValueError naming the bad setting of one candidate and its allowed values."""
    choices = (
        ("architecture", vocab.ARCHITECTURES),
        ("balancing", vocab.BALANCING),
        ("optimizer", vocab.OPTIMIZERS),
    )
    for key, allowed in choices:
        if getattr(c, key) not in allowed:
            raise InvalidInputError(
                f"candidate {c.name}: unknown {key} {getattr(c, key)!r}; use one of {', '.join(allowed)}"
            )
    check_weights(c.weights)
    if c.architecture == "simple-cnn" and c.weights != "none":
        raise InvalidInputError(f"candidate {c.name}: simple-cnn has no pretrained weights; use weights none")
    for key in ("epochs", "batch_size"):
        if getattr(c, key) < 1:
            raise InvalidInputError(f"candidate {c.name}: {key} must be at least 1, got {getattr(c, key)}")
    if not c.learning_rate > 0:
        raise InvalidInputError(f"candidate {c.name}: learning_rate must be positive, got {c.learning_rate}")
    if c.dense_units < 0:
        raise InvalidInputError(f"candidate {c.name}: dense_units must be 0 or more, got {c.dense_units}")


def run_image_size(candidates, image_size: int) -> int:
    """--image-size when given, else the grid's common size, else the default."""
    if image_size:
        return image_size
    sizes = sorted({c.image_size for c in candidates if c.image_size})
    if len(sizes) > 1:
        raise InvalidInputError(
            f"grid candidates ask for different image sizes {sizes}: one run writes one set of "
            "shards; give --image-size or split the grid into runs"
        )
    return sizes[0] if sizes else vocab.DEFAULT_IMAGE_SIZE


def with_run_settings(c: vocab.Candidate, epochs: int, image_size: int, weights: str, freeze: bool):
    """Apply the run-level settings; simple-cnn has no backbone to load or freeze."""
    settings = {"image_size": image_size}
    if epochs:
        settings["epochs"] = epochs
    if c.architecture != "simple-cnn":
        if weights:
            settings["weights"] = weights
        if freeze:
            settings["freeze_backbone"] = True
    return replace(c, **settings)


def expand_grid(
    grid: str,
    dataset: str | None = None,
    epochs: int = 0,
    image_size: int = 0,
    weights: str = "",
    freeze_backbone: bool = False,
) -> list[dict]:
    """Complete candidate dicts for a run.

    Args:
      grid: "quick", "paper" (needs `dataset`), a JSON list, or a YAML/JSON file path.
      epochs, image_size: override every candidate's when > 0.
      weights: "imagenet", "none" or a weights-file URI for every backbone; "" keeps each
        candidate's own.
      freeze_backbone: freeze every backbone.
    Raises ValueError naming the bad grid entry or setting.
    """
    if epochs < 0 or image_size < 0:
        raise InvalidInputError("--epochs and --image-size must be positive")
    if weights:
        check_weights(weights)
    candidates = named_grid(grid, dataset) or file_grid(grid)
    size = run_image_size(candidates, image_size)
    candidates = [with_run_settings(c, epochs, size, weights, freeze_backbone) for c in candidates]
    for c in candidates:
        check_candidate(c)
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise InvalidInputError(f"grid has duplicate candidates: {names}")
    return [c.to_dict() for c in candidates]


def run_image_size_of(grid: str, dataset: str | None = None, image_size: int = 0) -> int:
    """The image size a run of `grid` trains at (see run_image_size). Raises ValueError."""
    return expand_grid(grid, dataset, image_size=image_size)[0]["image_size"]


def grid_json(grid: str, dataset: str | None = None) -> str:
    """The grid as the pipeline parameter carries it: a built-in name as is, a file as JSON
    (the file is read here, on the machine that has it). Raises ValueError like expand_grid."""
    if grid in GRID_NAMES:
        expand_grid(grid, dataset)
        return grid
    return json.dumps(expand_grid(grid, dataset))
