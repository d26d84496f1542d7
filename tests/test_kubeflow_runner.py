"""`medkfp submit` and `medkfp schedule` through the real kfp.Client, against a KFP API test double.

The double is a recording test double of the KFP v2beta1 API (tests/kfp_api_double.py): it stands
in for a KFP API server, which cannot run here. The double checks request bodies as the server
would; these tests check what is sent, what is not sent on a second identical call, and the
one-line errors."""

from __future__ import annotations

import inspect
import json
import socket
import subprocess
import sys
import time

import pytest
import yaml
from kfp_api_double import KfpApiDouble

from medkfp.cli import main
from medkfp.pipelines import configs
from medkfp.pipelines.kubeflow_runner import (
    KfpError,
    KubeflowRunner,
    Target,
    check_cron,
    parse_every,
    version_name,
)

SUBMIT_KEYS = {"pipeline_id", "pipeline_version_id", "uploaded", "experiment_id", "run_id", "run_url"}
RUN = ["--dataset", "covid19-radiography", "--source", "s3://raw/covid19"]
NIGHTLY = ["--schedule", "covid-nightly", "--cron", "0 0 2 * * *"]
UPLOADS = ("/pipelines/upload", "/pipelines/upload_version")


@pytest.fixture
def kfp_api():
    with KfpApiDouble() as double:
        yield double


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run `medkfp ARGV`; returns (status, stdout, stderr)."""
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def submit(capsys, kfp_api, *options: str) -> dict:
    status, out, err = cli(capsys, "submit", "--host", kfp_api.url, *RUN, *options, "--json")
    assert status == 0, err
    return json.loads(out)


def schedule(capsys, kfp_api, *options: str) -> dict:
    status, out, err = cli(capsys, "schedule", "create", "--host", kfp_api.url, *RUN, *options, "--json")
    assert status == 0, err
    return json.loads(out)


def uploads(kfp_api) -> list:
    return [r for r in kfp_api.calls("POST") if r.path.endswith(UPLOADS)]


def error_line(err: str) -> str:
    """The one line `medkfp` prints for a user error (kfp's own log lines filtered out)."""
    lines = [line for line in err.splitlines() if line.startswith("medkfp: error:")]
    assert len(lines) == 1, err
    return lines[0]


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --- submit ----------------------------------------------------------------------------------------


def test_submit_uploads_once_and_starts_a_run_with_the_pipelines_parameters(capsys, kfp_api):
    first = submit(capsys, kfp_api, "--min-recall", "COVID=0.9", "--epochs", "3")
    assert set(first) == SUBMIT_KEYS
    assert first["uploaded"] is True
    assert first["run_url"] == f"{kfp_api.url}/#/runs/details/{first['run_id']}"
    [upload] = uploads(kfp_api)
    assert upload.query["pipelineid"] == [first["pipeline_id"]]
    version = kfp_api.versions[first["pipeline_version_id"]]
    assert version["display_name"].startswith(f"{configs.PIPELINE_NAME}-")
    assert kfp_api.pipelines[first["pipeline_id"]]["display_name"] == configs.PIPELINE_NAME

    [run_post] = kfp_api.calls("POST", "/runs")
    parameters = run_post.body["runtime_config"]["parameters"]
    from medkfp.pipelines.pipeline import pipeline_graph

    declared = inspect.signature(pipeline_graph).parameters
    assert set(parameters) <= set(declared)  # the double also refuses unknown or ill-typed ones
    assert {name for name, p in declared.items() if p.default is p.empty} <= set(parameters)
    assert {"label", "grid", "min_delta", "selection_metric", "weights", "freeze_backbone"} <= set(parameters)
    assert parameters["model_name"] == "covid19-radiography"  # vocab.default_model_name
    assert parameters["store"] == "s3://medkfp"
    assert parameters["min_recall"] == {"COVID": 0.9}
    assert parameters["epochs"] == 3 and parameters["grid"] == "quick"
    assert run_post.body["pipeline_version_reference"] == {
        "pipeline_id": first["pipeline_id"],
        "pipeline_version_id": first["pipeline_version_id"],
    }
    # The machine that submits never reads the data or the store: only the KFP API was called.
    assert all(r.path.startswith("/apis/v2beta1/") for r in kfp_api.requests)

    kfp_api.clear()
    second = submit(capsys, kfp_api, "--min-recall", "COVID=0.9", "--epochs", "3")
    assert second["uploaded"] is False
    assert second["pipeline_version_id"] == first["pipeline_version_id"]
    assert second["experiment_id"] == first["experiment_id"]
    assert second["run_id"] != first["run_id"]
    assert [r.path for r in kfp_api.mutations()] == ["/apis/v2beta1/runs"]  # a new run, nothing uploaded


def test_a_changed_spec_is_a_new_version_of_the_same_pipeline(capsys, kfp_api):
    first = submit(capsys, kfp_api)
    second = submit(capsys, kfp_api, "--image", "registry.example.org/medkfp:0.2.0")
    assert second["uploaded"] is True
    assert second["pipeline_id"] == first["pipeline_id"]
    assert second["pipeline_version_id"] != first["pipeline_version_id"]
    assert len(uploads(kfp_api)) == 2 and len(kfp_api.pipelines) == 1
    spec = kfp_api.specs[second["pipeline_version_id"]]
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert "registry.example.org/medkfp:0.2.0" in images


def test_grid_files_travel_as_json_and_names_are_kept(capsys, kfp_api, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("- {architecture: mobilenetv2, balancing: oversample, batch_size: 8}\n")
    submit(capsys, kfp_api, "--grid", str(grid), "--name", "chest-xray")
    parameters = kfp_api.calls("POST", "/runs")[0].body["runtime_config"]["parameters"]
    assert json.loads(parameters["grid"])[0]["architecture"] == "mobilenetv2"
    assert parameters["model_name"] == "chest-xray"


def test_wait_exits_non_zero_when_the_run_fails(capsys, kfp_api):
    kfp_api.run_state = "FAILED"
    status, out, err = cli(capsys, "submit", "--host", kfp_api.url, *RUN, "--wait")
    assert status != 0
    line = error_line(err)
    assert "FAILED" in line and "/#/runs/details/" in line
    assert "/#/runs/details/" in out  # the link was printed before following the run

    kfp_api.run_state = "CANCELED"  # cancelled in the UI: an end, not something to wait out
    status, _, err = cli(capsys, "submit", "--host", kfp_api.url, *RUN, "--wait")
    assert status != 0 and "CANCELED" in error_line(err)

    kfp_api.run_state = "SUCCEEDED"
    status, out, err = cli(capsys, "submit", "--host", kfp_api.url, *RUN, "--wait")
    assert status == 0, err
    assert "SUCCEEDED" in out


def test_wait_gives_up_after_its_timeout(capsys, kfp_api):
    kfp_api.run_state = "RUNNING"
    status, _, err = cli(capsys, "submit", "--host", kfp_api.url, *RUN, "--wait", "--timeout", "0")
    assert status == 2
    assert "still RUNNING after 0 s" in error_line(err)


def test_a_pipeline_uploaded_by_hand_gets_the_submitted_version(capsys, kfp_api, tmp_path):
    """The README's other way: `medkfp compile`, then Upload pipeline in the UI (the upload endpoint)."""
    import kfp

    assert main(["compile", "--out", str(tmp_path / "pipeline.yaml")]) == 0
    with pytest.warns(FutureWarning):
        by_hand = kfp.Client(host=kfp_api.url).upload_pipeline(
            str(tmp_path / "pipeline.yaml"), pipeline_name=configs.PIPELINE_NAME
        )
    capsys.readouterr()
    result = submit(capsys, kfp_api)
    assert result["pipeline_id"] == by_hand.pipeline_id
    assert result["uploaded"] is True  # the hand-made version is named after the pipeline, not the hash
    names = {v["display_name"] for v in kfp_api.versions.values()}
    assert names == {configs.PIPELINE_NAME, kfp_api.versions[result["pipeline_version_id"]]["display_name"]}
    assert submit(capsys, kfp_api)["uploaded"] is False


def test_a_token_goes_with_every_request(capsys, kfp_api, tmp_path, monkeypatch):
    token = tmp_path / "token"
    token.write_text("secret-1\n")
    submit(capsys, kfp_api, "--token-file", str(token))
    assert {r.headers.get("authorization") for r in kfp_api.requests} == {"Bearer secret-1"}

    # A projected service-account token (kfp.Client's in-cluster way) is re-read on every request.
    kfp_api.clear()
    token.write_text("secret-2\n")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token))
    submit(capsys, kfp_api)
    assert {r.headers.get("authorization") for r in kfp_api.requests} == {"Bearer secret-2"}


def test_a_multi_user_kfp_needs_a_namespace(capsys):
    with KfpApiDouble(multi_user=True) as kfp_api:
        status, _, err = cli(capsys, "submit", "--host", kfp_api.url, *RUN)
        assert status == 2 and "--namespace" in error_line(err)
        result = submit(capsys, kfp_api, "--namespace", "team-radiology")
        assert kfp_api.experiments[result["experiment_id"]]["namespace"] == "team-radiology"


@pytest.mark.parametrize(
    "options, message",
    [
        (["--source", "/data/covid"], "--source /data/covid"),
        (["--source", "s3://raw/x", "--store", ".medkfp/store"], "--store .medkfp/store"),
        (["--source", "s3://raw/x", "--min-recall", "Covid=0.9"], "'Covid'"),
        (["--source", "s3://raw/x", "--label", "severity"], "--label severity"),
    ],
)
def test_bad_run_parameters_fail_before_any_request(capsys, kfp_api, options, message):
    status, _, err = cli(
        capsys, "submit", "--host", kfp_api.url, "--dataset", "covid19-radiography", *options
    )
    assert status == 2
    assert message in error_line(err)
    assert kfp_api.requests == []


# --- unreachable and refusing hosts ----------------------------------------------------------------


def test_an_unreachable_host_is_one_line_naming_it(capsys):
    host = closed_port_url()
    started = time.monotonic()
    with pytest.raises(KfpError, match="connection refused") as caught:
        KubeflowRunner(Target(host)).find_pipeline()
    assert time.monotonic() - started < 10
    assert host in str(caught.value) and "--host" in str(caught.value)

    status, _, err = cli(capsys, "submit", "--host", host, *RUN)
    assert status == 2 and host in error_line(err)


@pytest.mark.parametrize("status_code", [401, 403])
def test_a_refusing_host_is_one_line_naming_it(capsys, kfp_api, status_code):
    kfp_api.deny = status_code
    started = time.monotonic()
    status, _, err = cli(capsys, "submit", "--host", kfp_api.url, *RUN)
    assert status == 2
    line = error_line(err)
    assert kfp_api.url in line and str(status_code) in line and "--token-file" in line
    assert len(kfp_api.requests) == 1  # one health check, no retries
    assert time.monotonic() - started < 30


# --- schedules -------------------------------------------------------------------------------------


def test_schedule_create_is_idempotent(capsys, kfp_api):
    first = schedule(capsys, kfp_api, *NIGHTLY)
    assert set(first) == {"recurring_run_id", "changed"} and first["changed"] is True
    [post] = kfp_api.calls("POST", "/recurringruns")
    assert post.body["max_concurrency"] == 1 and post.body["no_catchup"] is True
    assert post.body["trigger"] == {"cron_schedule": {"cron": "0 0 2 * * *"}}
    assert post.body["display_name"] == "covid-nightly" and post.body["mode"] == "ENABLE"

    kfp_api.clear()
    second = schedule(capsys, kfp_api, *NIGHTLY)
    assert second == {"recurring_run_id": first["recurring_run_id"], "changed": False}
    assert kfp_api.mutations() == []  # no POST (no upload, no recurring run) and no DELETE
    assert len(kfp_api.recurring_runs) == 1


def test_a_changed_parameter_or_trigger_replaces_the_recurring_run(capsys, kfp_api):
    first = schedule(capsys, kfp_api, *NIGHTLY)
    kfp_api.clear()
    second = schedule(capsys, kfp_api, *NIGHTLY, "--min-delta", "0.01")
    assert second["changed"] is True and second["recurring_run_id"] != first["recurring_run_id"]
    # Created first, then the old one deleted: the model is never left without a schedule.
    assert [(r.method, r.path) for r in kfp_api.mutations()] == [
        ("POST", "/apis/v2beta1/recurringruns"),
        ("DELETE", f"/apis/v2beta1/recurringruns/{first['recurring_run_id']}"),
    ]
    assert list(kfp_api.recurring_runs) == [second["recurring_run_id"]]

    third = schedule(capsys, kfp_api, "--schedule", "covid-nightly", "--every", "24h", "--min-delta", "0.01")
    assert third["changed"] is True
    stored = kfp_api.recurring_runs[third["recurring_run_id"]]
    assert stored["trigger"]["periodic_schedule"]["interval_second"] == "86400"
    assert list(kfp_api.recurring_runs) == [third["recurring_run_id"]]
    kfp_api.clear()
    again = schedule(capsys, kfp_api, "--schedule", "covid-nightly", "--every", "1d", "--min-delta", "0.01")
    assert again == {"recurring_run_id": third["recurring_run_id"], "changed": False}
    assert kfp_api.mutations() == []


def test_schedule_list_and_delete(capsys, kfp_api):
    created = schedule(capsys, kfp_api, *NIGHTLY)
    status, out, err = cli(capsys, "schedule", "list", "--host", kfp_api.url, "--json")
    assert status == 0, err
    [row] = json.loads(out)
    assert row["schedule"] == "covid-nightly" and row["recurring_run_id"] == created["recurring_run_id"]
    assert row["cron"] == "0 0 2 * * *" and row["parameters"]["dataset"] == "covid19-radiography"

    status, _, err = cli(capsys, "schedule", "delete", "--host", kfp_api.url, "--schedule", "mias-weekly")
    assert status == 2
    assert "mias-weekly" in error_line(err) and "covid-nightly" in error_line(err)

    status, out, err = cli(capsys, "schedule", "delete", "--host", kfp_api.url, "--schedule", "covid-nightly")
    assert status == 0, err
    assert kfp_api.calls("DELETE")[-1].path.endswith(created["recurring_run_id"])
    assert kfp_api.recurring_runs == {}


@pytest.mark.parametrize(
    "cron", ["0 2 * * *", "0 0 25 * * *", "0 0 2 * * MON-FUN", "0 0 2 * * * *", "@daily"]
)
def test_a_bad_cron_fails_before_any_request(capsys, kfp_api, cron):
    status, _, err = cli(
        capsys, "schedule", "create", "--host", kfp_api.url, *RUN, "--schedule", "x", "--cron", cron
    )
    assert status == 2
    line = error_line(err)
    assert repr(cron) in line and '"0 0 2 * * *"' in line  # names the problem and shows a valid one
    assert kfp_api.requests == []


@pytest.mark.parametrize(
    "cron", ["0 0 2 * * *", "0 */15 * * * MON-FRI", "0 0 9 ? * 2-6", "30 0 0 1 JAN,JUL *", "0 0 0 1-7 * SUN"]
)
def test_valid_crons_pass(cron):
    assert check_cron(cron) == cron


def test_every_durations():
    assert [parse_every(t) for t in ("24h", "30m", "1h30m", "7d", "90s")] == [86400, 1800, 5400, 604800, 90]
    for bad in ("1x", "0s", "", "h"):
        with pytest.raises(ValueError, match="--every"):
            parse_every(bad)


def test_version_names_derive_from_the_spec_hash():
    assert version_name("0123456789abcdef" * 4) == f"{configs.PIPELINE_NAME}-0123456789ab"


def test_the_cli_does_not_import_kfp_to_build_its_parser():
    code = (
        "import sys; from medkfp.cli import build_parser; build_parser().parse_args(['schedule', 'list', "
        "'--host', 'http://x']); print(sorted(m for m in ('kfp', 'tensorflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert yaml.safe_load(out) == []


def test_the_pod_token_path_is_kfp_clients():
    """Spelled in the runner so that failing commands never load kfp; it must stay kfp.Client's."""
    from kfp import client

    from medkfp.pipelines import kubeflow_runner

    assert kubeflow_runner.POD_TOKEN_PATH == client.KF_PIPELINES_SA_TOKEN_PATH
