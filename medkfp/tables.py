"""The CSV tables the steps hand on through the store: the ingest manifest, the examples, the repeats."""

from __future__ import annotations

import io

import pandas as pd

from medkfp.store import open_store

# Text columns stay text: ids such as "0001" and labels such as "NA" are not numbers or missing.
MANIFEST_DTYPES = {"id": str, "group": str, "path": str, "label": str, "pack": str}
EXAMPLES_DTYPES = {"id": str, "label": str, "group": str}
REPEATS_DTYPES = {"id": str}


def read_table(store_uri: str, key: str, dtypes: dict) -> pd.DataFrame:
    """The CSV table at `key` of the store `store_uri`, its text columns `dtypes` kept as text."""
    text = open_store(store_uri).get_text(key)
    return pd.read_csv(io.StringIO(text), dtype=dtypes, keep_default_na=False)


def read_manifest(ingest_summary: dict) -> pd.DataFrame:
    """The accepted-images manifest an ingest summary points to."""
    return read_table(ingest_summary["store"], ingest_summary["manifest_key"], MANIFEST_DTYPES)


def read_examples(dataset_summary: dict) -> pd.DataFrame:
    """The examples table (id, label, split[, group]) a preprocess summary points to."""
    return read_table(dataset_summary["store"], dataset_summary["examples_key"], EXAMPLES_DTYPES)


def read_repeats(store_uri: str, balanced_summary: dict) -> pd.DataFrame:
    """The repeats table (id, repeat) a balance summary points to."""
    return read_table(store_uri, balanced_summary["repeats_key"], REPEATS_DTYPES)
