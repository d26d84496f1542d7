"""Image packs: ingest stages accepted images in a few tar files, preprocess reads them back by offset.

An object store answers each request with a fixed cost (a round trip, a signature, a server's
per-request work) that a small image does not amortize: one GET per image cost more CPU than
the image's own decode on the loopback server, and on a cloud store it adds latency and a
per-request charge. So ingest writes the images it accepts into packs of about
PACK_TARGET_BYTES, plain uncompressed tar files (`tar -tf` lists them, any tar tool extracts
them), and the manifest gives each image its pack and byte offset. Preprocess fetches the
packs with a few large reads and takes each image from its pack by offset, in any order.
"""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from medkfp import vocab
from medkfp.image_files import passes_through, to_decodable
from medkfp.parallel import UPLOAD_WORKERS, bounded_map
from medkfp.store import LocalStore, Store, StoreError

# A pack is cut once it holds this much: big enough that a pack's request cost is nothing
# beside its transfer, small enough that a few packs in flight fit in memory.
PACK_TARGET_BYTES = 8 * 1024 * 1024
# Packs waiting for their upload at once: bounds ingest's memory to a few packs.
PACKS_IN_FLIGHT = 4


def member_name(image_id: str, suffix: str) -> str:
    """The image's file name inside its pack (the id and the lower-case suffix)."""
    return f"{image_id}{suffix.lower()}"


class PackWriter:
    """Appends images to the current pack and hands every full pack to `submit(key, data)`.

    add() returns where the image went, (pack key, byte offset of its data); close() hands
    over the last pack. Calls must come from one thread (the order of the calls is the order
    in the packs, so a source read in a fixed order gives the same packs).
    """

    def __init__(
        self, run_id: str, submit: Callable[[str, bytes], None], target_bytes: int = PACK_TARGET_BYTES
    ):
        self.run_id = run_id
        self.submit = submit
        self.target_bytes = target_bytes
        self.packs = 0
        self._open()

    def _open(self) -> None:
        self._buffer = io.BytesIO()
        self._tar = tarfile.open(fileobj=self._buffer, mode="w", format=tarfile.USTAR_FORMAT)
        self._key = vocab.pack_key(self.run_id, self.packs)
        self._members = 0

    def add(self, image_id: str, suffix: str, data: bytes) -> tuple[str, int]:
        info = tarfile.TarInfo(member_name(image_id, suffix))
        info.size = len(data)
        # A ustar member is one 512-byte header block, then its data.
        place = (self._key, self._tar.offset + tarfile.BLOCKSIZE)
        self._tar.addfile(info, io.BytesIO(data))
        self._members += 1
        if self._buffer.tell() >= self.target_bytes:
            self._flush()
        return place

    def _flush(self) -> None:
        self._tar.close()
        self.submit(self._key, self._buffer.getvalue())
        self.packs += 1
        self._open()

    def close(self) -> int:
        """Hand over the last pack (if it holds anything); returns the number of packs."""
        if self._members:
            self._flush()
        return self.packs


@contextlib.contextmanager
def pack_reader(store: Store, pack_keys: Iterable[str], workers: int = UPLOAD_WORKERS) -> Iterator[Callable]:
    """Yields read(pack_key, offset, length) -> bytes over the given packs.

    A local store's packs are read where they are. An object store's are first fetched in
    parallel, whole, into a temporary folder (removed on exit): a few large GETs instead of
    one per image, and each image is then read from local disk in whatever order the caller
    needs. Raises StoreError when a pack cannot be fetched.
    """
    keys = sorted(set(pack_keys))
    with contextlib.ExitStack() as stack:
        if isinstance(store, LocalStore):
            paths = {key: store.root / key for key in keys}
        else:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="medkfp-packs-")))
            paths = {key: folder / f"{i:05d}.tar" for i, key in enumerate(keys)}
            for _ in bounded_map(lambda key: store.get_file(key, paths[key]), keys, workers):
                pass
        files = {key: stack.enter_context(open(path, "rb")) for key, path in paths.items()}

        def read(pack_key: str, offset: int, length: int) -> bytes:
            # pread: no shared file position, so threads can read one pack at once.
            data = os.pread(files[pack_key].fileno(), length, offset)
            if len(data) != length:
                raise StoreError(
                    f"pack {store.uri_for(pack_key)} ends before the {length} bytes at offset "
                    f"{offset} that the manifest names: run ingest again"
                )
            return data

        yield read


def decodable_image(read: Callable, row) -> bytes:
    """A manifest row's image as tf.io.decode_image takes it, read with pack_reader's `read`.

    Converted (to_decodable) only when the row's format and mode, which ingest found when it
    checked the file, say it must be: no second look at every image.
    """
    data = read(row.pack, row.offset, row.bytes)
    return data if passes_through(row.format, row.mode) else to_decodable(data)
