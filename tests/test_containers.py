"""The project image on a real container engine: what is in it, and every pipeline step in its own container.

These need an engine (Docker, or Podman's Docker API: `make container-engine`) and the image
(`make image`); `make test-containers` runs them. Containers use the host network and reach
only 127.0.0.1 (the loopback S3 server).
"""

from __future__ import annotations

import time

import pytest
from PIL import Image

from medkfp import containers, vocab
from medkfp.pipelines.configs import RunConfig
from medkfp.pipelines.local_runner import PipelineFailed, run_local
from medkfp.synth import synth_covid

pytestmark = pytest.mark.containers

# grid, grid-image-size, ingest, preprocess, push, and balance/train/evaluate per quick-grid candidate.
TASKS = 5 + 3 * len(vocab.GRIDS["quick"])


@pytest.fixture(scope="module")
def engine():
    return containers.docker_client()


def run_in_image(engine, image: str, *command: str) -> tuple[int, str]:
    """(exit status, output) of one command in a fresh container of `image`."""
    container = engine.containers.run(image, list(command), detach=True, network_mode="host")
    try:
        status = container.wait()["StatusCode"]
        return status, container.logs().decode()
    finally:
        container.remove(force=True)


def test_image_answers_help_as_a_numeric_non_root_user(engine, medkfp_image):
    config = engine.images.get(medkfp_image).attrs["Config"]
    assert config["User"] == "10001:10001"
    assert config["Labels"]["org.opencontainers.image.version"] == medkfp_image.rsplit(":", 1)[1]
    status, output = run_in_image(engine, medkfp_image, "medkfp", "--help")
    assert status == 0 and "serving-sync" in output and "run" in output
    assert run_in_image(engine, medkfp_image, "id", "-u") == (0, "10001\n")


@pytest.mark.parametrize("module", ["moto", "openpyxl", "pytest"])
def test_image_holds_no_test_or_demo_tools(engine, medkfp_image, module):
    status, output = run_in_image(engine, medkfp_image, "python3", "-c", f"import {module}")
    assert status == 1 and "ModuleNotFoundError" in output


def test_image_holds_no_compiler(engine, medkfp_image):
    status, _ = run_in_image(engine, medkfp_image, "sh", "-c", "command -v gcc || command -v cc")
    assert status != 0


def test_image_runs_the_kfp_executor_and_the_servers(engine, medkfp_image):
    status, output = run_in_image(
        engine,
        medkfp_image,
        "python3",
        "-c",
        "import kfp.dsl.executor_main, medkfp.serving.server, medkfp.serving.sync, tensorflow; print('ok')",
    )
    assert status == 0 and output.strip().endswith("ok"), output


def container_starts(engine, image: str, since: float, until: float) -> int:
    """How many containers of `image` the engine's events show starting in [since, until]."""
    events = engine.events(
        since=int(since), until=int(until) + 1, decode=True, filters={"type": "container", "event": "start"}
    )
    return sum(
        1
        for e in events
        if e.get("from", "").endswith(image)
        or e.get("Actor", {}).get("Attributes", {}).get("image", "").endswith(image)
    )


def test_every_step_in_its_own_container_pushes_a_model(s3_env, tmp_path, engine, medkfp_image):
    synth_covid(tmp_path / "data", per_class=40, size=96, seed=1)
    started = time.time()
    summary = run_local(
        RunConfig(
            dataset=vocab.COVID, source=str(tmp_path / "data"), store="s3://medkfp", epochs=12, image_size=48
        ),
        pipeline_root=str(tmp_path / "kfp"),
        runner="docker",
        image=medkfp_image,
    )
    assert container_starts(engine, medkfp_image, started, time.time()) >= TASKS
    assert summary["pushed"] == {
        "model_name": vocab.COVID,
        "version": 1,
        "uri": f"s3://medkfp/{vocab.model_version_key(vocab.COVID, 1)}",
    }
    selected = next(c for c in summary["candidates"] if c["name"] == summary["selected"])
    assert selected["metrics"]["macro_f1"] >= 0.9
    counts = summary["counts"]
    assert counts["found"] == counts["accepted"] + counts["rejected"] == 160


def test_a_failing_step_fails_the_run(s3_env, tmp_path, medkfp_image):
    """Every file is undecodable: ingest exits non-zero in its container, and the run says so."""
    for name in ("a", "b"):
        (tmp_path / "broken" / name).mkdir(parents=True)
        for i in range(4):
            (tmp_path / "broken" / name / f"{i}.png").write_bytes(b"not a png")
    with pytest.raises(PipelineFailed, match="rejected"):
        run_local(
            RunConfig(dataset=vocab.IMAGEFOLDER, source=str(tmp_path / "broken"), store="s3://medkfp"),
            pipeline_root=str(tmp_path / "kfp"),
            runner="docker",
            image=medkfp_image,
        )


def test_exit_status_is_read_before_the_container_is_removed(engine, medkfp_image):
    """kfp 2.17 reports a container that exited non-zero as SUCCESS (kubeflow/pipelines#13332)."""
    assert containers.run_container_checked(engine, medkfp_image, ["sh", "-c", "exit 3"], {}) == 3
    assert containers.run_container_checked(engine, medkfp_image, ["true"], {}) == 0


def test_runner_docker_needs_an_s3_store(tmp_path):
    folder = tmp_path / "data" / "a"
    folder.mkdir(parents=True)
    Image.new("L", (8, 8)).save(folder / "0.png")
    with pytest.raises(ValueError, match="needs an S3 store"):
        run_local(
            RunConfig(
                dataset=vocab.IMAGEFOLDER, source=str(tmp_path / "data"), store=str(tmp_path / "store")
            ),
            runner="docker",
        )


def test_log_lines_are_whole_whatever_the_chunks():
    """The engine's log stream cuts lines (and UTF-8 characters) anywhere."""
    chunks = [b"Traceback\nmedkfp.errors.Inva", b"lidInputError: caf\xc3", b"\xa9 rejected\n", b"last"]
    assert list(containers.log_lines(chunks)) == [
        "Traceback",
        "medkfp.errors.InvalidInputError: café rejected",
        "last",
    ]
