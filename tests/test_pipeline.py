"""The compiled pipeline: six steps through a ParallelFor, GPU on train only, declared inputs and outputs.

The train step's GPU comes with the node selector, tolerations and retries `medkfp compile` takes."""

from __future__ import annotations

import pytest
import yaml

from medkfp import vocab
from medkfp.cli import main
from medkfp.pipelines import configs

STEPS = ("ingest", "preprocess", "balance", "train", "evaluate", "push")


def compile_with(out, *options: str):
    assert main(["compile", "--out", str(out), *options]) == 0
    spec, platform = yaml.safe_load_all(out.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    return compile_with(tmp_path_factory.mktemp("compiled") / "pipeline.yaml")


def all_tasks(spec) -> dict:
    tasks = dict(spec["root"]["dag"]["tasks"])
    for component in spec["components"].values():
        tasks.update(component.get("dag", {}).get("tasks", {}))
    return tasks


def test_six_steps_plus_grid_fan_out(compiled):
    spec, _ = compiled
    root = spec["root"]["dag"]["tasks"]
    assert set(root) == {"ingest", "preprocess", "grid", "grid-image-size", "for-loop-1", "push"}
    loop = spec["components"]["comp-for-loop-1"]["dag"]["tasks"]
    assert set(loop) == {"balance", "train", "evaluate"}
    assert root["for-loop-1"]["iteratorPolicy"]["parallelismLimit"] == configs.TRAIN_PARALLELISM
    assert set(STEPS) <= set(all_tasks(spec))
    # push collects every candidate's evaluation
    evaluations = root["push"]["inputs"]["artifacts"]["evaluations"]
    assert evaluations["taskOutputArtifact"]["producerTask"] == "for-loop-1"
    # the grid fans out the candidates and fixes the image size preprocessing writes
    items = root["for-loop-1"]["parameterIterator"]["items"]
    assert items["inputParameter"] == "pipelinechannel--grid-Output"
    assert root["preprocess"]["inputs"]["parameters"]["image_size"]["taskOutputParameter"] == {
        "outputParameterKey": "Output",
        "producerTask": "grid-image-size",
    }


def test_gpu_request_toleration_and_retry_on_train_only(compiled):
    spec, platform = compiled
    executors = spec["deploymentSpec"]["executors"]
    with_gpu = {name for name, e in executors.items() if e["container"].get("resources")}
    assert with_gpu == {"exec-train"}
    accelerator = executors["exec-train"]["container"]["resources"]["accelerator"]
    assert accelerator["resourceType"] == "nvidia.com/gpu" and accelerator["resourceCount"] == "1"
    assert {n for n, p in platform.items() if "tolerations" in p} == {"exec-train"}
    assert platform["exec-train"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    tasks = all_tasks(spec)
    assert tasks["train"]["retryPolicy"] == {
        "maxRetryCount": configs.TRAIN_RETRIES,
        "backoffDuration": "60s",
        "backoffFactor": 2.0,
        "backoffMaxDuration": "600s",
    }
    assert [t for t, body in tasks.items() if "retryPolicy" in body] == ["train"]
    assert "nodeSelector" not in platform["exec-train"]  # none unless asked for


def test_compile_options_place_the_train_task(tmp_path):
    spec, platform = compile_with(
        tmp_path / "p.yaml",
        "--gpus",
        "2",
        "--gpu-node-selector",
        "cloud.google.com/gke-accelerator=nvidia-l4",
        "--gpu-toleration",
        "nvidia.com/gpu=present:NoSchedule",
        "--gpu-toleration",
        "dedicated:NoExecute",
    )
    accelerator = spec["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]["accelerator"]
    assert accelerator["resourceCount"] == "2"
    selector = platform["exec-train"]["nodeSelector"]
    assert selector == {"labels": {"cloud.google.com/gke-accelerator": "nvidia-l4"}}
    assert platform["exec-train"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"},
        {"key": "dedicated", "operator": "Exists", "effect": "NoExecute"},
    ]
    assert [n for n, p in platform.items() if "nodeSelector" in p or "tolerations" in p] == ["exec-train"]


def test_bad_compile_options_are_one_line_errors(tmp_path, capsys):
    assert main(["compile", "--out", str(tmp_path / "p.yaml"), "--gpu-toleration", "gpu:Sometimes"]) == 2
    assert "toleration 'gpu:Sometimes': use KEY[=VALUE][:EFFECT]" in capsys.readouterr().err
    assert main(["compile", "--out", str(tmp_path / "p.yaml"), "--gpu-node-selector", "pool"]) == 2
    assert "node selector 'pool': use KEY=VALUE" in capsys.readouterr().err


def test_every_step_runs_the_project_image_with_store_credentials(compiled):
    spec, platform = compiled
    for name in STEPS:
        executor = spec["deploymentSpec"]["executors"][f"exec-{name}"]
        expected = vocab.GPU_COMPONENT_IMAGE if name == "train" else vocab.COMPONENT_IMAGE
        assert executor["container"]["image"] == expected
        env = platform[f"exec-{name}"]["secretAsEnv"][0]
        assert env["secretName"] == configs.S3_SECRET
        assert {k["envVar"] for k in env["keyToEnv"]} == set(configs.S3_SECRET_ENV.values())


def test_components_declare_their_artifacts(compiled):
    spec, _ = compiled
    components = spec["components"]

    def artifact_types(name, side):
        defs = components[f"comp-{name}"][f"{side}Definitions"].get("artifacts", {})
        return {k: v["artifactType"]["schemaTitle"] for k, v in defs.items()}

    assert artifact_types("ingest", "output") == {"manifest": "system.Artifact"}
    assert artifact_types("train", "output") == {"model": "system.Model"}
    assert artifact_types("evaluate", "output") == {
        "evaluation": "system.Artifact",
        "confusion": "system.ClassificationMetrics",
        "scores": "system.Metrics",
        "report": "system.HTML",
    }
    assert artifact_types("push", "input")["evaluations"] == "system.Artifact"
    assert artifact_types("push", "output") == {"summary": "system.Artifact", "comparison": "system.HTML"}

    def output_type(name):
        return components[f"comp-{name}"]["outputDefinitions"]["parameters"]["Output"]["parameterType"]

    assert (output_type("grid"), output_type("grid-image-size")) == ("LIST", "NUMBER_INTEGER")
    assert components["comp-push"]["inputDefinitions"]["artifacts"]["evaluations"]["isArtifactList"]
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert {"dataset", "source", "store", "grid", "epochs", "image_size", "min_delta"} <= set(parameters)
    assert {"selection_metric", "min_recall", "weights", "freeze_backbone"} <= set(parameters)
    assert parameters["selection_metric"]["defaultValue"] == "macro_f1"
    assert parameters["min_recall"]["defaultValue"] == {}
