"""The `medkfp` command line (contract in DESIGN.md: names, flags and JSON keys are stable)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
import typing
from pathlib import Path

from medkfp import vocab
from medkfp.errors import UsageError, UserError
from medkfp.pipelines import configs


def cmd_synth(args) -> None:
    from medkfp import synth
    from medkfp.synth import dicom as synth_dicom

    counts = [int(n) for n in args.counts.split(",")] if args.counts else None
    writers = {
        vocab.COVID: synth.synth_covid,
        vocab.MIAS: synth.synth_mias,
        vocab.DICOM: synth_dicom.synth_dicom,
    }
    make = writers[args.dataset]
    kwargs = {"per_class": args.per_class, "counts": counts, "seed": args.seed}
    if args.dataset == vocab.DICOM:
        kwargs["layout"] = args.layout
    if args.size:
        kwargs["size"] = args.size
    written = make(args.out, progress=sys.stderr.isatty(), **kwargs)
    print(json.dumps({"dataset": args.dataset, "out": str(args.out), "counts": written}))


def cmd_plan(args) -> None:
    from medkfp.plan import plan, render

    report = plan(
        args.dataset,
        args.source,
        label=args.label,
        test_fraction=args.test_fraction,
        val_fraction=args.val_fraction,
        seed=args.seed,
        max_rejected_fraction=args.max_rejected_fraction,
        progress=sys.stderr.isatty(),
        labels=args.labels or "",
    )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        render(report)
    if report["problems"]:  # the report is out; the status says a run would stop
        raise UsageError(report["problems"][0])


def cmd_run(args) -> None:
    from medkfp.components.ingest.sources import check_source_uri

    config = run_config(args, args.store or "")
    check_source_uri(config.source)  # a typo fails here, before TensorFlow and KFP load
    with tensorflow_loaded(args.verbose):
        from medkfp.pipelines.local_runner import run_local
    summary = run_local(config, pipeline_root=args.pipeline_root, runner=args.runner, image=args.image)
    if args.summary:
        Path(args.summary).parent.mkdir(parents=True, exist_ok=True)
        Path(args.summary).write_text(json.dumps(summary, indent=2))
    print_summary(summary)


def print_summary(summary: dict) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    def with_ci(m: dict, key: str) -> str:
        # Two decimals for the interval keep the table inside 80 columns.
        ci = (m.get("ci") or {}).get(key)
        return f"{m[key]:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")

    counts = summary["counts"]
    table = Table(
        title=f"{summary['dataset']}: candidates on the test split",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
        caption=f"* selected by {summary['selection_metric']}; [95% CI], bootstrap; "
        "ECE of the served probabilities",
    )
    for column in ("candidate", "acc.", "bal. acc. [95% CI]", "macro-F1 [95% CI]", "ECE"):
        table.add_column(column, no_wrap=True)
    for c in summary["candidates"]:
        m = c["metrics"]
        ece = (m.get("calibration") or {}).get("ece")
        table.add_row(
            c["name"] + (" *" if c["name"] == summary["selected"] else ""),
            f"{m['accuracy']:.3f}",
            with_ci(m, "balanced_accuracy"),
            with_ci(m, "macro_f1"),
            "n/a" if ece is None else f"{ece:.3f}",
        )
    console = Console()
    console.print(
        f"images found {counts['found']}, accepted {counts['accepted']}, "
        f"rejected {counts['rejected']}; train {counts['train']} / val {counts['val']} / "
        f"test {counts['test']}"
    )
    for reject in summary.get("rejects", []):
        console.print(f"  rejected {reject['path']}: {reject['reason']}", markup=False, highlight=False)
    console.print(table)
    pushed = summary["pushed"]
    if pushed:
        console.print(
            f"pushed {pushed['model_name']} v{pushed['version']} ({pushed['uri']}): {summary['push_reason']}"
        )
    else:
        console.print(f"nothing pushed: {summary['push_reason']}")


def parse_min_recall(items: list[str] | None) -> dict[str, float]:
    """--min-recall CLASS=X (repeatable) -> {class: floor}. Raises UsageError."""
    floors = {}
    for item in items or []:
        name, _, value = item.rpartition("=")
        try:
            floor = float(value)
        except ValueError:
            floor = None
        if not name or floor is None:
            raise UsageError(f"--min-recall {item!r}: use CLASS=FLOOR, e.g. --min-recall COVID=0.95")
        floors[name] = floor
    return floors


def cmd_compile(args) -> None:
    from medkfp.pipelines.compile import compile_pipeline

    gpu_node = configs.GpuNode(
        gpus=args.gpus,
        node_selector=configs.parse_node_selector(args.gpu_node_selector or []),
        tolerations=tuple(configs.parse_toleration(t) for t in args.gpu_toleration)
        if args.gpu_toleration
        else configs.GpuNode().tolerations,
    )
    print(compile_pipeline(args.out, gpu_node, image=args.image, gpu_image=args.gpu_image))


def cmd_evaluate(args) -> None:
    from medkfp.external_evaluation import evaluate_external

    result = evaluate_external(args.model, args.source, args.dataset, report_path=args.report)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    m = result["metrics"]
    counts = result["counts"]
    print(
        f"{result['model']} on {result['source']} ({result['dataset']}): "
        f"{counts['accepted']} images scored, {counts['rejected']} rejected"
    )
    roc = m["macro_roc_auc"]
    print(
        f"accuracy {m['accuracy']:.4f}  balanced accuracy {m['balanced_accuracy']:.4f}  "
        f"macro-F1 {m['macro_f1']:.4f}  weighted F1 {m['weighted_f1']:.4f}  "
        f"macro ROC-AUC {'n/a' if roc is None else f'{roc:.4f}'}"
    )
    for name, c in m["per_class"].items():
        print(
            f"  {name:<20} precision {c['precision']:.3f}  recall {c['recall']:.3f}  "
            f"specificity {c['specificity']:.3f}  F1 {c['f1']:.3f}  support {c['support']}"
        )
    if args.report:
        print(f"report: {args.report}")


def cmd_serve(args) -> None:
    from medkfp.serving.server import RequestLimits, ServerOptions, serve
    from medkfp.serving.tfserving import TF_SERVING, choose_engine, serve_with_tfserving

    batching = _batching_parameters(args)
    if choose_engine(args.engine) == TF_SERVING:
        if batching is not None:
            raise UsageError(
                "--enable-batching is for the built-in server (--engine builtin); TF Serving "
                "takes --enable_batching and --batching_parameters_file itself"
            )
        model_dir = args.model_dir or vocab.DEFAULT_SERVING_DIR
        serve_with_tfserving(args.store, model_dir, port=args.port, poll_interval=args.poll)
        return
    source = args.store
    if args.model_dir:
        from medkfp.serving.sync import MirrorStore

        if args.store:
            raise UsageError("the built-in server serves --store or a --model-dir mirror, not both")
        source = MirrorStore(args.model_dir)
    if not args.verbose:
        import tensorflow as tf

        # TensorFlow probes its devices when the first model loads and, on a machine
        # without a GPU, prints a C++ line about cuInit there: probe them now, with the
        # import's start-up lines (shown with -v).
        with native_stderr_silenced():
            tf.config.list_physical_devices()
    serve(
        source,
        ServerOptions(
            port=args.port,
            host=args.host,
            poll_interval=args.poll,
            limits=RequestLimits(args.max_image_pixels, args.max_batch),
            max_message_bytes=args.max_request_mb * 1024 * 1024,
            batching=batching,
        ),
    )


BATCHING_FLAGS = ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads")


def _batching_parameters(args):
    """serve's batching flags -> BatchingParameters (file first, flags over it), or None when
    batching is off. Raises UsageError for a batching flag without --enable-batching."""
    from medkfp.serving.batching import BatchingParameters, read_batching_parameters

    given = {name: getattr(args, name) for name in BATCHING_FLAGS if getattr(args, name) is not None}
    if not args.enable_batching:
        if given or args.batching_parameters_file:
            flag = "--" + (next(iter(given)) if given else "batching_parameters_file").replace("_", "-")
            raise UsageError(f"{flag} needs --enable-batching")
        return None
    base = BatchingParameters()
    if args.batching_parameters_file:
        base = read_batching_parameters(args.batching_parameters_file)
    return BatchingParameters(**{**base.__dict__, **given})


def cmd_serving_sync(args) -> None:
    import threading

    from medkfp.serving.process import stop_on_signals
    from medkfp.serving.sync import ServingSync
    from medkfp.store import open_store

    sync = ServingSync(open_store(args.store), args.dir, server=args.server)
    if args.once or args.interval <= 0:
        print(json.dumps(sync.sync_once().to_dict()))
        return
    stop = threading.Event()
    after_pass = None
    if args.health_port:
        from medkfp.serving.health import SyncHealth, start_health_server

        health = SyncHealth(sync, args.interval)
        start_health_server(health, args.health_port)
        after_pass = health.record_pass
    with stop_on_signals(stop):
        sync.run(
            args.interval,
            stop,
            on_pass=lambda r: print(json.dumps(r.to_dict()), flush=True),
            after_pass=after_pass,
        )


def cmd_predict(args) -> None:
    from medkfp.dicom import load_image_file
    from medkfp.serving.client import predict, rest_response

    images = []
    for path in args.images:
        try:
            images.append(load_image_file(path))  # DICOM: windowed as for training, sent as PNG
        except OSError as e:
            raise UsageError(f"cannot read image {path}: {e.strerror}") from None
    result = predict(
        args.server,
        args.model,
        images,
        version=args.version,
        label=args.label,
        timeout=args.timeout,
        retries=args.retries,
        backoff=args.backoff,
    )
    if args.rest_json:
        print(json.dumps(rest_response(result), indent=2))
        return
    if args.json:
        for path, p in zip(args.images, result["predictions"]):
            p["image"] = path
        print(json.dumps(result, indent=2))
        return
    print(f"model {result['model']} v{result['version']}")
    for path, p in zip(args.images, result["predictions"]):
        probabilities = p["probabilities"]
        if isinstance(probabilities, dict):
            shown = " ".join(f"{k}={v:.3f}" for k, v in probabilities.items())
        else:
            shown = " ".join(f"{v:.3f}" for v in probabilities)
        print(f"{path}: {p['class']}  [{shown}]")


def cmd_models_list(args) -> None:
    from medkfp.model_repository import ModelRepository
    from medkfp.store import open_store

    repository = ModelRepository(open_store(args.store))
    rows = repository.versions(args.model)
    if not rows:
        raise UsageError(f"no versions of model {args.model!r} in {repository.store.uri}")
    if args.json:
        print(json.dumps(rows, indent=2))
        return

    def score(value) -> str:
        return f"{value:.4f}" if value is not None else "  n/a "

    print("* stable, + loaded")
    for r in rows:
        mark = "*" if r["stable"] else "+" if r["loaded"] else " "
        candidate = r["candidate"] or "(external)"
        print(
            f"{mark} v{r['version']}  {candidate:<28} macro-F1 {score(r['macro_f1'])}  "
            f"accuracy {score(r['accuracy'])}  {r['created']}  run {r['run_id']}"
        )


def cmd_models_publish(args) -> None:
    from medkfp.model_repository import ModelRepository
    from medkfp.store import open_store

    metadata = {}
    if args.metadata:
        try:
            metadata = json.loads(Path(args.metadata).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UsageError(f"cannot read --metadata {args.metadata}: {e}") from None
    if args.class_names:
        metadata["class_names"] = [c.strip() for c in args.class_names.split(",")]
    metadata.setdefault("source_model_uri", str(Path(args.saved_model).absolute()))
    repository = ModelRepository(open_store(args.store))
    version = repository.publish(args.model, args.saved_model, metadata, keep=args.keep)
    print(
        json.dumps(
            {
                "model": args.model,
                "version": version,
                "stable": version,
                "loaded": repository.served_versions(args.model),
                "uri": repository.store.uri_for(vocab.model_version_key(args.model, version)),
            }
        )
    )


def cmd_models_rollback(args) -> None:
    from medkfp.model_repository import ModelRepository
    from medkfp.store import open_store

    repository = ModelRepository(open_store(args.store))
    before = repository.stable_version(args.model)
    stable = repository.rollback(args.model, args.version)
    print(
        json.dumps(
            {
                "model": args.model,
                "previous_stable": before,
                "stable": stable,
                "loaded": repository.served_versions(args.model),
            }
        )
    )


SOURCE_HELP = "the raw images: a folder, a .zip/.tar(.gz) download, or s3://bucket/prefix"
# The run parameters `plan` reads: what decides the files, the labels and the splits.
PLAN_PARAMETERS = (
    "dataset",
    "source",
    "label",
    "labels",
    "test_fraction",
    "val_fraction",
    "seed",
    "max_rejected_fraction",
)


def add_run_parameters(s: argparse.ArgumentParser, only: tuple[str, ...] = ()) -> None:
    """The pipeline's run parameters (configs.RunConfig) as options: all of them for `run`, `submit`
    and `schedule create`, the `only` ones for `plan`.

    The store is left out: each command says where its store is.
    """
    types = typing.get_type_hints(configs.RunConfig)
    for f in dataclasses.fields(configs.RunConfig):
        if f.name == "store" or (only and f.name not in only):
            continue
        flag, meta, kind = configs.run_parameter_flag(f), f.metadata, types[f.name]
        text = " ".join(filter(None, (meta["help"], meta["cli_note"]))).replace("%", "%%")
        if kind is bool:
            s.add_argument(flag, dest=f.name, action="store_true", help=text)
        elif f.name == "min_recall":
            s.add_argument(flag, dest=f.name, action="append", metavar="CLASS=X", help=text)
        else:
            required = f.default is dataclasses.MISSING
            s.add_argument(
                flag,
                dest=f.name,
                type=kind,
                required=required,
                metavar=metavar(flag, meta),
                default=None if required else f.default,
                choices=meta["choices"] or None,
                help=text,
            )


def metavar(flag: str, meta) -> str | None:
    """The flag's name in upper case (NAME for --name); argparse shows the choices instead."""
    return None if meta["choices"] else flag.lstrip("-").replace("-", "_").upper()


def run_config(args: argparse.Namespace, store: str) -> configs.RunConfig:
    """The RunConfig of `run` / `submit` / `schedule create` options. Raises InvalidInputError."""
    names = [f.name for f in dataclasses.fields(configs.RunConfig) if f.name != "store"]
    values = {name: getattr(args, name) for name in names}
    values["min_recall"] = parse_min_recall(args.min_recall)
    return configs.RunConfig(store=store, **values)


def add_compile_options(s: argparse.ArgumentParser) -> None:
    """The images and GPU placement a compiled pipeline carries: `compile`, `submit`, `schedule create`."""
    s.add_argument("--image", help=f"image of every step (default {vocab.COMPONENT_IMAGE})")
    s.add_argument(
        "--gpu-image",
        help="image of the train step (default: --image with a -gpu tag suffix, "
        f"else {vocab.GPU_COMPONENT_IMAGE})",
    )
    s.add_argument("--gpus", type=int, default=configs.GPU_COUNT, help="GPUs per train task")
    s.add_argument(
        "--gpu-node-selector",
        action="append",
        metavar="KEY=VALUE",
        help="node label the train task needs (repeatable)",
    )
    s.add_argument(
        "--gpu-toleration",
        action="append",
        metavar="KEY[=VALUE][:EFFECT]",
        help="taint the train task tolerates (repeatable; default nvidia.com/gpu:NoSchedule)",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medkfp", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write a deterministic synthetic dataset in the real layout")
    s.add_argument("dataset", choices=[vocab.COVID, vocab.MIAS, vocab.DICOM])
    s.add_argument(
        "--layout",
        choices=["imagefolder", "flat"],
        default="imagefolder",
        help="dicom: class folders, or a flat export with labels.csv",
    )
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--per-class", type=int)
    s.add_argument("--counts", help="comma-separated count per class, in the dataset's order")
    s.add_argument("--size", type=int, help="image side in pixels (default: the real size)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser("plan", help="dry run: files found / accepted / rejected, splits, balancing, leakage")
    add_run_parameters(s, only=PLAN_PARAMETERS)
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.set_defaults(func=cmd_plan)

    s = sub.add_parser("run", help="run the whole pipeline on this machine (kfp.local)")
    add_run_parameters(s)
    s.add_argument("--store", help="store URI (default: $MEDKFP_STORE, s3://medkfp or .medkfp/store)")
    s.add_argument("--summary", help="write the run summary JSON here")
    s.add_argument("--pipeline-root", help="where kfp.local keeps task outputs and run.log")
    s.add_argument(
        "--runner",
        choices=configs.RUNNERS,
        default=configs.SUBPROCESS_RUNNER,
        help="subprocess: steps run in this Python; docker: each step in its own container "
        "of --image through the Docker API (Docker, or Podman's socket via DOCKER_HOST)",
    )
    s.add_argument("--image", help=f"the steps' image with --runner docker (default {vocab.COMPONENT_IMAGE})")
    s.set_defaults(func=cmd_run)  # loads TensorFlow itself, once the cheap checks pass

    s = sub.add_parser("compile", help="compile the pipeline YAML for the KFP UI")
    s.add_argument("--out", default="pipeline.yaml")
    add_compile_options(s)
    s.set_defaults(func=cmd_compile)

    s = sub.add_parser("evaluate", help="score an existing model on another dataset (external validation)")
    s.add_argument(
        "--model",
        required=True,
        help="a model version in the store (s3://medkfp/models/NAME/N) or a SavedModel folder",
    )
    s.add_argument("--source", required=True, help=SOURCE_HELP)
    s.add_argument(
        "--dataset",
        choices=vocab.DATASETS,
        help="layout of the source (default: the model's dataset, else imagefolder)",
    )
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    s.add_argument("--report", help="write the HTML report (per-class table, confusion matrix) here")
    s.set_defaults(func=cmd_evaluate, needs_tensorflow=True)

    s = sub.add_parser("serve", help="serve the model repository over TF Serving's gRPC API")
    s.add_argument("--store")
    s.add_argument("--port", type=int, default=vocab.DEFAULT_GRPC_PORT)
    s.add_argument("--host", default=vocab.DEFAULT_SERVE_HOST, help="address the built-in server binds")
    s.add_argument(
        "--engine",
        choices=vocab.SERVING_ENGINES,
        default="auto",
        help="auto: tensorflow_model_server when it is on PATH, else the built-in server",
    )
    s.add_argument(
        "--model-dir",
        help="TF Serving: the local mirror serving-sync keeps (default "
        f"{vocab.DEFAULT_SERVING_DIR}); built-in: serve this mirror instead of --store",
    )
    s.add_argument(
        "--poll", type=float, default=vocab.DEFAULT_POLL_SECONDS, help="seconds between models.config checks"
    )
    s.add_argument(
        "--max-image-pixels",
        type=int,
        default=vocab.MAX_IMAGE_PIXELS,
        help="built-in: largest image (width x height) accepted, read from its header",
    )
    s.add_argument(
        "--max-batch", type=int, default=vocab.DEFAULT_MAX_BATCH, help="built-in: most images per request"
    )
    s.add_argument(
        "--max-request-mb",
        type=int,
        default=vocab.MAX_MESSAGE_BYTES // 2**20,
        help="built-in: largest request message",
    )
    s.add_argument(
        "--enable-batching",
        action="store_true",
        help="built-in: run concurrent requests for one model version and signature as one batch",
    )
    s.add_argument(
        "--batching-parameters-file",
        help="built-in: TF Serving's BatchingParameters text file (the flags below override it)",
    )
    s.add_argument("--max-batch-size", type=int, help="batching: most images per batch (default 32)")
    s.add_argument(
        "--batch-timeout-micros",
        type=int,
        help="batching: longest wait for a batch to fill, in microseconds (default 5000)",
    )
    s.add_argument(
        "--max-enqueued-batches",
        type=int,
        help="batching: batches that may wait; beyond, requests get UNAVAILABLE (default 100)",
    )
    s.add_argument("--num-batch-threads", type=int, help="batching: batches run at once (default 2)")
    s.set_defaults(func=cmd_serve, needs_tensorflow=True)

    s = sub.add_parser("serving-sync", help="mirror models.config and its versions for TF Serving")
    s.add_argument("--store")
    s.add_argument("--dir", required=True, help="the local folder TF Serving reads")
    s.add_argument("--interval", type=float, default=10.0, help="seconds between passes; 0: one pass")
    s.add_argument("--once", action="store_true", help="one pass, then exit")
    s.add_argument(
        "--server",
        help="HOST:PORT of the server reading the folder; labels then move "
        "only once it reports their new version AVAILABLE",
    )
    s.add_argument(
        "--health-port",
        type=int,
        help="serve /livez and /readyz (every model in models.config "
        "AVAILABLE on --server) on this port, for the pod's probes",
    )
    s.set_defaults(func=cmd_serving_sync)

    s = sub.add_parser("predict", help="send images to a model server over gRPC")
    s.add_argument("--server", required=True, help="HOST:PORT")
    s.add_argument("--model", required=True)
    which = s.add_mutually_exclusive_group()
    which.add_argument("--version", type=int)
    which.add_argument("--label")
    s.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    s.add_argument("--retries", type=int, default=2, help="retries when the server is UNAVAILABLE")
    s.add_argument("--backoff", type=float, default=0.5, help="first retry delay in s, doubling")
    output = s.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true")
    output.add_argument(
        "--rest-json", action="store_true", help="print it shaped like TF Serving's REST predict response"
    )
    s.add_argument("images", nargs="+", metavar="IMAGE")
    s.set_defaults(func=cmd_predict, needs_tensorflow=True)

    s = sub.add_parser("models", help="the model repository")
    models = s.add_subparsers(dest="models_command", required=True)
    m = models.add_parser("list", help="versions of a model with their metrics")
    m.add_argument("--model", required=True)
    m.add_argument("--store")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_models_list)
    m = models.add_parser("publish", help="publish a SavedModel trained elsewhere as the next stable version")
    m.add_argument("--model", required=True)
    m.add_argument("--saved-model", required=True, help="SavedModel folder with serving_default(image_bytes)")
    m.add_argument("--store")
    m.add_argument("--metadata", help="JSON file of metadata to store with it (class_names, metrics, ...)")
    m.add_argument("--class-names", help="comma-separated class names, in the model's output order")
    m.add_argument(
        "--keep",
        type=int,
        default=vocab.DEFAULT_KEEP_VERSIONS,
        help="versions to keep in the repository (the served ones are always kept)",
    )
    m.set_defaults(func=cmd_models_publish, needs_tensorflow=True)
    m = models.add_parser("rollback", help="make the previous stable version stable again")
    m.add_argument("--model", required=True)
    m.add_argument("--store")
    m.add_argument("--version", type=int, help="make this version stable instead of the previous one")
    m.set_defaults(func=cmd_models_rollback)

    from medkfp import cli_kfp  # submit, schedule: here, since cli_kfp imports this module

    cli_kfp.add_parsers(sub)
    return p


@contextlib.contextmanager
def tensorflow_loaded(verbose: bool):
    """Inside: imports that load TensorFlow, its C++ start-up lines kept out of the terminal
    (shown with -v)."""
    if verbose:
        yield
        return
    with native_stderr_silenced():
        import tensorflow  # noqa: F401 (loaded here so that its start-up lines stay out of the terminal)

        yield


@contextlib.contextmanager
def native_stderr_silenced():
    """Point file descriptor 2 at /dev/null while inside.

    TensorFlow's C++ start-up lines (absl's pre-init warning, oneDNN, the CUDA stub, CPU
    features) go straight to fd 2 and ignore TF_CPP_MIN_LOG_LEVEL; Python's own errors are
    raised as usual and printed after the block.
    """
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if getattr(args, "needs_tensorflow", False):
            with tensorflow_loaded(args.verbose):
                pass
        args.func(args)
    except KeyboardInterrupt:
        return 130
    except UserError as e:
        if args.verbose:
            raise
        print(f"medkfp: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a bug: one line here, the traceback with -v
        if args.verbose:
            raise
        print(
            f"medkfp: internal error: {type(e).__name__}: {e} (run with -v for the traceback, and report it)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
