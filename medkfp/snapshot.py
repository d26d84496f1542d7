"""Data lineage: the snapshot of the source an ingest read, and what changed between two snapshots.

A snapshot lists every file the ingest accepted (path in the source, class, size, sha256,
and for an s3:// prefix the object's ETag and modification time), every rejected path,
and when the source was listed. It is stored with the run (runs/<run>/ingest/snapshot.json)
and named by its id, a hash of the (path, sha256) pairs: two snapshots with the same id
hold the same images. The pushed version's metadata and model card name it, so the next
run can say which files were added, removed or changed since the champion's data.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from datetime import datetime, timezone

from medkfp import vocab
from medkfp.store import NotFound, Store, StoreError, open_uri

SNAPSHOT_FILE = "snapshot.json"
# Paths listed per class and kind in data_changes; the counts are always complete.
EXAMPLES = 5


def now() -> str:
    """The listing time recorded in a snapshot (UTC, ISO 8601)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def snapshot_id(files: list[dict]) -> str:
    digest = hashlib.sha256()
    for f in sorted(files, key=lambda f: f["path"]):
        digest.update(f"{f['path']}\t{f['sha256']}\n".encode())
    return digest.hexdigest()[:16]


def s3_listing(source: str) -> dict[str, dict]:
    """{path relative to the prefix: {etag, modified}} of an s3://bucket/prefix source, else {}."""
    from medkfp.components.ingest.sources import is_archive

    if not source.startswith("s3://") or is_archive(source):
        return {}
    store, prefix = open_uri(source.rstrip("/"))
    prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
    return {
        o.key[len(prefix) :]: {"etag": o.etag, "modified": o.modified} for o in store.list_objects(prefix)
    }


def take_snapshot(source: str, accepted: list[dict], rejects: list[dict], listed_at: str) -> dict:
    """The snapshot of `source` from an ingest's accepted manifest rows and rejects."""
    objects = s3_listing(str(source))
    files = [
        {
            "path": r["path"],
            "label": r["label"],
            "size": int(r["bytes"]),
            "sha256": r["sha256"],
            **objects.get(r["path"], {}),
        }
        for r in accepted
    ]
    return {
        "id": snapshot_id(files),
        "source": str(source),
        "listed_at": listed_at,
        "files": files,
        "rejected": sorted(r["path"] for r in rejects),
        "class_counts": dict(Counter(f["label"] for f in files)),
    }


def record_snapshot(store: Store, run_id: str, source: str, accepted, rejects, listed_at: str) -> dict:
    """Write the run's snapshot to the store; returns the ingest summary's lineage keys.

    Returns {"snapshot_key", "snapshot": {id, uri, source, listed_at, files}}: the short
    reference that the manifest, the version metadata and the model card carry.
    """
    snapshot = take_snapshot(source, accepted, rejects, listed_at)
    key = vocab.run_key(run_id, "ingest", SNAPSHOT_FILE)
    store.put_json(key, snapshot)
    return {"snapshot_key": key, "snapshot": reference(snapshot, store.uri_for(key))}


def reference(snapshot: dict, uri: str) -> dict:
    return {
        "id": snapshot["id"],
        "uri": uri,
        "source": snapshot["source"],
        "listed_at": snapshot["listed_at"],
        "files": len(snapshot["files"]),
    }


def load_snapshot(uri: str) -> dict:
    """The snapshot at `uri` (s3://... or a path). Raises StoreError when it cannot be read."""
    store, key = open_uri(uri)
    return store.get_json(key)


def diff_snapshots(old: dict, new: dict) -> dict:
    """What changed from `old` to `new`, by path in the source: added, removed, changed content.

    Returns {"added", "removed", "changed", "unchanged"} counts and "per_class" {class:
    {added, removed, changed, examples: {kind: [paths]}}}; a removed file counts under its
    old class, an added or changed one under its new class.
    """
    before = {f["path"]: f for f in old["files"]}
    after = {f["path"]: f for f in new["files"]}
    kinds = {
        "added": [after[p] for p in sorted(after.keys() - before.keys())],
        "removed": [before[p] for p in sorted(before.keys() - after.keys())],
        "changed": [
            after[p]
            for p in sorted(after.keys() & before.keys())
            if after[p]["sha256"] != before[p]["sha256"]
        ],
    }
    classes = sorted({f["label"] for f in (*old["files"], *new["files"])})
    per_class = {}
    for name in classes:
        entry = {kind: sum(f["label"] == name for f in files) for kind, files in kinds.items()}
        entry["examples"] = {
            kind: [f["path"] for f in files if f["label"] == name][:EXAMPLES] for kind, files in kinds.items()
        }
        per_class[name] = entry
    changed = len(kinds["changed"])
    return {
        **{kind: len(files) for kind, files in kinds.items()},
        "unchanged": len(after.keys() & before.keys()) - changed,
        "per_class": per_class,
    }


def data_changes(
    champion: dict | None, run_snapshot: dict | None, run_store: Store, snapshot_key: str | None
) -> dict:
    """The summary's `data_changes`: this run's snapshot against the one that trained the champion.

    `champion` is the served version's metadata (None: nothing served). Never raises: a
    snapshot that cannot be read is reported in `note`.
    """
    result = {"snapshot": run_snapshot, "since": None}
    if champion is None:
        return {**result, "note": "no champion yet: nothing to compare with"}
    theirs = champion.get("snapshot")
    result["since"] = {"version": champion.get("version"), "snapshot": theirs}
    if not theirs or not snapshot_key:
        return {**result, "note": f"champion v{champion.get('version')} records no data snapshot"}
    try:
        new = run_store.get_json(snapshot_key)
        old = load_snapshot(theirs["uri"])
    except (NotFound, StoreError) as e:
        return {**result, "note": f"cannot read a snapshot to compare: {e}"}
    same = old["id"] == new["id"]
    return {
        **result,
        **diff_snapshots(old, new),
        "note": "same images as the champion's data" if same else "the data changed since the champion's",
    }
