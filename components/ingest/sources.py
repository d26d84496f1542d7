"""Raw sources by URI: a folder, a .zip / .tar(.gz) archive read in place, or s3://bucket/prefix.

Every kind lists its files as '/'-separated paths relative to the source and reads them as
bytes, so the dataset layouts and the decode checks never care where the files live.
Archives are read member by member from the archive file: nothing is unpacked to disk.
"""

from __future__ import annotations

import os
import tarfile
import tempfile
import threading
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from medkfp.errors import UserError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
# A file bigger than this is rejected without being read: no image of the studies is
# near it, and reading it whole would put the worker's memory at risk.
MAX_FILE_BYTES = 256 * 1024 * 1024


class SourceError(UserError, ValueError):
    """A source cannot be opened or listed; the message names it and the fix."""


class UnreadableFile(OSError):
    """One file of a source cannot be read; the message is the reject reason's detail."""

    def __init__(self, detail: str, kind: str = "unreadable"):
        super().__init__(detail)
        self.kind = kind


@dataclass(frozen=True)
class Entry:
    """One file of a source: its path relative to the source, its size if known."""

    path: str
    size: int | None = None


Loader = Callable[[], bytes]


class Source:
    """Files of a source, by relative path. Use as a context manager to close archives."""

    uri: str
    # Folders that could not be listed, (path, reason): their files cannot even be counted.
    unlisted: list[tuple[str, str]]

    def entries(self) -> list[Entry]:
        """Every file, sorted by path. Raises SourceError."""
        raise NotImplementedError

    def read(self, path: str) -> bytes:
        """One file's bytes. Raises UnreadableFile."""
        raise NotImplementedError

    def loaders(self, paths: Iterable[str]) -> Iterator[tuple[str, Loader]]:
        """(path, loader) for each path; calling a loader reads the file (in any thread).

        The order is the source's cheapest reading order, not necessarily `paths`'s.
        """
        for path in paths:
            yield path, (lambda p=path: self.read(p))

    def close(self) -> None:
        pass

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DirSource(Source):
    """A local folder; symbolic links to folders are followed once, dangling ones are files."""

    def __init__(self, root: Path):
        self.root = root.absolute()
        self.uri = str(self.root)
        self.unlisted = []

    def entries(self) -> list[Entry]:
        found, seen = [], set()
        self.unlisted = []
        for folder, dirs, files in os.walk(self.root, followlinks=True, onerror=self._walk_error):
            stat = os.stat(folder)
            if (stat.st_dev, stat.st_ino) in seen:  # a link cycle: list its files once
                dirs.clear()
                continue
            seen.add((stat.st_dev, stat.st_ino))
            dirs.sort()
            for name in files:
                path = Path(folder, name)
                found.append(Entry(path.relative_to(self.root).as_posix(), _size(path)))
        return sorted(found, key=lambda e: e.path)

    def _walk_error(self, error: OSError) -> None:
        if Path(error.filename or "") == self.root:
            raise SourceError(f"cannot list source folder {self.root}: {error.strerror}")
        folder = Path(error.filename).relative_to(self.root).as_posix() + "/"
        self.unlisted.append((folder, f"unreadable folder ({error.strerror})"))

    def read(self, path: str) -> bytes:
        try:
            with open(self.root / path, "rb") as f:
                return _read_bounded(f)
        except UnreadableFile:
            raise
        except OSError as e:
            raise UnreadableFile(e.strerror or type(e).__name__) from None


class ZipSource(Source):
    """A .zip archive, members read from the archive (CRC-checked by zipfile)."""

    def __init__(self, path: Path, uri: str | None = None):
        self.uri = uri or str(path.absolute())
        self.unlisted = []
        try:
            self.zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as e:
            raise SourceError(f"cannot open {self.uri} as a zip archive ({e}): give an intact .zip") from None
        self.members = {_clean(i.filename): i for i in self.zip.infolist() if not i.is_dir()}

    def entries(self) -> list[Entry]:
        return sorted((Entry(p, i.file_size) for p, i in self.members.items()), key=lambda e: e.path)

    def read(self, path: str) -> bytes:
        info = self.members.get(path)
        if info is None:
            raise UnreadableFile("no such member in the archive")
        if info.file_size > MAX_FILE_BYTES:
            raise _too_big(info.file_size)
        try:
            return self.zip.read(info)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, NotImplementedError) as e:
            raise UnreadableFile(f"damaged archive member: {e}") from None
        except RuntimeError as e:  # an encrypted member
            raise UnreadableFile(str(e)) from None

    def close(self) -> None:
        self.zip.close()


class TarSource(Source):
    """A .tar / .tar.gz archive; members are streamed in archive order, decompressing once."""

    def __init__(self, path: Path, uri: str | None = None):
        self.path = path
        self.uri = uri or str(path.absolute())
        self.unlisted = []
        self._lock = threading.Lock()
        try:
            self.tar = tarfile.open(path, "r:*")
            self.members = {_clean(m.name): m for m in self.tar.getmembers() if not m.isdir()}
        except (tarfile.TarError, OSError, EOFError) as e:
            raise SourceError(
                f"cannot open {self.uri} as a tar archive ({e}): give an intact .tar(.gz)"
            ) from None

    def entries(self) -> list[Entry]:
        return sorted((Entry(p, m.size) for p, m in self.members.items()), key=lambda e: e.path)

    def read(self, path: str) -> bytes:
        member = self.members.get(path)
        if member is None:
            raise UnreadableFile("no such member in the archive")
        with self._lock:  # tarfile shares one file position
            return self._read_member(member)

    def _read_member(self, member: tarfile.TarInfo) -> bytes:
        if not (member.isfile() or member.issym() or member.islnk()):
            raise UnreadableFile("not a regular file in the archive (device, fifo)")
        if member.size > MAX_FILE_BYTES:
            raise _too_big(member.size)
        try:
            f = self.tar.extractfile(member)
            if f is None:
                raise UnreadableFile("the archive link points nowhere")
            return f.read()
        except (tarfile.TarError, OSError, EOFError, KeyError) as e:
            raise UnreadableFile(f"damaged archive member: {e}") from None

    def loaders(self, paths: Iterable[str]) -> Iterator[tuple[str, Loader]]:
        """Read the wanted members in archive order: a compressed tar has no cheap seek."""
        wanted = set(paths)
        for member in self.tar.getmembers():
            path = _clean(member.name)
            if path not in wanted:
                continue
            wanted.discard(path)
            try:
                with self._lock:
                    data = self._read_member(member)
            except UnreadableFile as e:
                yield path, _raiser(e)
                continue
            yield path, (lambda d=data: d)
        for path in sorted(wanted):
            yield path, _raiser(UnreadableFile("no such member in the archive"))

    def close(self) -> None:
        self.tar.close()


class S3Source(Source):
    """Objects under s3://bucket/prefix, through the project's S3 store (minio client)."""

    def __init__(self, uri: str):
        from medkfp.store import open_store

        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        if not bucket:
            raise SourceError(f"source {uri!r} names no bucket: use s3://bucket/prefix")
        self.uri = uri.rstrip("/")
        self.unlisted = []
        self.store = open_store(f"s3://{bucket}")
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""

    def entries(self) -> list[Entry]:
        keys = self.store.list_keys(self.prefix)
        return [Entry(k[len(self.prefix) :]) for k in keys if not k.endswith("/")]

    def read(self, path: str) -> bytes:
        from medkfp.store import StoreError

        try:
            return self.store.get_bytes(self.prefix + path)
        except StoreError as e:
            raise UnreadableFile(str(e)) from None


def is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def open_source(uri: str | os.PathLike) -> Source:
    """Open a folder, an archive, s3://bucket/prefix or an archive object in S3.

    Raises SourceError for a missing path or an archive that cannot be opened, and the
    store's StoreError for an S3 endpoint that is missing or refuses the credentials.
    """
    uri = str(uri)
    if uri.startswith("s3://"):
        return _open_s3(uri)
    path = check_source_uri(uri)
    if path.is_dir():
        return DirSource(path)
    return _open_archive(path, str(path.absolute()))


def check_source_uri(uri: str) -> Path | None:
    """The local path of a source URI, checked to exist; None for s3:// (checked when opened).

    Raises SourceError for another scheme or a path that does not exist.
    """
    if uri.startswith("s3://"):
        return None
    if "://" in uri:
        raise SourceError(f"unsupported source {uri!r}: use a folder, a .zip/.tar(.gz) or s3://bucket/prefix")
    path = Path(uri)
    if not path.exists():
        raise SourceError(
            f"source {path} is not a folder or an archive (it does not exist): give the "
            "dataset's folder, .zip/.tar(.gz) or s3://bucket/prefix"
        )
    return path


def _open_archive(path: Path, uri: str) -> Source:
    if zipfile.is_zipfile(path):
        return ZipSource(path, uri)
    if _is_tar(path):
        return TarSource(path, uri)
    raise SourceError(
        f"source {uri} is a file but not a .zip or .tar(.gz) archive: give the folder or the download"
    )


def _is_tar(path: Path) -> bool:
    try:
        with tarfile.open(path, "r:*"):
            return True
    except (tarfile.TarError, OSError, EOFError):
        return False


class _DownloadedArchive(Source):
    """An archive object of an S3 source, fetched once into a temporary file."""

    def __init__(self, uri: str, store, key: str):
        self._tmp = tempfile.TemporaryDirectory(prefix="medkfp-source-")
        local = Path(self._tmp.name) / PurePosixPath(key).name
        store.get_file(key, local)
        self.inner = _open_archive(local, uri)
        self.uri = uri
        self.unlisted = self.inner.unlisted

    def entries(self) -> list[Entry]:
        return self.inner.entries()

    def read(self, path: str) -> bytes:
        return self.inner.read(path)

    def loaders(self, paths):
        return self.inner.loaders(paths)

    def close(self) -> None:
        self.inner.close()
        self._tmp.cleanup()


def _open_s3(uri: str) -> Source:
    if not is_archive(uri):
        return S3Source(uri)
    from medkfp.store import open_uri

    store, key = open_uri(uri)
    if not store.exists(key):
        raise SourceError(f"source {uri} does not exist in the object store: check the URI")
    return _DownloadedArchive(uri, store, key)


def _clean(name: str) -> str:
    """Member names as relative posix paths ('./a/b' and '/a/b' both become 'a/b')."""
    parts = [p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("/", ".")]
    return "/".join(parts)


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None  # a dangling link: reading it reports why


def _read_bounded(f) -> bytes:
    data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise _too_big(None)
    return data


def _too_big(size: int | None) -> UnreadableFile:
    shown = f"{size} bytes, " if size is not None else ""
    return UnreadableFile(f"file too large ({shown}over the {MAX_FILE_BYTES}-byte limit)", "too_large")


def _raiser(error: Exception) -> Loader:
    def load() -> bytes:
        raise error

    return load
