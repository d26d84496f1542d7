"""Object stores addressed by URI: s3://bucket[/prefix] through the minio client, or a directory.

Both kinds expose the same small interface over keys relative to the store root, so every
step reads and writes the same layout whether it runs on a cluster or on one machine.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlparse

DEFAULT_LOCAL_STORE = ".medkfp/store"
DEFAULT_S3_STORE = "s3://medkfp"


class StoreError(RuntimeError):
    """A store cannot be reached or used; the message names the store and the fix."""


def s3_endpoint() -> str | None:
    """The configured S3 endpoint URL, from the variables AWS tools, MinIO and SeaweedFS honour."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def resolve_store_uri(uri: str | None = None) -> str:
    """--store default: $MEDKFP_STORE, else s3://medkfp with an endpoint, else a local folder."""
    if uri:
        return uri
    if os.environ.get("MEDKFP_STORE"):
        return os.environ["MEDKFP_STORE"]
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
            path = local_dir / key[len(prefix):]
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
            raise StoreError(f"not found in store: {self.uri_for(key)}") from None

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
            raise StoreError(f"not found in store: {self.uri_for(key)}")
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
                f"store {uri} needs an S3 endpoint: set AWS_ENDPOINT_URL_S3 (e.g. http://minio:9000)"
            )
        store = cls(_minio_client(endpoint), parsed.netloc, parsed.path, endpoint)
        store._ensure_bucket()
        return store

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, what: str, fn, *args, **kwargs):
        from minio.error import S3Error
        from urllib3.exceptions import HTTPError

        try:
            return fn(*args, **kwargs)
        except S3Error as e:
            if e.code in ("NoSuchKey", "NoSuchBucket"):
                raise StoreError(f"not found in store: {what}") from None
            if e.code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise StoreError(
                    f"S3 endpoint {self.endpoint} refused the credentials for {what} ({e.code}): "
                    "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                ) from None
            raise StoreError(f"S3 error on {what}: {e.code}: {e.message}") from None
        except HTTPError as e:
            raise StoreError(
                f"cannot reach the S3 endpoint {self.endpoint} ({type(e).__name__}): "
                "check AWS_ENDPOINT_URL_S3 and that the server is running"
            ) from None

    def _ensure_bucket(self) -> None:
        try:
            from minio.helpers import check_bucket_name

            check_bucket_name(self.bucket)
        except ValueError as e:
            raise StoreError(
                f"store {self.uri}: {e}; S3 bucket names are 3-63 lowercase letters, digits, '.' and '-'"
            ) from None
        if not self._call(self.uri, self.client.bucket_exists, bucket_name=self.bucket):
            self._call(self.uri, self.client.make_bucket, bucket_name=self.bucket)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call(
            self.uri_for(key),
            self.client.put_object,
            bucket_name=self.bucket,
            object_name=self._key(key),
            data=io.BytesIO(data),
            length=len(data),
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
            objects = self.client.list_objects(
                bucket_name=self.bucket, prefix=full, recursive=True
            )
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
        except StoreError as e:
            if str(e).startswith("not found"):
                return False
            raise
        return True

    def delete(self, key: str) -> None:
        self._call(
            self.uri_for(key),
            self.client.remove_object,
            bucket_name=self.bucket,
            object_name=self._key(key),
        )


def _minio_client(endpoint: str):
    import urllib3
    from minio import Minio

    parsed = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
    access_key = os.environ.get("AWS_ACCESS_KEY_ID")
    secret_key = os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not access_key or not secret_key:
        raise StoreError(
            f"S3 endpoint {endpoint} is set but AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are not"
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
        session_token=os.environ.get("AWS_SESSION_TOKEN"),
        secure=parsed.scheme == "https",
        region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        http_client=http,
    )

