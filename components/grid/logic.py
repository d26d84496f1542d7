"""Expand a grid name (`quick`) or a JSON/YAML list of candidates into candidate dicts."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from medkfp import vocab


def expand_grid(grid: str) -> list[dict]:
    """`grid` is a grid name, a JSON list, or a path to a YAML/JSON file with a list of
    {architecture, balancing[, batch_size, learning_rate]}. Raises ValueError."""
    if grid in vocab.GRIDS:
        return [c.to_dict() for c in vocab.GRIDS[grid]]
    text = grid
    if not grid.lstrip().startswith("[") and Path(grid).is_file():
        text = Path(grid).read_text()
    try:
        entries = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"grid {grid!r} is not a grid name or a readable grid file: {e}") from None
    if isinstance(entries, dict):
        entries = entries.get("candidates")
    if not isinstance(entries, list) or not entries:
        raise ValueError(
            f"grid {grid!r} is neither one of {', '.join(vocab.GRIDS)} nor a non-empty list of "
            "candidates ({architecture, balancing}) in a JSON/YAML file"
        )
    candidates = []
    for entry in entries:
        if not isinstance(entry, dict) or {"architecture", "balancing"} - set(entry):
            raise ValueError(f"grid entry {entry!r} needs 'architecture' and 'balancing'")
        if entry["architecture"] not in vocab.ARCHITECTURES:
            raise ValueError(
                f"grid entry {entry!r}: unknown architecture; use one of "
                f"{', '.join(vocab.ARCHITECTURES)}"
            )
        if entry["balancing"] not in vocab.BALANCING:
            raise ValueError(
                f"grid entry {entry!r}: unknown balancing; use one of {', '.join(vocab.BALANCING)}"
            )
        candidates.append(vocab.Candidate.from_dict(entry).to_dict())
    names = [c["name"] for c in candidates]
    if len(set(names)) != len(names):
        raise ValueError(f"grid has duplicate candidates: {names}")
    return candidates


def grid_json(grid: str) -> str:
    """The grid as the JSON text the pipeline parameter carries (files are read here)."""
    return json.dumps(expand_grid(grid))
