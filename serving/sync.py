"""serving-sync: mirror the store's models.config and the versions it names into a local folder.

TF Serving cannot read s3:// (tensorflow/serving#1963), so on the cluster a sidecar mirrors
the model repository into a volume TF Serving reads:

    DIR/models.config                   base_path of each model rewritten to DIR/<model>
    DIR/<model>/<version>/...           SavedModel, metadata.json, MODEL_CARD.md
    DIR/.staging/                       downloads in progress (TF Serving ignores it)

A version is downloaded into the staging folder, every file is checked against the sha256
in its metadata.json, and the folder is renamed into place; the config is written last, so
TF Serving never sees a partial version. Versions the config no longer names are removed
after the config that drops them is written (and, with a server to ask, once it no longer
has them loaded).

Labels: TF Serving refuses to move an existing label to a version that is not loaded yet
(and then applies none of the new config). So with `server` given, a label moves only once
GetModelStatus reports its new version AVAILABLE; until then the mirrored config keeps the
label, and the version it points to, where they were, and the next pass moves it. The
label's first assignment (cold start, a new model) needs TF Serving's
--allow_version_labels_for_unavailable_models, which `medkfp serve` passes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from medkfp import vocab
from medkfp.model_repository import MODEL_NAME, ModelRepository, desired_versions, sha256_file
from medkfp.store import LocalStore, Store, StoreError

log = logging.getLogger(__name__)

STAGING = ".staging"
# A pass waits this long before re-checking a label waiting for its version to load.
PENDING_RECHECK_SECONDS = 1.0
STATUS_TIMEOUT = 5.0


# --- one version ----------------------------------------------------------------------------


def verify_files(local_dir: Path, metadata: dict, what: str) -> None:
    """Check every file metadata.json lists against its sha256; raises StoreError if one differs."""
    for relative, digest in metadata.get("files", {}).items():
        path = local_dir / relative
        if not path.is_file() or sha256_file(path) != digest:
            raise StoreError(f"downloaded {relative} of {what} does not match its sha256: publish it again")


def fetch_version(store: Store, model: str, version: int, dest: Path, staging_root: Path) -> bool:
    """Make `dest` a verified copy of version `version` of `model`; returns True if downloaded.

    A copy whose metadata.json equals the store's is kept (it lists every file's sha256, so
    a store rebuilt with the same numbers is not mistaken for the old one). Otherwise the
    version is downloaded into a folder under `staging_root` (same file system), verified,
    and renamed to `dest`, which thus appears complete or not at all. Raises StoreError if
    the version cannot be downloaded or does not match its checksums.
    """
    what = f"model {model} version {version}"
    remote_meta = store.get_bytes(vocab.model_version_key(model, version, vocab.METADATA_FILE))
    cached = dest / vocab.METADATA_FILE
    if cached.is_file() and cached.read_bytes() == remote_meta:
        return False
    metadata = json.loads(remote_meta)
    staging_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=staging_root, prefix=f"{model}-{version}-"))
    try:
        for relative in metadata.get("files", {}):
            path = tmp / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            store.get_file(vocab.model_version_key(model, version, relative), path)
        verify_files(tmp, metadata, what)
        (tmp / vocab.METADATA_FILE).write_bytes(remote_meta)
        _replace_dir(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True


def _replace_dir(src: Path, dest: Path) -> None:
    """Rename `src` to `dest`; an existing `dest` (a stale copy) is moved aside first."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        trash = Path(tempfile.mkdtemp(dir=src.parent, prefix="stale-"))
        os.replace(dest, trash / "old")
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(src, dest)


# --- reading a mirror as a repository ---------------------------------------------------------


class MirrorStore(LocalStore):
    """A serving-sync mirror (DIR/models.config, DIR/<model>/<version>/) read as a model
    repository, so `medkfp serve --model-dir DIR` serves exactly what TF Serving would."""

    PREFIX = vocab.MODELS_PREFIX + "/"

    def _path(self, key: str) -> Path:
        return super()._path(key.removeprefix(self.PREFIX))

    def list_keys(self, prefix: str = "") -> list[str]:
        inner = prefix.removeprefix(self.PREFIX)
        start = self.root / inner
        start = start if start.is_dir() else start.parent
        if not start.is_dir():
            return []
        keys = []
        for path in start.rglob("*"):
            key = path.relative_to(self.root).as_posix()
            hidden = any(part.startswith(".") for part in key.split("/"))
            if path.is_file() and not hidden and key.startswith(inner):
                keys.append(self.PREFIX + key)
        return sorted(keys)

    def put_bytes(self, key: str, data: bytes) -> None:
        raise StoreError(f"the serving mirror {self.root} is read-only: publish to the store instead")

    put_file = put_bytes  # type: ignore[assignment]

    def delete(self, key: str) -> None:
        raise StoreError(f"the serving mirror {self.root} is read-only: change the store instead")


# --- the sync --------------------------------------------------------------------------------


@dataclass
class SyncReport:
    """What one pass did. `pending` maps "model:label" to the version it waits to load."""

    downloaded: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    config_written: bool = False
    pending: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.downloaded or self.removed or self.config_written or self.errors)

    def to_dict(self) -> dict:
        return {
            "downloaded": self.downloaded,
            "removed": self.removed,
            "config_written": self.config_written,
            "pending_labels": self.pending,
            "errors": self.errors,
        }


def parse_config(text: str) -> model_server_config_pb2.ModelServerConfig:
    config = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(text, config)
    return config


class ServingSync:
    """Mirrors a store's model repository into `local_dir` for TF Serving; see the module doc.

    `server` (HOST:PORT of the TF Serving or medkfp server reading the mirror) is asked
    which versions are AVAILABLE before a label moves; without it labels move at once.
    """

    def __init__(self, store: Store, local_dir: str | Path, server: str | None = None):
        self.store = store
        self.repo = ModelRepository(store)
        self.local_dir = Path(local_dir).absolute()
        self.server = server
        self.config_path = self.local_dir / vocab.MODELS_CONFIG
        self.staging = self.local_dir / STAGING
        self._server_reachable = True  # logged when it changes, not on every pass

    # --- one pass -------------------------------------------------------------------
    def sync_once(self) -> SyncReport:
        """Download what the store's models.config names, write the local config, clean up.

        Raises StoreError if models.config cannot be read; the mirror is then unchanged.
        A version that fails to download is reported in `errors` and left out (the
        versions mirrored before stay).
        """
        report = SyncReport()
        remote = self.repo.read_config()
        self.local_dir.mkdir(parents=True, exist_ok=True)
        current = self.read_local_config()
        available = self.available_versions(remote)
        mirrored = model_server_config_pb2.ModelServerConfig()
        mirrored.model_config_list.SetInParent()
        for entry in remote.model_config_list.config:
            if not MODEL_NAME.match(entry.name):
                report.errors.append(f"models.config names {entry.name!r}: not a valid model name")
                continue
            before = _entry(current, entry.name)
            local = self._mirror_entry(entry, before, available, current is None, report)
            if local is not None:
                mirrored.model_config_list.config.add().CopyFrom(local)
        report.config_written = self._write_config(mirrored)
        report.removed = self._remove_unnamed(mirrored, available)
        shutil.rmtree(self.staging, ignore_errors=True)
        return report

    def _mirror_entry(self, entry, before, available, cold_start: bool, report: SyncReport):
        """The local config entry for one model, after fetching the versions it names."""
        name = entry.name
        have = []
        try:
            wanted = desired_versions(self.repo, entry)
        except StoreError as e:
            report.errors.append(f"cannot list versions of {name}: {e}")
            return before
        for version in wanted:
            try:
                dest = self.local_dir / name / str(version)
                if fetch_version(self.store, name, version, dest, self.staging):
                    report.downloaded.append(f"{name}/{version}")
                have.append(version)
            except (StoreError, OSError, ValueError) as e:
                report.errors.append(f"model {name} version {version}: {e}")
                log.error("cannot mirror model %s version %d: %s", name, version, e)
        if not have:
            return before
        loaded = available.get(name, set()) if available is not None else None
        labels = self._labels(entry, before, have, loaded, cold_start, report)
        local = model_server_config_pb2.ModelConfig()
        local.CopyFrom(entry)
        local.base_path = str(self.local_dir / name)
        local.model_version_policy.Clear()
        local.model_version_policy.specific.versions.extend(sorted(set(have) | set(labels.values())))
        local.version_labels.clear()
        for label, version in labels.items():
            local.version_labels[label] = version
        return local

    def _labels(self, entry, before, have, loaded, cold_start: bool, report: SyncReport) -> dict[str, int]:
        """Each label's target in the mirrored config: the store's once it may move there."""
        labels = {}
        for label, target in entry.version_labels.items():
            old = before.version_labels.get(label) if before is not None else None
            if self._may_point(target, old, have, loaded, cold_start):
                labels[label] = target
                continue
            report.pending[f"{entry.name}:{label}"] = target
            if old is not None and (self.local_dir / entry.name / str(old)).is_dir():
                labels[label] = old
        return labels

    def _may_point(self, target: int, old: int | None, have, loaded, cold_start: bool) -> bool:
        if target not in have:
            return False
        if target == old or self.server is None:
            return True
        if loaded is None:
            # The server is not up: at a cold start it reads this config as its first one.
            return cold_start
        return target in loaded

    # --- the server's view ------------------------------------------------------------
    def available_versions(self, config) -> dict[str, set[int]] | None:
        """model -> versions the server reports AVAILABLE; None if no server or unreachable."""
        if self.server is None:
            return None
        from medkfp.serving.client import ServingError, model_status

        available = {}
        for entry in config.model_config_list.config:
            try:
                states = model_status(self.server, entry.name, timeout=STATUS_TIMEOUT, retries=0)
            except ServingError as e:
                if e.code is not None and e.code.name == "NOT_FOUND":
                    available[entry.name] = set()
                    continue
                if self._server_reachable:
                    log.info("cannot ask %s which versions are loaded (%s): labels stay", self.server, e)
                self._server_reachable = False
                return None
            available[entry.name] = {s["version"] for s in states if s["state"] == "AVAILABLE"}
        self._server_reachable = True
        return available

    # --- local files -------------------------------------------------------------------
    def read_local_config(self):
        if not self.config_path.is_file():
            return None
        try:
            return parse_config(self.config_path.read_text())
        except text_format.ParseError:
            log.warning("%s is not a valid config; it will be rewritten", self.config_path)
            return None

    def _write_config(self, config) -> bool:
        """Write the mirrored config atomically if it changed; returns True if written."""
        text = text_format.MessageToString(config)
        if self.config_path.is_file() and self.config_path.read_text() == text:
            return False
        fd, tmp = tempfile.mkstemp(dir=self.local_dir, prefix=".models.config-")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, self.config_path)
        return True

    def _remove_unnamed(self, config, available) -> list[str]:
        """Delete version folders the written config does not name and the server has unloaded."""
        named = {
            e.name: set(e.model_version_policy.specific.versions) for e in config.model_config_list.config
        }
        removed = []
        for model_dir in sorted(p for p in self.local_dir.iterdir() if p.is_dir() and p.name[0] != "."):
            for version_dir in sorted(p for p in model_dir.iterdir() if p.name.isdigit()):
                version = int(version_dir.name)
                still_loaded = available is not None and version in available.get(model_dir.name, set())
                if version in named.get(model_dir.name, set()) or still_loaded:
                    continue
                shutil.rmtree(version_dir, ignore_errors=True)
                removed.append(f"{model_dir.name}/{version}")
        return removed

    # --- the loop ----------------------------------------------------------------------
    def run(
        self, interval: float, stop: threading.Event | None = None, on_pass=None, after_pass=None
    ) -> None:
        """Sync every `interval` s until `stop` is set; one pass if interval <= 0.

        `on_pass(report)` is called after each pass that changed something, `after_pass(report)`
        after every pass (the health endpoint's heartbeat). A pass whose
        store read fails is logged and retried; the first pass's failure is raised
        (StoreError), so a wrong --store fails at once.
        """
        stop = stop or threading.Event()
        first = True
        while True:
            try:
                report = self.sync_once()
            except StoreError as e:
                if first:
                    raise
                log.error("serving-sync pass failed, the mirror is unchanged: %s", e)
                report = SyncReport(errors=[str(e)])
            first = False
            if report.changed and on_pass is not None:
                on_pass(report)
            if after_pass is not None:
                after_pass(report)
            if interval <= 0:
                return
            wait = min(interval, PENDING_RECHECK_SECONDS) if report.pending else interval
            if stop.wait(wait):
                return


def _entry(config, name: str):
    if config is None:
        return None
    for entry in config.model_config_list.config:
        if entry.name == name:
            return entry
    return None
