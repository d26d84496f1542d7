"""Sources: a folder, archives read in place and an S3 prefix give the same images; damage is reported.

The archives are .zip / .tar / .tar.gz, the prefix is s3://bucket/prefix on the loopback S3 server;
damaged archives and members are reported."""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path

import pytest

from medkfp import vocab
from medkfp.components.ingest.layouts import LayoutError, scan_source
from medkfp.components.ingest.logic import ingest
from medkfp.components.ingest.sources import TarSource, open_source
from medkfp.store import open_store
from medkfp.synth import synth_mias
from medkfp.tables import read_manifest

RUN = "test-run"


def zip_folder(folder: Path, out: Path, prefix: str = "", stored: bool = False) -> Path:
    method = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(out, "w", method) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, prefix + path.relative_to(folder).as_posix())
    return out


def tar_folder(folder: Path, out: Path, mode: str, prefix: str = "") -> Path:
    with tarfile.open(out, mode) as archive:
        archive.add(folder, arcname=prefix.rstrip("/") or ".")
    return out


def upload_folder(folder: Path, bucket: str, prefix: str) -> str:
    store = open_store(f"s3://{bucket}")
    store.upload_dir(folder, prefix)
    return f"s3://{bucket}/{prefix}"


def images_of(summary: dict, strip: str = "") -> set[tuple[str, str, str]]:
    """(path without the wrapper, label, content hash) of every accepted image."""
    manifest = read_manifest(summary)
    return {
        (p.removeprefix(strip), label, h)
        for p, label, h in zip(manifest["path"], manifest["label"], manifest["sha256"])
    }


@pytest.fixture
def folder_images(shapes_folder, tmp_path):
    return images_of(ingest(vocab.IMAGEFOLDER, str(shapes_folder), str(tmp_path / "s0"), RUN))


@pytest.mark.parametrize("kind", ["zip", "tar", "tar.gz"])
def test_archives_give_the_same_images_as_the_folder(kind, shapes_folder, folder_images, tmp_path):
    out = tmp_path / f"shapes.{kind}"
    if kind == "zip":
        zip_folder(shapes_folder, out, prefix="shapes/")
    else:
        tar_folder(shapes_folder, out, "w:gz" if kind.endswith("gz") else "w", prefix="shapes/")
    before = set(tmp_path.rglob("*"))
    summary = ingest(vocab.IMAGEFOLDER, str(out), str(tmp_path / "store"), RUN)
    assert summary["counts"] == {"found": 36, "accepted": 36, "rejected": 0, "ignored": 0}
    assert images_of(summary, strip="shapes/") == folder_images
    new = set(tmp_path.rglob("*")) - before
    assert all(p.is_relative_to(tmp_path / "store") for p in new)  # nothing unpacked


def test_a_damaged_zip_member_is_rejected_and_the_rest_goes_on(shapes_folder, tmp_path):
    out = zip_folder(shapes_folder, tmp_path / "shapes.zip", stored=True)
    with zipfile.ZipFile(out) as archive:
        info = archive.getinfo("plain/plain-3.png")
    data = bytearray(out.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + info.compress_size // 2] ^= 0xFF
    out.write_bytes(bytes(data))
    summary = ingest(vocab.IMAGEFOLDER, str(out), str(tmp_path / "store"), RUN)
    assert summary["counts"]["accepted"] == 35
    [reject] = summary["rejects"]
    assert reject["path"] == "plain/plain-3.png" and reject["kind"] == "unreadable"
    assert reject["reason"].startswith("unreadable (damaged archive member: Bad CRC-32")


def test_tar_gz_members_stream_in_archive_order(shapes_folder, tmp_path):
    out = tar_folder(shapes_folder, tmp_path / "shapes.tgz", "w:gz")
    with open_source(out) as source:
        assert isinstance(source, TarSource)
        paths = [e.path for e in source.entries()]
        loaded = {path: loader() for path, loader in source.loaders(reversed(paths))}
        assert loaded.keys() == set(paths)
        assert loaded["plain/plain-0.png"] == (shapes_folder / "plain" / "plain-0.png").read_bytes()


def test_s3_prefix_source(s3_env, shapes_folder, folder_images, tmp_path):
    uri = upload_folder(shapes_folder, "medkfp-sources", "datasets/shapes")
    # a sibling prefix that starts with the same letters is not part of the source
    open_store("s3://medkfp-sources").put_bytes("datasets/shapes-old/plain/x.png", b"")
    summary = ingest(vocab.IMAGEFOLDER, uri, str(tmp_path / "store"), RUN)
    assert summary["counts"] == {"found": 36, "accepted": 36, "rejected": 0, "ignored": 0}
    assert images_of(summary) == folder_images
    assert vocab.default_model_name(vocab.IMAGEFOLDER, uri) == "shapes"


def test_archive_object_in_s3_and_mias_through_s3(s3_env, tmp_path):
    synth_mias(tmp_path / "mias", per_class=4, size=32)
    archive = zip_folder(tmp_path / "mias", tmp_path / "mias.zip", prefix="MIAS-data/")
    open_store("s3://medkfp-sources").put_file("downloads/mias.zip", archive)
    scan = scan_source(vocab.MIAS, "s3://medkfp-sources/downloads/mias.zip")
    assert scan.root == f"MIAS-data/{vocab.MIAS_DIR}" and len(scan.files) == 28
    uri = upload_folder(tmp_path / "mias", "medkfp-sources", "mias")
    summary = ingest(vocab.MIAS, uri, "s3://medkfp-run", RUN, label="severity")
    assert summary["class_names"] == list(vocab.SEVERITY_CLASSES)
    assert summary["counts"]["accepted"] == 28


def test_sources_that_cannot_be_opened_are_one_clear_error(tmp_path, s3_env):
    not_archive = tmp_path / "notes.txt"
    not_archive.write_text("hello")
    with pytest.raises(LayoutError, match="is a file but not a .zip or .tar"):
        scan_source(vocab.IMAGEFOLDER, not_archive)
    broken = tmp_path / "cut.zip"
    broken.write_bytes(b"PK\x03\x04" + b"\x00" * 20)
    with pytest.raises(LayoutError, match="not a .zip or .tar|cannot open"):
        scan_source(vocab.IMAGEFOLDER, broken)
    with pytest.raises(LayoutError, match="holds no files"):
        scan_source(vocab.IMAGEFOLDER, "s3://medkfp-empty/nothing-here")
    with pytest.raises(LayoutError, match="does not exist in the object store"):
        scan_source(vocab.IMAGEFOLDER, "s3://medkfp-empty/missing.zip")
    with pytest.raises(LayoutError, match="unsupported source"):
        scan_source(vocab.IMAGEFOLDER, "gs://bucket/x")
