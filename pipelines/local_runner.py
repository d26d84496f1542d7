"""Run the pipeline on this machine with kfp.local: steps as subprocesses, or each in its own container."""

from __future__ import annotations

import builtins
import contextlib
import json
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path

from kfp import local

from medkfp import vocab
from medkfp.components.ingest.layouts import scan_source
from medkfp.components.push.logic import check_min_recall, check_selection_metric
from medkfp.errors import InvalidInputError, UserError
from medkfp.pipelines import configs as c
from medkfp.pipelines.pipeline import Images, build_pipeline, medkfp_pipeline
from medkfp.pipelines.run_log import StepLog, root_logging_to
from medkfp.store import open_store


class PipelineFailed(UserError, RuntimeError):
    """A step failed; the message carries the step's own error and the log's path."""


def _pipeline_and_runner(runner: str, image: str | None, root: Path, inputs: list[str]):
    """The pipeline, kfp.local runner and context for `runner`; checks the engine and image.

    `inputs` are the source and labels URIs: the local ones are mounted into the containers.
    """
    if runner == c.SUBPROCESS_RUNNER:
        return medkfp_pipeline, local.SubprocessRunner(use_venv=False), contextlib.nullcontext()
    from medkfp import containers

    image = image or vocab.COMPONENT_IMAGE
    containers.require_image(containers.docker_client(), image)
    # No GPU here: the train step runs the same (CPU) image as the others.
    pipeline = build_pipeline(images=Images(cpu=image, gpu=image))
    local_inputs = [Path(uri) for uri in inputs if uri and not uri.startswith("s3://")]
    return pipeline, containers.docker_runner(root, read_only=local_inputs), containers.exit_status_checked()


def run_local(
    config: c.RunConfig,
    pipeline_root: str | None = None,
    echo=None,
    runner: str = c.SUBPROCESS_RUNNER,
    image: str | None = None,
) -> dict:
    """Run every step of `config` on this machine and return the run summary.

    config.store "" is the default store (medkfp.store.open_store). runner "subprocess": each
    step is a subprocess of this Python environment; "docker": each step is its own container
    of `image` (default: this version's image) through the Docker API (Docker, or Podman's
    socket). The grid, the store and the source are checked here first, so a bad grid or an
    unreachable endpoint fails before any step runs. Raises PipelineFailed with the failing
    step's error message when a step fails.
    """
    if runner not in c.RUNNERS:
        raise InvalidInputError(f"unknown runner {runner!r}: use one of {', '.join(c.RUNNERS)}")
    store_uri = open_store(config.store or None).uri
    if runner == c.DOCKER_RUNNER and not store_uri.startswith("s3://"):
        raise InvalidInputError(
            f"--runner docker needs an S3 store, not {store_uri}: step containers exchange data through "
            "the object store (set AWS_ENDPOINT_URL_S3 and the keys), or use --runner subprocess"
        )
    source, labels = config.source, config.labels
    if not source.startswith("s3://"):
        source = str(Path(source).absolute())
    # A wrong layout, a missing archive or an empty s3:// prefix fails here, before any step.
    if labels and not labels.startswith("s3://") and Path(labels).is_file():
        labels = str(Path(labels).absolute())  # the steps run in another working directory
    scan = scan_source(config.dataset, source, config.label, labels)
    # A bad grid, metric or recall floor fails here too, not after training.
    config = replace(config, source=source, store=store_uri, labels=labels).completed()
    check_selection_metric(config.selection_metric)
    arguments = replace(config, min_recall=check_min_recall(config.min_recall, scan.class_names)).arguments()
    root = Path(pipeline_root or tempfile.mkdtemp(prefix="medkfp-kfp-")).absolute()
    root.mkdir(parents=True, exist_ok=True)
    pipeline, kfp_runner, checked = _pipeline_and_runner(runner, image, root, [source, labels])
    log = StepLog(root / "run.log", echo)
    log.echo.write(f"kfp.local run ({runner}); step logs in {log.file.name}\n")
    local.init(runner=kfp_runner, pipeline_root=str(root))
    original_print = builtins.print
    try:
        with contextlib.redirect_stdout(log), root_logging_to(log), warnings.catch_warnings(), checked:
            # Subprocess steps run in this environment rather than their image, and platform
            # settings (GPU, tolerations) are ignored locally: both by design, not worth a warning.
            warnings.filterwarnings("ignore", "You may be attemping", RuntimeWarning)
            warnings.filterwarnings("ignore", ".*no effect in the current local runner", UserWarning)
            task = pipeline(**arguments)
    except RuntimeError as e:
        log.flush()
        reason = log.last_error or str(e).splitlines()[0]
        raise PipelineFailed(f"pipeline step failed: {reason} (log: {log.file.name})") from None
    finally:
        log.close()
        # kfp.local indents print() while tasks run; parallel tasks can leave it patched.
        builtins.print = original_print
    return json.loads(task.output)
