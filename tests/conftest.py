"""Shared fixtures: loopback S3 server, stores and tiny synthetic datasets made by the tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import write_shapes_folder

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from medkfp.s3server import loopback_s3  # noqa: E402
from medkfp.store import LocalStore  # noqa: E402

S3_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


@pytest.fixture(autouse=True)
def no_ambient_store(monkeypatch):
    """Tests choose their store explicitly; nothing from the caller's environment leaks in."""
    for name in (*S3_VARS, "MEDKFP_STORE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 server (moto's) on loopback, for the whole session; yields its variables."""
    with loopback_s3(set_environ=False) as env:
        yield env


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """Point the standard S3 variables at the loopback server for one test."""
    for name, value in s3_server.items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture
def local_store(tmp_path) -> LocalStore:
    return LocalStore(tmp_path / "store")


@pytest.fixture
def shapes_folder(tmp_path) -> Path:
    return write_shapes_folder(tmp_path / "shapes")


@pytest.fixture(scope="session")
def trained_shapes(tmp_path_factory):
    """One tiny real training run (simple-cnn on shapes), shared by train / evaluate / push tests."""
    from training_helpers import train_shapes

    return train_shapes(tmp_path_factory.mktemp("trained"))


@pytest.fixture(scope="session")
def medkfp_image() -> str:
    """The project image in the container engine (`make test-containers` builds it first).

    Skips with the reason where no engine answers or the image is missing.
    """
    from medkfp import containers, vocab

    image = os.environ.get("MEDKFP_TEST_IMAGE", vocab.COMPONENT_IMAGE)
    try:
        containers.require_image(containers.docker_client(), image)
    except containers.ContainerError as e:
        pytest.skip(f"container tests: {e}")
    return image
