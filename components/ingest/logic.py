"""Ingest: scan a source, decode-check every file, write the manifest and upload the images."""

from __future__ import annotations

import hashlib
import io
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
from PIL import Image, UnidentifiedImageError

from medkfp import vocab
from medkfp.components.ingest.layouts import scan_source
from medkfp.store import open_store

MANIFEST_COLUMNS = ["id", "path", "label", "suffix", "sha256", "bytes", "width", "height", "mode"]
UPLOAD_THREADS = 8


def check_image(data: bytes) -> tuple[dict | None, str | None]:
    """Decode-check one file's bytes: (info, None) if usable, (None, reason) if not."""
    if not data:
        return None, "empty file (0 bytes)"
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # full decode: catches truncated and corrupt pixel data
            return {"width": image.width, "height": image.height, "mode": image.mode}, None
    except Image.DecompressionBombError:
        return None, f"over the pixel limit ({Image.MAX_IMAGE_PIXELS} pixels)"
    except UnidentifiedImageError:
        return None, "not an image (no decoder recognises it)"
    except (OSError, SyntaxError, ValueError) as e:
        return None, f"truncated or corrupt image ({e})"


def image_id(relative_path: str) -> str:
    """Stable id of a source file: a hash of its path inside the source."""
    return hashlib.sha256(relative_path.encode()).hexdigest()[:16]


def ingest(dataset: str, source: str, store_uri: str, run_id: str) -> dict:
    """Scan `source`, check every file, upload accepted images, write manifest and rejects.

    Returns the ingest summary: store, keys of the manifest and rejects CSVs, class names
    and counts (found = accepted + rejected; ignored files are listed apart).
    Raises LayoutError for a source without the dataset's layout, StoreError for the store.
    """
    scan = scan_source(dataset, source)
    store = open_store(store_uri)
    accepted, rejects = [], [{"path": str(p.relative_to(scan.root)), "reason": r}
                             for p, r in scan.unlabelled]
    for path, label in scan.files:
        rel = path.relative_to(scan.root).as_posix()
        data = path.read_bytes()
        info, reason = check_image(data)
        if reason:
            rejects.append({"path": rel, "reason": reason})
            continue
        accepted.append({
            "id": image_id(rel), "path": rel, "label": label, "suffix": path.suffix.lower(),
            "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), **info,
        })
    manifest = pd.DataFrame(accepted, columns=MANIFEST_COLUMNS)
    rejected = pd.DataFrame(rejects, columns=["path", "reason"])
    class_counts = manifest["label"].value_counts().reindex(scan.class_names, fill_value=0)
    empty = [c for c, n in class_counts.items() if n == 0]
    if empty:
        raise ValueError(
            f"no usable image for class(es) {', '.join(empty)} in {source}: "
            "add images or remove the empty class folder"
        )

    def upload(row) -> None:
        store.put_file(vocab.raw_image_key(run_id, row.id, row.suffix), scan.root / row.path)

    with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        list(pool.map(upload, manifest.itertuples()))

    manifest_key = vocab.run_key(run_id, "ingest", "manifest.csv")
    rejects_key = vocab.run_key(run_id, "ingest", "rejects.csv")
    store.put_text(manifest_key, manifest.to_csv(index=False))
    store.put_text(rejects_key, rejected.to_csv(index=False))
    return {
        "dataset": dataset,
        "source": str(source),
        "run_id": run_id,
        "store": store.uri,
        "class_names": scan.class_names,
        "manifest_key": manifest_key,
        "rejects_key": rejects_key,
        "counts": {
            "found": len(scan.files) + len(scan.unlabelled),
            "accepted": len(manifest),
            "rejected": len(rejected),
            "ignored": len(scan.ignored),
        },
        "class_counts": {c: int(n) for c, n in class_counts.items()},
        "rejects": rejects,
    }


def read_manifest(summary: dict) -> pd.DataFrame:
    """The accepted-images manifest an ingest summary points to."""
    store = open_store(summary["store"])
    return pd.read_csv(io.StringIO(store.get_text(summary["manifest_key"])), dtype={"id": str})

