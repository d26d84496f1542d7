"""Image packs: ingest's few large tar objects, read back by offset from a local store and from S3."""

from __future__ import annotations

import hashlib
import io
import tarfile

import pytest

from medkfp import vocab
from medkfp.components.ingest.logic import ingest
from medkfp.packs import PackWriter, pack_reader
from medkfp.store import StoreError, open_store
from medkfp.synth import synth_covid
from medkfp.tables import read_manifest


def blobs(count: int, size: int) -> list[bytes]:
    return [bytes([i % 251]) * (size + i) for i in range(count)]


def write_packs(store, images: list[bytes], target_bytes: int) -> list[tuple[str, int]]:
    writer = PackWriter("r1", store.put_bytes, target_bytes=target_bytes)
    places = [writer.add(f"img{i:03d}", ".PNG", data) for i, data in enumerate(images)]
    assert writer.close() == len({key for key, _ in places})
    return places


def test_packs_are_plain_tar_files_cut_near_the_target_size(local_store):
    images = blobs(30, 1000)
    places = write_packs(local_store, images, target_bytes=8000)
    keys = sorted({key for key, _ in places})
    assert keys == [vocab.pack_key("r1", i) for i in range(len(keys))] and 3 < len(keys) < 30
    for key in keys:
        data = local_store.get_bytes(key)
        assert len(data) < 8000 + 3000 + 10240  # one image past the target, plus tar's end blocks
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:  # any tar reader lists and extracts them
            for member in tar.getmembers():
                index = int(member.name.removeprefix("img").removesuffix(".png"))
                assert places[index] == (key, member.offset_data)
                assert tar.extractfile(member).read() == images[index]


def test_a_writer_given_nothing_writes_no_pack(local_store):
    assert PackWriter("r1", local_store.put_bytes).close() == 0
    assert local_store.list_keys("runs") == []


def test_reader_takes_each_image_from_its_pack_in_any_order_through_s3(s3_env):
    store = open_store("s3://packs-read")
    images = blobs(40, 500)
    places = write_packs(store, images, target_bytes=4000)
    with pack_reader(store, [key for key, _ in places]) as read:
        for i in reversed(range(len(images))):
            key, offset = places[i]
            assert read(key, offset, len(images[i])) == images[i]


def test_a_pack_shorter_than_the_manifest_says_is_a_one_line_error(local_store):
    key, offset = write_packs(local_store, [b"x" * 100], target_bytes=1 << 20)[0]
    with pack_reader(local_store, [key]) as read:
        with pytest.raises(StoreError, match=r"ends before the 100000 bytes .*run ingest again"):
            read(key, offset, 100000)


def test_ingest_through_s3_stores_a_few_packs_the_same_each_time(s3_env, tmp_path):
    """The packs follow the source's order, not the reader threads' timing."""
    folder = tmp_path / "covid"
    synth_covid(folder, per_class=12, size=64)
    digests = []
    for run in ("a", "b"):
        summary = ingest(vocab.COVID, str(folder), "s3://packs-ingest", run, workers=4)
        store = open_store(summary["store"])
        manifest = read_manifest(summary)
        packs = store.list_keys(vocab.run_key(run, "raw"))
        assert 1 <= len(packs) == summary["packs"] < len(manifest) and set(manifest["pack"]) == set(packs)
        with pack_reader(store, manifest["pack"]) as read:
            for row in manifest.itertuples():
                assert hashlib.sha256(read(row.pack, row.offset, row.bytes)).hexdigest() == row.sha256
        digests.append([hashlib.sha256(store.get_bytes(key)).hexdigest() for key in packs])
    assert digests[0] == digests[1]
