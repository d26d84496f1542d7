"""The versioned model repository in the object store and its TF Serving `models.config`.

Layout under the store root:
    models/<model>/<version>/saved_model.pb, variables/..., MODEL_CARD.md, metadata.json
    models/models.config          (TF Serving model_config_list, text format)

Publishing uploads every file, reads each back and checks its sha256, writes metadata.json
(its presence marks the version complete) and only then names the version in
models.config, so a failed or interrupted publish leaves what is served unchanged. A
version is never written again once complete, and version numbers are never reused: the
highest-numbered folder is never deleted.

Concurrent publishes are safe: a version number is taken by creating its reservation file
with a conditional write (create-if-absent), so two publishes never take one number, and
models.config is changed by read-modify-write with a conditional replace (If-Match its
ETag), re-read and re-applied when another writer changed it in between, so no change is
lost. (Stores without conditional writes get them through a lease: see medkfp.store.)

models.config is the desired state: one entry per model, `specific` versions = the stable
version and the one before it, the `stable` label on the stable one. The serving side
(`medkfp serve`, `medkfp serving-sync` + TF Serving) moves the label only once the new
version is loaded; see medkfp.serving.sync.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from medkfp import vocab
from medkfp.errors import InvalidInputError, InvalidModelError
from medkfp.model_card import model_card
from medkfp.store import NotFound, PreconditionFailed, Store, StoreError

log = logging.getLogger(__name__)

CONFIG_KEY = f"{vocab.MODELS_PREFIX}/{vocab.MODELS_CONFIG}"
# How many versions models.config keeps loaded: the stable one and the one before it.
LOADED_VERSIONS = 2
# Model names become folder names (in the store, the mirror and caches): no path tricks.
MODEL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
# Created first in a version folder, with create-if-absent: whoever creates it owns the number.
RESERVATION_FILE = "reservation.json"
# Files of a version folder that publish writes itself; a SavedModel must not bring its own.
RESERVED_FILES = (vocab.METADATA_FILE, vocab.MODEL_CARD_FILE, RESERVATION_FILE)
# Conditional replaces of models.config that may lose to other writers before giving up.
CONFIG_ATTEMPTS = 100


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_model_name(model: str) -> None:
    """Raise ValueError unless `model` can name a served model (and a folder)."""
    if not MODEL_NAME.match(model or ""):
        raise InvalidInputError(
            f"invalid model name {model!r}: use letters, digits, '.', '_' and '-', "
            "starting with a letter, digit or '_'"
        )


def saved_model_files(saved_model_dir: Path) -> dict[str, Path]:
    """relative path -> file of a SavedModel folder; raises InvalidModelError on reserved names."""
    files = {
        p.relative_to(saved_model_dir).as_posix(): p
        for p in sorted(saved_model_dir.rglob("*"))
        if p.is_file()
    }
    clash = sorted(set(files) & set(RESERVED_FILES))
    if clash:
        raise InvalidModelError(
            f"{saved_model_dir} contains {', '.join(clash)}, which the repository writes itself: "
            "move it out of the SavedModel folder"
        )
    return files


# --- the repository -------------------------------------------------------------------------


def desired_versions(repo: ModelRepository, entry) -> list[int]:
    """The versions a models.config entry asks to be served, under its version policy.

    `specific` lists them; `latest` means the N highest complete versions, `all` every
    complete version; no policy at all means the highest complete one (TF Serving's default).
    """
    policy = entry.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "specific" and policy.specific.versions:
        return sorted(set(policy.specific.versions))
    complete = repo.complete_versions(entry.name)
    if choice == "all":
        return complete
    count = policy.latest.num_versions if choice == "latest" else 1
    return complete[-max(count, 1) :]


class ModelRepository:
    """Publish, list, roll back and prune model versions; read and write models.config."""

    def __init__(self, store: Store):
        self.store = store

    # --- config -------------------------------------------------------------------
    def read_config(self) -> model_server_config_pb2.ModelServerConfig:
        """models.config (empty if none). Raises StoreError if it is not a valid config."""
        config = model_server_config_pb2.ModelServerConfig()
        if self.store.exists(CONFIG_KEY):
            try:
                text_format.Parse(self.store.get_text(CONFIG_KEY), config)
            except text_format.ParseError as e:
                raise StoreError(
                    f"{self.store.uri_for(CONFIG_KEY)} is not a TF Serving model config ({e}): "
                    "fix it or publish/roll back a version to rewrite it"
                ) from None
        return config

    def write_config(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        """Overwrite models.config unconditionally (tools and tests; publish uses update_config)."""
        self.store.put_text(CONFIG_KEY, text_format.MessageToString(config))

    def update_config(self, change: Callable[[model_server_config_pb2.ModelServerConfig], None]):
        """Apply `change` to models.config without losing a concurrent writer's change.

        Reads the config and its ETag, applies `change` (which must be safe to apply again
        to a newer config), and replaces the config only if nobody wrote it meanwhile;
        otherwise reads it again and retries. Returns the config written. Raises StoreError
        when the config is not valid or the store keeps refusing.
        """
        for attempt in range(CONFIG_ATTEMPTS):
            try:
                text, etag = self.store.get_bytes_with_etag(CONFIG_KEY)
            except NotFound:
                text, etag = None, None
            config = model_server_config_pb2.ModelServerConfig()
            if text is not None:
                try:
                    text_format.Parse(text.decode(), config)
                except text_format.ParseError as e:
                    raise StoreError(
                        f"{self.store.uri_for(CONFIG_KEY)} is not a TF Serving model config ({e}): "
                        "fix it or publish/roll back a version to rewrite it"
                    ) from None
            change(config)
            new_text = text_format.MessageToString(config).encode()
            if new_text == text:
                return config
            try:
                if etag is None:
                    self.store.put_bytes_if(CONFIG_KEY, new_text, if_none_match=True)
                else:
                    self.store.put_bytes_if(CONFIG_KEY, new_text, if_match=etag)
                return config
            except (PreconditionFailed, NotFound):
                # Another publish or rollback wrote it first: start again from its version.
                time.sleep(random.random() * min(0.02 * (attempt + 1), 0.5))
        raise StoreError(
            f"{self.store.uri_for(CONFIG_KEY)} kept changing during {CONFIG_ATTEMPTS} attempts to update it: "
            "publish again"
        )

    def config_entry(self, config, model: str):
        for entry in config.model_config_list.config:
            if entry.name == model:
                return entry
        return None

    def stable_version(self, model: str) -> int | None:
        """The version the config labels stable (else its highest), or None if not served."""
        entry = self.config_entry(self.read_config(), model)
        if entry is None:
            return None
        if vocab.STABLE_LABEL in entry.version_labels:
            return int(entry.version_labels[vocab.STABLE_LABEL])
        versions = list(entry.model_version_policy.specific.versions)
        return max(versions) if versions else None

    def served_versions(self, model: str) -> list[int]:
        """The versions models.config asks to keep loaded for `model` (empty if not served)."""
        entry = self.config_entry(self.read_config(), model)
        return desired_versions(self, entry) if entry is not None else []

    # --- versions -----------------------------------------------------------------
    def model_prefix(self, model: str) -> str:
        return f"{vocab.MODELS_PREFIX}/{model}"

    def version_numbers(self, model: str) -> list[int]:
        """Every version folder present, complete or not (numbers are never reused)."""
        prefix = self.model_prefix(model) + "/"
        numbers = set()
        for key in self.store.list_keys(prefix):
            head = key[len(prefix) :].split("/", 1)[0]
            if head.isdigit():
                numbers.add(int(head))
        return sorted(numbers)

    def complete_versions(self, model: str) -> list[int]:
        """Versions whose metadata.json exists, i.e. uploaded and verified, lowest first."""
        return [
            v
            for v in self.version_numbers(model)
            if self.store.exists(vocab.model_version_key(model, v, vocab.METADATA_FILE))
        ]

    def metadata(self, model: str, version: int) -> dict:
        return self.store.get_json(vocab.model_version_key(model, version, vocab.METADATA_FILE))

    def previous_version(self, model: str, version: int) -> int | None:
        """The version that was stable when `version` was published, if still complete.

        For versions published before medkfp recorded it, the highest complete version
        below `version`. None when there is none.
        """
        complete = self.complete_versions(model)
        metadata = self.metadata(model, version)
        if "previous_version" in metadata:
            previous = metadata["previous_version"]
            if previous is None or previous in complete:
                return previous
        earlier = [v for v in complete if v < version]
        return earlier[-1] if earlier else None

    def versions(self, model: str) -> list[dict]:
        """One row per complete version: metrics, which is stable, which are loaded."""
        stable = self.stable_version(model)
        loaded = set(self.served_versions(model))
        rows = []
        for version in self.complete_versions(model):
            metadata = self.metadata(model, version)
            metrics = metadata.get("metrics") or {}
            rows.append(
                {
                    "version": version,
                    "stable": version == stable,
                    "loaded": version in loaded,
                    "dataset": metadata.get("dataset"),
                    "candidate": (metadata.get("candidate") or {}).get("name"),
                    "macro_f1": metrics.get("macro_f1"),
                    "accuracy": metrics.get("accuracy"),
                    "created": metadata.get("created"),
                    "run_id": metadata.get("run_id"),
                    "previous_version": metadata.get("previous_version"),
                }
            )
        return rows

    # --- publish --------------------------------------------------------------------
    def publish(
        self,
        model: str,
        saved_model_dir: str | Path,
        metadata: dict,
        keep: int | None = vocab.DEFAULT_KEEP_VERSIONS,
    ) -> int:
        """Upload a SavedModel as the next version, verify it, then name it in models.config.

        `metadata` (dataset, candidate, class_names, metrics, run_id, created, ...) is stored
        with the version plus model_name, version, previous_version, signature and the
        sha256 of every file, and MODEL_CARD.md (medkfp.model_card) from it. Afterwards only
        the newest `keep` versions are kept (plus the served ones); None keeps all.
        Returns the new version number.

        Raises ValueError (InvalidModelError) for a bad name or a SavedModel without the
        serving contract, StoreError if an upload or its verification fails; models.config
        is then left as it was.
        """
        check_model_name(model)
        if keep is not None and keep < 1:
            raise InvalidInputError(f"keep must be at least 1 version, got {keep}")
        saved_model_dir = Path(saved_model_dir)
        from medkfp.servable import check_servable  # reads TensorFlow's SavedModel protos

        signature = check_servable(saved_model_dir)
        files = saved_model_files(saved_model_dir)
        previous = self.stable_version(model)
        version = self.reserve_version(model)
        prefix = vocab.model_version_key(model, version)
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        metadata = {
            "created": now,
            **metadata,
            "model_name": model,
            "version": version,
            "previous_version": previous,
            "published": now,
            "signature": signature,
        }
        card = model_card(model, version, metadata)
        checksums = self._upload(prefix, files, card)
        # The reservation is a file of the version too: listed, so the folder is fully described.
        checksums[RESERVATION_FILE] = sha256_bytes(self.store.get_bytes(f"{prefix}/{RESERVATION_FILE}"))
        self._verify(prefix, checksums)
        # metadata.json is written last: its presence marks the version complete.
        self._write_once(f"{prefix}/{vocab.METADATA_FILE}", {**metadata, "files": checksums})
        self._set_served(model, version, None, after_current=True)
        log.info("published model %s version %d (%d files)", model, version, len(checksums))
        if keep is not None:
            self._prune_quietly(model, keep)
        return version

    def reserve_version(self, model: str) -> int:
        """Take the next free version number of `model`; returns it.

        The number is taken by creating its folder's reservation file only if absent, so
        of two publishes racing for one number exactly one wins; the other takes the next.
        A retried request whose first try did land is recognised by its token.
        """
        token = uuid.uuid4().hex
        version = max(self.version_numbers(model), default=0) + 1
        while True:
            key = vocab.model_version_key(model, version, RESERVATION_FILE)
            payload = json.dumps({"token": token, "reserved": datetime.now(timezone.utc).isoformat()})
            try:
                self.store.put_bytes_if(key, payload.encode(), if_none_match=True)
                return version
            except PreconditionFailed:
                try:
                    if json.loads(self.store.get_bytes(key)).get("token") == token:
                        return version
                except (NotFound, ValueError):
                    pass
                listed = self.version_numbers(model)
                if version not in listed:
                    # Taken, yet the listing misses it: the listing cannot be trusted to pick
                    # a free number, so stop rather than guess.
                    raise StoreError(
                        f"{self.store.uri_for(vocab.model_version_key(model, version))} is not empty: "
                        "another publish is writing this version; publish again"
                    ) from None
                version = max(version + 1, max(listed) + 1)

    def _upload(self, prefix: str, files: dict[str, Path], card: str) -> dict[str, str]:
        """Upload the SavedModel files and the card; returns relative path -> sha256."""
        checksums = {}
        for relative, path in files.items():
            checksums[relative] = sha256_file(path)
            self.store.put_file(f"{prefix}/{relative}", path)
        self.store.put_text(f"{prefix}/{vocab.MODEL_CARD_FILE}", card)
        checksums[vocab.MODEL_CARD_FILE] = sha256_bytes(card.encode())
        return checksums

    def _verify(self, prefix: str, checksums: dict[str, str]) -> None:
        """Read every uploaded file back; raises StoreError if one differs from its sha256."""
        with tempfile.TemporaryDirectory(prefix="medkfp-verify-") as tmp:
            for i, (relative, digest) in enumerate(sorted(checksums.items())):
                local = Path(tmp) / str(i)
                self.store.get_file(f"{prefix}/{relative}", local)
                if sha256_file(local) != digest:
                    raise StoreError(
                        f"upload of {self.store.uri_for(prefix)}/{relative} is corrupt "
                        "(sha256 differs): publish again"
                    )
                local.unlink()

    def _write_once(self, key: str, payload: dict) -> None:
        data = json.dumps(payload, indent=2, sort_keys=True).encode()
        try:
            self.store.put_bytes_if(key, data, if_none_match=True)
        except PreconditionFailed:
            raise StoreError(
                f"{self.store.uri_for(key)} already exists: another publish took this version "
                "at the same time; publish again"
            ) from None

    def _set_served(self, model: str, stable: int, previous: int | None, after_current: bool = False) -> None:
        """Name `stable` (labelled) and `previous` as the loaded versions of `model`.

        after_current: the version loaded beside `stable` is instead whatever is stable in
        models.config when it is written (a publish), so of two publishes of one model
        finishing together the later one becomes stable and the other stays loaded beside
        it instead of being dropped.
        """

        def change(config) -> None:
            entry = self.config_entry(config, model)
            if entry is None:
                entry = config.model_config_list.config.add()
                entry.name = model
                entry.base_path = f"{vocab.SERVING_BASE_DIR}/{model}"
                entry.model_platform = "tensorflow"
            before = previous
            if after_current and vocab.STABLE_LABEL in entry.version_labels:
                before = int(entry.version_labels[vocab.STABLE_LABEL])
                before = None if before == stable else before
            versions = sorted({v for v in (before, stable) if v is not None})[-LOADED_VERSIONS:]
            entry.model_version_policy.specific.Clear()
            entry.model_version_policy.specific.versions.extend(versions)
            entry.version_labels[vocab.STABLE_LABEL] = stable

        self.update_config(change)

    # --- rollback -------------------------------------------------------------------
    def rollback(self, model: str, version: int | None = None) -> int:
        """Make `version` (default: the version before the stable one) stable again.

        models.config then loads that version and the one before it (if any), so the
        rolled-back version is also the highest loaded one and answers requests that name
        no version or label, in medkfp serve and in TF Serving alike. Returns the new
        stable version. Raises ValueError when the model is not served or there is no
        such (complete) version to roll back to.
        """
        stable = self.stable_version(model)
        if stable is None:
            raise InvalidInputError(
                f"model {model!r} is not served from {self.store.uri}: nothing to roll back"
            )
        target = version if version is not None else self.previous_version(model, stable)
        if target is None:
            raise InvalidInputError(
                f"model {model} v{stable} has no earlier version to roll back to; "
                "publish a fixed model instead"
            )
        if target == stable:
            raise InvalidInputError(f"version {target} of model {model} is already the stable one")
        complete = self.complete_versions(model)
        if target not in complete:
            raise InvalidInputError(
                f"model {model} has no complete version {target} "
                f"(versions: {', '.join(map(str, complete)) or 'none'})"
            )
        self._set_served(model, target, self.previous_version(model, target))
        log.info("model %s rolled back from version %d to %d", model, stable, target)
        return target

    # --- retention ------------------------------------------------------------------
    def prune(self, model: str, keep: int) -> list[int]:
        """Delete all but the newest `keep` complete versions of `model`; returns those deleted.

        Never deleted: versions models.config names, the highest-numbered folder (so its
        number is not reused) and incomplete folders newer than the newest complete version
        (a publish may be writing them). Incomplete folders older than that are abandoned
        publishes and go. metadata.json goes first, so a half-deleted version is incomplete.
        """
        if keep < 1:
            raise InvalidInputError(f"keep must be at least 1 version, got {keep}")
        numbers = self.version_numbers(model)
        complete = self.complete_versions(model)
        if not numbers:
            return []
        newest_complete = max(complete, default=0)
        kept = set(complete[-keep:]) | set(self.served_versions(model)) | {max(numbers)}
        kept |= {n for n in numbers if n > newest_complete}
        doomed = [n for n in numbers if n not in kept]
        for version in doomed:
            self._delete_version(model, version)
        if doomed:
            log.info("model %s: deleted versions %s (keeping %d)", model, doomed, keep)
        return doomed

    def _prune_quietly(self, model: str, keep: int) -> None:
        # The publish succeeded; a failed clean-up must not make it look failed.
        try:
            self.prune(model, keep)
        except StoreError as e:
            log.warning("published, but could not delete old versions of %s: %s", model, e)

    def _delete_version(self, model: str, version: int) -> None:
        prefix = vocab.model_version_key(model, version) + "/"
        keys = self.store.list_keys(prefix)
        metadata = prefix + vocab.METADATA_FILE
        for key in sorted(keys, key=lambda k: k != metadata):
            self.store.delete(key)
