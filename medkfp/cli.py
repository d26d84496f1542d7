"""The `medkfp` command line (contract in DESIGN.md: names, flags and JSON keys are stable)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from medkfp import vocab
from medkfp.pipelines import configs


class UsageError(ValueError):
    """A user-caused problem; printed as one line, exit status 2."""


def cmd_synth(args) -> None:
    from medkfp import synth

    counts = [int(n) for n in args.counts.split(",")] if args.counts else None
    make = {vocab.COVID: synth.synth_covid, vocab.MIAS: synth.synth_mias}[args.dataset]
    kwargs = {"per_class": args.per_class, "counts": counts, "seed": args.seed}
    if args.size:
        kwargs["size"] = args.size
    written = make(args.out, progress=sys.stderr.isatty(), **kwargs)
    print(json.dumps({"dataset": args.dataset, "out": str(args.out), "counts": written}))


def cmd_run(args) -> None:
    from medkfp.pipelines.local_runner import run_local

    if args.label != "class":
        raise UsageError("--label severity needs the mias dataset, which this version cannot ingest yet")
    summary = run_local(
        dataset=args.dataset,
        source=args.source,
        store=args.store,
        model_name=args.name,
        grid=args.grid,
        epochs=args.epochs,
        image_size=args.image_size,
        test_fraction=args.test_fraction,
        val_fraction=args.val_fraction,
        seed=args.seed,
        min_delta=args.min_delta,
        pipeline_root=args.pipeline_root,
    )
    if args.summary:
        Path(args.summary).parent.mkdir(parents=True, exist_ok=True)
        Path(args.summary).write_text(json.dumps(summary, indent=2))
    print_summary(summary)


def print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    counts = summary["counts"]
    table = Table(title=f"{summary['dataset']}: candidates on the test split")
    for column in ("candidate", "accuracy", "balanced acc.", "macro-F1", ""):
        table.add_column(column)
    for c in summary["candidates"]:
        m = c["metrics"]
        table.add_row(
            c["name"],
            f"{m['accuracy']:.4f}",
            f"{m['balanced_accuracy']:.4f}",
            f"{m['macro_f1']:.4f}",
            "selected" if c["name"] == summary["selected"] else "",
        )
    console = Console()
    console.print(
        f"images found {counts['found']}, accepted {counts['accepted']}, "
        f"rejected {counts['rejected']}; train {counts['train']} / val {counts['val']} / "
        f"test {counts['test']}"
    )
    console.print(table)
    pushed = summary["pushed"]
    if pushed:
        console.print(f"pushed {pushed['model_name']} v{pushed['version']} ({pushed['uri']}): "
                      f"{summary['push_reason']}")
    else:
        console.print(f"nothing pushed: {summary['push_reason']}")


def cmd_compile(args) -> None:
    from medkfp.pipelines.compile import compile_pipeline

    print(compile_pipeline(args.out))


def cmd_serve(args) -> None:
    from medkfp.serving.server import serve

    serve(args.store, port=args.port, host=args.host)


def cmd_predict(args) -> None:
    from medkfp.serving.client import predict

    images = []
    for path in args.images:
        try:
            images.append(Path(path).read_bytes())
        except OSError as e:
            raise UsageError(f"cannot read image {path}: {e.strerror}") from None
    result = predict(
        args.server, args.model, images, version=args.version, label=args.label,
        timeout=args.timeout,
    )
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
    stable = repository.stable_version(args.model)
    rows = []
    for version in repository.complete_versions(args.model):
        metadata = repository.metadata(args.model, version)
        rows.append({
            "version": version,
            "stable": version == stable,
            "candidate": metadata["candidate"]["name"],
            "macro_f1": metadata["metrics"]["macro_f1"],
            "accuracy": metadata["metrics"]["accuracy"],
            "created": metadata["created"],
            "run_id": metadata["run_id"],
        })
    if not rows:
        raise UsageError(f"no versions of model {args.model!r} in {repository.store.uri}")
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        mark = "*" if r["stable"] else " "
        print(f"{mark} v{r['version']}  {r['candidate']:<28} macro-F1 {r['macro_f1']:.4f}  "
              f"accuracy {r['accuracy']:.4f}  {r['created']}  run {r['run_id']}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medkfp", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write a deterministic synthetic dataset in the real layout")
    s.add_argument("dataset", choices=[vocab.COVID, vocab.MIAS])
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--per-class", type=int)
    s.add_argument("--counts", help="comma-separated count per class, in the dataset's order")
    s.add_argument("--size", type=int, help="image side in pixels (default: the real size)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser("run", help="run the whole pipeline on this machine (kfp.local)")
    s.add_argument("--dataset", required=True, choices=vocab.DATASETS)
    s.add_argument("--source", required=True, help="folder of the raw images")
    s.add_argument("--name", help="served model name (default: dataset or folder name)")
    s.add_argument("--label", default="class", choices=["class", "severity"])
    s.add_argument("--grid", default=configs.DEFAULT_GRID, help="quick | a JSON/YAML grid file")
    s.add_argument("--epochs", type=int, default=configs.DEFAULT_EPOCHS)
    s.add_argument("--image-size", type=int, default=configs.DEFAULT_IMAGE_SIZE)
    s.add_argument("--test-fraction", type=float, default=configs.DEFAULT_TEST_FRACTION)
    s.add_argument("--val-fraction", type=float, default=configs.DEFAULT_VAL_FRACTION)
    s.add_argument("--seed", type=int, default=configs.DEFAULT_SEED)
    s.add_argument("--store", help="store URI (default: $MEDKFP_STORE, s3://medkfp or .medkfp/store)")
    s.add_argument("--summary", help="write the run summary JSON here")
    s.add_argument("--min-delta", type=float, default=configs.DEFAULT_MIN_DELTA)
    s.add_argument("--pipeline-root", help="where kfp.local keeps task outputs and run.log")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("compile", help="compile the pipeline YAML for the KFP UI")
    s.add_argument("--out", default="pipeline.yaml")
    s.set_defaults(func=cmd_compile)

    s = sub.add_parser("serve", help="serve the model repository over TF Serving's gRPC API")
    s.add_argument("--store")
    s.add_argument("--port", type=int, default=vocab.DEFAULT_GRPC_PORT)
    s.add_argument("--host", default="0.0.0.0")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("predict", help="send images to a model server over gRPC")
    s.add_argument("--server", required=True, help="HOST:PORT")
    s.add_argument("--model", required=True)
    which = s.add_mutually_exclusive_group()
    which.add_argument("--version", type=int)
    which.add_argument("--label")
    s.add_argument("--timeout", type=float, default=30.0)
    s.add_argument("--json", action="store_true")
    s.add_argument("images", nargs="+", metavar="IMAGE")
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("models", help="the model repository")
    models = s.add_subparsers(dest="models_command", required=True)
    m = models.add_parser("list", help="versions of a model with their metrics")
    m.add_argument("--model", required=True)
    m.add_argument("--store")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_models_list)
    return p


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the user must fix something: shown as one line, no traceback."""
    from medkfp.components.ingest.layouts import LayoutError
    from medkfp.pipelines.local_runner import PipelineFailed
    from medkfp.store import StoreError

    errors = [UsageError, LayoutError, StoreError, PipelineFailed, ValueError, FileNotFoundError]
    from medkfp.serving.client import ServingError
    from medkfp.serving.server import ServeError

    return (*errors, ServingError, ServeError)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        args.func(args)
    except KeyboardInterrupt:
        return 130
    except user_errors() as e:
        if args.verbose:
            raise
        print(f"medkfp: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
