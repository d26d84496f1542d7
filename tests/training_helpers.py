"""Builders for the train / evaluate / push tests: real steps on tiny synthetic data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from helpers import write_shapes_folder

from medkfp import vocab
from medkfp.components.balance.logic import balance
from medkfp.components.ingest.logic import ingest
from medkfp.components.preprocess.logic import preprocess
from medkfp.components.train.logic import train
from medkfp.store import Store, open_store

RUN = "test-run"
SHAPES = ["circles", "plain", "stripes"]


@dataclass
class Prepared:
    """A run's store and step summaries up to balancing."""

    store: Store
    ingested: dict
    dataset: dict

    def balanced(self, strategy: str = "none") -> dict:
        return balance(self.dataset, strategy)


def prepare_shapes(
    root: Path, store_uri: str | None = None, per_class: int = 30, size: int = 32, run_id: str = RUN
) -> Prepared:
    """Ingest and preprocess a shapes imagefolder into `store_uri` (default: a folder in root)."""
    store = open_store(store_uri or str(root / "store"))
    folder = write_shapes_folder(root / "shapes", per_class=per_class)
    ingested = ingest(vocab.IMAGEFOLDER, str(folder), store.uri, run_id)
    return Prepared(store, ingested, preprocess(ingested, size))


def quick_candidate(balancing: str = "none", epochs: int = 12, **settings) -> dict:
    return vocab.Candidate(
        "simple-cnn", balancing, batch_size=8, learning_rate=3e-3, epochs=epochs, **settings
    ).to_dict()


def train_shapes(root: Path):
    """(store, ingested, dataset, trained) of simple-cnn trained on 90 shapes images."""
    prepared = prepare_shapes(root)
    model = train(prepared.dataset, prepared.balanced(), quick_candidate())
    return prepared.store, prepared.ingested, prepared.dataset, model
