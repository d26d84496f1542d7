"""The pipeline graph: it only wires the steps; defaults live in configs.py."""

from contextvars import ContextVar

from kfp import dsl, kubernetes

from medkfp import vocab
from medkfp.components.balance import component as balance_step
from medkfp.components.evaluate import component as evaluate_step
from medkfp.components.grid import component as grid_step
from medkfp.components.ingest import component as ingest_step
from medkfp.components.preprocess import component as preprocess_step
from medkfp.components.push import component as push_step
from medkfp.components.train import component as train_step
from medkfp.pipelines import configs as c


def with_store_credentials(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """On the cluster every step reads the S3 endpoint and keys from one Secret."""
    kubernetes.use_secret_as_env(task, secret_name=c.S3_SECRET, secret_key_to_env=c.S3_SECRET_ENV)
    return task


# The GPU node settings of the pipeline being built (a `medkfp compile` option).
GPU_NODE: ContextVar[c.GpuNode | None] = ContextVar("GPU_NODE", default=None)


def on_gpu_node(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """GPU request, node selector, tolerations and retries with backoff: the train task only."""
    node = GPU_NODE.get() or c.GpuNode()
    task.set_accelerator_type(c.GPU_RESOURCE).set_accelerator_limit(node.gpus)
    for key, value in node.node_selector.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for toleration in node.tolerations:
        kubernetes.add_toleration(task, **toleration)
    task.set_retry(num_retries=node.retries, **c.TRAIN_RETRY_BACKOFF)
    return task


def pipeline_graph(
    dataset: str,
    source: str,
    store: str,
    model_name: str = "",
    grid: str = c.DEFAULT_GRID,
    epochs: int = c.DEFAULT_EPOCHS,
    image_size: int = c.DEFAULT_IMAGE_SIZE,
    test_fraction: float = c.DEFAULT_TEST_FRACTION,
    val_fraction: float = c.DEFAULT_VAL_FRACTION,
    seed: int = c.DEFAULT_SEED,
    min_delta: float = c.DEFAULT_MIN_DELTA,
    label: str = "class",
    max_rejected_fraction: float = vocab.DEFAULT_MAX_REJECTED_FRACTION,
    selection_metric: str = c.DEFAULT_SELECTION_METRIC,
    min_recall: dict = {},  # noqa: B006 (KFP reads the default; the dict is never mutated)
    weights: str = c.DEFAULT_WEIGHTS,
    freeze_backbone: bool = False,
) -> str:
    candidates = grid_step.grid(
        grid=grid, dataset=dataset, epochs=epochs, image_size=image_size, weights=weights,
        freeze_backbone=freeze_backbone,
    )
    run_image_size = grid_step.grid_image_size(grid=grid, dataset=dataset, image_size=image_size)
    ingest = with_store_credentials(
        ingest_step.ingest(
            dataset=dataset,
            source=source,
            store=store,
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            label=label,
            max_rejected_fraction=max_rejected_fraction,
        )
    )
    preprocess = with_store_credentials(
        preprocess_step.preprocess(
            manifest=ingest.outputs["manifest"],
            image_size=run_image_size.output,
            test_fraction=test_fraction,
            val_fraction=val_fraction,
            seed=seed,
        )
    )

    with dsl.ParallelFor(candidates.output, parallelism=c.TRAIN_PARALLELISM) as candidate:
        balance = with_store_credentials(
            balance_step.balance(dataset=preprocess.outputs["dataset"], candidate=candidate, seed=seed)
        )
        train = on_gpu_node(
            with_store_credentials(
                train_step.train(
                    dataset=preprocess.outputs["dataset"],
                    balanced=balance.outputs["balanced"],
                    candidate=candidate,
                    seed=seed,
                )
            )
        )
        evaluate = with_store_credentials(
            evaluate_step.evaluate(dataset=preprocess.outputs["dataset"], model=train.outputs["model"])
        )

    push = with_store_credentials(
        push_step.push(
            evaluations=dsl.Collected(evaluate.outputs["evaluation"]),
            manifest=ingest.outputs["manifest"],
            dataset=preprocess.outputs["dataset"],
            store=store,
            model_name=model_name,
            min_delta=min_delta,
            selection_metric=selection_metric,
            min_recall=min_recall,
        )
    )
    return push.outputs["Output"]


def build_pipeline(gpu_node: c.GpuNode | None = None):
    """The KFP pipeline, its train task placed on `gpu_node` (default: one GPU, GPU taint)."""
    token = GPU_NODE.set(gpu_node or c.GpuNode())
    try:
        return dsl.pipeline(name=c.PIPELINE_NAME, description=c.PIPELINE_DESCRIPTION)(pipeline_graph)
    finally:
        GPU_NODE.reset(token)


medkfp_pipeline = build_pipeline()
