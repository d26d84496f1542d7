"""The pipeline graph: it only wires the steps; defaults live in configs.py."""

from contextvars import ContextVar
from dataclasses import dataclass

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
    labels: str = "",
    require_significant: bool = False,
) -> str:
    """Train a grid of candidates on one dataset and push the best to the model repository.

    KFP shows these descriptions as the run form's help text.

    Args:
        dataset: Layout of the source: covid19-radiography, mias, imagefolder or dicom.
        source: The raw images: s3://bucket/prefix (or a folder, .zip or .tar(.gz) the pods can read).
        store: Store root for run data and the model repository, e.g. s3://medkfp.
        model_name: Served model name; empty: the dataset's (imagefolder: the folder's name).
        grid: Candidates to train: quick, paper, or a JSON list of candidate settings.
        epochs: Epochs of every candidate; 0: each candidate's own.
        image_size: Training size in pixels; 0: the grid's (paper: 224 or 256), else 64.
        test_fraction: Share of the images held out for the test split (0-1).
        val_fraction: Share of the remaining images used for validation (0-1).
        seed: Seed of the split, the balancing and training.
        min_delta: Push only if the best candidate beats the served model by this much.
        require_significant: Push only if the 95% interval of best minus served (same images) is above 0.
        label: What to predict: class, or severity (mias only).
        max_rejected_fraction: Stop when more than this share of the files found is rejected (0-1).
        selection_metric: Metric that picks the best candidate (macro_f1, balanced_accuracy, ...).
        min_recall: Recall floors per class the pushed model must meet, e.g. {"COVID": 0.95}.
        weights: Backbone weights of every candidate: imagenet, none or a weights file URI; empty: the grid's.
        freeze_backbone: Train the dense head only.
        labels: dicom only: the labels table (path or SOPInstanceUID, label); empty: labels.csv in the source.

    Returns:
        The run summary (JSON).
    """
    candidates = in_container(
        grid_step.grid(
            grid=grid, dataset=dataset, epochs=epochs, image_size=image_size, weights=weights,
            freeze_backbone=freeze_backbone,
        )
    )
    run_image_size = in_container(
        grid_step.grid_image_size(grid=grid, dataset=dataset, image_size=image_size)
    )
    ingest = with_store_credentials(
        ingest_step.ingest(
            dataset=dataset,
            source=source,
            store=store,
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            label=label,
            max_rejected_fraction=max_rejected_fraction,
            labels=labels,
        )
    )
    kubernetes.use_secret_as_env(ingest, secret_name=c.DEID_SECRET, secret_key_to_env=c.DEID_SECRET_ENV,
                                 optional=True)
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
            require_significant=require_significant,
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
