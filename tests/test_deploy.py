"""The Kubernetes and KServe manifests in deploy/: valid against the API schemas, and keeping the service's promises.

Rendering: `kubectl kustomize` when kubectl is there, else a loader of the kustomizations' `resources` (the only
field they use), and both must agree. Validation, offline: kubernetes-validate's bundled Kubernetes schemas
(strict: an unknown field fails), and for ServingRuntime and InferenceService a JSON schema derived from the
KServe SDK's generated model classes, read from the wheel that scripts/deploy_setup.sh downloads (`make system`):
no package on PyPI, Debian or npm ships KServe's CRDs.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from functools import cache
from importlib import resources
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUSTOMIZATIONS = ["base", "kserve", "model"]
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
# The oldest Kubernetes the manifests are meant for, and the newest that kubernetes-validate knows.
K8S_VERSIONS = ["1.30", "latest"]
KSERVE_SDK = os.environ.get("VAE_KSERVE_SDK", "0.21.0")
KSERVE_WHEEL = Path(sys.prefix) / "share" / "vae-deploy" / f"kserve-{KSERVE_SDK}-py3-none-any.whl"
KSERVE_KINDS = {
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "V1alpha1ServingRuntime",
    ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService",
}
K8S_DEFS = "https://kubernetes.io/api/_definitions.json"
SERVE_IMAGE_PORT = 8000  # the serve image's VAE_PORT (Dockerfile)
RUNTIME_USER = 10001  # the images' user (Dockerfile)


def missing(what: str, fix: str):
    if IN_CI:
        pytest.fail(f"{what} is missing: {fix}")
    pytest.skip(f"{what} is missing ({fix})")


# ---------------------------------------------------------------------------------------------------------------
# Rendering


def load_resources(directory: Path) -> list[dict]:
    """The objects of a kustomization that lists only `resources` (files, or directories with a kustomization)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - {"apiVersion", "kind", "resources"}
    assert not unknown, f"{directory}: this loader only knows `resources`; teach it {sorted(unknown)} or drop them"
    objects = []
    for entry in kustomization["resources"]:
        path = directory / entry
        if path.is_dir():
            objects += load_resources(path)
        else:
            objects += [o for o in yaml.safe_load_all(path.read_text()) if o]
    return objects


def kubectl_kustomize(directory: Path) -> list[dict]:
    result = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [o for o in yaml.safe_load_all(result.stdout) if o]


@cache
def render(name: str) -> tuple[dict, ...]:
    directory = DEPLOY / name
    return tuple(kubectl_kustomize(directory) if shutil.which("kubectl") else load_resources(directory))


def by_kind(objects, kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def one(objects, kind: str) -> dict:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def key(o: dict) -> tuple[str, str, str]:
    return o["apiVersion"], o["kind"], o["metadata"]["name"]


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_kubectl_kustomize_renders_what_the_loader_reads(name):
    if not shutil.which("kubectl"):
        pytest.skip("kubectl is missing: the manifests were read by the loader alone")
    rendered = {key(o): o for o in kubectl_kustomize(DEPLOY / name)}
    loaded = {key(o): o for o in load_resources(DEPLOY / name)}
    assert rendered == loaded


def test_each_kustomization_renders_the_expected_objects():
    kinds = {name: sorted(o["kind"] for o in render(name)) for name in KUSTOMIZATIONS}
    assert kinds == {
        "model": ["Job", "PersistentVolumeClaim"],
        "base": [
            "Deployment",
            "HorizontalPodAutoscaler",
            "Job",
            "PersistentVolumeClaim",
            "PodDisruptionBudget",
            "Service",
        ],
        "kserve": ["InferenceService", "Job", "PersistentVolumeClaim", "ServingRuntime"],
    }


# ---------------------------------------------------------------------------------------------------------------
# Schemas


def validator_module():
    try:
        import kubernetes_validate
    except ImportError:
        missing("kubernetes-validate", "it comes with the test extra: pip install -e '.[test]'")
    return kubernetes_validate


def major_minor(version: str) -> str:
    """1.30 as it is; latest: the newest Kubernetes that kubernetes-validate has schemas of."""
    utils = validator_module().utils
    return utils.major_minor(utils.latest_version() if version == "latest" else version)


@cache
def kubernetes_definitions(version: str) -> dict:
    schemas = resources.files("kubernetes_validate") / "kubernetes-json-schema"
    folder = schemas / f"v{major_minor(version)}.0-local-strict"
    return json.loads((folder / "_definitions.json").read_text())


@cache
def kubernetes_aliases(version: str) -> dict[str, str]:
    """The SDK's name of each Kubernetes type that this version has -> its name in the definitions."""
    aliases = {
        alias: definition for definition in kubernetes_definitions(version)["$defs"] for alias in sdk_alias(definition)
    }
    return aliases | {sdk: definition for sdk, definition in SDK_EXTRA.items() if definition in aliases.values()}


def sdk_alias(definition: str) -> list[str]:
    """The names the SDK's generator gives a Kubernetes type: io.k8s.api.core.v1.Container -> V1Container and
    K8sIoApiCoreV1Container."""
    parts = definition.split(".")
    names = ["K8sIo" + "".join(p[:1].upper() + p[1:] for p in parts[2:])]
    if re.fullmatch(r"v\d+(alpha\d+|beta\d+)?", parts[-2]):
        names.append(parts[-2].capitalize() + parts[-1])
    return names


# SDK names that follow neither rule, and the two foreign types (Knative's traffic status, KEDA's triggers)
# that no schema here describes: they are left unchecked.
SDK_EXTRA = {"ResourceQuantity": "io.k8s.apimachinery.pkg.api.resource.Quantity"}
SDK_UNCHECKED = {
    "KnativeDevServingPkgApisServingV1TrafficTarget",
    "GithubComKedacoreKedaV2ApisKedaV1alpha1ScaleTriggers",
}
# What the schema leaves unchecked for InferenceService and ServingRuntime: Knative's traffic status, and two
# names the SDK refers to without generating them (the fields `workerSpec` and an autoscaling metric's value).
UNCHECKED_IN_SDK = ["KnativeDevServingPkgApisServingV1TrafficTarget", "V1alpha1WorkerSpec", "V1beta1MetricQuantity"]
SDK_PRIMITIVES = {
    "str": {"type": "string"},
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "bool": {"type": "boolean"},
    "datetime": {"type": "string"},
    "object": {},
}


def sdk_classes(wheel: Path) -> dict[str, tuple[dict, dict, set]]:
    """Each generated model class of the SDK: (openapi_types, attribute_map, required attributes), read as source."""
    classes = {}
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if not (name.startswith("kserve/models/") and name.endswith(".py")):
                continue
            source = archive.read(name).decode()
            for cls in (n for n in ast.parse(source).body if isinstance(n, ast.ClassDef)):
                tables = {
                    s.targets[0].id: ast.literal_eval(s.value)
                    for s in cls.body
                    if isinstance(s, ast.Assign)
                    and isinstance(s.targets[0], ast.Name)
                    and s.targets[0].id in ("openapi_types", "attribute_map")
                }
                if len(tables) == 2:
                    # The generator checks required attributes in their setters.
                    required = set(
                        re.findall(
                            r"Invalid value for `(\w+)`, must not be `None`", ast.get_source_segment(source, cls)
                        )
                    )
                    classes[cls.name] = (tables["openapi_types"], tables["attribute_map"], required)
    return classes


@cache
def kserve_schema(version: str) -> dict:
    """One JSON schema with a $def per SDK class; Kubernetes types refer to kubernetes-validate's definitions."""
    if not KSERVE_WHEEL.is_file():
        missing(f"the KServe SDK wheel {KSERVE_WHEEL.name}", "`make system` runs scripts/deploy_setup.sh")
    classes = sdk_classes(KSERVE_WHEEL)
    k8s, newest = kubernetes_aliases(version), kubernetes_aliases("latest")

    def schema_of(sdk_type: str) -> dict:
        if m := re.fullmatch(r"list\[(.+)\]", sdk_type):
            return {"type": "array", "items": schema_of(m[1])}
        if m := re.fullmatch(r"dict\(str, (.+)\)", sdk_type):
            return {"type": "object", "additionalProperties": schema_of(m[1])}
        if sdk_type in SDK_PRIMITIVES:
            return SDK_PRIMITIVES[sdk_type]
        if sdk_type in classes:
            return {"$ref": f"#/$defs/{sdk_type}"}
        if sdk_type in k8s:
            return {"$ref": f"{K8S_DEFS}#/$defs/{k8s[sdk_type]}"}
        if sdk_type in newest:
            return False  # a Kubernetes type newer than this version: its field cannot be used there
        if sdk_type in SDK_UNCHECKED or re.fullmatch(r"V1(alpha|beta)1\w+", sdk_type):
            unchecked.add(sdk_type)  # a foreign type, or a name the SDK refers to but never generated
            return {}
        raise KeyError(f"the KServe SDK's type {sdk_type} maps to no schema")

    defs: dict[str, dict] = {}
    unchecked: set[str] = set()

    def define(name: str) -> None:
        """A $def for this class and every SDK class it refers to (only those: the SDK has dangling names)."""
        if name in defs:
            return
        types, json_names, required = classes[name]
        defs[name] = {
            "type": "object",
            "additionalProperties": False,
            "properties": {json_names[a]: schema_of(t) for a, t in types.items()},
            "required": sorted(json_names[a] for a in required),
        }
        for refers_to in re.findall(r'"#/\$defs/(\w+)"', json.dumps(defs[name])):
            define(refers_to)

    for name in KSERVE_KINDS.values():
        define(name)
    for (api_version, kind), name in KSERVE_KINDS.items():
        defs[name]["properties"].update(apiVersion={"const": api_version}, kind={"const": kind})
        defs[name]["required"] = ["apiVersion", "kind", "metadata", "spec"]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"urn:vae:kserve-sdk-{KSERVE_SDK}",
        "$defs": defs,
        "x-unchecked": sorted(unchecked),
    }


def kserve_errors(o: dict, version: str) -> list[str]:
    import jsonschema
    from referencing import Registry, Resource

    schema = kserve_schema(version)
    registry = Registry().with_resources(
        [
            (K8S_DEFS, Resource.from_contents(kubernetes_definitions(version))),
            (schema["$id"], Resource.from_contents(schema)),
        ]
    )
    root = {"$ref": f"{schema['$id']}#/$defs/{KSERVE_KINDS[(o['apiVersion'], o['kind'])]}"}
    validator = jsonschema.Draft202012Validator(root, registry=registry)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(o)]


def kubernetes_errors(o: dict, version: str) -> list[str]:
    validator = validator_module()
    try:
        validator.validate(o, major_minor(version), strict=True)
    except validator.ValidationError as e:
        return [f"{'.'.join(map(str, e.path))}: {e.message}"]
    return []


def schema_errors(o: dict, version: str) -> list[str]:
    if (o["apiVersion"], o["kind"]) in KSERVE_KINDS:
        return kserve_errors(o, version)
    return kubernetes_errors(o, version)


ALL_OBJECTS = {key(o): o for name in KUSTOMIZATIONS for o in load_resources(DEPLOY / name)}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("object_key", sorted(ALL_OBJECTS), ids=lambda k: f"{k[1]}/{k[2]}")
def test_every_object_is_valid_against_its_schema(object_key, version):
    assert schema_errors(ALL_OBJECTS[object_key], version) == []


@pytest.mark.parametrize(
    ("kind", "path", "right", "misspelt"),
    [
        ("Deployment", ["spec", "template", "spec", "containers", 0], "readinessProbe", "readinesProbe"),
        ("ServingRuntime", ["spec", "containers", 0], "readinessProbe", "readinesProbe"),
        ("InferenceService", ["spec", "predictor", "model"], "storageUri", "storageURI"),
    ],
)
def test_the_validators_refuse_a_misspelt_field(kind, path, right, misspelt):
    o = copy.deepcopy(next(o for o in ALL_OBJECTS.values() if o["kind"] == kind))
    parent = o
    for step in path:
        parent = parent[step]
    parent[misspelt] = parent.pop(right)
    errors = schema_errors(o, "latest")
    assert errors and misspelt in errors[0], errors


def test_the_kserve_schema_knows_the_fields_it_checks():
    schema = kserve_schema("latest")["$defs"]
    assert {"storageUri", "runtime", "protocolVersion", "modelFormat"} <= set(schema["V1beta1ModelSpec"]["properties"])
    assert schema["V1alpha1ServingRuntimeSpec"]["required"] == ["containers"]
    assert schema["V1beta1InferenceServiceSpec"]["required"] == ["predictor"]
    # Accepted as anything, since no schema here describes them; none is a field the manifests use.
    assert kserve_schema("latest")["x-unchecked"] == UNCHECKED_IN_SDK


# ---------------------------------------------------------------------------------------------------------------
# The promises: probes, user, file system, the claim, the drain, resources


def pod_spec(o: dict) -> dict:
    return o["spec"] if o["kind"] == "ServingRuntime" else o["spec"]["template"]["spec"]


def env(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def port_number(container: dict, port) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p.get("name") == port)


def sleep_seconds(container: dict) -> float:
    pre_stop = container["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = pre_stop["exec"]["command"]
    assert command[0] in ("sleep", "/bin/sleep", "/usr/bin/sleep") and len(command) == 2, command
    return float(command[1])


SERVE = [("base", "Deployment"), ("kserve", "ServingRuntime")]
WORKLOADS = [*SERVE, ("model", "Job")]


@pytest.mark.parametrize(("name", "kind"), SERVE)
def test_probes_ask_the_real_paths_on_the_port_the_server_binds(name, kind):
    [container] = pod_spec(one(render(name), kind))["containers"]
    bound = int(env(container).get("VAE_PORT", SERVE_IMAGE_PORT))
    grpc = [int(env(container)["VAE_GRPC_PORT"])] if "VAE_GRPC_PORT" in env(container) else []
    assert [port_number(container, p["containerPort"]) for p in container["ports"]] == [bound, *grpc]
    assert env(container)["VAE_HOST"] == "0.0.0.0"
    for probe, path in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"), ("startupProbe", "/healthz")]:
        get = container[probe]["httpGet"]
        assert (get["path"], port_number(container, get["port"])) == (path, bound)


@pytest.mark.parametrize(("name", "kind"), WORKLOADS)
def test_runs_as_the_images_user_never_root(name, kind):
    spec = pod_spec(one(render(name), kind))
    for container in spec["containers"]:
        merged = {**spec.get("securityContext", {}), **container.get("securityContext", {})}
        assert merged["runAsNonRoot"] is True and merged["runAsUser"] == RUNTIME_USER
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}


@pytest.mark.parametrize(("name", "kind"), WORKLOADS)
def test_the_root_file_system_is_read_only_with_a_writable_tmp(name, kind):
    spec = pod_spec(one(render(name), kind))
    volumes = {v["name"]: v for v in spec["volumes"]}
    for container in spec["containers"]:
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        [tmp] = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert "emptyDir" in volumes[tmp["name"]] and not tmp.get("readOnly", False)


@pytest.mark.parametrize(("name", "kind", "read_only"), [("base", "Deployment", True), ("model", "Job", False)])
def test_the_model_claim_is_read_only_for_serving_and_writable_for_training(name, kind, read_only):
    objects = render(name)
    claim = one(objects, "PersistentVolumeClaim")["metadata"]["name"]
    spec = pod_spec(one(objects, kind))
    [volume] = [v for v in spec["volumes"] if "persistentVolumeClaim" in v]
    assert volume["persistentVolumeClaim"]["claimName"] == claim
    assert volume["persistentVolumeClaim"].get("readOnly", False) is read_only
    [container] = spec["containers"]
    [mount] = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount.get("readOnly", False) is read_only
    assert Path(env(container)["VAE_MODEL_DIR"]).is_relative_to(mount["mountPath"])
    if not read_only:
        assert spec["securityContext"]["fsGroup"] == RUNTIME_USER  # the claim becomes writable for the user


def test_the_inference_service_serves_the_claim_with_the_runtime_over_v2():
    objects = render("kserve")
    runtime, service = one(objects, "ServingRuntime"), one(objects, "InferenceService")
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in [f["name"] for f in runtime["spec"]["supportedModelFormats"]]
    assert model["protocolVersion"] == "v2" and runtime["spec"]["protocolVersions"] == ["v2"]
    claim = one(objects, "PersistentVolumeClaim")["metadata"]["name"]
    job_dir = env(pod_spec(one(objects, "Job"))["containers"][0])["VAE_MODEL_DIR"]  # /models/<name>
    assert model["storageUri"] == f"pvc://{claim}/{Path(job_dir).name}"
    assert env(runtime["spec"]["containers"][0])["VAE_MODEL_DIR"] == "/mnt/models"  # where KServe mounts it


@pytest.mark.parametrize("name", ["base", "kserve"])
def test_the_drain_fits_in_the_grace_period(name):
    objects = render(name)
    if name == "base":
        spec = pod_spec(one(objects, "Deployment"))
        grace = spec["terminationGracePeriodSeconds"]
    else:
        spec = pod_spec(one(objects, "ServingRuntime"))
        grace = one(objects, "InferenceService")["spec"]["predictor"]["terminationGracePeriodSeconds"]
    [container] = spec["containers"]
    settings = env(container)
    drain, request = float(settings["VAE_DRAIN_DELAY_S"]), float(settings["VAE_REQUEST_TIMEOUT_S"])
    assert 0 < sleep_seconds(container) <= grace and drain > 0
    assert sleep_seconds(container) + drain + request < grace


@pytest.mark.parametrize(("name", "kind"), WORKLOADS)
def test_every_container_has_cpu_and_memory_requests_and_limits(name, kind):
    for container in pod_spec(one(render(name), kind))["containers"]:
        for bound in ("requests", "limits"):
            assert set(container["resources"][bound]) == {"cpu", "memory"}


def cpus(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


@pytest.mark.parametrize(("name", "kind"), SERVE)
def test_runtime_threads_fit_the_cpu_limit(name, kind):
    # By default the runtime takes the node's cores, which a CPU limit would throttle.
    [container] = pod_spec(one(render(name), kind))["containers"]
    settings = env(container)
    threads = int(settings["VAE_THREADS"]) * int(settings.get("VAE_WORKERS", 1))
    assert threads <= cpus(container["resources"]["limits"]["cpu"])


def test_the_settings_are_ones_the_service_and_the_train_image_read():
    from service.http.settings import Settings

    known = {f"VAE_{name.upper()}" for name in Settings.model_fields}
    train_script = (ROOT / "scripts" / "container_train.sh").read_text()
    for name, kind in WORKLOADS:
        for container in pod_spec(one(render(name), kind))["containers"]:
            for variable in env(container):
                if kind == "Job":
                    assert f"${{{variable}" in train_script, variable
                else:
                    assert variable in known, variable


def test_service_pdb_and_hpa_point_at_the_serving_pods():
    objects = render("base")
    deployment = one(objects, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service, pdb = one(objects, "Service"), one(objects, "PodDisruptionBudget")
    hpa = one(objects, "HorizontalPodAutoscaler")
    assert service["spec"]["selector"].items() <= labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    [container] = pod_spec(deployment)["containers"]
    targets = [port_number(container, p["targetPort"]) for p in service["spec"]["ports"]]
    assert targets == [int(env(container)["VAE_PORT"]), int(env(container)["VAE_GRPC_PORT"])]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == key(deployment)
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    # A drain may evict a replica only while another is up.
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
