"""Every step in its own container on this machine: the engine's Docker API and kfp.local's DockerRunner."""

from __future__ import annotations

import codecs
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from medkfp import vocab
from medkfp.errors import UserError


class ContainerError(UserError, RuntimeError):
    """No container engine answers, or the image is missing; the message says what to run."""


def docker_host() -> str | None:
    """The Docker API to use: $DOCKER_HOST, else Docker's socket, else Podman's (make container-engine)."""
    if os.environ.get("DOCKER_HOST"):
        return os.environ["DOCKER_HOST"]
    for socket in ("/var/run/docker.sock", vocab.PODMAN_SOCKET):
        if Path(socket).is_socket():
            return f"unix://{socket}"
    return None


def docker_client():
    """A docker SDK client of the engine that answers. Raises ContainerError when none does."""
    try:
        import docker
    except ImportError:
        raise ContainerError(
            "--runner docker needs the docker SDK: pip install 'medkfp[containers]'"
        ) from None
    host = docker_host()
    if host is None:
        raise ContainerError(
            "no container engine answers (no DOCKER_HOST, Docker or Podman socket): start Docker, "
            "or run 'make container-engine' for Podman"
        )
    try:
        client = docker.DockerClient(base_url=host, timeout=600)
        client.ping()
    except docker.errors.DockerException as e:
        raise ContainerError(
            f"container engine at {host} does not answer ({e}): start it, or run 'make container-engine'"
        ) from None
    os.environ.setdefault("DOCKER_HOST", host)  # kfp.local's handler calls docker.from_env()
    return client


def require_image(client, image: str) -> None:
    """Raise ContainerError unless the engine has `image` (nothing is pulled: build it here)."""
    import docker

    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        raise ContainerError(
            f"image {image} is not in the container engine: build it with 'make image' or pass --image REF"
        ) from None


def container_environment(environ=os.environ) -> dict[str, str]:
    """The caller's store and project variables, for the step containers."""
    return {
        name: value
        for name, value in environ.items()
        if name in vocab.S3_ENVIRONMENT or name.startswith(vocab.PROJECT_ENVIRONMENT_PREFIX)
    }


def docker_runner(pipeline_root: Path, read_only: list[Path] = ()):
    """kfp.local's DockerRunner for our steps.

    Host networking, so a loopback S3 endpoint is reachable as 127.0.0.1; the store's
    variables passed in; `read_only` folders (a local source) mounted at the same path.
    Steps run as the caller's uid so the files they write in `pipeline_root` are the
    caller's; a root caller keeps the image's non-root user, and the pipeline root is
    opened to it.
    """
    import docker
    from kfp import local

    mounts = [
        docker.types.Mount(target=str(p), source=str(p), type="bind", read_only=True) for p in read_only
    ]
    args = dict(environment=container_environment(), network_mode="host", mounts=mounts)
    if os.getuid() != 0:
        args["user"] = f"{os.getuid()}:{os.getgid()}"
    else:
        pipeline_root.chmod(0o1777)
    return local.DockerRunner(**args)


def log_lines(chunks) -> Iterator[str]:
    """The text lines of a container's log stream, whose chunks may end mid-line (or mid-character)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    for chunk in chunks:
        *lines, pending = (pending + decoder.decode(chunk)).split("\n")
        yield from lines
    pending += decoder.decode(b"", final=True)
    if pending:
        yield pending


def run_container_checked(client, image: str, command: list[str], volumes: dict, **run_args) -> int:
    """Run one step's container to the end and return its real exit status.

    kfp 2.17's own version starts the container with auto_remove and reports SUCCESS when
    the container is gone before its status is read (kubeflow/pipelines#13332), so a failed
    step passed. Here the container is removed only after its status is read.
    """
    container = client.containers.run(
        image=image, command=command, detach=True, stdout=True, stderr=True, volumes=volumes, **run_args
    )
    try:
        for line in log_lines(container.logs(stream=True, follow=True)):
            print(line)  # whole lines: kfp.local indents each print, so a split line would not read back
        return int(container.wait()["StatusCode"])
    finally:
        with contextlib.suppress(Exception):
            container.remove(force=True)


@contextlib.contextmanager
def exit_status_checked():
    """While active, kfp.local's DockerRunner sees each step container's real exit status."""
    from kfp.local import docker_task_handler

    original = docker_task_handler.run_docker_container
    docker_task_handler.run_docker_container = run_container_checked
    try:
        yield
    finally:
        docker_task_handler.run_docker_container = original
