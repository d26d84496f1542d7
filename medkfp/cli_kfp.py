"""`medkfp submit` and `medkfp schedule`: runs and recurring runs on a KFP cluster (DESIGN.md's contract).

kfp is imported inside the command functions only: building the parser stays fast.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

from medkfp import vocab
from medkfp.cli import add_compile_options, add_run_parameters, run_config
from medkfp.errors import InvalidInputError
from medkfp.pipelines import configs
from medkfp.pipelines.kubeflow_runner import DEFAULT_EXPERIMENT, DEFAULT_WAIT_TIMEOUT
from medkfp.store import DEFAULT_S3_STORE


def pipeline_arguments(args: argparse.Namespace) -> dict:
    """The pipeline's parameters (configs.RunConfig) from `submit` / `schedule create` options.

    Checked here, before the server is called: the label fits the dataset, the grid expands, recall
    floors name real classes; a grid FILE is read here and sent as JSON. The data and the store are
    never read: the pods do that. Raises InvalidInputError naming the option and the fix.
    """
    for option, uri in (("--source", args.source), ("--store", args.store)):
        if not uri.startswith("s3://"):
            raise InvalidInputError(
                f"{option} {uri}: the pipeline's pods read and write the store over S3, not this "
                "machine's files; upload the images (aws s3 cp --recursive, mc cp -r) and pass s3://bucket/prefix"
            )
    config = run_config(args, args.store.rstrip("/")).completed()
    floors = check_recall_floors(config.min_recall, config.dataset, config.label)
    return replace(config, min_recall=floors).arguments()


def check_recall_floors(floors: dict[str, float], dataset: str, label: str) -> dict[str, float]:
    """Recall floors must lie in [0, 1] and, where the class list is known without reading the data
    (covid19-radiography, mias), name a class. Raises ValueError."""
    known = {vocab.COVID: vocab.COVID_CLASSES, vocab.MIAS: vocab.MIAS_CLASSES}.get(dataset)
    if label == "severity":
        known = vocab.SEVERITY_CLASSES
    for name, floor in floors.items():
        if known is not None and name not in known:
            raise InvalidInputError(
                f"--min-recall names class {name!r}, which is not one of {', '.join(known)}"
            )
        if not 0 <= floor <= 1:
            raise InvalidInputError(f"--min-recall {name}={floor}: a recall floor is between 0 and 1")
    return floors


def compile_options(args: argparse.Namespace):
    """CompileOptions from the `medkfp compile` flags. Raises ValueError for a bad selector/toleration."""
    from medkfp.pipelines.kubeflow_runner import CompileOptions

    tolerations = (
        tuple(configs.parse_toleration(t) for t in args.gpu_toleration)
        if args.gpu_toleration
        else configs.GpuNode().tolerations
    )
    selector = configs.parse_node_selector(args.gpu_node_selector or [])
    node = configs.GpuNode(gpus=args.gpus, node_selector=selector, tolerations=tolerations)
    return CompileOptions(gpu_node=node, image=args.image, gpu_image=args.gpu_image)


def runner(args: argparse.Namespace):
    from medkfp.pipelines.kubeflow_runner import KubeflowRunner, Target

    return KubeflowRunner(Target(args.host, args.namespace, args.token, args.token_file))


def cmd_submit(args) -> None:
    arguments = pipeline_arguments(args)
    options = compile_options(args)
    kfp = runner(args)
    result = kfp.submit(arguments, options, experiment=args.experiment)
    if args.json:
        print(json.dumps(result, indent=2), flush=True)
    else:
        print(
            f"pipeline {configs.PIPELINE_NAME} version {result['pipeline_version_id']}: "
            f"{'uploaded' if result['uploaded'] else 'unchanged, not uploaded again'}"
        )
        print(f"run {result['run_id']} in experiment {args.experiment}: {result['run_url']}", flush=True)
    if args.wait:
        state = kfp.wait(result["run_id"], timeout=args.timeout)
        if not args.json:
            print(f"run {result['run_id']} {state}")


def cmd_schedule_create(args) -> None:
    from medkfp.pipelines.kubeflow_runner import Trigger, check_cron, parse_every

    # The trigger is checked first: a typo in it fails before anything is compiled or sent.
    if args.cron is not None:
        trigger = Trigger(cron=check_cron(args.cron))
    else:
        trigger = Trigger(interval_seconds=parse_every(args.every))
    arguments = pipeline_arguments(args)
    result = runner(args).schedule_create(
        args.schedule, trigger, arguments, compile_options(args), experiment=args.experiment
    )
    if args.json:
        print(json.dumps(result, indent=2))
    elif result["changed"]:
        print(f"schedule {args.schedule}: recurring run {result['recurring_run_id']} ({trigger.describe()})")
    else:
        print(
            f"schedule {args.schedule} unchanged: recurring run {result['recurring_run_id']} "
            f"already has this spec, these parameters and {trigger.describe()}"
        )


def cmd_schedule_list(args) -> None:
    rows = runner(args).schedule_list()
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print(f"no medkfp schedules at {args.host}")
        return
    for row in rows:
        when = f"cron {row['cron']}" if row["cron"] else f"every {row['interval_seconds']} s"
        state = "" if row["enabled"] else "  (disabled)"
        params = row["parameters"]
        print(
            f"{row['schedule']}  {when}  model {params.get('model_name', '?')} from "
            f"{params.get('source', '?')}  recurring run {row['recurring_run_id']}{state}"
        )


def cmd_schedule_delete(args) -> None:
    deleted = runner(args).schedule_delete(args.schedule)
    print(f"deleted schedule {args.schedule} (recurring run {', '.join(deleted)})")


def add_connection_options(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--host",
        required=True,
        help="the KFP UI or API URL, e.g. http://localhost:8080 (a port-forward of ml-pipeline-ui)",
    )
    s.add_argument("--namespace", help="your profile namespace (multi-user KFP)")
    token = s.add_mutually_exclusive_group()
    token.add_argument(
        "--token", help="bearer token (others on this machine can see it: prefer --token-file)"
    )
    token.add_argument(
        "--token-file",
        help="file holding a bearer token (default: the file "
        "$KF_PIPELINES_SA_TOKEN_PATH names, or in a pod its KFP service-account token)",
    )


def add_pipeline_options(s: argparse.ArgumentParser) -> None:
    """Run parameters, the store, the experiment and the compile flags of `submit` / `schedule create`."""
    add_run_parameters(s)
    s.add_argument(
        "--store",
        default=DEFAULT_S3_STORE,
        help=f"the store the pods use, over S3 (default {DEFAULT_S3_STORE})",
    )
    s.add_argument(
        "--experiment",
        default=DEFAULT_EXPERIMENT,
        help=f"KFP experiment, created when missing (default {DEFAULT_EXPERIMENT})",
    )
    add_compile_options(s)


def add_parsers(sub) -> None:
    """Register `submit` and `schedule {create,list,delete}` on the `medkfp` subparsers."""
    s = sub.add_parser("submit", help="start a run on a KFP cluster (uploads the pipeline when it changed)")
    add_connection_options(s)
    add_pipeline_options(s)
    s.add_argument("--wait", action="store_true", help="follow the run; exit non-zero unless it succeeds")
    s.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_WAIT_TIMEOUT,
        help=f"seconds --wait waits (default {DEFAULT_WAIT_TIMEOUT})",
    )
    s.add_argument("--json", action="store_true", help="print the ids and the run's link as JSON")
    s.set_defaults(func=cmd_submit)

    s = sub.add_parser("schedule", help="recurring retraining runs on a KFP cluster")
    schedule = s.add_subparsers(dest="schedule_command", required=True)
    c = schedule.add_parser("create", help="create or update the recurring run of one schedule name")
    add_connection_options(c)
    c.add_argument("--schedule", required=True, help="the schedule's name (one recurring run per name)")
    when = c.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", help='6 fields, seconds first: "S M H DOM MON DOW", e.g. "0 0 2 * * *"')
    when.add_argument("--every", help="an interval, e.g. 24h, 30m, 1h30m, 7d")
    add_pipeline_options(c)
    c.add_argument("--json", action="store_true", help="print the recurring run's id and whether it changed")
    c.set_defaults(func=cmd_schedule_create)

    c = schedule.add_parser("list", help="the medkfp pipeline's recurring runs")
    add_connection_options(c)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_schedule_list)

    c = schedule.add_parser("delete", help="delete the recurring run of one schedule name")
    add_connection_options(c)
    c.add_argument("--schedule", required=True)
    c.set_defaults(func=cmd_schedule_delete)
