"""`rlctl submit`: the dry run of the shipped configs gives valid manifests named after the run (references
follow), the run's config in the ConfigMap (the reward server with TLS and the token, its health port for the
probes), GPU requests only with the gpu overlay, and never a secret; applying goes through the Kubernetes API (a fake
dynamic client here: no cluster in CI), creates the run's missing Secrets (Redis password, reward token, a CA and a
certificate for the reward Service's names, made with the openssl CLI) without printing them, and fails with a
clear message when there is no cluster, no namespace, no KubeRay or no openssl."""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import subprocess
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from click.testing import CliRunner
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic.exceptions import NotFoundError, ResourceNotFoundError
from test_k8s_manifests import GPU, containers, one, reward_secrets_by_pod, validation_errors, worker_groups

from rlctl import submit as sub
from rlctl.cli import DEFAULT_CONFIG, main
from services.common.config import RunConfig, load_config

LEARN_CONFIG = DEFAULT_CONFIG.parent / "learn.yaml"
BASE_NAMES = ("videorl-redis", "videorl-reward", "videorl-config", "videorl-data", "videorl-ray", "videorl-run",
              "videorl-redis-auth", "videorl-redis-data", "videorl-metrics", "videorl-reward-tls",
              "videorl-reward-token")



def dry_run(config: Path, *args: str) -> tuple[str, list[dict]]:
    r = CliRunner().invoke(main, ["submit", str(config), "--dry-run", *args])
    assert r.exit_code == 0, r.output
    return r.stdout, [d for d in yaml.safe_load_all(r.stdout) if d]


def config_map(docs: list[dict], name: str) -> dict:
    return next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name)


@pytest.mark.parametrize("overlay", sub.OVERLAYS, ids=[f"{o}-overlay" for o in sub.OVERLAYS])
@pytest.mark.parametrize("config", [DEFAULT_CONFIG, LEARN_CONFIG], ids=["default", "learn"])
def test_dry_run_of_a_shipped_config_is_a_valid_run_with_its_config_embedded(config, overlay):
    _, docs = dry_run(config, "--overlay", overlay, "--namespace", "team-a")
    assert validation_errors(docs) == []
    cfg = load_config(config)
    slug = sub.run_slug(cfg.run_id)
    for d in docs:
        assert d["metadata"]["namespace"] == "team-a"
        if d["metadata"]["name"] not in sub.SHARED:
            assert d["metadata"]["name"].startswith(f"videorl-{slug}-"), d["metadata"]["name"]
            assert d["metadata"]["labels"][sub.RUN_LABEL] == slug
    text = config_map(docs, f"videorl-{slug}-config")["data"]["config.yaml"]
    embedded = RunConfig.model_validate(yaml.safe_load(text))
    tls = Path("/etc/videorl/tls")
    cluster = {"run_dir": Path(f"/data/runs/{cfg.run_id}"), "reward": cfg.reward.model_copy(update={
        "host": "0.0.0.0", "port": 50051, "health_port": 50052, "tls_cert": tls / "tls.crt",
        "tls_key": tls / "tls.key", "tls_ca": tls / "ca.crt", "tls_server_name": f"videorl-{slug}-reward",
        "require_token": True})}
    assert embedded == cfg.model_copy(update=cluster)   # the run's config; only the cluster's fields differ
    assert worker_groups(docs)["rollout"]["replicas"] == cfg.rollout.num_actors
    has_gpu = {where for where, _, c in containers(docs) if GPU in c["resources"].get("limits", {})}
    assert has_gpu == (set() if overlay == "dev-cpu" else {
        f"RayJob/videorl-{slug}-run spec.rayClusterSpec.workerGroupSpecs.0.template",
        f"RayJob/videorl-{slug}-run spec.rayClusterSpec.workerGroupSpecs.1.template"})
    for where, spec, c in containers(docs):
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert c["securityContext"]["readOnlyRootFilesystem"] is True, where
        assert c["securityContext"]["allowPrivilegeEscalation"] is False, where


def test_every_reference_follows_the_run_names_and_selectors_pick_only_the_runs_pods():
    out, docs = dry_run(LEARN_CONFIG, "--overlay", "gpu")
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    secrets = {"videorl-learn-redis-auth", "videorl-learn-reward-token", "videorl-learn-reward-tls",
               "videorl-learn-api-token"}
    for where, spec, c in containers(docs):
        assert ("ServiceAccount", spec["serviceAccountName"]) in names, where
        for v in spec.get("volumes", []):
            if "configMap" in v:
                assert ("ConfigMap", v["configMap"]["name"]) in names, where
            if "persistentVolumeClaim" in v:
                assert ("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"]) in names, where
            if "secret" in v:
                assert v["secret"]["secretName"] in secrets, where
        for e in c.get("env", []):
            if "secretKeyRef" in e.get("valueFrom", {}):
                assert e["valueFrom"]["secretKeyRef"]["name"] in secrets, where
            for host in re.findall(r"(?:@|^)(videorl-[a-z0-9-]+):\d+", e.get("value", "")):
                assert ("Service", host) in names, (where, host)
    without_content = yaml.safe_dump_all([d for d in docs if d["kind"] != "ConfigMap"])
    for base in BASE_NAMES:   # no object is still called, or still points at, a name of another run
        assert not re.search(rf"(?<![a-z0-9-]){base}(?![a-z0-9-])", without_content), base
    for d in docs:
        if d["kind"] == "Service":
            assert d["spec"]["selector"][sub.RUN_LABEL] == "learn"
        namespaces = [n["namespaceSelector"] for n in sub._dicts(d) if "namespaceSelector" in n]
        for node in sub._dicts(d):
            if "matchLabels" in node and not any(node is ns for ns in namespaces):   # namespaces: no run label
                assert node["matchLabels"][sub.RUN_LABEL] == "learn", d["metadata"]["name"]
    for where, _, _c in containers(docs):
        d = next(d for d in docs if f"{d['kind']}/{d['metadata']['name']}" == where.split()[0])
        meta = _at(d, where.split()[1])["metadata"]
        assert meta["labels"][sub.RUN_LABEL] == "learn" and meta["annotations"][sub.RUN_ANNOTATION] == "learn"


def test_image_namespace_and_rollout_replicas_come_from_the_command_and_config(tmp_path):
    config = tmp_path / "big.yaml"
    config.write_text("run_id: Big_Run.1\nrollout:\n  num_actors: 24\n")
    _, docs = dry_run(config, "--overlay", "gpu", "--image", "registry.example/ml/videorl:v7", "-n", "ml")
    assert validation_errors(docs) == []
    images = {c["name"]: c["image"] for _, _, c in containers(docs)}
    assert images.pop("redis").startswith("redis:")
    assert set(images.values()) == {"registry.example/ml/videorl:v7"}
    rollout = worker_groups(docs)["rollout"]
    assert rollout["replicas"] == 24 and rollout["maxReplicas"] >= 24 and rollout["minReplicas"] <= 24
    slug = sub.run_slug("Big_Run.1")
    assert re.fullmatch(r"big-run-1-[0-9a-f]{6}", slug)
    assert one(docs, "RayJob")["metadata"]["name"] == f"videorl-{slug}-run"
    assert one(docs, "RayJob")["metadata"]["annotations"][sub.RUN_ANNOTATION] == "Big_Run.1"


@pytest.mark.parametrize("overlay", sub.OVERLAYS, ids=[f"{o}-overlay" for o in sub.OVERLAYS])
def test_one_pod_per_rollout_actor_and_per_learner_rank_with_the_engines_gpus(tmp_path, overlay):
    config = tmp_path / "scaled.yaml"
    config.write_text("rollout:\n  num_actors: 3\n  engine: {tensor_parallel_size: 4}\nlearner:\n  ranks: 6\n")
    _, docs = dry_run(config, "--overlay", overlay)
    assert validation_errors(docs) == []
    groups = worker_groups(docs)
    assert (groups["rollout"]["replicas"], groups["learner"]["replicas"]) == (3, 6)
    assert groups["learner"]["minReplicas"] <= 6 <= groups["learner"]["maxReplicas"]
    gpus = {name: {part: amounts.get(GPU) for part, amounts in g["template"]["spec"]["containers"][0]["resources"]
                   .items()} for name, g in groups.items()}
    if overlay == "gpu":   # the engine's TP GPUs in one pod (its placement group); one per learner rank
        assert gpus == {"rollout": {"requests": 4, "limits": 4}, "learner": {"requests": 1, "limits": 1}}
    else:
        assert gpus == {g: {"requests": None, "limits": None} for g in ("rollout", "learner")}


def test_run_slugs_are_dns_labels_that_keep_distinct_runs_apart():
    ids = ["local", "Local", "a_b", "a-b", "a.b", "-x-", "x" * 64, "x" * 63 + "y", "..."]
    slugs = [sub.run_slug(i) for i in ids]
    assert len(set(slugs)) == len(ids)
    for s in slugs:
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", s) and len(f"videorl-{s}-redis-data") <= 63
    assert sub.run_slug("local") == "local"


def test_no_secret_ever_reaches_the_output(tmp_path, monkeypatch):
    config = tmp_path / "with-url.yaml"
    config.write_text("run_id: leak\nredis:\n  url: redis://:hunter2-s3cret@redis.internal:6379/0\n")
    monkeypatch.setenv("VIDEORL_REWARD_TOKEN", "t0ken-from-my-shell")
    out, docs = dry_run(config, "--overlay", "dev-cpu")
    assert "hunter2-s3cret" not in out and "redis.internal" not in out and "t0ken-from-my-shell" not in out
    assert "-----BEGIN" not in out   # no certificate, no key: the pods mount the Secret
    assert "Secret" not in {d["kind"] for d in docs}
    embedded = yaml.safe_load(config_map(docs, "videorl-leak-config")["data"]["config.yaml"])
    assert "redis" not in embedded
    assert not {k for k in embedded["reward"] if "token" in k} - {"require_token"}   # the token is never config
    for where, _, c in containers(docs):
        for e in c.get("env", []):
            if any(word in e["name"] for word in ("PASSWORD", "AUTH", "TOKEN")):
                assert "value" not in e, where


def test_the_reward_server_is_verified_by_the_name_the_actors_dial_and_probed_on_its_health_port():
    _, docs = dry_run(LEARN_CONFIG, "--overlay", "gpu", "-n", "ml")
    reward = RunConfig.model_validate(yaml.safe_load(config_map(docs, "videorl-learn-config")["data"]
                                                     ["config.yaml"])).reward
    assert reward.tls_server_name == "videorl-learn-reward"
    assert ("Service", reward.tls_server_name) in {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert reward.tls_server_name in sub.reward_dns_names("learn", "ml")
    for where, _, c in containers(docs):
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        if "VIDEORL_REWARD_ADDRESS" in env:
            assert env["VIDEORL_REWARD_ADDRESS"] == f"{reward.tls_server_name}:{reward.port}", where
    pod = one(docs, "Deployment", "reward")["spec"]["template"]["spec"]["containers"][0]
    assert pod["readinessProbe"]["grpc"]["port"] == pod["livenessProbe"]["grpc"]["port"] == reward.health_port
    found = reward_secrets_by_pod(docs)   # the token and the CA: the reward pod and the rollout pods only
    assert set(found) == {"Deployment/videorl-learn-reward spec.template",
                          "RayJob/videorl-learn-run spec.rayClusterSpec.workerGroupSpecs.0.template"}
    for where, (token, volume, mount) in found.items():
        assert token["valueFrom"]["secretKeyRef"] == {"name": "videorl-learn-reward-token", "key": "token"}, where
        assert volume["secret"]["secretName"] == "videorl-learn-reward-tls", where
        assert mount["mountPath"] == str(reward.tls_ca.parent) and mount["readOnly"] is True, where
    rollout = found["RayJob/videorl-learn-run spec.rayClusterSpec.workerGroupSpecs.0.template"][1]
    assert [i["path"] for i in rollout["secret"]["items"]] == [reward.tls_ca.name]   # not tls.key


class FakeDynamic:
    """The slice of kubernetes.dynamic.DynamicClient that `apply` uses, recording what it is asked to do."""

    def __init__(self, served: set[str], existing: set[tuple[str, str]]):
        self.served, self.existing = served, existing
        self.resources = SimpleNamespace(get=self._resource)
        self.configuration = SimpleNamespace(host="https://fake:6443")
        self.created: list[dict] = []
        self.applied: list[tuple[dict, str, str, bool]] = []

    def _resource(self, api_version: str, kind: str):
        if kind not in self.served:
            raise ResourceNotFoundError(f"No matches found for {{'api_version': {api_version!r}, 'kind': {kind!r}}}")
        return SimpleNamespace(kind=kind)

    def get(self, resource, name: str, namespace: str | None = None):
        if (resource.kind, name) not in self.existing:
            raise NotFoundError(ApiException(status=404, reason="Not Found"))
        return {"metadata": {"name": name}}

    def create(self, resource, body: dict, namespace: str):
        self.created.append(body)
        self.existing.add((resource.kind, body["metadata"]["name"]))

    def server_side_apply(self, resource, body: dict, namespace: str, field_manager: str, force_conflicts: bool):
        self.applied.append((body, namespace, field_manager, force_conflicts))


BUILTIN = {"Namespace", "Secret", "ServiceAccount", "ConfigMap", "Service", "PersistentVolumeClaim", "Deployment",
           "NetworkPolicy"}


def _docs() -> list[dict]:
    return sub.customize(sub.render_overlay("dev-cpu"), load_config(LEARN_CONFIG), "team-a", None)


def test_apply_creates_the_runs_secrets_once_with_random_values_and_never_prints_them(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))   # where openssl's files go, then go away
    (tmp_path / "tmp").mkdir()
    docs, lines = _docs(), []
    fake = FakeDynamic(BUILTIN | {"RayJob", "PodMonitor"}, {("Namespace", "team-a")})
    sub.apply(docs, fake, "team-a", "learn", lines.append)
    created = {s["metadata"]["name"]: s for s in fake.created}
    assert set(created) == {"videorl-learn-redis-auth", "videorl-learn-reward-token", "videorl-learn-reward-tls",
                            "videorl-learn-api-token"}
    assert all(s["metadata"]["namespace"] == "team-a" and s["metadata"]["labels"] == {sub.RUN_LABEL: "learn"}
               for s in created.values())
    password = created["videorl-learn-redis-auth"]["stringData"]["password"]
    token = created["videorl-learn-reward-token"]["stringData"]["token"]
    api_token = created["videorl-learn-api-token"]["stringData"]["token"]
    tls = created["videorl-learn-reward-tls"]
    assert len(password) >= 32 and len(token) >= 32 and len(api_token) >= 32 and api_token != token
    assert tls["type"] == "kubernetes.io/tls"
    assert set(tls["stringData"]) == {"tls.crt", "tls.key", "ca.crt"}
    assert "PRIVATE KEY" in tls["stringData"]["tls.key"]
    names = ["videorl-learn-reward", "videorl-learn-reward.team-a", "videorl-learn-reward.team-a.svc",
             "videorl-learn-reward.team-a.svc.cluster.local"]
    assert _sans(tls["stringData"]["tls.crt"], tmp_path) == names
    for name in names:   # the certificate chains to the Secret's CA and is valid for every name of the Service
        assert _verify(tls["stringData"], name, tmp_path), name
    assert not _verify(tls["stringData"], "videorl-other-reward", tmp_path)
    assert list((tmp_path / "tmp").iterdir()) == []   # the CA key and the rest are deleted
    printed = "\n".join(lines)
    for value in (password, token, api_token, *tls["stringData"].values()):
        assert value not in printed
    assert "-----BEGIN" not in printed
    assert [b["metadata"]["name"] for b, *_ in fake.applied] == [d["metadata"]["name"] for d in docs]
    assert {(ns, manager, force) for _, ns, manager, force in fake.applied} == {("team-a", "rlctl", True)}
    sub.apply(docs, fake, "team-a", "learn", lines.append)   # a second submit keeps them all
    assert len(fake.created) == 4 and sum("exists" in line for line in lines) == 4


def test_apply_without_openssl_says_so_and_how_to_do_without(tmp_path, monkeypatch):
    docs = _docs()
    monkeypatch.setenv("PATH", str(tmp_path))   # no openssl on it
    fake = FakeDynamic(BUILTIN | {"RayJob", "PodMonitor"}, {("Namespace", "team-a")})
    with pytest.raises(sub.SubmitError, match="openssl is not on PATH.*create the Secret videorl-learn-reward-tls"):
        sub.apply(docs, fake, "team-a", "learn", print)
    assert "videorl-learn-reward-tls" not in {s["metadata"]["name"] for s in fake.created} and not fake.applied
    fake.existing.add(("Secret", "videorl-learn-reward-tls"))   # made by hand: openssl is not needed then
    sub.apply(docs, fake, "team-a", "learn", print)
    assert len(fake.applied) == len(docs)


def _sans(cert: str, tmp_path: Path) -> list[str]:
    (tmp_path / "cert.pem").write_text(cert)
    text = subprocess.run(["openssl", "x509", "-noout", "-text", "-in", str(tmp_path / "cert.pem")],
                          capture_output=True, text=True, check=True, timeout=30).stdout
    line = text.split("X509v3 Subject Alternative Name:")[1].strip().splitlines()[0]
    return [n.strip().removeprefix("DNS:") for n in line.split(",")]


def _verify(pem: dict[str, str], hostname: str, tmp_path: Path) -> bool:
    for name in ("tls.crt", "ca.crt"):
        (tmp_path / name).write_text(pem[name])
    out = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "ca.crt"), "-verify_hostname", hostname,
                          str(tmp_path / "tls.crt")], capture_output=True, text=True, timeout=30)
    return out.returncode == 0


def test_apply_skips_the_podmonitor_without_the_operator_but_stops_without_kuberay():
    docs, lines = _docs(), []
    fake = FakeDynamic(BUILTIN | {"RayJob"}, {("Namespace", "team-a")})
    sub.apply(docs, fake, "team-a", "learn", lines.append)
    applied = {b["kind"] for b, *_ in fake.applied}
    assert "PodMonitor" not in applied and "RayJob" in applied
    assert any("PodMonitor" in line and "skipped" in line for line in lines)
    with pytest.raises(sub.SubmitError, match="KubeRay"):
        sub.apply(docs, FakeDynamic(BUILTIN | {"PodMonitor"}, {("Namespace", "team-a")}), "team-a", "learn", print)
    with pytest.raises(sub.SubmitError, match="namespace 'team-a' does not exist"):
        sub.apply(docs, FakeDynamic(BUILTIN, set()), "team-a", "learn", print)


def test_submit_without_a_cluster_says_so_and_how_to_dry_run(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    r = CliRunner().invoke(main, ["submit", str(DEFAULT_CONFIG)])
    assert r.exit_code == 1 and "no Kubernetes cluster configured" in r.output and "--dry-run" in r.output


def test_submit_to_an_unreachable_cluster_names_the_address(tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]   # closed again below: nothing listens there
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k",
                      "cluster": {"server": f"https://127.0.0.1:{port}", "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "t0ken-not-printed"}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    r = CliRunner().invoke(main, ["submit", str(DEFAULT_CONFIG)])
    assert r.exit_code == 1 and f"cannot reach the Kubernetes API at https://127.0.0.1:{port}" in r.output
    assert "t0ken-not-printed" not in r.output


def test_help_explains_and_bad_input_is_named(tmp_path):
    r = CliRunner().invoke(main, ["--help"])
    assert "submit" in r.output
    r = CliRunner().invoke(main, ["submit", "--help"])
    assert r.exit_code == 0
    for word in ("--dry-run", "--overlay", "--namespace", "--image", "KubeRay", "Secret", "never prints"):
        assert word in r.output, word
    bad = tmp_path / "bad.yaml"
    bad.write_text("rollout:\n  num_actors: 0\n")
    r = CliRunner().invoke(main, ["submit", str(bad), "--dry-run"])
    assert r.exit_code != 0 and "rollout.num_actors" in r.output
    r = CliRunner().invoke(main, ["submit", str(DEFAULT_CONFIG), "--dry-run", "-n", "Not_A_Namespace"])
    assert r.exit_code != 0 and "--namespace" in r.output
    r = CliRunner().invoke(main, ["submit", str(DEFAULT_CONFIG), "--dry-run", "--api-from", "10.0.0.300/8"])
    assert r.exit_code != 0 and "--api-from" in r.output and "'10.0.0.300/8' is not a CIDR" in r.output


def test_paths_outside_the_data_volume_are_warned_about(tmp_path):
    config = tmp_path / "paths.yaml"
    config.write_text("data:\n  train: videos/train.jsonl\n  eval: /data/videos/eval.jsonl\n")
    r = CliRunner().invoke(main, ["submit", str(config), "--dry-run"])
    assert r.exit_code == 0
    assert "data.train=videos/train.jsonl is read inside the pods" in r.stderr and "data.eval" not in r.stderr


def _at(doc: dict, path: str) -> dict:
    for part in path.split("."):
        doc = doc[int(part)] if part.isdigit() else doc[part]
    return doc


def _selects(selector: dict, labels: dict) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        assert e["operator"] == "In", e                       # the only operator the manifests use
        if labels.get(e["key"]) not in e["values"]:
            return False
    return True


def _ingress_allowed(policies: list[dict], src: dict, dst: dict, port: int) -> bool:
    """Kubernetes' ingress semantics for pods of one namespace (src["ns"] marks a pod of another namespace, with
    that namespace's labels; src["ip"] an address outside the pods, like the API server's): denied when a policy
    selects dst and no rule of any selecting policy admits src."""
    selecting = [p for p in policies if _selects(p["spec"]["podSelector"], dst)]
    if not selecting:
        return True

    def peer_ok(peer: dict) -> bool:
        if "ipBlock" in peer:
            return "ip" in src and ipaddress.ip_address(src["ip"]) in ipaddress.ip_network(peer["ipBlock"]["cidr"])
        if "ip" in src:
            return False
        if "namespaceSelector" in peer:
            return "ns" in src and _selects(peer["namespaceSelector"], src["ns"])
        return "ns" not in src and _selects(peer["podSelector"], src)

    for p in selecting:
        for rule in p["spec"].get("ingress", []):
            ports = [x["port"] for x in rule.get("ports", [])]
            if (not ports or port in ports) and (not rule.get("from") or any(peer_ok(x) for x in rule["from"])):
                return True
    return False


def test_network_policies_admit_only_the_designed_flows():
    _, docs = dry_run(LEARN_CONFIG, "--overlay", "gpu", "-n", "ml", "--api-from", "10.0.0.0/28")
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    run = policies[0]["spec"]["podSelector"]["matchLabels"]["videorl.io/run"]

    def pod(component, run_label=run):
        return {"app.kubernetes.io/part-of": "videorl", "app.kubernetes.io/component": component,
                "videorl.io/run": run_label}

    reward, head, rollout, learner, redis = (pod(c) for c in ("reward", "ray-head", "rollout", "learner", "redis"))
    submitter, other_run = pod("submitter"), pod("rollout", "another-run")
    stranger = {"app": "something-else"}
    prometheus = {"ns": {"videorl.io/scrape": "true"}}
    outsider = {"ns": {"team": "b"}}
    operator = {"videorl.io/operator": "true", "app": "notebook"}   # any pod of the namespace so labelled
    api_server, elsewhere = {"ip": "10.0.0.3"}, {"ip": "192.168.1.7"}
    expect = [
        ((rollout, reward, 50051), True), ((learner, reward, 50051), False), ((head, reward, 50051), False),
        ((other_run, reward, 50051), False), ((stranger, reward, 50051), False), ((outsider, reward, 50051), False),
        ((stranger, reward, 50052), True), ((head, reward, 9400), True), ((prometheus, reward, 9400), True),
        ((prometheus, reward, 50051), False),
        ((rollout, learner, 29500), True), ((learner, head, 6379), True), ((head, rollout, 10001), True),
        ((reward, head, 6379), False), ((other_run, learner, 29500), False), ((submitter, head, 8265), True),
        ((submitter, head, 6379), False), ((prometheus, rollout, 9400), True), ((outsider, learner, 9400), False),
        ((reward, redis, 6379), True), ((learner, redis, 6379), True), ((stranger, redis, 6379), False),
        ((other_run, redis, 6379), False), ((head, submitter, 8080), False),
        # the control API: the operator's pods and the API server's proxy (--api-from), no one else from outside
        ((operator, head, 8300), True), ((operator, head, 6379), False), ((operator, rollout, 8300), False),
        ((api_server, head, 8300), True), ((api_server, head, 6379), False), ((elsewhere, head, 8300), False),
        ((stranger, head, 8300), False), ((outsider, head, 8300), False), ((reward, head, 8300), False),
    ]
    def name(p):
        return f"{p['app.kubernetes.io/component']}@{p['videorl.io/run']}" if "videorl.io/run" in p else str(p)


    wrong = [(name(s), name(d), port, want) for (s, d, port), want in expect
             if _ingress_allowed(policies, s, d, port) != want]
    assert not wrong, f"flows the policies get wrong (from, to, port, expected): {wrong}"


@pytest.mark.parametrize("overlay", sub.OVERLAYS, ids=[f"{o}-overlay" for o in sub.OVERLAYS])
def test_a_served_judge_becomes_the_runs_rayservice_that_only_the_reward_pods_reach(tmp_path, overlay):
    config = tmp_path / "judged.yaml"
    config.write_text("run_id: jr\nreward:\n  judge:\n    model: route-judge\n    serve:\n      model: /data/models/j\n"
                      "      min_replicas: 1\n      max_replicas: 3\n      target_ongoing_requests: 2\n")
    _, docs = dry_run(config, "--overlay", overlay, "-n", "ml")
    assert validation_errors(docs) == []          # the RayService against KubeRay's own CRD
    judge = one(docs, "RayService")
    assert judge["metadata"]["name"] == "videorl-jr-judge"
    (app,) = yaml.safe_load(judge["spec"]["serveConfigV2"])["applications"]
    assert app["import_path"] == "services.judge.serve:app_builder"
    args = app["args"]
    assert (args["model"], args["name"], args["min_replicas"], args["max_replicas"]) == ("/data/models/j",
                                                                                     "route-judge", 1, 3)
    assert args["accelerator"] == ("gpu" if overlay == "gpu" else "cpu") and args["port"] == 8000
    from services.judge.serve import app_builder

    assert app_builder(args) is not None          # what Serve's controller will build from these args
    (group,) = judge["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert (group["minReplicas"], group["maxReplicas"]) == (1, 3)
    reward = yaml.safe_load(config_map(docs, "videorl-jr-config")["data"]["config.yaml"])["reward"]["judge"]
    assert reward["base_url"] == "http://videorl-jr-judge-serve-svc:8000/v1" and reward["serve"] is None
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    pod = {"app.kubernetes.io/part-of": "videorl", "videorl.io/run": "jr"}
    reward_pod, judge_pod, rollout_pod = ({**pod, "app.kubernetes.io/component": c}
                                          for c in ("reward", "judge", "rollout"))
    assert _ingress_allowed(policies, reward_pod, judge_pod, 8000)
    assert not _ingress_allowed(policies, rollout_pod, judge_pod, 8000)
    assert not _ingress_allowed(policies, {**reward_pod, "videorl.io/run": "other"}, judge_pod, 8000)
    assert _ingress_allowed(policies, judge_pod, judge_pod, 6379)       # the judge's Ray pods among themselves
    gpus = [c["resources"] for _, _, c in containers([judge]) if GPU in json.dumps(c["resources"])]
    assert len(gpus) == (1 if overlay == "gpu" else 0)                  # a GPU per judge worker, on gpu only


def test_a_run_without_a_served_judge_gets_no_judge_objects_and_the_embedded_judge_stays_local(tmp_path):
    _, docs = dry_run(LEARN_CONFIG, "--overlay", "gpu")
    assert not [d for d in docs if "judge" in d["metadata"]["name"]]
    config = tmp_path / "embedded-judge.yaml"
    config.write_text("reward:\n  judge:\n    model: j\n    serve: {}\n")
    r = CliRunner().invoke(main, ["submit", str(config), "--dry-run"])
    assert r.exit_code == 1 and "reward.judge.serve.model: give the judge model's directory" in r.output
    config.write_text("reward:\n  judge:\n    model: j\n    serve: {model: /home/me/judge}\n")
    r = CliRunner().invoke(main, ["submit", str(config), "--dry-run"])
    assert r.exit_code == 0 and "reward.judge.serve.model=/home/me/judge is read inside the pods" in r.stderr
