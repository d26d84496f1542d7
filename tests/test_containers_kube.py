"""k8s/overlays/local under `podman kube play`: the project image's serving stack gets predictions.

Real containers of the project image (built-in engine + serving-sync sidecar) on the host's
network, a real loopback S3 server, a real SavedModel, and a client made only of
tensorflow-serving-api's stubs. Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import yaml
from serving_helpers import CLASSES, encoded, export_model, png
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from test_k8s import by_name, one, render

from medkfp.model_repository import ModelRepository
from medkfp.s3server import free_port
from medkfp.store import open_store

pytestmark = pytest.mark.containers

MODEL = "kube-play"
FAVOURED = 1  # the exported model answers CLASSES[1] for every image
DEPLOYMENT = "medkfp-serving-local"
# kube play names the pod of a Deployment <name>-pod-<replica>, its containers <pod>-<container>.
POD = f"{DEPLOYMENT}-pod-0"
READY_TIMEOUT = 240.0
PODMAN_TIMEOUT = 180


def podman(*args: str, check: bool = True, timeout: float = PODMAN_TIMEOUT) -> subprocess.CompletedProcess:
    """Run `podman ARGS`; returns the finished process, fails the test on a non-zero exit if `check`."""
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        pytest.fail(f"podman {' '.join(args)} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return done


def names(*args: str) -> set[str]:
    """The names `podman ... ls` lists, one per line."""
    return set(podman(*args).stdout.split())


def local_stack(endpoint: str, image: str, grpc_port: int, health_port: int) -> list[dict]:
    """The rendered local overlay, pointed at `endpoint`, running `image`, on free loopback ports
    (other tests on this machine may hold 8500/8090)."""
    resources = list(yaml.safe_load_all(yaml.safe_dump_all(render("overlays/local"))))  # a deep copy
    one(resources, "ConfigMap", "medkfp-store-local")["data"]["endpoint"] = endpoint
    pod = one(resources, "Deployment", DEPLOYMENT)["spec"]["template"]["spec"]
    main = by_name(pod["containers"])
    replace = {"8500": str(grpc_port), "127.0.0.1:8500": f"127.0.0.1:{grpc_port}", "8090": str(health_port)}
    for container in main.values():
        container["image"] = image
        container["args"] = [replace.get(arg, arg) for arg in container["args"]]
    main["serving-sync"]["readinessProbe"]["httpGet"]["port"] = health_port
    return resources


def status(url: str) -> int | None:
    """The HTTP status `url` answers with, None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def container_logs() -> str:
    logs = []
    for container in ("server", "serving-sync"):
        done = podman("logs", "--tail", "20", f"{POD}-{container}", check=False)
        logs.append(f"--- {container}:\n{done.stdout}{done.stderr}")
    return "\n".join(logs)


def string_tensor(values: list[bytes]) -> tensor_pb2.TensorProto:
    """A DT_STRING TensorProto of shape [len(values)], built from the protos alone."""
    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(values))])
    return tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=shape, string_val=values)


@pytest.fixture
def published_model(s3_env, tmp_path):
    """A tiny real SavedModel published as MODEL version 1 into s3://medkfp on the loopback server."""
    export_dir = export_model(tmp_path / "export", favour=FAVOURED)
    ModelRepository(open_store("s3://medkfp")).publish(MODEL, export_dir, {"class_names": CLASSES})
    return s3_env["AWS_ENDPOINT_URL_S3"]


def test_local_overlay_serves_predictions_under_kube_play(medkfp_image, published_model, tmp_path):
    if shutil.which("podman") is None:
        pytest.skip("podman is not on PATH: `podman kube play` cannot run here")
    grpc_port, health_port = free_port(), free_port()
    manifest = tmp_path / "local.yaml"
    played = local_stack(published_model, medkfp_image, grpc_port, health_port)
    manifest.write_text(yaml.safe_dump_all(played))
    pod_spec = one(played, "Deployment", DEPLOYMENT)["spec"]["template"]["spec"]
    volumes = {v["name"] for v in pod_spec["volumes"]}
    our_secrets = {r["metadata"]["name"] for r in played if r["kind"] == "Secret"}
    secrets_before = names("secret", "ls", "--format", "{{.Name}}")
    assert not names("pod", "ls", "--format", "{{.Name}}") & {POD}, f"a pod {POD} is already running"

    try:
        podman("kube", "play", str(manifest))
        ready = f"http://127.0.0.1:{health_port}/readyz"
        deadline = time.monotonic() + READY_TIMEOUT
        while status(ready) != 200:
            assert time.monotonic() < deadline, (
                f"{ready} did not answer 200 within {READY_TIMEOUT:.0f} s\n{container_logs()}"
            )
            time.sleep(1)
        assert status(f"http://127.0.0.1:{health_port}/livez") == 200

        images = [png("L", 20, 30, 0), png("RGB", 16, 16, 1), encoded("JPEG")]
        request = predict_pb2.PredictRequest()
        request.model_spec.name = MODEL
        request.model_spec.signature_name = "serving_default"
        request.inputs["image_bytes"].CopyFrom(string_tensor(images))
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            response = stub.Predict(request, timeout=60)

        probabilities = response.outputs["probabilities"]
        assert [d.size for d in probabilities.tensor_shape.dim] == [len(images), len(CLASSES)]
        # A server may answer in float_val or packed in tensor_content (TF Serving does the latter).
        values = probabilities.float_val or np.frombuffer(probabilities.tensor_content, "<f4")
        assert probabilities.dtype == types_pb2.DT_FLOAT
        for row in np.reshape(values, (len(images), len(CLASSES))).tolist():
            assert abs(sum(row) - 1) < 1e-4 and max(row) == row[FAVOURED] > 0.9
        classes = [c.decode() for c in response.outputs["classes"].string_val]
        assert classes == [CLASSES[FAVOURED]] * len(images)
        assert response.model_spec.name == MODEL and response.model_spec.version.value == 1
    finally:
        podman("kube", "down", str(manifest), check=False)
        # kube down leaves volumes behind on some Podman versions: remove ours by name.
        for volume in volumes & names("volume", "ls", "--format", "{{.Name}}"):
            podman("volume", "rm", "--force", volume, check=False)
        for secret in our_secrets & names("secret", "ls", "--format", "{{.Name}}"):
            podman("secret", "rm", secret, check=False)

    assert POD not in names("pod", "ls", "--format", "{{.Name}}"), f"pod {POD} is left behind"
    left = names("ps", "--all", "--format", "{{.Names}}")
    assert not {c for c in left if c.startswith(POD)}, f"containers left behind: {left}"
    assert not volumes & names("volume", "ls", "--format", "{{.Name}}"), "volumes left behind"
    assert names("secret", "ls", "--format", "{{.Name}}") == secrets_before, "secrets left behind"
