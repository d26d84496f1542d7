"""Balance: resample the train split at manifest level with imbalanced-learn's samplers.

The result is a repeat count per train image id (0 drops it, 2 shows it twice per epoch);
training streams its shards through that table, so no image bytes are copied.
"""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pandas as pd
from imblearn.over_sampling import RandomOverSampler
from imblearn.under_sampling import RandomUnderSampler

from medkfp import vocab
from medkfp.components.preprocess.logic import read_examples
from medkfp.store import open_store

SAMPLERS = {"undersample": RandomUnderSampler, "oversample": RandomOverSampler}


def resample_ids(ids: np.ndarray, labels: np.ndarray, strategy: str, seed: int) -> Counter:
    """Repeat count per id after `strategy` (none / undersample / oversample)."""
    if strategy not in vocab.BALANCING:
        raise ValueError(f"unknown balancing {strategy!r}: use one of {', '.join(vocab.BALANCING)}")
    if strategy == "none":
        return Counter(ids.tolist())
    sampler = SAMPLERS[strategy](random_state=seed)
    resampled, _ = sampler.fit_resample(ids.reshape(-1, 1), labels)
    return Counter(resampled[:, 0].tolist())


def balance(dataset_summary: dict, strategy: str, seed: int = 0) -> dict:
    """Balance the train split; writes the repeats CSV to the store and returns its summary."""
    store = open_store(dataset_summary["store"])
    examples = read_examples(dataset_summary)
    train = examples[examples["split"] == "train"]
    repeats = resample_ids(train["id"].to_numpy(dtype=object), train["label"].to_numpy(), strategy, seed)
    table = pd.DataFrame({"id": list(repeats), "repeat": list(repeats.values())})
    key = vocab.run_key(dataset_summary["run_id"], "balance", f"{strategy}.csv")
    store.put_text(key, table.to_csv(index=False))
    class_names = dataset_summary["class_names"]
    label_of = dict(zip(train["id"], train["label"]))
    after = Counter()
    for image_id, n in repeats.items():
        after[label_of[image_id]] += n
    return {
        "strategy": strategy,
        "seed": seed,
        "repeats_key": key,
        "before": {c: int((train["label"] == c).sum()) for c in class_names},
        "after": {c: int(after[c]) for c in class_names},
        "count": int(sum(repeats.values())),
    }


def read_repeats(store_uri: str, balanced_summary: dict) -> pd.DataFrame:
    store = open_store(store_uri)
    return pd.read_csv(io.StringIO(store.get_text(balanced_summary["repeats_key"])), dtype={"id": str})
