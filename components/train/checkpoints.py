"""Per-epoch training checkpoints in the object store, so a killed train task resumes.

Layout under runs/<run>/candidates/<name>/checkpoints/:
    epoch-NNNN.weights.h5   model weights and optimizer state (learning rate included)
    best-NNNN.npz           EarlyStopping's best weights so far
    latest.json             epoch number, history, callbacks' state; written last, so it
                            only ever names files that are completely uploaded
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import keras
import numpy as np

from medkfp.store import Store

LATEST = "latest.json"
# Callback attributes that carry state across epochs (reset by on_train_begin).
EARLY_STOPPING_STATE = ("wait", "best", "best_epoch", "stopped_epoch")
REDUCE_LR_STATE = ("wait", "best", "cooldown_counter")
INTEGER_STATE = {"wait", "best_epoch", "stopped_epoch", "cooldown_counter"}


def _state(callback, names) -> dict:
    return {n: None if getattr(callback, n) is None else float(getattr(callback, n)) for n in names}


def _set_state(callback, state: dict) -> None:
    for name, value in state.items():
        setattr(callback, name, int(value) if name in INTEGER_STATE and value is not None else value)


class StoreCheckpoint(keras.callbacks.Callback):
    """Save after every epoch to `prefix` in `store`; restore before training resumes.

    Place it after the EarlyStopping and ReduceLROnPlateau callbacks it saves: Keras calls
    callbacks in order, so their on_train_begin reset runs before this one restores them.
    """

    def __init__(self, store: Store, prefix: str, early_stopping, reduce_lr):
        super().__init__()
        self.store = store
        self.prefix = prefix.rstrip("/")
        self.early_stopping = early_stopping
        self.reduce_lr = reduce_lr
        self.history: dict[str, list[float]] = {}
        self.saved: dict | None = None  # the last checkpoint written or restored
        self._tmp = tempfile.TemporaryDirectory(prefix="medkfp-ckpt-")

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    # --- resume ---------------------------------------------------------------------
    def restore(self, model: keras.Model) -> int:
        """Load the latest checkpoint into `model` (compiled, optimizer built); returns the
        epoch to start at (0 without a checkpoint)."""
        if not self.store.exists(self.key(LATEST)):
            return 0
        saved = self.store.get_json(self.key(LATEST))
        path = Path(self._tmp.name) / saved["weights"]
        self.store.get_file(self.key(saved["weights"]), path)
        model.load_weights(path)
        self.saved = saved
        self.history = {k: list(v) for k, v in saved["history"].items()}
        return int(saved["epoch"])

    def finished(self, epochs: int) -> bool:
        """True when the restored run had already stopped early or run every epoch."""
        return self.saved is not None and (self.saved["stopped"] or self.saved["epoch"] >= epochs)

    def best_weights(self) -> list[np.ndarray] | None:
        if not self.saved or not self.saved.get("best"):
            return None
        path = Path(self._tmp.name) / self.saved["best"]
        if not path.exists():
            self.store.get_file(self.key(self.saved["best"]), path)
        with np.load(path) as arrays:
            return [arrays[f"arr_{i}"] for i in range(len(arrays.files))]

    def on_train_begin(self, logs=None):
        if self.saved:
            _set_state(self.early_stopping, self.saved["early_stopping"])
            _set_state(self.reduce_lr, self.saved["reduce_lr"])
            self.early_stopping.best_weights = self.best_weights()

    # --- save -----------------------------------------------------------------------
    def on_epoch_end(self, epoch, logs=None):
        for name, value in (logs or {}).items():
            self.history.setdefault(name, []).append(float(value))
        number = epoch + 1
        weights = f"epoch-{number:04d}.weights.h5"
        self.model.save_weights(Path(self._tmp.name) / weights)
        self.store.put_file(self.key(weights), Path(self._tmp.name) / weights)
        best = self._save_best(epoch)
        previous = self.saved
        self.saved = {
            "epoch": number,
            "weights": weights,
            "best": best,
            "stopped": bool(self.model.stop_training),
            "history": self.history,
            "early_stopping": _state(self.early_stopping, EARLY_STOPPING_STATE),
            "reduce_lr": _state(self.reduce_lr, REDUCE_LR_STATE),
        }
        self.store.put_json(self.key(LATEST), self.saved)
        self._delete_stale(previous)

    def _save_best(self, epoch: int) -> str | None:
        """Upload EarlyStopping's best weights when this epoch produced them."""
        es = self.early_stopping
        if es.best_weights is None:
            return None
        if self.saved and es.best_epoch != epoch and self.saved.get("best"):
            return self.saved["best"]
        name = f"best-{epoch + 1:04d}.npz"
        path = Path(self._tmp.name) / name
        np.savez(path, *es.best_weights)
        self.store.put_file(self.key(name), path)
        return name

    def _delete_stale(self, previous: dict | None) -> None:
        if not previous:
            return
        for name in (previous["weights"], previous.get("best")):
            if name and name not in (self.saved["weights"], self.saved["best"]):
                self.store.delete(self.key(name))

    def clear(self) -> None:
        """Remove every checkpoint file once the exported model has replaced them."""
        for key in self.store.list_keys(self.prefix + "/"):
            self.store.delete(key)
        self._tmp.cleanup()
