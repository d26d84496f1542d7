"""The compiled pipeline's contract with a cluster, held against a golden file as the KFP SDK does.

The golden file keeps what a cluster and the KFP UI depend on: the run form's parameters
(type, default, help text), the task graph with caching and retries, each executor's image,
entry point and resources, and the Kubernetes platform settings. The components' embedded
source is left out (it changes with every edit of a step and is tested by running it).
Regenerate after an intended change: UPDATE_GOLDEN=1 pytest tests/test_compile_contract.py
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from medkfp import vocab
from medkfp.cli import main

GOLDEN = Path(__file__).parent / "golden" / "pipeline-contract.yaml"


def compiled(tmp_path: Path, *options: str) -> tuple[dict, dict]:
    out = tmp_path / "pipeline.yaml"
    assert main(["compile", "--out", str(out), *options]) == 0
    spec, platform = yaml.safe_load_all(out.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def all_tasks(spec: dict) -> dict:
    tasks = dict(spec["root"]["dag"]["tasks"])
    for component in spec["components"].values():
        tasks.update(component.get("dag", {}).get("tasks", {}))
    return tasks


def contract(spec: dict, platform: dict) -> dict:
    """What the cluster and the UI depend on, without the components' embedded source."""
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    return {
        "pipeline": spec["pipelineInfo"]["name"],
        "parameters": {
            name: {
                "type": p["parameterType"],
                "default": p.get("defaultValue"),
                "description": p.get("description"),
            }
            for name, p in sorted(parameters.items())
        },
        "tasks": {
            name: {
                "component": t["componentRef"]["name"],
                "after": sorted(t.get("dependentTasks", [])),
                "caching": t.get("cachingOptions", {}).get("enableCaching", False),
                "retry": t.get("retryPolicy"),
            }
            for name, t in sorted(all_tasks(spec).items())
        },
        "executors": {
            name: {
                "image": e["container"]["image"],
                "entrypoint": e["container"]["command"][:3],
                "args": e["container"]["args"],
                "resources": e["container"].get("resources"),
            }
            for name, e in sorted(spec["deploymentSpec"]["executors"].items())
        },
        "kubernetes": platform,
    }


def test_compiled_contract_matches_the_golden_file(tmp_path):
    current = contract(*compiled(tmp_path))
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(yaml.safe_dump(current, sort_keys=False, width=100))
    golden = yaml.safe_load(GOLDEN.read_text())
    for part in golden:
        assert current[part] == golden[part], (
            f"the compiled pipeline's {part} changed: if intended, regenerate {GOLDEN.name} with "
            "UPDATE_GOLDEN=1 and review the diff"
        )
    assert current == golden


def test_image_flags_set_every_executor_and_train_gets_the_gpu_image(tmp_path):
    spec, _ = compiled(tmp_path, "--image", "registry.example/medkfp:9", "--gpu-image", "reg.example/g:9")
    executors = spec["deploymentSpec"]["executors"]
    images = {name: e["container"]["image"] for name, e in executors.items()}
    assert images.pop("exec-train") == "reg.example/g:9"
    assert set(images.values()) == {"registry.example/medkfp:9"}

    spec, _ = compiled(tmp_path, "--image", "registry.example/medkfp:9")
    train = spec["deploymentSpec"]["executors"]["exec-train"]
    assert train["container"]["image"] == "registry.example/medkfp:9-gpu"


def test_default_images_are_this_version(tmp_path):
    spec, _ = compiled(tmp_path)
    executors = spec["deploymentSpec"]["executors"]
    assert executors.pop("exec-train")["container"]["image"] == vocab.GPU_COMPONENT_IMAGE
    assert {e["container"]["image"] for e in executors.values()} == {vocab.COMPONENT_IMAGE}
    assert vocab.COMPONENT_IMAGE.endswith(":" + __import__("medkfp").__version__)


def test_no_step_installs_packages_at_run_time(tmp_path):
    spec, _ = compiled(tmp_path)
    for name, executor in spec["deploymentSpec"]["executors"].items():
        command = " ".join(executor["container"]["command"] + executor["container"]["args"])
        assert "pip install" not in command, name
        assert "kfp.dsl.executor_main" in command, name


def test_every_run_form_field_has_help_text(tmp_path):
    spec, _ = compiled(tmp_path)
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    blank = [name for name, p in parameters.items() if not p.get("description", "").strip()]
    assert not blank, f"parameters without a description in pipeline_graph's Args: {blank}"


@pytest.mark.parametrize("options", [(), ("--image", "registry.example/medkfp:9")])
def test_no_task_reuses_a_cached_result(tmp_path, options):
    tasks = all_tasks(compiled(tmp_path, *options)[0])
    cached = [name for name, t in tasks.items() if t.get("cachingOptions", {}).get("enableCaching")]
    assert not cached
    assert {"ingest", "train", "push"} <= set(tasks)
