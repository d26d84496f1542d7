"""serving-sync's health endpoint: /readyz means every model the mirrored models.config names is AVAILABLE.

TF Serving's REST status answers 200 before its models load, and it has no gRPC health
service, so a pod's readiness probe asks the sync sidecar instead: it knows which versions
the config names and asks the server (GetModelStatus) whether they are loaded.

    GET /livez   200 while the sync loop has finished a pass recently, else 503
    GET /readyz  200 when the server reports every named version AVAILABLE, else 503;
                 the body says which version is missing
"""

from __future__ import annotations

import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from medkfp.serving.sync import ServingSync

# The loop counts as stuck after this many intervals without a finished pass.
STALE_PASSES = 6
MIN_STALE_SECONDS = 60.0


class SyncHealth:
    """What the probes ask of one ServingSync and its loop."""

    def __init__(self, sync: ServingSync, interval: float):
        self.sync = sync
        self.stale_after = max(MIN_STALE_SECONDS, STALE_PASSES * interval)
        self.last_pass = time.monotonic()

    def record_pass(self, _report=None) -> None:
        self.last_pass = time.monotonic()

    def live(self) -> tuple[bool, str]:
        age = time.monotonic() - self.last_pass
        if age > self.stale_after:
            return False, f"no sync pass finished for {age:.0f} s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        """(True, "ok") when every version the local models.config names is AVAILABLE."""
        config = self.sync.read_local_config()
        if config is None:
            return False, "no models.config mirrored yet"
        if self.sync.server is None:
            return True, "ok (no server to ask)"
        available = self.sync.available_versions(config)
        if available is None:
            return False, f"server {self.sync.server} does not answer"
        for entry in config.model_config_list.config:
            for version in entry.model_version_policy.specific.versions:
                if version not in available.get(entry.name, set()):
                    return False, f"model {entry.name} version {version} is not AVAILABLE yet"
        return True, "ok"


def _handler(health: SyncHealth):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            checks = {"/livez": health.live, "/readyz": health.ready}
            if self.path not in checks:
                self._answer(HTTPStatus.NOT_FOUND, "use /livez or /readyz")
                return
            ok, detail = checks[self.path]()
            self._answer(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, detail)

        def _answer(self, status: HTTPStatus, text: str) -> None:
            body = (text + "\n").encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # probes every few seconds: not worth a log line
            pass

    return Handler


def start_health_server(health: SyncHealth, port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """Serve /livez and /readyz on host:port from a daemon thread; returns the server (shutdown())."""
    server = ThreadingHTTPServer((host, port), _handler(health))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="serving-sync-health", daemon=True).start()
    return server
