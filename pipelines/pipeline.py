"""The pipeline graph: it only wires the steps; defaults live in configs.py."""

from contextvars import ContextVar
from dataclasses import dataclass
from types import SimpleNamespace

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


@dataclass(frozen=True)
class Images:
    """The images the compiled steps run: every step `cpu`, the train step `gpu`."""

    cpu: str = vocab.COMPONENT_IMAGE
    gpu: str = vocab.GPU_COMPONENT_IMAGE


# The settings of the pipeline being built (`medkfp compile` and `medkfp run --image` options).
GPU_NODE: ContextVar[c.GpuNode | None] = ContextVar("GPU_NODE", default=None)
IMAGES: ContextVar[Images | None] = ContextVar("IMAGES", default=None)


def in_container(task: dsl.PipelineTask, image: str | None = None) -> dsl.PipelineTask:
    """Run the step in the project image, never from cache.

    Caching is decided here, at compile time: a submit-time enable_caching does not reach
    tasks inside a ParallelFor (kubeflow/pipelines#14253), and a scheduled run must read the
    newest data at its source, which a cached ingest would skip.
    """
    task.set_container_image(image or (IMAGES.get() or Images()).cpu)
    task.set_caching_options(enable_caching=False)
    return task


def with_store_credentials(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """On the cluster every step reads the S3 endpoint and keys from one Secret."""
    kubernetes.use_secret_as_env(
        in_container(task), secret_name=c.S3_SECRET, secret_key_to_env=c.S3_SECRET_ENV
    )
    return task


def on_gpu_node(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """GPU image and request, node selector, tolerations, retries with backoff: the train task only."""
    node = GPU_NODE.get() or c.GpuNode()
    in_container(task, (IMAGES.get() or Images()).gpu)
    task.set_accelerator_type(c.GPU_RESOURCE).set_accelerator_limit(node.gpus)
    for key, value in node.node_selector.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for toleration in node.tolerations:
        kubernetes.add_toleration(task, **toleration)
    task.set_retry(num_retries=node.retries, **c.TRAIN_RETRY_BACKOFF)
    return task


def pipeline_graph(*values, **named) -> str:
    """The function KFP compiles; its signature and docstring (the run form) are RunConfig's."""
    p = c.RUN_SIGNATURE.bind(*values, **named)
    p.apply_defaults()
    return wire(SimpleNamespace(**p.arguments))


# KFP compiles the function's signature and docstring into the run form: both come from RunConfig.
pipeline_graph.__signature__ = c.RUN_SIGNATURE
pipeline_graph.__doc__ = c.run_parameters_docstring(
    "Train a grid of candidates on one dataset and push the best to the model repository.\n\n"
    "KFP shows these descriptions as the run form's help text.",
    "The run summary (JSON).",
)


def wire(p: SimpleNamespace) -> str:
    """The graph, from the run parameters `p` (KFP's pipeline channels at compile time)."""
    candidates = in_container(
        grid_step.grid(
            grid=p.grid,
            dataset=p.dataset,
            epochs=p.epochs,
            image_size=p.image_size,
            weights=p.weights,
            freeze_backbone=p.freeze_backbone,
        )
    )
    run_image_size = in_container(
        grid_step.grid_image_size(grid=p.grid, dataset=p.dataset, image_size=p.image_size)
    )
    ingest = with_store_credentials(
        ingest_step.ingest(
            dataset=p.dataset,
            source=p.source,
            store=p.store,
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            label=p.label,
            max_rejected_fraction=p.max_rejected_fraction,
            labels=p.labels,
        )
    )
    kubernetes.use_secret_as_env(
        ingest, secret_name=c.DEID_SECRET, secret_key_to_env=c.DEID_SECRET_ENV, optional=True
    )
    preprocess = with_store_credentials(
        preprocess_step.preprocess(
            manifest=ingest.outputs["manifest"],
            image_size=run_image_size.output,
            test_fraction=p.test_fraction,
            val_fraction=p.val_fraction,
            seed=p.seed,
        )
    )

    with dsl.ParallelFor(candidates.output, parallelism=c.TRAIN_PARALLELISM) as candidate:
        balance = with_store_credentials(
            balance_step.balance(dataset=preprocess.outputs["dataset"], candidate=candidate, seed=p.seed)
        )
        train = on_gpu_node(
            with_store_credentials(
                train_step.train(
                    dataset=preprocess.outputs["dataset"],
                    balanced=balance.outputs["balanced"],
                    candidate=candidate,
                    seed=p.seed,
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
            store=p.store,
            model_name=p.model_name,
            min_delta=p.min_delta,
            selection_metric=p.selection_metric,
            min_recall=p.min_recall,
            require_significant=p.require_significant,
        )
    )
    return push.outputs["Output"]


def build_pipeline(gpu_node: c.GpuNode | None = None, images: Images | None = None):
    """The KFP pipeline: its train task placed on `gpu_node` (default: one GPU, GPU taint),
    its steps in `images` (default: the project's CPU and GPU images of this version)."""
    tokens = GPU_NODE.set(gpu_node or c.GpuNode()), IMAGES.set(images or Images())
    try:
        return dsl.pipeline(name=c.PIPELINE_NAME, description=c.PIPELINE_DESCRIPTION)(pipeline_graph)
    finally:
        GPU_NODE.reset(tokens[0])
        IMAGES.reset(tokens[1])


medkfp_pipeline = build_pipeline()
