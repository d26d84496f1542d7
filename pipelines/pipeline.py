"""The pipeline graph: it only wires the steps; defaults live in configs.py."""

from kfp import dsl, kubernetes

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


def on_gpu_node(task: dsl.PipelineTask) -> dsl.PipelineTask:
    task.set_accelerator_type(c.GPU_RESOURCE).set_accelerator_limit(c.GPU_COUNT)
    kubernetes.add_toleration(task, **c.GPU_TOLERATION)
    task.set_retry(num_retries=c.TRAIN_RETRIES, backoff_duration="60s", backoff_factor=2)
    return task


@dsl.pipeline(name=c.PIPELINE_NAME, description=c.PIPELINE_DESCRIPTION)
def medkfp_pipeline(
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
) -> str:
    ingest = with_store_credentials(
        ingest_step.ingest(
            dataset=dataset, source=source, store=store, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER
        )
    )
    preprocess = with_store_credentials(
        preprocess_step.preprocess(
            manifest=ingest.outputs["manifest"],
            image_size=image_size,
            test_fraction=test_fraction,
            val_fraction=val_fraction,
            seed=seed,
        )
    )
    candidates = grid_step.grid(grid=grid)

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
                    epochs=epochs,
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
        )
    )
    return push.outputs["Output"]
