"""deploy/k8s as `kubectl kustomize` renders each overlay, checked offline: every built-in object against
Kubernetes' own schema in strict mode (kubernetes_validate: unknown fields are errors), the custom resources
(KubeRay RayJob, prometheus-operator PodMonitor) against the trimmed CRD schemas in tests/data, and every pod
template inside them against Kubernetes' PodTemplateSpec, strictly. Then what the design asks of the manifests:
separate rollout and learner worker groups, GPUs only in the gpu overlay, Redis behind a password from a Secret,
the reward service behind TLS and a token from Secrets (only the rollout pods get the token and the CA, never the
key) with native gRPC probes on its plaintext health port, non-root read-only pods, metrics scraped with the labels
the dashboards filter on, the dashboards in a ConfigMap for Grafana's sidecar.

The helpers without a test_ prefix (validation_errors, pod_specs, containers) are shared with
test_rlctl_submit.py."""

from __future__ import annotations

import functools
import gzip
import json
import shutil
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from rlctl.submit import (
    K8S_DIR,
    OVERLAYS,
    REWARD_HEALTH_PORT,
    REWARD_TLS_SECRET,
    REWARD_TOKEN_SECRET,
    SECRET,
    TLS_DIR,
    render_overlay,
)
from services.common.config import RunConfig
from services.reward.server import SERVICE_NAME

K8S_VERSION = "1.30"
DATA = Path(__file__).resolve().parents[1] / "data"
DASHBOARDS = K8S_DIR / "base" / "dashboards"
CR_SCHEMAS = {("ray.io/v1", "RayJob"): "kuberay_rayjob_v1_schema.yaml",
              ("ray.io/v1", "RayService"): "kuberay/ray.io_rayservices.yaml.gz",   # KubeRay's own CRD, as published
              ("monitoring.coreos.com/v1", "PodMonitor"): "prometheus_podmonitor_v1_schema.yaml"}
GPU = "nvidia.com/gpu"

# ids are not the bare overlay names: conftest skips every test that has a `gpu` keyword on a machine without one
each_overlay = pytest.mark.parametrize("overlay", OVERLAYS, ids=[f"{o}-overlay" for o in OVERLAYS])


def validation_errors(docs: list[dict]) -> list[str]:
    """Every schema violation in `docs`, one line each; a kind with no schema at all is an error too."""
    errors = []
    for doc in docs:
        where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        schema_file = CR_SCHEMAS.get((doc.get("apiVersion"), doc.get("kind")))
        if schema_file is None:
            try:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                errors.append(f"{where}: {'.'.join(map(str, e.path))}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                errors.append(f"{where}: {e.message}")
            continue
        schema = _schema(schema_file)
        errors += [f"{where}: {'.'.join(map(str, e.path))}: {e.message}"
                   for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]
        for path, _spec in pod_specs(doc):  # the templates the CR schemas leave open
            template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                        "template": _template_at(doc, path)}
            try:
                kubernetes_validate.validate(template, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                errors.append(f"{where} {path}: {'.'.join(map(str, e.path))}: {e.message}")
    return errors


@functools.cache
def _schema(name: str) -> dict:
    """A trimmed schema file, or (.gz) a published CRD: its v1 openAPIV3Schema, closed like the trimmed ones (an
    object that lists its properties refuses others, as an API server with strict field validation does)."""
    if not name.endswith(".gz"):
        return yaml.safe_load((DATA / name).read_text())
    crd = yaml.safe_load(gzip.decompress((DATA / name).read_bytes()))
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return _closed(version["schema"]["openAPIV3Schema"])


def _closed(node):
    if isinstance(node, dict):
        node = {k: _closed(v) for k, v in node.items()}
        if "properties" in node and "additionalProperties" not in node \
                and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
        return node
    return [_closed(v) for v in node] if isinstance(node, list) else node


def _template_at(doc: dict, path: str) -> dict:
    node = doc
    for part in path.split("."):
        node = node[int(part)] if part.isdigit() else node[part]
    return node


def pod_specs(doc: dict) -> list[tuple[str, dict]]:
    """(path of the pod template, its pod spec) for every pod an object makes."""
    if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
        return [("spec.template", doc["spec"]["template"]["spec"])]
    if doc["kind"] in ("RayJob", "RayService"):
        key = "rayClusterSpec" if doc["kind"] == "RayJob" else "rayClusterConfig"
        rc = doc["spec"][key]
        out = [(f"spec.{key}.headGroupSpec.template", rc["headGroupSpec"]["template"]["spec"])]
        out += [(f"spec.{key}.workerGroupSpecs.{i}.template", g["template"]["spec"])
                for i, g in enumerate(rc["workerGroupSpecs"])]
        if "submitterPodTemplate" in doc["spec"]:
            out.append(("spec.submitterPodTemplate", doc["spec"]["submitterPodTemplate"]["spec"]))
        return out
    return []


def containers(docs: list[dict]) -> list[tuple[str, dict, dict]]:
    """(object/path, pod spec, container) for every container of every pod."""
    return [(f"{d['kind']}/{d['metadata']['name']} {path}", spec, c)
            for d in docs for path, spec in pod_specs(d) for c in spec["containers"]]


def one(docs: list[dict], kind: str, component: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (component is None or
                                                       d["metadata"]["labels"].get("app.kubernetes.io/component")
                                                       == component)]
    assert len(found) == 1, f"{len(found)} {kind} {component or ''}"
    return found[0]


def worker_groups(docs: list[dict]) -> dict[str, dict]:
    return {g["groupName"]: g for g in one(docs, "RayJob")["spec"]["rayClusterSpec"]["workerGroupSpecs"]}


def reward_secrets_by_pod(docs: list[dict]) -> dict[str, tuple[dict | None, dict | None, dict | None]]:
    """For every container that gets any reward Secret: (its VIDEORL_REWARD_TOKEN env entry, the volume of the
    reward TLS Secret (the base's or a run's), that volume's mount in the container), each None when missing."""
    found = {}
    for where, spec, c in containers(docs):
        token = next((e for e in c.get("env", []) if e["name"] == "VIDEORL_REWARD_TOKEN"), None)
        volume = next((v for v in spec.get("volumes", []) if "secret" in v
                       and "reward-tls" in v["secret"]["secretName"]), None)
        mount = next((m for m in c.get("volumeMounts", []) if volume and m["name"] == volume["name"]), None)
        if token or volume:
            found[where] = (token, volume, mount)
    return found


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    if shutil.which("kubectl") is None:
        pytest.fail("kubectl is needed to render deploy/k8s (CI renders every overlay); install kubectl")
    return {overlay: render_overlay(overlay) for overlay in OVERLAYS}


@each_overlay
def test_the_overlay_renders_as_it_is_with_no_flag(overlay):
    """`kubectl kustomize DIR` (what `kubectl apply -k`, Argo CD and Flux run) with the default load restrictor: every
    file the overlay reads lies inside the kustomization tree, the dashboards included."""
    if shutil.which("kubectl") is None:
        pytest.fail("kubectl is needed to render deploy/k8s (CI renders every overlay); install kubectl")
    out = subprocess.run(["kubectl", "kustomize", str(K8S_DIR / "overlays" / overlay)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "videorl-grafana-dashboards")
    assert sorted(cm["data"]) == sorted(p.name for p in DASHBOARDS.glob("*.json"))


def test_kuberays_own_rayservice_schema_refuses_what_kuberay_would():
    (judge,) = [d for d in render_overlay("dev-cpu") if d["kind"] == "RayService"]
    assert validation_errors([judge]) == []
    bad = json.loads(json.dumps(judge))
    bad["spec"]["serveConfig"] = bad["spec"].pop("serveConfigV2")                    # a field KubeRay does not have
    bad["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] = "one"       # and a wrong type
    errors = validation_errors([bad])
    assert any("serveConfig" in e for e in errors) and any("replicas" in e for e in errors), errors


@each_overlay
def test_every_object_of_the_overlay_validates_strictly(rendered, overlay):
    docs = rendered[overlay]
    kinds = {d["kind"] for d in docs}
    assert {"RayJob", "Deployment", "Service", "ConfigMap", "PersistentVolumeClaim", "ServiceAccount",
            "PodMonitor"} <= kinds
    assert validation_errors(docs) == []


def test_the_validation_is_strict_enough_to_catch_a_typo(rendered):
    docs = rendered["dev-cpu"]
    deployment = json.loads(json.dumps(one(docs, "Deployment", "reward")))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}   # misspelt field
    rayjob = json.loads(json.dumps(one(docs, "RayJob")))
    rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replica"] = 3           # misspelt field
    rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # must be a string
    rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]["imag"] = "x"
    errors = validation_errors([deployment, rayjob])
    for needle in ("readinessprobe", "replica", "num-cpus", "imag"):
        assert any(needle in e for e in errors), (needle, errors)


@each_overlay
def test_rollout_and_learner_are_separate_worker_groups_under_a_driver_only_head(rendered, overlay):
    rayjob = one(rendered[overlay], "RayJob")
    spec = rayjob["spec"]
    assert spec["entrypoint"] == "sh /etc/videorl/run.sh" and spec["shutdownAfterJobFinishes"] is True
    assert spec["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = worker_groups(rendered[overlay])
    assert list(groups) == ["rollout", "learner"]
    for name, group in groups.items():
        assert f"videorl_{name}" in group["rayStartParams"]["resources"]
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert group["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == name
    expected_rollouts = {"dev-cpu": 1, "gpu": 4}[overlay]
    assert groups["rollout"]["replicas"] == expected_rollouts and groups["learner"]["replicas"] == 1


def test_gpus_are_requested_only_by_the_gpu_overlay_and_only_for_rollout_learner_and_judge(rendered):
    assert GPU not in yaml.safe_dump_all(rendered["dev-cpu"])
    docs = rendered["gpu"]
    with_gpu = {where for where, _, c in containers(docs) if GPU in c["resources"].get("limits", {})}
    assert with_gpu == {"RayJob/videorl-run spec.rayClusterSpec.workerGroupSpecs.0.template",
                        "RayJob/videorl-run spec.rayClusterSpec.workerGroupSpecs.1.template",
                        "RayService/videorl-judge spec.rayClusterConfig.workerGroupSpecs.0.template"}
    (app,) = yaml.safe_load(one(docs, "RayService")["spec"]["serveConfigV2"])["applications"]
    assert app["args"]["accelerator"] == "gpu" and app["args"]["num_gpus"] == 1
    for group in worker_groups(docs).values():
        resources = group["template"]["spec"]["containers"][0]["resources"]
        assert resources["requests"][GPU] == resources["limits"][GPU] == 1
        assert any(t["key"] == GPU for t in group["template"]["spec"]["tolerations"])
    head = one(docs, "RayJob")["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert GPU not in json.dumps(head)


@each_overlay
def test_pods_run_as_non_root_read_only_without_privileges_or_api_tokens(rendered, overlay):
    docs = rendered[overlay]
    accounts = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceAccount"}
    assert all(sa["automountServiceAccountToken"] is False for sa in accounts.values())
    assert not {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"} & {d["kind"] for d in docs}
    for where, spec, c in containers(docs):
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        if where.startswith("RayService/") and ".headGroupSpec." in where:
            # the judge's head runs the in-tree autoscaler, which scales its group through the Kubernetes API: it
            # runs as the ServiceAccount (and Role) KubeRay makes for it, named after the cluster
            assert "serviceAccountName" not in spec and "automountServiceAccountToken" not in spec, where
            assert _template_at(next(d for d in docs if d["kind"] == "RayService"),
                                "spec.rayClusterConfig")["enableInTreeAutoscaling"] is True
        else:
            assert spec["automountServiceAccountToken"] is False and spec["serviceAccountName"] in accounts, where
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], where
        assert sc["readOnlyRootFilesystem"] is True, where
        writable = {m["mountPath"] for m in c["volumeMounts"]}
        assert "/tmp" in writable, f"{where}: a read-only root needs a writable /tmp"
        assert all(r in c["resources"].get("requests", {}) for r in ("cpu", "memory")), where
        assert "memory" in c["resources"].get("limits", {}), where


@each_overlay
def test_redis_requires_a_password_that_only_a_secret_holds(rendered, overlay):
    docs = rendered[overlay]
    assert "Secret" not in {d["kind"] for d in docs}   # created by rlctl submit or the operator, never rendered
    redis = one(docs, "Deployment", "redis")["spec"]["template"]["spec"]["containers"][0]
    assert redis["args"][:2] == ["--requirepass", "$(REDIS_PASSWORD)"]
    users = 0
    for where, _, c in containers(docs):
        env = c.get("env", [])
        names = [e["name"] for e in env]
        for e in env:
            if e["name"] in ("REDIS_PASSWORD", "REDISCLI_AUTH"):
                assert "value" not in e and e["valueFrom"]["secretKeyRef"] == {"name": SECRET, "key": "password"}
            if e["name"] == "VIDEORL_REDIS_URL":  # $(VAR) expands only from variables defined before it
                users += 1
                assert e["value"] == "redis://:$(REDIS_PASSWORD)@videorl-redis:6379/0", where
                assert names.index("REDIS_PASSWORD") < names.index("VIDEORL_REDIS_URL"), where
    assert users == 4   # reward, Ray head, rollout and learner workers
    policy = one(docs, "NetworkPolicy", "redis")["spec"]
    assert policy["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "redis"
    assert policy["ingress"][0]["from"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/part-of": "videorl"}


@each_overlay
def test_reward_service_has_native_grpc_probes_on_its_plaintext_health_port(rendered, overlay):
    docs = rendered[overlay]
    c = one(docs, "Deployment", "reward")["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["grpc-health"] == REWARD_HEALTH_PORT != ports["grpc"]
    # the main port has TLS and wants a token, which the kubelet's gRPC probe cannot give
    assert c["readinessProbe"]["grpc"] == {"port": ports["grpc-health"], "service": SERVICE_NAME}
    assert c["livenessProbe"]["grpc"] == {"port": ports["grpc-health"]}   # "": the whole server
    assert f"reward.port={ports['grpc']}" in c["args"] and "reward.host=0.0.0.0" in c["args"]
    assert f"reward.health_port={ports['grpc-health']}" in c["args"]
    service = one(docs, "Service", "reward")["spec"]
    assert {p["name"]: p["targetPort"] for p in service["ports"]} == {"grpc": "grpc", "metrics": "metrics"}


@each_overlay
def test_reward_tls_and_token_reach_the_reward_pod_and_the_rollout_pods_only(rendered, overlay):
    docs = rendered[overlay]
    found = reward_secrets_by_pod(docs)
    reward = "Deployment/videorl-reward spec.template"
    rollout = "RayJob/videorl-run spec.rayClusterSpec.workerGroupSpecs.0.template"
    assert set(found) == {reward, rollout}   # not the head (only actors call it), the learner, Redis, the submitter
    for where, (token, volume, mount) in found.items():
        assert token == {"name": "VIDEORL_REWARD_TOKEN",
                         "valueFrom": {"secretKeyRef": {"name": REWARD_TOKEN_SECRET, "key": "token"}}}, where
        assert volume["secret"]["secretName"] == REWARD_TLS_SECRET, where
        assert mount == {"name": volume["name"], "mountPath": str(TLS_DIR), "readOnly": True}, where
    assert "items" not in found[reward][1]["secret"]   # the server: tls.crt, tls.key and ca.crt
    assert found[reward][1]["secret"]["defaultMode"] == 0o440
    assert found[rollout][1]["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]   # never the key


@each_overlay
def test_metrics_are_scraped_with_the_labels_the_dashboards_filter_on(rendered, overlay):
    docs = rendered[overlay]
    scraped = 0
    for where, _spec, c in containers(docs):
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        if "metrics" not in ports:
            continue
        scraped += 1
        d = next(d for d in docs if f"{d['kind']}/{d['metadata']['name']}" == where.split()[0])
        meta = _template_at(d, where.split()[1])["metadata"]
        assert meta["annotations"]["prometheus.io/scrape"] == "true", where
        assert meta["annotations"]["prometheus.io/port"] == str(ports["metrics"]), where
        assert meta["annotations"]["videorl.io/run-id"], where
        assert meta["labels"]["app.kubernetes.io/part-of"] == "videorl", where
    assert scraped == 6   # reward, Ray head, rollout, learner, the judge's head (Ray's Serve metrics) and workers
    monitor = one(docs, "PodMonitor")["spec"]
    assert monitor["selector"]["matchLabels"]["app.kubernetes.io/part-of"] == "videorl"
    endpoint = monitor["podMetricsEndpoints"][0]
    assert endpoint["port"] == "metrics"
    assert {r["targetLabel"]: r["sourceLabels"][0] for r in endpoint["relabelings"]} == {
        "namespace": "__meta_kubernetes_namespace", "run": "__meta_kubernetes_pod_annotation_videorl_io_run_id",
        "service": "__meta_kubernetes_pod_label_app_kubernetes_io_component"}


def test_the_plain_prometheus_scrape_job_is_valid_and_labels_namespace_and_run(tmp_path):
    jobs = yaml.safe_load((K8S_DIR / "prometheus-scrape.yaml").read_text())
    targets = {r.get("target_label") for r in jobs[0]["relabel_configs"]}
    assert {"namespace", "run", "service", "__address__"} <= targets
    out = _promtool_check(tmp_path, jobs)
    if "kubernetes_sd_configs not found" in out.stdout + out.stderr:  # Debian builds Prometheus without it
        jobs = [{**{k: v for k, v in jobs[0].items() if k != "kubernetes_sd_configs"},
                 "static_configs": [{"targets": ["127.0.0.1:9400"]}]}]
        out = _promtool_check(tmp_path, jobs)  # still checks every relabel rule (actions, regexes, labels)
    assert out.returncode == 0, out.stdout + out.stderr


def _promtool_check(tmp_path: Path, jobs: list[dict]) -> subprocess.CompletedProcess:
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({"scrape_configs": jobs}))
    return subprocess.run(["promtool", "check", "config", str(config)], capture_output=True, text=True, timeout=60)


@each_overlay
def test_the_run_config_and_entrypoint_come_from_one_configmap(rendered, overlay):
    docs = rendered[overlay]
    config_map = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "videorl-config")
    cfg = RunConfig.model_validate(yaml.safe_load(config_map["data"]["config.yaml"]))
    assert cfg.redis.url is None and str(cfg.run_dir).startswith("/data/") and cfg.reward.host == "0.0.0.0"
    reward = cfg.reward   # TLS from the mounted Secret, the token, the name of the Service the actors dial
    assert (reward.tls_cert, reward.tls_key, reward.tls_ca) == (TLS_DIR / "tls.crt", TLS_DIR / "tls.key",
                                                                TLS_DIR / "ca.crt")
    assert reward.require_token is True and reward.health_port == REWARD_HEALTH_PORT
    rollout_env = {e["name"]: e.get("value") for e in worker_groups(docs)["rollout"]["template"]["spec"]
                   ["containers"][0]["env"]}
    assert rollout_env["VIDEORL_REWARD_ADDRESS"] == f"{reward.tls_server_name}:50051"
    assert reward.tls_server_name == one(docs, "Service", "reward")["metadata"]["name"]
    assert "/etc/videorl/config.yaml" in config_map["data"]["run.sh"]
    assert "${VIDEORL_REDIS_URL}" in config_map["data"]["run.sh"]
    head = one(docs, "RayJob")["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert {"name": "config", "configMap": {"name": "videorl-config"}} in head["volumes"]
    claims = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    for _, spec, _c in containers(docs):
        for v in spec.get("volumes", []):
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in claims
    access = {"dev-cpu": ["ReadWriteOnce"], "gpu": ["ReadWriteMany"]}[overlay]
    assert claims["videorl-data"]["spec"]["accessModes"] == access


def test_dashboards_are_packed_for_grafanas_sidecar(rendered):
    for docs in rendered.values():
        cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "videorl-grafana-dashboards")
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        files = sorted(p.name for p in DASHBOARDS.glob("*.json"))
        assert sorted(cm["data"]) == files == ["learner.json", "overview.json", "reward.json", "rollout.json"]
        for name in files:
            assert json.loads(cm["data"][name]) == json.loads((DASHBOARDS / name).read_text())
