"""serving-sync's /readyz and /livez: readiness means every mirrored version is AVAILABLE on a real server."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from serving_helpers import CLASSES, export_model, wait_for

from medkfp.model_repository import ModelRepository
from medkfp.s3server import free_port
from medkfp.serving.health import SyncHealth, start_health_server
from medkfp.serving.server import start_server
from medkfp.serving.sync import MirrorStore, ServingSync
from medkfp.store import LocalStore


def probe(port: int, path: str) -> tuple[int, str]:
    """(HTTP status, body) of GET 127.0.0.1:port/path."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture
def health_endpoint():
    servers = []

    def start(sync: ServingSync, interval: float = 1.0) -> tuple[SyncHealth, int]:
        health = SyncHealth(sync, interval)
        port = free_port()
        servers.append(start_health_server(health, port, host="127.0.0.1"))
        return health, port

    yield start
    for server in servers:
        server.shutdown()


def test_ready_only_once_the_server_reports_every_mirrored_version_available(tmp_path, health_endpoint):
    store = LocalStore(tmp_path / "store")
    ModelRepository(store).publish("m", export_model(tmp_path / "a", favour=0), {"class_names": CLASSES})
    mirror = tmp_path / "mirror"
    grpc_port = free_port()
    sync = ServingSync(store, mirror, server=f"127.0.0.1:{grpc_port}")
    health, port = health_endpoint(sync)

    status, body = probe(port, "/readyz")
    assert status == 503 and "no models.config" in body

    sync.sync_once()
    status, body = probe(port, "/readyz")
    assert status == 503 and "does not answer" in body  # mirrored, but no server yet

    with start_server(
        MirrorStore(mirror), port=grpc_port, host="127.0.0.1", poll_interval=0.1, cache_dir=tmp_path / "cache"
    ):
        wait_for(lambda: probe(port, "/readyz")[0] == 200, what="/readyz 200")
        assert probe(port, "/readyz")[1].strip() == "ok"


def test_live_while_passes_finish_and_not_after_the_loop_stalls(tmp_path, health_endpoint):
    sync = ServingSync(LocalStore(tmp_path / "store"), tmp_path / "mirror")
    health, port = health_endpoint(sync)
    health.record_pass()
    assert probe(port, "/livez") == (200, "ok\n")

    health.last_pass -= health.stale_after + 1  # as if no pass had finished since
    status, body = probe(port, "/livez")
    assert status == 503 and "no sync pass finished" in body
    assert probe(port, "/other")[0] == 404
