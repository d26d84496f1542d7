"""Run the pipeline on a KFP cluster: upload once per spec, start runs, keep recurring runs.

The compiled spec is uploaded as a new pipeline version only when its hash is new; each schedule
name has exactly one recurring run. Everything here talks to the KFP API (v2beta1) through the
SDK's `kfp.Client`; nothing reads the data or the store, because the machine that submits often
cannot reach the cluster's store: the pipeline's pods do. kfp is imported inside the functions, so
importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import json
import os
import re
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from medkfp.errors import InvalidInputError, UserError
from medkfp.pipelines import configs as c

# KFP's own default experiment, where the UI files runs started without one.
DEFAULT_EXPERIMENT = "Default"
# Seconds to connect to / hear back from the API's health check before anything else: kfp.Client
# alone retries for minutes against a host that does not answer.
HEALTH_TIMEOUT = (5.0, 10.0)
DEFAULT_WAIT_TIMEOUT = 24 * 3600
WAIT_POLL_SECONDS = 5
FINAL_STATES = ("SUCCEEDED", "FAILED", "CANCELED", "SKIPPED")
# A scheduled run never overlaps the previous one of its schedule, and missed runs are not caught up:
# each run retrains on the newest data, so one run after an outage is enough.
MAX_CONCURRENCY = 1
NO_CATCHUP = True
PAGE_SIZE = 100
TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
# Where a pod's projected KFP service-account token is (kfp.client's KF_PIPELINES_SA_TOKEN_PATH):
# spelled here so that commands that fail before connecting never load kfp.
POD_TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"
HOST_HINT = (
    "check --host (the KFP UI or API URL, e.g. a port-forward: kubectl port-forward -n kubeflow "
    "svc/ml-pipeline-ui 8080:80, then --host http://localhost:8080) and that the cluster is up"
)
TOKEN_HINT = "pass a token allowed to use it: --token-file FILE, --token TOKEN or $" + TOKEN_PATH_ENV
CRON_EXAMPLE = '--cron "0 0 2 * * *" (every day at 02:00:00)'
EVERY_EXAMPLE = "--every 24h (or 30m, 1h30m, 7d, 90s)"


class KfpError(UserError, RuntimeError):
    """The KFP API cannot be reached, refuses a request, or reports a failed run; the message is one
    line naming the host and what to check."""


# --- schedules -------------------------------------------------------------------------------------

# (name, lowest, highest, names accepted for values) of the 6 fields of KFP's cron (robfig/cron with
# seconds), in order.
_CRON_FIELDS = (
    ("second", 0, 59, ()),
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")),
    ("day of week", 0, 6, ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")),
)


def check_cron(expression: str) -> str:
    """A 6-field cron expression, seconds first (S M H DOM MON DOW), as KFP's scheduler reads it;
    returns it with single spaces. Raises ValueError naming the bad field and a valid example."""
    fields = expression.split()
    if len(fields) != len(_CRON_FIELDS):
        raise InvalidInputError(
            f"--cron {expression!r} has {len(fields)} fields; KFP's cron has 6, seconds first "
            f"(S M H DOM MON DOW): e.g. {CRON_EXAMPLE}"
        )
    for text, (name, low, high, names) in zip(fields, _CRON_FIELDS):
        if not _cron_field_ok(text, low, high, names, question_mark=name.startswith("day of")):
            raise InvalidInputError(
                f"--cron {expression!r}: the {name} field {text!r} is not *, a number {low}-{high}, "
                f"a range A-B, a step /N or a list of those: e.g. {CRON_EXAMPLE}"
            )
    return " ".join(fields)


def _cron_field_ok(text: str, low: int, high: int, names: tuple[str, ...], question_mark: bool) -> bool:
    def value(token: str) -> int | None:
        if token.upper() in names:
            return names.index(token.upper()) + low
        return int(token) if token.isdigit() and low <= int(token) <= high else None

    for part in text.split(","):
        span, slash, step = part.partition("/")
        if slash and not (step.isdigit() and int(step) > 0):
            return False
        if span == "*" or (span == "?" and question_mark and not slash):
            continue
        start, dash, end = span.partition("-")
        first = value(start)
        last = value(end) if dash else first
        if first is None or last is None or first > last:
            return False
    return True


_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


def parse_every(text: str) -> int:
    """A duration such as 24h, 30m, 1h30m, 7d or 90s -> seconds (KFP's periodic interval).
    Raises ValueError with an example."""
    match = _DURATION.fullmatch(text.strip().lower())
    if not text.strip() or not match:
        raise InvalidInputError(f"--every {text!r}: use a duration, e.g. {EVERY_EXAMPLE}")
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if total <= 0:
        raise InvalidInputError(
            f"--every {text!r}: the interval must be longer than 0 s, e.g. {EVERY_EXAMPLE}"
        )
    return total


@dataclass(frozen=True)
class Trigger:
    """When a recurring run fires: a 6-field cron expression or an interval in seconds."""

    cron: str | None = None
    interval_seconds: int | None = None

    def __post_init__(self):
        if (self.cron is None) == (self.interval_seconds is None):
            raise InvalidInputError("a schedule needs exactly one of --cron or --every")

    @classmethod
    def of(cls, recurring_run) -> Trigger | None:
        """The trigger a recurring run (as the API returns it) has, or None when it has neither."""
        trigger = recurring_run.trigger
        if trigger is None:
            return None
        if trigger.cron_schedule is not None and trigger.cron_schedule.cron:
            return cls(cron=" ".join(trigger.cron_schedule.cron.split()))
        if trigger.periodic_schedule is not None and trigger.periodic_schedule.interval_second:
            return cls(interval_seconds=int(trigger.periodic_schedule.interval_second))
        return None

    def describe(self) -> str:
        return f"cron {self.cron}" if self.cron else f"every {self.interval_seconds} s"


# --- compiling -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompileOptions:
    """What `medkfp compile` takes: where train runs and which images the steps use."""

    gpu_node: c.GpuNode = field(default_factory=c.GpuNode)
    image: str | None = None
    gpu_image: str | None = None


@contextlib.contextmanager
def compiled_pipeline(options: CompileOptions):
    """Compile into a temporary folder; yields (path of the YAML, sha256 of its bytes). The compiled
    spec is deterministic, so the same code and options give the same hash. Raises ValueError when an
    image option is given and this version's compile_pipeline cannot set it."""
    from medkfp.pipelines.compile import compile_pipeline

    kwargs = {"gpu_node": options.gpu_node}
    accepted = inspect.signature(compile_pipeline).parameters
    for name, flag in (("image", "--image"), ("gpu_image", "--gpu-image")):
        value = getattr(options, name)
        if value is None:
            continue
        if name not in accepted:
            raise InvalidInputError(
                f"{flag}: this version of medkfp cannot set the steps' image when compiling"
            )
        kwargs[name] = value
    with tempfile.TemporaryDirectory(prefix="medkfp-submit-") as tmp:
        # The upload endpoints take the file's name as its format: it must end in .yaml.
        path = Path(tmp) / "pipeline.yaml"
        compile_pipeline(out=path, **kwargs)
        yield path, hashlib.sha256(path.read_bytes()).hexdigest()


def version_name(digest: str) -> str:
    """The pipeline version's name: the pipeline's name and the first 12 hex digits of the spec's hash."""
    return f"{c.PIPELINE_NAME}-{digest[:12]}"


# --- talking to the API ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Which KFP API to use and how to authenticate (see KubeflowRunner)."""

    host: str
    namespace: str | None = None
    token: str | None = None
    token_file: str | None = None

    def __post_init__(self):
        if not re.match(r"^https?://[^/\s]+", self.host or ""):
            raise InvalidInputError(
                f"--host {self.host!r}: give the KFP URL with its scheme, e.g. http://localhost:8080 "
                "or https://kubeflow.example.org/pipeline"
            )
        object.__setattr__(self, "host", self.host.rstrip("/"))


@contextlib.contextmanager
def quiet():
    """kfp.Client prints links to stdout (which must stay clean for --json) and warns on every
    construction; both are silenced here, and the runner reports what matters itself."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


def _message(body) -> str:
    """The error text of an API response body: KFP's JSON {"message": ...}, else its first line."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    text = (body or "").strip()
    with contextlib.suppress(ValueError, AttributeError):
        data = json.loads(text)
        text = str(data.get("message") or data.get("error") or text)
    return text.splitlines()[0][:200] if text else ""


def _network_reason(error: Exception) -> str:
    import urllib3

    reason = getattr(error, "reason", None) or error
    # NewConnectionError is a ConnectTimeoutError in urllib3 2: it must be told apart first.
    if isinstance(reason, urllib3.exceptions.NewConnectionError):
        text = str(reason)
        for known in (
            "Connection refused",
            "Name or service not known",
            "No route to host",
            "nodename nor servname provided",
            "Temporary failure in name resolution",
        ):
            if known in text:
                return known.lower()
        return text.rsplit(": ", 1)[-1][:120]
    if isinstance(reason, urllib3.exceptions.ConnectTimeoutError):
        return f"no answer within {HEALTH_TIMEOUT[0]:.0f} s"
    if isinstance(reason, urllib3.exceptions.ReadTimeoutError):
        return f"no reply within {HEALTH_TIMEOUT[1]:.0f} s"
    if isinstance(reason, urllib3.exceptions.SSLError):
        return "TLS failed: is it http:// rather than https://, or does it need --token-file behind a proxy?"
    return str(reason).rsplit(": ", 1)[-1][:120]


def _refusal(host: str, error, namespace: str | None, what: str) -> KfpError:
    """One line for an HTTP error status from the API."""
    status = int(error.status or 0)
    detail = f"{status} {error.reason or ''}".strip()
    message = _message(error.body)
    if message:
        detail += f": {message}"
    if status in (401, 403):
        scope = f" in namespace {namespace}" if namespace else ""
        return KfpError(f"the KFP API at {host} refused to {what} ({detail}): {TOKEN_HINT}{scope}")
    if 300 <= status < 400:
        location = (error.headers or {}).get("Location", "elsewhere")
        return KfpError(
            f"the KFP API at {host} redirects to {location} (a login page?) instead of "
            f"answering: {TOKEN_HINT}"
        )
    if status == 404 and what == "answer its health check":
        return KfpError(f"no KFP API at {host} (404 for /apis/v2beta1/healthz): {HOST_HINT}")
    return KfpError(f"the KFP API at {host} could not {what} ({detail})")


def _token_volume_credentials(path: str):
    """kfp.Client's credentials that re-read a projected service-account token from `path`."""
    from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

    return ServiceAccountTokenVolumeCredentials(path)


class KubeflowRunner:
    """Submits runs and keeps recurring runs of the medkfp pipeline on one KFP API.

    Authentication, as kfp.Client allows it: an explicit token (`token`, or `token_file`'s
    contents) is sent as a bearer token; else a service-account token file that the kubelet
    refreshes ($KF_PIPELINES_SA_TOKEN_PATH, or in a pod the path kfp.Client itself reads) is
    re-read before each request; else no credentials (a port-forward to an API without auth).
    """

    def __init__(self, target: Target):
        self.target = target
        self.host = target.host
        self._client = None
        self._namespace = target.namespace

    # connection

    def _credentials(self):
        """(token, credentials) for kfp.Client. Raises ValueError when a named token cannot be read."""
        if self.target.token:
            return self.target.token.strip(), None
        if self.target.token_file:
            try:
                token = Path(self.target.token_file).read_text().strip()
            except OSError as e:
                raise InvalidInputError(
                    f"--token-file {self.target.token_file}: cannot read it ({e.strerror})"
                ) from None
            if not token:
                raise InvalidInputError(
                    f"--token-file {self.target.token_file} is empty: write the bearer token in it"
                )
            return token, None
        path = os.environ.get(TOKEN_PATH_ENV)
        if path:
            if not os.access(path, os.R_OK):
                raise InvalidInputError(
                    f"${TOKEN_PATH_ENV}={path}: cannot read the token there; point it at "
                    "the projected service-account token or unset it"
                )
            return None, _token_volume_credentials(path)
        if os.access(POD_TOKEN_PATH, os.R_OK):  # in a pod with the projected token
            return None, _token_volume_credentials(POD_TOKEN_PATH)
        return None, None

    def _check_health(self, token, credentials):
        """One health-check request with short timeouts and no retries. Returns the healthz response;
        raises KfpError naming the host when it is unreachable, refuses, or is no KFP API."""
        import kfp_server_api
        import urllib3

        config = kfp_server_api.Configuration(host=self.host)
        config.retries = False
        if token:
            config.api_key["authorization"] = token
            config.api_key_prefix["authorization"] = "Bearer"
        elif credentials is not None:
            config.api_key_prefix["authorization"] = "Bearer"
            credentials.refresh_api_key_hook(config)
        api = kfp_server_api.HealthzServiceApi(kfp_server_api.ApiClient(config))
        try:
            return api.healthz_service_get_healthz(_request_timeout=HEALTH_TIMEOUT)
        except kfp_server_api.ApiException as e:
            raise _refusal(self.host, e, self._namespace, "answer its health check") from None
        except urllib3.exceptions.HTTPError as e:
            raise KfpError(
                f"cannot reach the KFP API at {self.host} ({_network_reason(e)}): {HOST_HINT}"
            ) from None
        except ValueError as e:  # a 200 that is not the API's JSON, e.g. an HTML page
            raise KfpError(f"{self.host} answers, but not as the KFP API ({e}): {HOST_HINT}") from None

    @property
    def client(self):
        """The connected kfp.Client (health-checked first). Raises KfpError or ValueError."""
        if self._client is None:
            token, credentials = self._credentials()
            health = self._check_health(token, credentials)
            import kfp  # once the API answers: an unreachable host fails without loading it

            with quiet(), self.api("connect"):
                # kfp.Client treats namespace "kubeflow" as "not given" and then looks it up itself.
                self._client = kfp.Client(
                    host=self.host,
                    namespace=self._namespace or "kubeflow",
                    existing_token=token,
                    credentials=credentials,
                )
            self._namespace = self._namespace or self._client.get_user_namespace() or None
            if getattr(health, "multi_user", False) and not self._namespace:
                raise InvalidInputError(
                    f"the KFP at {self.host} is multi-user: pass --namespace (your profile namespace)"
                )
        return self._client

    @contextlib.contextmanager
    def api(self, what: str):
        """Turns API and network errors of the calls inside into one-line KfpErrors saying `what` failed."""
        import kfp_server_api
        import urllib3

        try:
            yield
        except kfp_server_api.ApiException as e:
            raise _refusal(self.host, e, self._namespace, what) from None
        except urllib3.exceptions.HTTPError as e:
            raise KfpError(
                f"lost the KFP API at {self.host} trying to {what} ({_network_reason(e)}): {HOST_HINT}"
            ) from None

    def _all(self, list_page, items: str) -> list:
        """Every item of a paginated list call: list_page(page_token) -> response with `items`."""
        found, token = [], ""
        while True:
            page = list_page(token)
            found.extend(getattr(page, items) or [])
            token = page.next_page_token
            if not token:
                return found

    @staticmethod
    def _name_filter(name: str) -> str:
        predicate = {"operation": "EQUALS", "key": "display_name", "stringValue": name}
        return json.dumps({"predicates": [predicate]})

    def run_url(self, run_id: str) -> str:
        return f"{self.host}/#/runs/details/{run_id}"

    # pipeline, versions, experiment

    def find_pipeline(self) -> str | None:
        """The id of the pipeline named configs.PIPELINE_NAME, or None."""
        with self.api(f"list pipelines named {c.PIPELINE_NAME}"):
            pipelines = self._all(
                lambda token: self.client.list_pipelines(
                    page_token=token,
                    page_size=PAGE_SIZE,
                    filter=self._name_filter(c.PIPELINE_NAME),
                    namespace=self._namespace,
                ),
                "pipelines",
            )
        ids = [p.pipeline_id for p in pipelines if p.display_name == c.PIPELINE_NAME]
        if len(ids) > 1:
            raise KfpError(f"{len(ids)} pipelines named {c.PIPELINE_NAME} at {self.host}: delete all but one")
        return ids[0] if ids else None

    def _find_version(self, pipeline_id: str, name: str) -> str | None:
        with self.api(f"list the versions of pipeline {pipeline_id}"):
            versions = self._all(
                lambda token: self.client.list_pipeline_versions(
                    pipeline_id, page_token=token, page_size=PAGE_SIZE
                ),
                "pipeline_versions",
            )
        for v in versions:
            if name in (v.display_name, v.name):
                return v.pipeline_version_id
        return None

    def ensure_pipeline_version(self, path: Path, digest: str) -> tuple[str, str, bool]:
        """The pipeline version holding this spec, uploading it only when no version has its hash.
        Returns (pipeline_id, pipeline_version_id, uploaded)."""
        import kfp_server_api

        name = version_name(digest)
        pipeline_id = self.find_pipeline()
        if pipeline_id is None:
            pipeline = kfp_server_api.V2beta1Pipeline(
                display_name=c.PIPELINE_NAME, description=c.PIPELINE_DESCRIPTION, namespace=self._namespace
            )
            try:
                with self.api(f"create pipeline {c.PIPELINE_NAME}"):
                    created = self.client.pipelines.pipeline_service_create_pipeline(pipeline=pipeline)
                pipeline_id = created.pipeline_id
            except KfpError:
                pipeline_id = self.find_pipeline()  # another submit created it meanwhile
                if pipeline_id is None:
                    raise
        else:
            version_id = self._find_version(pipeline_id, name)
            if version_id:
                return pipeline_id, version_id, False
        try:
            with quiet(), self.api(f"upload pipeline version {name}"):
                version = self.client.upload_pipeline_version(
                    str(path), name, pipeline_id=pipeline_id, description=f"compiled spec sha256 {digest}"
                )
        except KfpError:
            version_id = self._find_version(pipeline_id, name)  # another submit uploaded it meanwhile
            if version_id is None:
                raise
            return pipeline_id, version_id, False
        return pipeline_id, version.pipeline_version_id, True

    def ensure_experiment(self, name: str) -> str:
        """The id of the experiment `name`, created when missing."""
        with quiet(), self.api(f"get or create experiment {name}"):
            return self.client.create_experiment(name=name, namespace=self._namespace).experiment_id

    # runs

    def submit(self, arguments: dict, options: CompileOptions, experiment: str = DEFAULT_EXPERIMENT) -> dict:
        """Compile, upload when the spec changed, and start one run with `arguments` (the pipeline's
        parameters). Returns {"pipeline_id", "pipeline_version_id", "uploaded", "experiment_id",
        "run_id", "run_url"}. Raises KfpError, ValueError."""
        with compiled_pipeline(options) as (path, digest):
            pipeline_id, version_id, uploaded = self.ensure_pipeline_version(path, digest)
        experiment_id = self.ensure_experiment(experiment)
        started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        with quiet(), self.api("create the run"):
            run = self.client.run_pipeline(
                experiment_id,
                f"{arguments.get('model_name') or c.PIPELINE_NAME} {started}",
                params=arguments,
                pipeline_id=pipeline_id,
                version_id=version_id,
            )
        return {
            "pipeline_id": pipeline_id,
            "pipeline_version_id": version_id,
            "uploaded": uploaded,
            "experiment_id": experiment_id,
            "run_id": run.run_id,
            "run_url": self.run_url(run.run_id),
        }

    def wait(
        self, run_id: str, timeout: float = DEFAULT_WAIT_TIMEOUT, poll: float = WAIT_POLL_SECONDS
    ) -> str:
        """Follow a run until it ends; returns "SUCCEEDED". Raises KfpError when it ends otherwise
        (FAILED, CANCELED, SKIPPED) or is still running after `timeout` seconds.

        Polls get_run rather than kfp.Client.wait_for_run_completion, which does not count CANCELED
        as an end and would wait out the whole timeout for a run cancelled in the UI.
        """
        deadline = time.monotonic() + timeout
        while True:
            with self.api(f"follow run {run_id}"):
                run = self.client.get_run(run_id)
            state = str(run.state or "")
            if state in FINAL_STATES:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise KfpError(
                    f"run {run_id} is still {state or 'pending'} after {timeout:.0f} s: follow it "
                    f"at {self.run_url(run_id)}"
                )
            time.sleep(min(poll, left))
        if state != "SUCCEEDED":
            why = f" ({run.error.message})" if run.error is not None and run.error.message else ""
            raise KfpError(
                f"run {run_id} ended {state}{why}: the failed step's logs are at {self.run_url(run_id)}"
            )
        return state

    # recurring runs

    def _recurring_runs(self, name: str | None = None) -> list:
        """Recurring runs of the medkfp pipeline (all, or those named `name`)."""
        pipeline_id = self.find_pipeline()
        if pipeline_id is None:
            return []
        with self.api("list recurring runs"):
            runs = self._all(
                lambda token: self.client.list_recurring_runs(
                    page_token=token,
                    page_size=PAGE_SIZE,
                    namespace=self._namespace,
                    filter=self._name_filter(name) if name else None,
                ),
                "recurring_runs",
            )
        return [
            r
            for r in runs
            if r.pipeline_version_reference is not None
            and r.pipeline_version_reference.pipeline_id == pipeline_id
            and (name is None or r.display_name == name)
        ]

    @staticmethod
    def _same(recurring_run, version_id: str, experiment_id: str, trigger: Trigger, arguments: dict) -> bool:
        ref = recurring_run.pipeline_version_reference
        parameters = recurring_run.runtime_config.parameters if recurring_run.runtime_config else None
        return (
            ref is not None
            and ref.pipeline_version_id == version_id
            and recurring_run.experiment_id == experiment_id
            and Trigger.of(recurring_run) == trigger
            and _normalized(parameters or {}) == _normalized(arguments)
            and int(recurring_run.max_concurrency or 0) == MAX_CONCURRENCY
            and bool(recurring_run.no_catchup) == NO_CATCHUP
            and recurring_run.mode in (None, "ENABLE")
        )

    def schedule_create(
        self,
        name: str,
        trigger: Trigger,
        arguments: dict,
        options: CompileOptions,
        experiment: str = DEFAULT_EXPERIMENT,
    ) -> dict:
        """Make `name` the one recurring run with this spec, these parameters and this trigger.

        Nothing changes when exactly that exists. Otherwise the new recurring run is created first and
        the old ones of that name deleted after it (recurring runs cannot be updated in place), so the
        model is never left unscheduled. Returns {"recurring_run_id", "changed"}.
        """
        if not name or not name.strip():
            raise InvalidInputError("--schedule: give the schedule a name, e.g. --schedule covid-nightly")
        with compiled_pipeline(options) as (path, digest):
            pipeline_id, version_id, _ = self.ensure_pipeline_version(path, digest)
        experiment_id = self.ensure_experiment(experiment)
        existing = self._recurring_runs(name)
        same = [r for r in existing if self._same(r, version_id, experiment_id, trigger, arguments)]
        keep = same[0] if same else None
        created = keep is None
        if created:
            model = arguments.get("model_name") or arguments.get("dataset")
            with self.api(f"create recurring run {name}"):
                keep = self.client.create_recurring_run(
                    experiment_id,
                    name,
                    description=f"medkfp: retrain {model} on {arguments.get('source')} "
                    f"({trigger.describe()})",
                    cron_expression=trigger.cron,
                    interval_second=trigger.interval_seconds,
                    max_concurrency=MAX_CONCURRENCY,
                    no_catchup=NO_CATCHUP,
                    params=arguments,
                    pipeline_id=pipeline_id,
                    version_id=version_id,
                    enabled=True,
                )
        stale = [r for r in existing if r.recurring_run_id != keep.recurring_run_id]
        for old in stale:
            with self.api(f"delete the replaced recurring run {old.recurring_run_id} of {name}"):
                self.client.delete_recurring_run(old.recurring_run_id)
        return {"recurring_run_id": keep.recurring_run_id, "changed": created or bool(stale)}

    def schedule_list(self) -> list[dict]:
        """The medkfp pipeline's recurring runs: schedule name, id, trigger, enabled, version, parameters."""
        rows = []
        for r in self._recurring_runs():
            trigger = Trigger.of(r)
            rows.append(
                {
                    "schedule": r.display_name,
                    "recurring_run_id": r.recurring_run_id,
                    "cron": trigger.cron if trigger else None,
                    "interval_seconds": trigger.interval_seconds if trigger else None,
                    "enabled": r.mode in (None, "ENABLE"),
                    "pipeline_version_id": r.pipeline_version_reference.pipeline_version_id,
                    "experiment_id": r.experiment_id,
                    "parameters": (r.runtime_config.parameters if r.runtime_config else None) or {},
                    "created_at": r.created_at.isoformat() if r.created_at else None,
                }
            )
        return sorted(rows, key=lambda row: row["schedule"] or "")

    def schedule_delete(self, name: str) -> list[str]:
        """Delete the recurring run(s) named `name`; returns their ids. Raises ValueError for an
        unknown name, listing the known ones."""
        runs = self._recurring_runs(name)
        if not runs:
            known = sorted({r.display_name for r in self._recurring_runs()})
            raise InvalidInputError(
                f"no schedule named {name!r} at {self.host}"
                + (f": the schedules are {', '.join(known)}" if known else ": there are no medkfp schedules")
            )
        for r in runs:
            with self.api(f"delete recurring run {r.recurring_run_id} of {name}"):
                self.client.delete_recurring_run(r.recurring_run_id)
        return [r.recurring_run_id for r in runs]


def _normalized(value):
    """Parameters compared as the API stores them: numbers are doubles in a protobuf Struct."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dict):
        return {k: _normalized(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalized(v) for v in value]
    return value
