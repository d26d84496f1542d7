"""The k8s/ kustomize tree, checked without a cluster: every overlay renders and validates strictly.

Every overlay also passes Pod Security "restricted", and its references, selectors and images hold
together."""

from __future__ import annotations

import base64
import functools
import importlib.metadata
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from medkfp import s3server, vocab

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
OVERLAYS = ("overlays/dev", "overlays/dev-seaweedfs", "overlays/prod", "overlays/local", "pipeline-secret")
# The Pod Security version the Namespace pins, and the newest schemas kubernetes-validate bundles.
PSA_VERSION = "v1.33"
KUBERNETES_VERSIONS = (PSA_VERSION.removeprefix("v") + ".0", kubernetes_validate.utils.latest_version())
# Objects an overlay names but the operator creates (documented in k8s/README.md).
OPERATOR_PROVIDED = {"overlays/prod": {("Secret", "medkfp", "medkfp-s3")}}
# The one documented exception to "restricted": the loopback-only podman stack.
HOST_NETWORK_OVERLAYS = {"overlays/local"}
POD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod")
# Volume types Pod Security "restricted" allows.
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
PROJECT_UID = 10001
SERVING_ARGS = [
    "--port=8500",
    "--rest_api_port=8501",
    "--model_config_file=/models/models.config",
    "--model_config_file_poll_wait_seconds=5",
    "--file_system_poll_wait_seconds=1",
    "--allow_version_labels_for_unavailable_models=true",
    "--enable_batching=true",
    "--batching_parameters_file=/etc/medkfp/batching/batching.config",
]
SECRET_KEYS = {
    "AWS_ENDPOINT_URL_S3": "endpoint",
    "AWS_ACCESS_KEY_ID": "access-key",
    "AWS_SECRET_ACCESS_KEY": "secret-key",
}


# ---- helpers ---------------------------------------------------------------------------------


@functools.cache
def render(overlay: str) -> tuple[dict, ...]:
    """Render k8s/<overlay> with `kubectl kustomize`; returns its resources.

    Renders a copy of k8s/ in which every `*.env.example` is copied to its `.env` (the real env
    files are git-ignored, and a developer's own keys must not end up in a test). Skips the test
    when kubectl is missing; fails it with kustomize's message when the overlay does not build.
    """
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not on PATH: cannot render the k8s/ overlays")
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "k8s"
        shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("*.env"))
        for example in tree.rglob("*.env.example"):
            shutil.copy(example, example.with_suffix(""))
        done = subprocess.run([kubectl, "kustomize", str(tree / overlay)], capture_output=True, text=True)
    assert done.returncode == 0, f"kubectl kustomize k8s/{overlay} failed:\n{done.stderr}"
    return tuple(r for r in yaml.safe_load_all(done.stdout) if r)


def find(resources, kind: str, name: str | None = None) -> list[dict]:
    """The resources of `kind` (and `name`, when given)."""
    return [r for r in resources if r["kind"] == kind and name in (None, r["metadata"]["name"])]


def one(resources, kind: str, name: str) -> dict:
    """The single resource of that kind and name; fails the test when it is missing."""
    found = find(resources, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_templates(resources) -> list[tuple[dict, dict]]:
    """(owning resource, pod template {metadata, spec}) for every workload that makes pods."""
    templates = []
    for r in resources:
        if r["kind"] not in POD_KINDS:
            continue
        if r["kind"] == "Pod":
            templates.append((r, {"metadata": r["metadata"], "spec": r["spec"]}))
        elif r["kind"] == "CronJob":
            templates.append((r, r["spec"]["jobTemplate"]["spec"]["template"]))
        else:
            templates.append((r, r["spec"]["template"]))
    return templates


def containers(pod_spec: dict) -> list[dict]:
    """Every container of a pod spec: init, regular and ephemeral."""
    return [
        *pod_spec.get("initContainers", []),
        *pod_spec["containers"],
        *pod_spec.get("ephemeralContainers", []),
    ]


def namespace_of(resource: dict) -> str | None:
    return resource["metadata"].get("namespace")


def effective(container: dict, pod_spec: dict, field: str):
    """A securityContext field as the kubelet applies it: the container's, else the pod's."""
    value = container.get("securityContext", {}).get(field)
    return pod_spec.get("securityContext", {}).get(field) if value is None else value


def assert_restricted(container: dict, pod_spec: dict) -> None:
    """Fail unless the container meets Pod Security "restricted" and our own rules: non-root with
    a numeric uid, no privilege escalation, every capability dropped, RuntimeDefault seccomp,
    a read-only root file system, no host ports, explicit CPU and memory requests and limits."""
    name = container["name"]
    context = container.get("securityContext", {})
    assert not context.get("privileged"), f"{name}: privileged"
    assert effective(container, pod_spec, "runAsNonRoot") is True, f"{name}: runAsNonRoot is not true"
    uid = effective(container, pod_spec, "runAsUser")
    assert isinstance(uid, int) and uid > 0, f"{name}: runAsUser must be a numeric non-root uid, got {uid!r}"
    assert context.get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation is not false"
    capabilities = context.get("capabilities", {})
    assert "ALL" in capabilities.get("drop", []), f"{name}: capabilities.drop lacks ALL"
    assert not capabilities.get("add"), f"{name}: adds capabilities {capabilities.get('add')}"
    seccomp = effective(container, pod_spec, "seccompProfile") or {}
    assert seccomp.get("type") == "RuntimeDefault", f"{name}: seccompProfile is not RuntimeDefault"
    assert context.get("readOnlyRootFilesystem") is True, f"{name}: root file system is writable"
    assert "procMount" not in context and "windowsOptions" not in context, f"{name}: unsafe securityContext"
    assert not any("hostPort" in p for p in container.get("ports", [])), f"{name}: uses a hostPort"
    resources = container.get("resources", {})
    for section in ("requests", "limits"):
        missing = {"cpu", "memory"} - set(resources.get(section, {}))
        assert not missing, f"{name}: no {section} for {sorted(missing)}"


def assert_restricted_pod(pod_spec: dict, overlay: str) -> None:
    """Fail unless the pod spec meets Pod Security "restricted" (hostNetwork only where documented)."""
    if overlay not in HOST_NETWORK_OVERLAYS:
        assert not pod_spec.get("hostNetwork"), "hostNetwork outside the documented local overlay"
    assert not pod_spec.get("hostPID") and not pod_spec.get("hostIPC"), "shares the host's PID/IPC namespace"
    for volume in pod_spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        assert kinds <= RESTRICTED_VOLUMES, f"volume {volume['name']}: {sorted(kinds)} is not allowed"
    sysctls = pod_spec.get("securityContext", {}).get("sysctls", [])
    assert not sysctls, f"sets sysctls {sysctls}"
    for container in containers(pod_spec):
        assert_restricted(container, pod_spec)


def references(pod_spec: dict) -> set[tuple[str, str]]:
    """(kind, name) of every Secret, ConfigMap, PVC and ServiceAccount the pod spec names."""
    refs = set()
    if pod_spec.get("serviceAccountName"):
        refs.add(("ServiceAccount", pod_spec["serviceAccountName"]))
    for volume in pod_spec.get("volumes", []):
        if "secret" in volume:
            refs.add(("Secret", volume["secret"]["secretName"]))
        if "configMap" in volume:
            refs.add(("ConfigMap", volume["configMap"]["name"]))
        if "persistentVolumeClaim" in volume:
            refs.add(("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]))
        for source in volume.get("projected", {}).get("sources", []):
            if "secret" in source:
                refs.add(("Secret", source["secret"]["name"]))
            if "configMap" in source:
                refs.add(("ConfigMap", source["configMap"]["name"]))
    for container in containers(pod_spec):
        for env in container.get("env", []):
            source = env.get("valueFrom", {})
            if "secretKeyRef" in source:
                refs.add(("Secret", source["secretKeyRef"]["name"]))
            if "configMapKeyRef" in source:
                refs.add(("ConfigMap", source["configMapKeyRef"]["name"]))
        for env_from in container.get("envFrom", []):
            if "secretRef" in env_from:
                refs.add(("Secret", env_from["secretRef"]["name"]))
            if "configMapRef" in env_from:
                refs.add(("ConfigMap", env_from["configMapRef"]["name"]))
    return refs


def selector_matches(selector: dict, labels: dict) -> bool:
    """Kubernetes label-selector semantics: matchLabels and matchExpressions (In, NotIn, Exists,
    DoesNotExist); an empty selector matches everything. A bare map (a Service's) is matchLabels."""
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        selector = {"matchLabels": selector}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def pods_selected(resources, selector: dict, namespace: str | None) -> list[str]:
    """Names of the workloads in `namespace` whose pod template the selector matches."""
    return [
        owner["metadata"]["name"]
        for owner, template in pod_templates(resources)
        if namespace_of(owner) == namespace
        and selector_matches(selector, template["metadata"].get("labels", {}))
    ]


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """An image reference as (repository, tag, digest)."""
    repository, _, digest = image.partition("@")
    name, _, tag = repository.rpartition(":")
    if not name or "/" in tag:  # the colon was a registry's port, not a tag
        name, tag = repository, ""
    return name, tag or None, digest or None


def images(resources) -> list[tuple[str, str]]:
    """(container name, image) of every container of every pod template."""
    return [(c["name"], c["image"]) for _, t in pod_templates(resources) for c in containers(t["spec"])]


def is_project_image(repository: str) -> bool:
    return repository == vocab.IMAGE_REPOSITORY or repository.endswith("/" + vocab.IMAGE_REPOSITORY)


def serving_pod(resources) -> dict:
    return one(resources, "Deployment", "medkfp-serving")["spec"]["template"]["spec"]


def by_name(items: list[dict]) -> dict[str, dict]:
    return {item["name"]: item for item in items}


# ---- every overlay ---------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates_strictly(overlay):
    """Every rendered resource passes strict schema validation (unknown fields are errors) for
    the pinned Pod Security version and the newest Kubernetes kubernetes-validate knows."""
    resources = render(overlay)
    assert resources, f"k8s/{overlay} renders nothing"
    for version in KUBERNETES_VERSIONS:
        for resource in resources:
            try:
                kubernetes_validate.validate(resource, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(
                    f"{overlay}: {resource['kind']}/{resource['metadata']['name']} is invalid "
                    f"for Kubernetes {version} at {'/'.join(map(str, e.path))}: {e.message}"
                )


def test_strict_validation_rejects_an_unknown_field():
    """The validator is really strict: a misspelt field (readinessprobe) is refused."""
    deployment = one(render("overlays/dev"), "Deployment", "medkfp-serving")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinessprobe"):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_restricted(overlay):
    templates = pod_templates(render(overlay))
    for owner, template in templates:
        try:
            assert_restricted_pod(template["spec"], overlay)
        except AssertionError as e:
            pytest.fail(f"{overlay}: {owner['kind']}/{owner['metadata']['name']}: {e}")


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"runAsUser": 0}, "numeric non-root uid"),
        ({"runAsUser": None}, "numeric non-root uid"),
        ({"allowPrivilegeEscalation": True}, "allowPrivilegeEscalation"),
        ({"capabilities": {"drop": ["NET_RAW"]}}, "lacks ALL"),
        ({"readOnlyRootFilesystem": False}, "writable"),
        ({"seccompProfile": {"type": "Unconfined"}}, "RuntimeDefault"),
        ({"privileged": True}, "privileged"),
    ],
)
def test_restricted_check_catches_each_violation(change, problem):
    """assert_restricted refuses a container that breaks any one rule."""
    pod = yaml.safe_load(yaml.safe_dump(serving_pod(render("overlays/dev"))))
    container = pod["containers"][0]
    container["securityContext"].update(change)
    container["securityContext"] = {k: v for k, v in container["securityContext"].items() if v is not None}
    with pytest.raises(AssertionError, match=problem):
        assert_restricted(container, pod)


def test_host_network_is_refused_outside_the_local_overlay():
    pod = dict(serving_pod(render("overlays/dev")), hostNetwork=True)
    with pytest.raises(AssertionError, match="hostNetwork"):
        assert_restricted_pod(pod, "overlays/dev")
    pod["volumes"] = [{"name": "root", "hostPath": {"path": "/"}}]
    with pytest.raises(AssertionError, match="hostPath"):
        assert_restricted_pod(pod, "overlays/local")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_references_resolve(overlay):
    """Every Secret, ConfigMap, PVC and ServiceAccount a pod names is in the render, in the pod's
    namespace, or is one the operator provides (OPERATOR_PROVIDED, documented in k8s/README.md)."""
    resources = render(overlay)
    present = {(r["kind"], namespace_of(r), r["metadata"]["name"]) for r in resources}
    allowed = present | OPERATOR_PROVIDED.get(overlay, set())
    for owner, template in pod_templates(resources):
        for kind, name in sorted(references(template["spec"])):
            assert (kind, namespace_of(owner), name) in allowed, (
                f"{overlay}: {owner['kind']}/{owner['metadata']['name']} names {kind} {name}, "
                f"which is neither rendered nor the operator's"
            )


def test_operator_provided_objects_are_really_absent_and_documented():
    """The exception list is no wider than needed, and k8s/README.md tells the operator."""
    readme = (K8S / "README.md").read_text()
    for overlay, objects in OPERATOR_PROVIDED.items():
        present = {(r["kind"], namespace_of(r), r["metadata"]["name"]) for r in render(overlay)}
        for kind, namespace, name in objects:
            assert (kind, namespace, name) not in present, f"{overlay} renders {kind} {name}: drop it"
            assert name in readme, f"k8s/README.md does not tell the operator to create {kind} {name}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_match_pods(overlay):
    """Every Service, PodDisruptionBudget and NetworkPolicy selects at least one pod template of its
    namespace, and so does every same-namespace podSelector peer of a NetworkPolicy rule."""
    resources = render(overlay)
    for service in find(resources, "Service"):
        selector = service["spec"]["selector"]
        assert pods_selected(resources, selector, namespace_of(service)), (
            f"{overlay}: Service {service['metadata']['name']} selects no pod ({selector})"
        )
    for budget in find(resources, "PodDisruptionBudget"):
        assert pods_selected(resources, budget["spec"]["selector"], namespace_of(budget)), (
            f"{overlay}: PodDisruptionBudget {budget['metadata']['name']} selects no pod"
        )
    for policy in find(resources, "NetworkPolicy"):
        name, namespace = policy["metadata"]["name"], namespace_of(policy)
        assert pods_selected(resources, policy["spec"]["podSelector"], namespace), (
            f"{overlay}: NetworkPolicy {name} selects no pod"
        )
        for rule in [*policy["spec"].get("ingress", []), *policy["spec"].get("egress", [])]:
            for peer in [*rule.get("from", []), *rule.get("to", [])]:
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    assert pods_selected(resources, peer["podSelector"], namespace), (
                        f"{overlay}: NetworkPolicy {name} allows a peer that matches no pod: {peer}"
                    )
    for owner, template in pod_templates(resources):
        if "selector" in owner["spec"] and owner["kind"] != "Job":
            assert selector_matches(owner["spec"]["selector"], template["metadata"]["labels"])


def test_selector_matching_follows_kubernetes_semantics():
    labels = {"app.kubernetes.io/name": "medkfp-serving", "tier": "x"}
    assert selector_matches({}, labels)
    assert selector_matches({"app.kubernetes.io/name": "medkfp-serving"}, labels)
    assert not selector_matches({"matchLabels": {"app.kubernetes.io/name": "medkfp-store"}}, labels)
    expression = {"key": "app.kubernetes.io/name", "operator": "In", "values": ["medkfp-serving", "b"]}
    assert selector_matches({"matchExpressions": [expression]}, labels)
    assert not selector_matches({"matchExpressions": [dict(expression, operator="NotIn")]}, labels)
    assert not selector_matches({"matchExpressions": [{"key": "zone", "operator": "Exists"}]}, labels)
    assert selector_matches({"matchExpressions": [{"key": "zone", "operator": "DoesNotExist"}]}, labels)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_pinned(overlay):
    """Every image has an explicit tag (never latest) or a sha256 digest; prod pins digests."""
    for container, image in images(render(overlay)):
        repository, tag, digest = split_image(image)
        if digest is not None:
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"{container}: malformed digest in {image}"
        else:
            assert overlay != "overlays/prod", f"{container}: prod must pin {image} by digest"
            assert tag and tag != "latest", f"{container}: {image} is not pinned to a tag"
        assert is_project_image(repository) or tag or digest


@pytest.mark.parametrize("overlay", ["overlays/dev", "overlays/dev-seaweedfs", "overlays/local"])
def test_project_image_tag_is_the_package_version(overlay):
    project = [image for _, image in images(render(overlay)) if is_project_image(split_image(image)[0])]
    assert project, f"{overlay} runs no project image"
    version = importlib.metadata.version("medkfp")
    assert set(project) == {f"{vocab.IMAGE_REPOSITORY}:{version}"}
    assert vocab.COMPONENT_IMAGE == f"{vocab.IMAGE_REPOSITORY}:{version}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_project_image_containers_run_as_its_user_with_a_writable_tmp(overlay):
    """The project image's uid 10001, HOME=/tmp, and /tmp on an emptyDir (the root is read-only)."""
    for _, template in pod_templates(render(overlay)):
        spec = template["spec"]
        empty_dirs = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        for container in containers(spec):
            if not is_project_image(split_image(container["image"])[0]):
                continue
            assert effective(container, spec, "runAsUser") == PROJECT_UID, container["name"]
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            assert env.get("HOME") == "/tmp", f"{container['name']}: HOME is not /tmp"
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert mounts.get("/tmp") in empty_dirs, f"{container['name']}: /tmp is not an emptyDir"


# ---- the cluster overlays --------------------------------------------------------------------


@pytest.mark.parametrize("overlay", ["overlays/dev", "overlays/dev-seaweedfs", "overlays/prod"])
def test_namespace_enforces_restricted_pod_security(overlay):
    resources = render(overlay)
    labels = one(resources, "Namespace", "medkfp")["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"
        assert labels[f"pod-security.kubernetes.io/{mode}-version"] == PSA_VERSION
    namespaced = [r for r in resources if r["kind"] != "Namespace"]
    assert {namespace_of(r) for r in namespaced} == {"medkfp"}


@pytest.mark.parametrize("overlay", ["overlays/dev", "overlays/prod"])
def test_serving_deployment_contract(overlay):
    """TF Serving polls a config the sidecar writes; readiness is the sidecar's /readyz."""
    resources = render(overlay)
    pod = serving_pod(resources)
    init = by_name(pod["initContainers"])["serving-sync-init"]
    main = by_name(pod["containers"])
    serving, sync = main["tensorflow-serving"], main["serving-sync"]

    assert split_image(serving["image"])[0].endswith("tensorflow/serving")
    assert serving["args"] == SERVING_ARGS
    assert {p["containerPort"] for p in serving["ports"]} == {8500, 8501}
    assert "readinessProbe" not in serving, "TF Serving's own status is not readiness: use the sidecar's"
    assert serving["startupProbe"]["tcpSocket"]["port"] in ("grpc", 8500)
    assert serving["startupProbe"]["failureThreshold"] * serving["startupProbe"]["periodSeconds"] >= 300
    assert "livenessProbe" in serving

    assert init["args"] == ["serving-sync", "--store", "s3://medkfp", "--dir", "/models", "--once"]
    assert sync["args"] == [
        "serving-sync",
        "--store",
        "s3://medkfp",
        "--dir",
        "/models",
        "--interval",
        "10",
        "--server",
        "localhost:8500",
        "--health-port",
        "8090",
    ]
    assert sync["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert sync["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "health"}
    assert by_name(sync["ports"])["health"]["containerPort"] == 8090

    for container in (init, sync):
        env = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef") for e in container["env"]}
        for variable, key in SECRET_KEYS.items():
            assert env[variable] == {"name": "medkfp-s3", "key": key}, f"{container['name']}: {variable}"
    volumes = by_name(pod["volumes"])
    assert "emptyDir" in volumes["models"]
    for container in (init, serving, sync):
        assert {m["mountPath"]: m["name"] for m in container["volumeMounts"]}["/models"] == "models"
    batching = one(resources, "ConfigMap", volumes["batching"]["configMap"]["name"])
    text = batching["data"]["batching.config"]
    for field in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"):
        assert re.search(rf"^{field} {{ value: \d+ }}$", text, re.M), f"batching.config lacks {field}"

    service = one(resources, "Service", "medkfp-serving")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"grpc": 8500, "http": 8501}


@pytest.mark.parametrize("overlay", ["overlays/dev", "overlays/dev-seaweedfs", "overlays/prod"])
def test_network_policies(overlay):
    """Default deny both ways, DNS for all, and only labelled clients reach 8500/8501."""
    resources = render(overlay)
    policies = {p["metadata"]["name"]: p["spec"] for p in find(resources, "NetworkPolicy")}
    deny = policies["medkfp-default-deny"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny
    dns = policies["medkfp-allow-dns"]
    assert dns["podSelector"] == {}
    assert {(p["protocol"], p["port"]) for p in dns["egress"][0]["ports"]} == {("UDP", 53), ("TCP", 53)}
    ingress = policies["medkfp-serving-ingress"]["ingress"]
    assert ingress[0]["from"] == [
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"medkfp.io/serving-client": "true"}}}
    ]
    assert {p["port"] for p in ingress[0]["ports"]} == {8500, 8501}
    serving_labels = one(resources, "Deployment", "medkfp-serving")["spec"]["template"]["metadata"]["labels"]
    egress = [
        p
        for p in policies.values()
        if "Egress" in p["policyTypes"]
        and p.get("egress")
        and selector_matches(p["podSelector"], serving_labels)
        and p["podSelector"] != {}
    ]
    assert egress, f"{overlay}: the serving pods may reach no S3 endpoint"


@pytest.mark.parametrize(
    "overlay, store", [("overlays/dev", "minio"), ("overlays/dev-seaweedfs", "seaweedfs")]
)
def test_dev_runs_one_in_cluster_store_behind_medkfp_store(overlay, store):
    resources = render(overlay)
    assert one(resources, "Deployment", "medkfp-serving")["spec"]["replicas"] == 1
    stores = [r for r in find(resources, "Deployment") if r["metadata"]["name"] != "medkfp-serving"]
    assert [r["metadata"]["name"] for r in stores] == [f"medkfp-{store}"]
    pod = stores[0]["spec"]["template"]["spec"]
    assert any(v.get("persistentVolumeClaim") for v in pod["volumes"]), "the store keeps no data on a PVC"
    store_images = {split_image(c["image"])[0].rsplit("/", 1)[-1] for c in containers(pod)}
    assert store_images == {store}
    service = one(resources, "Service", "medkfp-store")
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(9000, "s3")]
    target = {p["name"]: p["containerPort"] for c in pod["containers"] for p in c.get("ports", [])}
    assert target["s3"] == 9000, "the NetworkPolicies allow port 9000 on the store pods"
    job = one(resources, "Job", "medkfp-store-bucket")["spec"]["template"]["spec"]
    assert job["containers"][0]["args"][-1] == "store/medkfp"
    secret = one(resources, "Secret", "medkfp-s3")
    endpoint = base64.b64decode(secret["data"]["endpoint"]).decode()
    assert endpoint == "http://medkfp-store.medkfp.svc.cluster.local:9000"
    if store != "minio":
        assert "minio/minio" not in yaml.safe_dump_all(resources), "MinIO is still rendered"


def test_prod_uses_an_external_store_two_replicas_and_a_budget():
    resources = render("overlays/prod")
    assert [r["metadata"]["name"] for r in find(resources, "Deployment")] == ["medkfp-serving"]
    assert not find(resources, "PersistentVolumeClaim") and not find(resources, "Job")
    assert not find(resources, "Secret"), "prod's Secret is the operator's: none may be rendered"
    assert one(resources, "Deployment", "medkfp-serving")["spec"]["replicas"] >= 2
    budget = one(resources, "PodDisruptionBudget", "medkfp-serving")["spec"]
    assert budget["minAvailable"] >= 1
    egress = one(resources, "NetworkPolicy", "medkfp-s3-egress")["spec"]["egress"]
    assert egress[0]["to"][0]["ipBlock"]["cidr"]


def test_pipeline_secret_is_the_one_object_for_the_pipeline_namespace():
    """The Secret for KFP's pipeline pods: same name and keys, the profile namespace."""
    resources = render("pipeline-secret")
    assert [(r["kind"], namespace_of(r), r["metadata"]["name"]) for r in resources] == [
        ("Secret", "kubeflow-user-example-com", "medkfp-s3")
    ]
    assert set(resources[0]["data"]) == set(SECRET_KEYS.values())


# ---- the local (podman kube play) overlay ----------------------------------------------------


def test_local_overlay_holds_only_what_kube_play_runs():
    resources = render("overlays/local")
    assert sorted(r["kind"] for r in resources) == ["ConfigMap", "Deployment"]
    pod = one(resources, "Deployment", "medkfp-serving-local")["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    main = by_name(pod["containers"])
    assert main["server"]["args"] == [
        "serve",
        "--engine",
        "builtin",
        "--model-dir",
        "/models",
        "--host",
        "127.0.0.1",
        "--port",
        "8500",
        "--poll",
        "2",
    ]
    assert main["serving-sync"]["args"] == [
        "serving-sync",
        "--store",
        "s3://medkfp",
        "--dir",
        "/models",
        "--interval",
        "2",
        "--server",
        "127.0.0.1:8500",
        "--health-port",
        "8090",
    ]
    env = {
        e["name"]: e["valueFrom"]["configMapKeyRef"] for e in main["serving-sync"]["env"] if "valueFrom" in e
    }
    assert env == {v: {"name": "medkfp-store-local", "key": k} for v, k in SECRET_KEYS.items()}
    assert "secretKeyRef" not in str(pod), "kube play fails on secretKeyRef to a Secret in the same YAML"
    # The ConfigMap's keys are the loopback test server's dummy ones, nothing else.
    data = one(resources, "ConfigMap", "medkfp-store-local")["data"]
    assert (data["access-key"], data["secret-key"]) == (s3server.ACCESS_KEY, s3server.SECRET_KEY)
    assert data["endpoint"].startswith("http://127.0.0.1:")


# ---- credentials -----------------------------------------------------------------------------


def test_no_credential_is_tracked():
    """The env files are git-ignored, only the .example (placeholders) is tracked, and no tracked
    manifest is a Secret with values."""
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: cannot ask git what is tracked")
    examples = sorted(K8S.rglob("*.env.example"))
    assert examples, "no .env.example under k8s/"
    for example in examples:
        env_file = example.with_suffix("").relative_to(ROOT)
        ignored = subprocess.run([git, "check-ignore", "-q", str(env_file)], cwd=ROOT)
        assert ignored.returncode == 0, f"{env_file} is not git-ignored"
        values = dict(
            line.split("=", 1)
            for line in example.read_text().splitlines()
            if line and not line.startswith("#")
        )
        assert set(values) == set(SECRET_KEYS.values())
        assert "REPLACE" in values["access-key"] and "REPLACE" in values["secret-key"]
    listed = subprocess.run([git, "ls-files", "k8s"], cwd=ROOT, capture_output=True, text=True)
    tracked = listed.stdout.split()
    assert not [t for t in tracked if t.endswith(".env")], "an env file with keys is tracked"
    for path in tracked:
        if path.endswith((".yaml", ".yml")):
            for document in yaml.safe_load_all((ROOT / path).read_text()):
                if document and document.get("kind") == "Secret":
                    assert not document.get("data") and not document.get("stringData"), path
