"""Data lineage: ingest records the snapshot it read with the run, and two snapshots diff per class.

A snapshot holds keys, sizes, sha256 / ETag and the listing time; the diff gives added / removed /
changed files per class."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from helpers import write_shapes_folder
from PIL import Image

from medkfp import snapshot, vocab
from medkfp.components.ingest.logic import ingest
from medkfp.store import LocalStore, open_store


def upload_folder(store, folder: Path, prefix: str) -> None:
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        store.put_file(f"{prefix}/{path.relative_to(folder).as_posix()}", path)


def test_ingest_records_its_snapshot_with_the_run(tmp_path):
    folder = write_shapes_folder(tmp_path / "shapes", per_class=4)
    store = LocalStore(tmp_path / "store")
    summary = ingest(vocab.IMAGEFOLDER, str(folder), store.uri, "run-a")

    assert summary["snapshot_key"] == "runs/run-a/ingest/snapshot.json"
    recorded = store.get_json(summary["snapshot_key"])
    reference = summary["snapshot"]
    assert reference == {
        "id": recorded["id"],
        "uri": store.uri_for(summary["snapshot_key"]),
        "source": str(folder),
        "listed_at": recorded["listed_at"],
        "files": 12,
    }
    datetime.fromisoformat(recorded["listed_at"])
    by_path = {f["path"]: f for f in recorded["files"]}
    assert set(by_path) == {f"{c}/{c}-{i}.png" for c in ("circles", "plain", "stripes") for i in range(4)}
    one = by_path["plain/plain-0.png"]
    assert one["label"] == "plain" and one["size"] == (folder / "plain/plain-0.png").stat().st_size
    assert len(one["sha256"]) == 64
    assert recorded["class_counts"] == {"circles": 4, "plain": 4, "stripes": 4}
    # the same images give the same snapshot id, whenever they are listed
    again = ingest(vocab.IMAGEFOLDER, str(folder), store.uri, "run-b")
    assert again["snapshot"]["id"] == reference["id"]


def test_an_s3_prefix_snapshot_has_etags_and_diffs_per_class(s3_env, tmp_path):
    folder = write_shapes_folder(tmp_path / "shapes", per_class=4)
    source_store = open_store("s3://snapshot-src")
    upload_folder(source_store, folder, "incoming")
    run_store = open_store("s3://snapshot-runs")
    first = ingest(vocab.IMAGEFOLDER, "s3://snapshot-src/incoming", run_store.uri, "run-1")
    old = run_store.get_json(first["snapshot_key"])
    listing = {o.key: o.etag for o in source_store.list_objects("incoming/")}
    assert all(f["etag"] == listing[f"incoming/{f['path']}"] for f in old["files"])
    assert all(f["modified"] for f in old["files"])

    # new images land, one is deleted, one is replaced by another picture
    source_store.put_file("incoming/stripes/stripes-new.png", folder / "stripes/stripes-0.png")
    source_store.delete("incoming/circles/circles-3.png")
    Image.new("L", (32, 32), 200).save(tmp_path / "flat.png")
    source_store.put_file("incoming/plain/plain-1.png", tmp_path / "flat.png")
    second = ingest(vocab.IMAGEFOLDER, "s3://snapshot-src/incoming", run_store.uri, "run-2")
    new = run_store.get_json(second["snapshot_key"])
    assert new["id"] != old["id"]

    changes = snapshot.diff_snapshots(old, new)
    assert (changes["added"], changes["removed"], changes["changed"], changes["unchanged"]) == (1, 1, 1, 10)
    assert changes["per_class"]["stripes"]["examples"]["added"] == ["stripes/stripes-new.png"]
    assert changes["per_class"]["circles"]["removed"] == 1
    assert changes["per_class"]["plain"]["examples"]["changed"] == ["plain/plain-1.png"]


def test_data_changes_say_why_there_is_nothing_to_compare(tmp_path):
    store = LocalStore(tmp_path / "store")
    assert snapshot.data_changes(None, None, store, None)["note"].startswith("no champion yet")
    old_version = {"version": 3, "metrics": {}}
    assert snapshot.data_changes(old_version, {"id": "x"}, store, "runs/r/ingest/snapshot.json")["note"] == (
        "champion v3 records no data snapshot"
    )
    missing = {"version": 4, "snapshot": {"id": "y", "uri": str(tmp_path / "gone" / "snapshot.json")}}
    store.put_json("runs/r/ingest/snapshot.json", {"id": "x", "files": []})
    note = snapshot.data_changes(missing, {"id": "x"}, store, "runs/r/ingest/snapshot.json")["note"]
    assert note.startswith("cannot read a snapshot to compare: not found in store")
