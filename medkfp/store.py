"""Object stores addressed by URI: s3://bucket[/prefix] through the minio client, or a directory.

Both kinds expose the same small interface over keys relative to the store root, so every
step reads and writes the same layout whether it runs on a cluster or on one machine.

Conditional writes (create-if-absent, replace-if-unchanged) let concurrent writers of one
key (models.config, a version number) never overwrite each other: S3 `If-None-Match: *` /
`If-Match: <etag>` where the endpoint honours them, else a lease object with an expiry; a
folder store uses atomic hard links and an O_EXCL lock file. S3 calls that cannot reach the
endpoint, or get a 5xx/SlowDown, are retried with backoff for MEDKFP_STORE_RETRY_SECONDS
(default 60 s) before failing with one line naming the endpoint.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlparse

from medkfp import vocab
from medkfp.errors import UserError

DEFAULT_LOCAL_STORE = ".medkfp/store"
DEFAULT_S3_STORE = "s3://medkfp"
# How long S3 calls are retried while the endpoint is unreachable or overloaded.
RETRY_SECONDS_ENV = vocab.STORE_RETRY_SECONDS_ENV
DEFAULT_RETRY_SECONDS = 60.0
# An endpoint this process never reached is more likely misconfigured than restarting:
# it gets at most this long, so a wrong AWS_ENDPOINT_URL_S3 fails in seconds.
FIRST_CONTACT_SECONDS = 5.0
# A lease (the fallback lock of a conditional write) is broken once this old: its holder died.
LEASE_SECONDS = 30.0
# S3 error codes worth retrying: the endpoint is up but overloaded or restarting.
TRANSIENT_CODES = ("SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout")
# Objects up to this size go up in one PUT, larger ones in parts of this size. The minio
# client's default (5 MiB parts) turns a 35 MB shard into a 7-part multipart upload that
# the server has to assemble: one PUT took the loopback S3 server less than half the CPU.
PUT_PART_BYTES = vocab.SHARD_MAX_BYTES

log = logging.getLogger(__name__)


class StoreError(UserError, RuntimeError):
    """A store cannot be reached or used; the message names the store and the fix."""


class NotFound(StoreError):
    """The key does not exist in the store."""


class PreconditionFailed(StoreError):
    """A conditional write lost: the key already exists (create) or changed (replace)."""


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object: key relative to the store root, size, ETag (S3) and modification time."""

    key: str
    size: int
    etag: str | None
    modified: str | None


def retry_seconds() -> float:
    """Seconds to keep retrying an unreachable S3 endpoint ($MEDKFP_STORE_RETRY_SECONDS).

    Raises StoreError when the variable is not a non-negative number.
    """
    value = os.environ.get(RETRY_SECONDS_ENV, "").strip()
    if not value:
        return DEFAULT_RETRY_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise StoreError(f"{RETRY_SECONDS_ENV}={value!r} is not a number of seconds: set it to e.g. 60")
    return seconds


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def s3_endpoint() -> str | None:
    """The configured S3 endpoint URL, from the variables AWS tools, MinIO and SeaweedFS honour."""
    return os.environ.get(vocab.S3_ENDPOINT_ENV) or os.environ.get(vocab.ENDPOINT_ENV) or None


def resolve_store_uri(uri: str | None = None) -> str:
    """--store default: $MEDKFP_STORE, else s3://medkfp with an endpoint, else a local folder."""
    if uri:
        return uri
    if os.environ.get(vocab.STORE_ENV):
        return os.environ[vocab.STORE_ENV]
    return DEFAULT_S3_STORE if s3_endpoint() else DEFAULT_LOCAL_STORE


def open_store(uri: str | None = None) -> Store:
    """Open the store at `uri` (see resolve_store_uri), creating the bucket or folder if needed.

    Raises StoreError when an S3 endpoint is missing, unreachable or refuses the credentials.
    """
    uri = resolve_store_uri(uri)
    if uri.startswith("s3://"):
        return S3Store.from_uri(uri)
    if "://" in uri:
        raise StoreError(f"unsupported store URI {uri!r}: use s3://bucket[/prefix] or a directory")
    return LocalStore(uri)


def open_uri(uri: str) -> tuple[Store, str]:
    """Split a full object URI into (store at its parent, key of the object)."""
    if uri.startswith("s3://"):
        parsed = urlparse(uri)
        return S3Store.from_uri(f"s3://{parsed.netloc}"), parsed.path.lstrip("/")
    path = Path(uri)
    return LocalStore(path.parent), path.name


class Store:
    """Keys are '/'-separated paths relative to the store root."""

    uri: str

    def uri_for(self, key: str) -> str:
        return f"{self.uri.rstrip('/')}/{key}"

    # implemented by each kind
    def put_bytes(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def get_bytes(self, key: str) -> bytes:
        raise NotImplementedError

    def put_file(self, key: str, path: str | Path) -> None:
        raise NotImplementedError

    def get_file(self, key: str, path: str | Path) -> None:
        raise NotImplementedError

    def list_keys(self, prefix: str = "") -> list[str]:
        """Every key under prefix (recursive), sorted."""
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    # The defaults below build on the primitives for stores that know no better (wrappers);
    # LocalStore and S3Store override them with atomic versions.
    def list_objects(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object under prefix with its size and ETag (None if unknown), sorted by key."""
        return [ObjectInfo(k, len(self.get_bytes(k)), None, None) for k in self.list_keys(prefix)]

    def get_bytes_with_etag(self, key: str) -> tuple[bytes, str]:
        """(content, ETag) of one object, for a later put_bytes_if(if_match=...). Raises NotFound."""
        data = self.get_bytes(key)
        return data, sha256_hex(data)

    def put_bytes_if(
        self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None
    ) -> str:
        """Write `data` only if the key is absent (if_none_match) or still has ETag `if_match`.

        Returns the new ETag. Raises PreconditionFailed when another writer got there
        first, NotFound when if_match names a key that no longer exists. (This default
        checks, then writes: atomic only in the overrides.)
        """
        try:
            _, current = self.get_bytes_with_etag(key)
        except NotFound:
            current = None
        if if_none_match and current is not None:
            raise PreconditionFailed(f"{self.uri_for(key)} already exists")
        if not if_none_match and current is None:
            raise NotFound(f"not found in store: {self.uri_for(key)}")
        if if_match is not None and current != if_match:
            raise PreconditionFailed(f"{self.uri_for(key)} changed since it was read")
        self.put_bytes(key, data)
        return sha256_hex(data)

    # shared on top of the primitives
    def put_json(self, key: str, obj) -> None:
        self.put_bytes(key, json.dumps(obj, indent=2, sort_keys=True).encode())

    def get_json(self, key: str):
        return json.loads(self.get_bytes(key))

    def put_text(self, key: str, text: str) -> None:
        self.put_bytes(key, text.encode())

    def get_text(self, key: str) -> str:
        return self.get_bytes(key).decode()

    def upload_dir(self, local_dir: str | Path, prefix: str) -> list[str]:
        """Upload every file under local_dir to prefix/...; returns the keys written."""
        local_dir = Path(local_dir)
        keys = []
        for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            key = f"{prefix.rstrip('/')}/{path.relative_to(local_dir).as_posix()}"
            self.put_file(key, path)
            keys.append(key)
        return keys

    def download_dir(self, prefix: str, local_dir: str | Path) -> list[Path]:
        """Download every key under prefix/ into local_dir, keeping relative paths."""
        prefix = prefix.rstrip("/") + "/"
        local_dir = Path(local_dir)
        paths = []
        for key in self.list_keys(prefix):
            path = local_dir / key[len(prefix) :]
            path.parent.mkdir(parents=True, exist_ok=True)
            self.get_file(key, path)
            paths.append(path)
        if not paths:
            raise StoreError(f"nothing stored under {self.uri_for(prefix)}")
        return paths


class LocalStore(Store):
    """A directory with the same layout as a bucket; writes are atomic renames."""

    def __init__(self, root: str | Path):
        self.root = Path(root).absolute()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create store folder {self.root}: {e.strerror}") from e
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise StoreError(f"key {key!r} leaves the store {self.root}")
        return path

    def put_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"not found in store: {self.uri_for(key)}") from None

    def put_file(self, key: str, path: str | Path) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        os.close(fd)
        shutil.copyfile(path, tmp)
        os.replace(tmp, dest)

    def get_file(self, key: str, path: str | Path) -> None:
        src = self._path(key)
        if not src.is_file():
            raise NotFound(f"not found in store: {self.uri_for(key)}")
        shutil.copyfile(src, path)

    def list_keys(self, prefix: str = "") -> list[str]:
        base = self._path(prefix) if prefix else self.root
        start = base if base.is_dir() else base.parent
        if not start.exists():
            return []
        keys = []
        for p in start.rglob("*"):
            if p.is_file() and not p.name.startswith(".tmp-"):
                key = p.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list_objects(self, prefix: str = "") -> list[ObjectInfo]:
        infos = []
        for key in self.list_keys(prefix):
            stat = self._path(key).stat()
            modified = datetime.fromtimestamp(stat.st_mtime, timezone.utc).isoformat(timespec="seconds")
            infos.append(ObjectInfo(key, stat.st_size, None, modified))
        return infos

    def get_bytes_with_etag(self, key: str) -> tuple[bytes, str]:
        try:
            data = self._path(key).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"not found in store: {self.uri_for(key)}") from None
        return data, sha256_hex(data)

    def put_bytes_if(
        self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None
    ) -> str:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            if if_none_match:
                # link() creates the name atomically and fails if it exists: create-if-absent.
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    raise PreconditionFailed(f"{self.uri_for(key)} already exists") from None
            else:
                with self._lock(path):
                    try:
                        current = sha256_hex(path.read_bytes())
                    except FileNotFoundError:
                        raise NotFound(f"not found in store: {self.uri_for(key)}") from None
                    if if_match is not None and current != if_match:
                        raise PreconditionFailed(f"{self.uri_for(key)} changed since it was read")
                    os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return sha256_hex(data)

    def _lock(self, path: Path):
        """An O_EXCL lock file beside `path` (a lease: broken when older than LEASE_SECONDS)."""
        return _LockFile(path.parent / f".tmp-lock-{path.name}")


class _LockFile:
    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        deadline = time.monotonic() + 2 * LEASE_SECONDS
        while True:
            try:
                os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                return self
            except FileExistsError:
                try:
                    if time.time() - self.path.stat().st_mtime > LEASE_SECONDS:
                        self.path.unlink(missing_ok=True)  # its holder died mid-write
                        continue
                except FileNotFoundError:
                    continue
                if time.monotonic() > deadline:
                    raise StoreError(
                        f"{self.path} stays locked: remove it if no medkfp publish is running"
                    ) from None
                time.sleep(0.005 + random.random() * 0.01)

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)


class S3Store(Store):
    """s3://bucket[/prefix] through the minio client."""

    def __init__(self, client, bucket: str, prefix: str, endpoint: str):
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint = endpoint
        self.uri = f"s3://{bucket}" + (f"/{self.prefix}" if self.prefix else "")

    @classmethod
    def from_uri(cls, uri: str) -> S3Store:
        parsed = urlparse(uri)
        if not parsed.netloc:
            raise StoreError(f"store URI {uri!r} names no bucket: use s3://bucket[/prefix]")
        endpoint = s3_endpoint()
        if not endpoint:
            raise StoreError(
                f"store {uri} needs an S3 endpoint: set {vocab.S3_ENDPOINT_ENV} (e.g. http://minio:9000)"
            )
        store = cls(_minio_client(endpoint), parsed.netloc, parsed.path, endpoint)
        store._ensure_bucket()
        return store

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, what: str, fn, *args, **kwargs):
        """fn(*args, **kwargs), retried with backoff while the endpoint is away or overloaded.

        Raises NotFound, PreconditionFailed or StoreError with a one-line message; an
        endpoint still unreachable after retry_seconds() is named in the message.
        """
        from minio.error import S3Error, ServerError
        from urllib3.exceptions import HTTPError

        budget = retry_seconds()
        if self.endpoint not in _REACHED:
            budget = min(budget, FIRST_CONTACT_SECONDS)
        deadline = time.monotonic() + budget
        attempt = 0
        while True:
            try:
                result = fn(*args, **kwargs)
                _REACHED.add(self.endpoint)
                return result
            except S3Error as e:
                _REACHED.add(self.endpoint)
                if e.code in ("NoSuchKey", "NoSuchBucket"):
                    raise NotFound(f"not found in store: {what}") from None
                if e.code == "PreconditionFailed":
                    raise PreconditionFailed(f"{what} was written by someone else meanwhile") from None
                if e.code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                    raise StoreError(
                        f"S3 endpoint {self.endpoint} refused the credentials for {what} ({e.code}): "
                        f"check {vocab.ACCESS_KEY_ENV} and {vocab.SECRET_KEY_ENV}"
                    ) from None
                if e.code not in TRANSIENT_CODES:
                    raise StoreError(f"S3 error on {what}: {e.code}: {e.message}") from None
                problem = e.code
            except (HTTPError, ServerError, ConnectionError) as e:
                problem = type(e).__name__
            if time.monotonic() >= deadline:
                raise StoreError(
                    f"cannot reach the S3 endpoint {self.endpoint} for {what} ({problem}, retried "
                    f"{budget:.0f} s): check {vocab.S3_ENDPOINT_ENV} and that the server is running "
                    f"({RETRY_SECONDS_ENV} sets how long to retry)"
                ) from None
            if attempt == 0:
                log.warning(
                    "S3 endpoint %s: %s on %s; retrying for up to %.0f s",
                    self.endpoint,
                    problem,
                    what,
                    budget,
                )
            # Exponential backoff with jitter, so writers restarting together spread out.
            delay = min(0.25 * 2**attempt, 5.0) * (0.5 + random.random())
            time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
            attempt += 1

    def _ensure_bucket(self) -> None:
        try:
            from minio.helpers import check_bucket_name

            check_bucket_name(self.bucket)
        except ValueError as e:
            raise StoreError(
                f"store {self.uri}: {e}; S3 bucket names are 3-63 lowercase letters, digits, '.' and '-'"
            ) from None
        if not self._call(self.uri, self.client.bucket_exists, bucket_name=self.bucket):
            try:
                self._call(self.uri, self.client.make_bucket, bucket_name=self.bucket)
            except StoreError as e:
                # Two steps starting together both create it: the bucket is there, which is the point.
                if "BucketAlreadyOwnedByYou" not in str(e) and "BucketAlreadyExists" not in str(e):
                    raise

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call(
            self.uri_for(key),
            self.client.put_object,
            bucket_name=self.bucket,
            object_name=self._key(key),
            data=io.BytesIO(data),
            length=len(data),
            part_size=PUT_PART_BYTES,
        )

    def get_bytes(self, key: str) -> bytes:
        def read():
            response = self.client.get_object(bucket_name=self.bucket, object_name=self._key(key))
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        return self._call(self.uri_for(key), read)

    def put_file(self, key: str, path: str | Path) -> None:
        self._call(
            self.uri_for(key),
            self.client.fput_object,
            bucket_name=self.bucket,
            object_name=self._key(key),
            file_path=str(path),
            part_size=PUT_PART_BYTES,
        )

    def get_file(self, key: str, path: str | Path) -> None:
        self._call(
            self.uri_for(key),
            self.client.fget_object,
            bucket_name=self.bucket,
            object_name=self._key(key),
            file_path=str(path),
        )

    def list_keys(self, prefix: str = "") -> list[str]:
        full = self._key(prefix) if prefix else (f"{self.prefix}/" if self.prefix else "")
        strip = len(self.prefix) + 1 if self.prefix else 0

        def names():
            objects = self.client.list_objects(bucket_name=self.bucket, prefix=full, recursive=True)
            return sorted(o.object_name[strip:] for o in objects)

        return self._call(self.uri_for(prefix), names)

    def exists(self, key: str) -> bool:
        try:
            self._call(
                self.uri_for(key),
                self.client.stat_object,
                bucket_name=self.bucket,
                object_name=self._key(key),
            )
        except NotFound:
            return False
        return True

    def delete(self, key: str) -> None:
        self._call(
            self.uri_for(key),
            self.client.remove_object,
            bucket_name=self.bucket,
            object_name=self._key(key),
        )

    def list_objects(self, prefix: str = "") -> list[ObjectInfo]:
        full = self._key(prefix) if prefix else (f"{self.prefix}/" if self.prefix else "")
        strip = len(self.prefix) + 1 if self.prefix else 0

        def infos():
            objects = self.client.list_objects(bucket_name=self.bucket, prefix=full, recursive=True)
            return sorted(
                (
                    ObjectInfo(
                        o.object_name[strip:],
                        int(o.size or 0),
                        (o.etag or "").strip('"') or None,
                        o.last_modified.isoformat(timespec="seconds") if o.last_modified else None,
                    )
                    for o in objects
                    if not o.is_dir
                ),
                key=lambda o: o.key,
            )

        return self._call(self.uri_for(prefix), infos)

    def get_bytes_with_etag(self, key: str) -> tuple[bytes, str]:
        def read():
            response = self.client.get_object(bucket_name=self.bucket, object_name=self._key(key))
            try:
                return response.read(), response.headers.get("etag", "").strip('"')
            finally:
                response.close()
                response.release_conn()

        return self._call(self.uri_for(key), read)

    @property
    def conditional_writes(self) -> bool:
        """Whether the endpoint honours If-None-Match / If-Match on PUT (probed once per endpoint)."""
        if self.endpoint not in _CONDITIONAL:
            probe = self._key(f".medkfp-probe/{uuid.uuid4().hex}")
            put = lambda: self.client._put_object(  # noqa: E731
                self.bucket, probe, b"probe", headers={"If-None-Match": "*"}
            )
            self._call(self.uri_for(probe), put)
            try:
                self._call(self.uri_for(probe), put)
                _CONDITIONAL[self.endpoint] = False
                log.warning(
                    "S3 endpoint %s ignores If-None-Match: concurrent writers use a lease", self.endpoint
                )
            except PreconditionFailed:
                _CONDITIONAL[self.endpoint] = True
            self._call(
                self.uri_for(probe), self.client.remove_object, bucket_name=self.bucket, object_name=probe
            )
        return _CONDITIONAL[self.endpoint]

    def put_bytes_if(
        self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None
    ) -> str:
        if not self.conditional_writes:
            return self._leased_put_if(key, data, if_none_match, if_match)
        # put_object's `metadata` would turn these into x-amz-meta-* headers: PutObject itself
        # takes them as plain request headers, which _put_object sends as given.
        headers = {"If-None-Match": "*"} if if_none_match else {"If-Match": f'"{if_match}"'}
        result = self._call(
            self.uri_for(key), self.client._put_object, self.bucket, self._key(key), data, headers=headers
        )
        return result.etag

    def _leased_put_if(self, key: str, data: bytes, if_none_match: bool, if_match: str | None) -> str:
        """Conditional write for endpoints without conditional PUT: under a lease object."""
        lease_key = f"{key}.lease"
        token = uuid.uuid4().hex
        deadline = time.monotonic() + 2 * LEASE_SECONDS
        while True:
            try:
                holder = json.loads(self.get_bytes(lease_key))
                held = holder.get("expires", 0) > time.time()
            except NotFound:
                held = False
            if not held:
                self.put_json(lease_key, {"owner": token, "expires": time.time() + LEASE_SECONDS})
                time.sleep(0.05)  # let a racing writer's lease land; the last one written wins
                if json.loads(self.get_bytes(lease_key)).get("owner") == token:
                    break
            if time.monotonic() > deadline:
                raise StoreError(
                    f"{self.uri_for(lease_key)} stays leased: remove it if no publish is running"
                )
            time.sleep(0.05 + random.random() * 0.1)
        try:
            Store.put_bytes_if(self, key, data, if_none_match=if_none_match, if_match=if_match)
            return self.get_bytes_with_etag(key)[1]
        finally:
            self.delete(lease_key)


# Per endpoint: whether it honours conditional PUTs (moto >= 5.1, MinIO, AWS S3 do).
_CONDITIONAL: dict[str, bool] = {}
# Endpoints that answered at least once in this process (they get the full retry budget).
_REACHED: set[str] = set()


def _minio_client(endpoint: str):
    import urllib3
    from minio import Minio

    parsed = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
    access_key = os.environ.get(vocab.ACCESS_KEY_ENV)
    secret_key = os.environ.get(vocab.SECRET_KEY_ENV)
    if not access_key or not secret_key:
        raise StoreError(
            f"S3 endpoint {endpoint} is set but {vocab.ACCESS_KEY_ENV} / {vocab.SECRET_KEY_ENV} are not"
        )
    # Bounded timeouts and retries so an unreachable endpoint fails in seconds, not minutes.
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=5, read=60),
        retries=urllib3.Retry(total=3, backoff_factor=0.5, status_forcelist=(500, 502, 503, 504)),
        maxsize=16,
    )
    return Minio(
        parsed.netloc,
        access_key=access_key,
        secret_key=secret_key,
        session_token=os.environ.get(vocab.SESSION_TOKEN_ENV),
        secure=parsed.scheme == "https",
        region=next((os.environ[name] for name in vocab.REGION_ENVS if os.environ.get(name)), "us-east-1"),
        http_client=http,
    )
