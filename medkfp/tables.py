"""The CSV tables the steps hand on through the store: the ingest manifest, the examples, the repeats."""

from __future__ import annotations

import io

import pandas as pd

from medkfp.store import open_store

# Text columns stay text: ids such as "0001" and labels such as "NA" are not numbers or missing.
MANIFEST_DTYPES = {"id": str, "group": str, "path": str, "label": str}
EXAMPLES_DTYPES = {"id": str, "label": str, "group": str}


def read_manifest(ingest_summary: dict) -> pd.DataFrame:
    """The accepted-images manifest an ingest summary points to."""
    store = open_store(ingest_summary["store"])
    return pd.read_csv(
        io.StringIO(store.get_text(ingest_summary["manifest_key"])),
        dtype=MANIFEST_DTYPES,
        keep_default_na=False,
    )


def read_examples(dataset_summary: dict) -> pd.DataFrame:
    """The examples table (id, label, split[, group]) a preprocess summary points to."""
    store = open_store(dataset_summary["store"])
    return pd.read_csv(
        io.StringIO(store.get_text(dataset_summary["examples_key"])),
        dtype=EXAMPLES_DTYPES,
        keep_default_na=False,
    )


def read_repeats(store_uri: str, balanced_summary: dict) -> pd.DataFrame:
    """The repeats table (id, repeat) a balance summary points to."""
    store = open_store(store_uri)
    return pd.read_csv(io.StringIO(store.get_text(balanced_summary["repeats_key"])), dtype={"id": str})
