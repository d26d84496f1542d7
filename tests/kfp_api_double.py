"""A recording test double of the KFP v2beta1 REST API, standing in for a KFP API server.

A real KFP API server cannot run here (no Kubernetes cluster, no container registry).

It serves the endpoints `kfp.Client` calls for `medkfp submit` and `medkfp schedule` — healthz,
pipelines (create, upload, upload_version, list, get, versions), experiments, runs and recurring
runs (create, list, get, delete) — keeps their state in memory, records every request (method,
path, query, body), and checks request bodies the way the real server would refuse them: a run names
an experiment and a pipeline version that exist, every required pipeline parameter is given, no
unknown one, each of its declared type; a recurring run has exactly one trigger.

A plain ThreadingHTTPServer on 127.0.0.1 with a free port. `deny = 401 | 403` makes it answer every
request that way (as an auth proxy in front of KFP does); `run_state` is the state GET run reports.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import yaml

API = "/apis/v2beta1"

# The JSON types a pipeline parameter of each declared type accepts.
PARAMETER_TYPES = {
    "STRING": (str,),
    "NUMBER_INTEGER": (int,),
    "NUMBER_DOUBLE": (int, float),
    "BOOLEAN": (bool,),
    "STRUCT": (dict,),
    "LIST": (list,),
}


class ApiError(Exception):
    """An error answer: HTTP status plus KFP's JSON error body."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Request:
    """One recorded request."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: object  # the JSON body, the multipart form ({name: text}), or None
    headers: dict[str, str] = field(default_factory=dict)  # names in lower case


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_id() -> str:
    return str(uuid.uuid4())


class KfpApiDouble:
    """The fake API server; use as a context manager. `url` is its base URL."""

    def __init__(self, multi_user: bool = False):
        self.multi_user = multi_user
        self.deny: int | None = None
        self.run_state = "SUCCEEDED"
        self.requests: list[Request] = []
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, dict] = {}  # version id -> version (with "pipeline_id")
        self.specs: dict[str, dict] = {}  # version id -> the uploaded pipeline spec
        self.experiments: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self.recurring_runs: dict[str, dict] = {}
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> KfpApiDouble:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    # what the tests ask

    def calls(self, method: str | None = None, path_prefix: str = "") -> list[Request]:
        """Recorded requests, optionally of one method and under a path (relative to /apis/v2beta1)."""
        return [
            r
            for r in self.requests
            if (method is None or r.method == method) and r.path.startswith(API + path_prefix)
        ]

    def mutations(self) -> list[Request]:
        """Every POST, PATCH or DELETE recorded."""
        return [r for r in self.requests if r.method in ("POST", "PATCH", "DELETE")]

    def clear(self) -> None:
        self.requests.clear()

    # HTTP plumbing

    def _handler(self):
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def _serve(self):
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = double._parse_body(self.headers.get("Content-Type", ""), raw)
                headers = {k.lower(): v for k, v in self.headers.items()}
                request = Request(self.command, parts.path, parse_qs(parts.query), body, headers)
                with double.lock:
                    double.requests.append(request)
                    if double.deny:
                        status, answer = double.deny, "RBAC: access denied"
                    else:
                        try:
                            status, answer = HTTPStatus.OK, double._route(request)
                        except ApiError as e:
                            status = e.status
                            code = 3 if e.status == 400 else 5  # gRPC INVALID_ARGUMENT, NOT_FOUND
                            answer = {"error": e.message, "code": code, "message": e.message}
                data = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
                self.send_response(status)
                kind = "text/plain" if isinstance(answer, str) else "application/json"
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PATCH = _serve

        return Handler

    @staticmethod
    def _parse_body(content_type: str, raw: bytes):
        if not raw:
            return None
        if content_type.startswith("multipart/form-data"):
            message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                f"Content-Type: {content_type}\r\n\r\n".encode() + raw
            )
            return {
                part.get_param("name", header="content-disposition"): part.get_content()
                for part in message.iter_parts()
            }
        return json.loads(raw)

    # routes

    def _route(self, r: Request):
        path = r.path.removeprefix(API).rstrip("/")
        parts = path.split("/")[1:]
        m = r.method
        if path == "/healthz" and m == "GET":
            return {"multi_user": self.multi_user, "pipeline_store": "database"}
        if parts[:1] == ["pipelines"]:
            return self._pipelines(m, parts[1:], r)
        if parts[:1] == ["experiments"]:
            return self._experiments(m, parts[1:], r)
        if parts[:1] == ["runs"]:
            return self._runs(m, parts[1:], r)
        if parts[:1] == ["recurringruns"]:
            return self._recurring(m, parts[1:], r)
        raise ApiError(404, f"no route {m} {r.path}")

    @staticmethod
    def _page(items: list[dict], key: str, r: Request) -> dict:
        """A page of a list answer, honouring page_size / page_token and a display_name filter."""
        filter_text = (r.query.get("filter") or [""])[0]
        if filter_text:
            for p in json.loads(filter_text).get("predicates", []):
                # kfp.Client sends the operation as its enum number (EQUALS is 1).
                if p.get("operation") not in ("EQUALS", 1) or p.get("key") not in ("display_name", "name"):
                    raise ApiError(400, f"unsupported filter predicate {p}")
                items = [i for i in items if i.get(p["key"]) == p.get("stringValue")]
        size = int((r.query.get("page_size") or ["20"])[0]) or 20
        start = int((r.query.get("page_token") or ["0"])[0] or 0)
        answer = {key: items[start : start + size], "total_size": len(items)}
        if start + size < len(items):
            answer["next_page_token"] = str(start + size)
        return answer

    @staticmethod
    def _param(r: Request, name: str) -> str | None:
        return (r.query.get(name) or [None])[0]

    def _pipelines(self, m: str, parts: list[str], r: Request):
        if not parts and m == "GET":
            return self._page(list(self.pipelines.values()), "pipelines", r)
        if not parts and m == "POST":
            name = (r.body or {}).get("display_name")
            if not name:
                raise ApiError(400, "pipeline display_name is required")
            return self._new_pipeline(name, r.body.get("description"), r.body.get("namespace"))
        if parts == ["upload"] and m == "POST":
            name = self._param(r, "name") or self._param(r, "display_name")
            pipeline = self._new_pipeline(name, self._param(r, "description"), self._param(r, "namespace"))
            self._new_version(pipeline["pipeline_id"], name, self._uploaded_spec(r), None)
            return pipeline
        if parts == ["upload_version"] and m == "POST":
            pipeline_id = self._param(r, "pipelineid")
            if pipeline_id not in self.pipelines:
                raise ApiError(404, f"pipeline {pipeline_id} not found")
            return self._new_version(
                pipeline_id, self._param(r, "name"), self._uploaded_spec(r), self._param(r, "description")
            )
        if len(parts) >= 1 and parts[0] not in self.pipelines:
            raise ApiError(404, f"pipeline {parts[0]} not found")
        if len(parts) == 1 and m == "GET":
            return self.pipelines[parts[0]]
        if len(parts) == 2 and parts[1] == "versions" and m == "GET":
            versions = [v for v in self.versions.values() if v["pipeline_id"] == parts[0]]
            return self._page(versions, "pipeline_versions", r)
        if len(parts) == 3 and parts[1] == "versions" and m == "GET":
            version = self.versions.get(parts[2])
            if not version or version["pipeline_id"] != parts[0]:
                raise ApiError(404, f"pipeline version {parts[2]} not found")
            return version
        raise ApiError(404, f"no route {m} {r.path}")

    def _new_pipeline(self, name: str | None, description: str | None, namespace: str | None) -> dict:
        if not name:
            raise ApiError(400, "a pipeline needs a name")
        if any(p["display_name"] == name for p in self.pipelines.values()):
            raise ApiError(409, f"pipeline {name} already exists")
        pipeline = {
            "pipeline_id": new_id(),
            "display_name": name,
            "name": name,
            "description": description or "",
            "created_at": now(),
        }
        if namespace:
            pipeline["namespace"] = namespace
        self.pipelines[pipeline["pipeline_id"]] = pipeline
        return pipeline

    @staticmethod
    def _uploaded_spec(r: Request) -> dict:
        form = r.body if isinstance(r.body, dict) else {}
        text = form.get("uploadfile")
        if not text:
            raise ApiError(400, "the upload has no uploadfile part")
        if isinstance(text, bytes):
            text = text.decode()
        docs = list(yaml.safe_load_all(text))
        spec = docs[0] if docs else None
        if not isinstance(spec, dict) or "pipelineInfo" not in spec or "root" not in spec:
            raise ApiError(400, "the uploaded file is not a compiled KFP pipeline spec")
        return spec

    def _new_version(self, pipeline_id: str, name: str | None, spec: dict, description: str | None) -> dict:
        if not name:
            raise ApiError(400, "a pipeline version needs a name")
        if any(v["pipeline_id"] == pipeline_id and v["display_name"] == name for v in self.versions.values()):
            raise ApiError(409, f"pipeline version {name} already exists")
        version = {
            "pipeline_id": pipeline_id,
            "pipeline_version_id": new_id(),
            "display_name": name,
            "name": name,
            "description": description or "",
            "created_at": now(),
            "pipeline_spec": spec,
        }
        self.versions[version["pipeline_version_id"]] = version
        self.specs[version["pipeline_version_id"]] = spec
        return version

    def _experiments(self, m: str, parts: list[str], r: Request):
        if not parts and m == "GET":
            namespace = self._param(r, "namespace")
            items = [e for e in self.experiments.values() if not namespace or e.get("namespace") == namespace]
            return self._page(items, "experiments", r)
        if not parts and m == "POST":
            name = (r.body or {}).get("display_name")
            if not name:
                raise ApiError(400, "experiment display_name is required")
            if any(e["display_name"] == name for e in self.experiments.values()):
                raise ApiError(409, f"experiment {name} already exists")
            experiment = {
                "experiment_id": new_id(),
                "display_name": name,
                "created_at": now(),
                "storage_state": "AVAILABLE",
            }
            if (r.body or {}).get("namespace"):
                experiment["namespace"] = r.body["namespace"]
            self.experiments[experiment["experiment_id"]] = experiment
            return experiment
        if len(parts) == 1 and m == "GET":
            if parts[0] not in self.experiments:
                raise ApiError(404, f"experiment {parts[0]} not found")
            return self.experiments[parts[0]]
        raise ApiError(404, f"no route {m} {r.path}")

    def _check_run_body(self, body: dict | None) -> None:
        """What the server refuses: unknown experiment or version, missing or ill-typed parameters."""
        body = body or {}
        if not body.get("display_name"):
            raise ApiError(400, "a run needs a display_name")
        if body.get("experiment_id") not in self.experiments:
            raise ApiError(404, f"experiment {body.get('experiment_id')} not found")
        ref = body.get("pipeline_version_reference") or {}
        version = self.versions.get(ref.get("pipeline_version_id"))
        if version is None or version["pipeline_id"] != ref.get("pipeline_id"):
            raise ApiError(404, f"pipeline version {ref} not found")
        root = self.specs[version["pipeline_version_id"]]["root"]
        declared = root.get("inputDefinitions", {}).get("parameters", {})
        given = (body.get("runtime_config") or {}).get("parameters") or {}
        unknown = sorted(set(given) - set(declared))
        if unknown:
            raise ApiError(400, f"the pipeline has no parameters {', '.join(unknown)}")
        for name, definition in declared.items():
            if name not in given:
                if not definition.get("isOptional"):
                    raise ApiError(400, f"required pipeline parameter {name} is missing")
                continue
            value = given[name]
            types = PARAMETER_TYPES[definition["parameterType"]]
            if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
                raise ApiError(400, f"parameter {name}={value!r} is not {definition['parameterType']}")

    def _runs(self, m: str, parts: list[str], r: Request):
        if not parts and m == "POST":
            self._check_run_body(r.body)
            run = {
                **r.body,
                "run_id": new_id(),
                "created_at": now(),
                "state": "PENDING",
                "storage_state": "AVAILABLE",
            }
            self.runs[run["run_id"]] = run
            return run
        if not parts and m == "GET":
            return self._page(list(self.runs.values()), "runs", r)
        if len(parts) == 1 and m == "GET":
            if parts[0] not in self.runs:
                raise ApiError(404, f"run {parts[0]} not found")
            run = self.runs[parts[0]]
            run["state"] = self.run_state
            if self.run_state == "FAILED":
                run["error"] = {"code": 2, "message": "train: OOMKilled"}
            return run
        raise ApiError(404, f"no route {m} {r.path}")

    def _recurring(self, m: str, parts: list[str], r: Request):
        if not parts and m == "POST":
            body = r.body or {}
            self._check_run_body(body)
            trigger = body.get("trigger") or {}
            cron = (trigger.get("cron_schedule") or {}).get("cron")
            interval = (trigger.get("periodic_schedule") or {}).get("interval_second")
            if bool(cron) == bool(interval):
                raise ApiError(400, "a recurring run needs exactly one of a cron or a periodic schedule")
            if cron and len(cron.split()) != 6:
                raise ApiError(400, f"cron {cron!r} must have 6 fields")
            if not 1 <= int(body.get("max_concurrency") or 0) <= 10:
                raise ApiError(400, "max_concurrency must be between 1 and 10")
            stored = {
                **body,
                "recurring_run_id": new_id(),
                "created_at": now(),
                "updated_at": now(),
                "status": "ENABLED" if body.get("mode") == "ENABLE" else "DISABLED",
                # int64 fields come back as JSON strings, as grpc-gateway writes them
                "max_concurrency": str(body["max_concurrency"]),
            }
            if interval:
                stored["trigger"] = {
                    "periodic_schedule": {**trigger["periodic_schedule"], "interval_second": str(interval)}
                }
            self.recurring_runs[stored["recurring_run_id"]] = stored
            return stored
        if not parts and m == "GET":
            namespace = self._param(r, "namespace")
            items = [
                x
                for x in self.recurring_runs.values()
                if not namespace or x.get("namespace") in (None, namespace)
            ]
            # The real API names this list in camelCase.
            return self._page(items, "recurringRuns", r)
        if len(parts) == 1 and parts[0] not in self.recurring_runs:
            raise ApiError(404, f"recurring run {parts[0]} not found")
        if len(parts) == 1 and m == "GET":
            return self.recurring_runs[parts[0]]
        if len(parts) == 1 and m == "DELETE":
            del self.recurring_runs[parts[0]]
            return {}
        raise ApiError(404, f"no route {m} {r.path}")
