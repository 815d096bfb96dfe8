"""`rlctl submit`: the dry run of the shipped configs gives valid manifests named after the run (references
follow), the run's config in the ConfigMap, GPU requests only with the gpu overlay, and never a password; applying
goes through the Kubernetes API (a fake dynamic client here: no cluster in CI) and fails with a clear message
when there is no cluster, no namespace or no KubeRay."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from click.testing import CliRunner
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic.exceptions import NotFoundError, ResourceNotFoundError
from test_k8s_manifests import GPU, containers, one, validation_errors, worker_groups

from rlctl import submit as sub
from rlctl.cli import DEFAULT_CONFIG, main
from services.common.config import RunConfig, load_config

LEARN_CONFIG = DEFAULT_CONFIG.parent / "learn.yaml"
BASE_NAMES = ("videorl-redis", "videorl-reward", "videorl-config", "videorl-data", "videorl-ray", "videorl-run",
              "videorl-redis-auth", "videorl-redis-data", "videorl-metrics")



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
    cluster = {"run_dir": Path(f"/data/runs/{cfg.run_id}"), "reward": cfg.reward.model_copy(
        update={"host": "0.0.0.0", "port": sub.REWARD_PORT})}
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
    secret = "videorl-learn-redis-auth"
    for where, spec, c in containers(docs):
        assert ("ServiceAccount", spec["serviceAccountName"]) in names, where
        for v in spec.get("volumes", []):
            if "configMap" in v:
                assert ("ConfigMap", v["configMap"]["name"]) in names, where
            if "persistentVolumeClaim" in v:
                assert ("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"]) in names, where
        for e in c.get("env", []):
            if "secretKeyRef" in e.get("valueFrom", {}):
                assert e["valueFrom"]["secretKeyRef"]["name"] == secret, where
            for host in re.findall(r"(?:@|^)(videorl-[a-z0-9-]+):\d+", e.get("value", "")):
                assert ("Service", host) in names, (where, host)
    without_content = yaml.safe_dump_all([d for d in docs if d["kind"] != "ConfigMap"])
    for base in BASE_NAMES:   # no object is still called, or still points at, a name of another run
        assert not re.search(rf"(?<![a-z0-9-]){base}(?![a-z0-9-])", without_content), base
    for d in docs:
        if d["kind"] == "Service":
            assert d["spec"]["selector"][sub.RUN_LABEL] == "learn"
        for node in _dicts(d):
            if "matchLabels" in node:
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


def test_run_slugs_are_dns_labels_that_keep_distinct_runs_apart():
    ids = ["local", "Local", "a_b", "a-b", "a.b", "-x-", "x" * 64, "x" * 63 + "y", "..."]
    slugs = [sub.run_slug(i) for i in ids]
    assert len(set(slugs)) == len(ids)
    for s in slugs:
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", s) and len(f"videorl-{s}-redis-data") <= 63
    assert sub.run_slug("local") == "local"


def test_no_password_ever_reaches_the_output(tmp_path):
    config = tmp_path / "with-url.yaml"
    config.write_text("run_id: leak\nredis:\n  url: redis://:hunter2-s3cret@redis.internal:6379/0\n")
    out, docs = dry_run(config, "--overlay", "dev-cpu")
    assert "hunter2-s3cret" not in out and "redis.internal" not in out
    assert "Secret" not in {d["kind"] for d in docs}
    embedded = yaml.safe_load(config_map(docs, "videorl-leak-config")["data"]["config.yaml"])
    assert "redis" not in embedded
    for where, _, c in containers(docs):
        for e in c.get("env", []):
            if "PASSWORD" in e["name"] or "AUTH" in e["name"]:
                assert "value" not in e, where


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


def test_apply_creates_the_redis_secret_once_with_a_random_password_and_never_prints_it():
    docs, lines = _docs(), []
    fake = FakeDynamic(BUILTIN | {"RayJob", "PodMonitor"}, {("Namespace", "team-a")})
    sub.apply(docs, fake, "team-a", "learn", lines.append)
    [secret] = fake.created
    password = secret["stringData"]["password"]
    assert secret["metadata"]["name"] == "videorl-learn-redis-auth" and len(password) >= 32
    assert not any(password in line for line in lines)
    assert [b["metadata"]["name"] for b, *_ in fake.applied] == [d["metadata"]["name"] for d in docs]
    assert {(ns, manager, force) for _, ns, manager, force in fake.applied} == {("team-a", "rlctl", True)}
    sub.apply(docs, fake, "team-a", "learn", lines.append)   # a second submit keeps the password
    assert len(fake.created) == 1 and any("exists" in line for line in lines)


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


def test_paths_outside_the_data_volume_are_warned_about(tmp_path):
    config = tmp_path / "paths.yaml"
    config.write_text("data:\n  train: videos/train.jsonl\n  eval: /data/videos/eval.jsonl\n")
    r = CliRunner().invoke(main, ["submit", str(config), "--dry-run"])
    assert r.exit_code == 0
    assert "data.train=videos/train.jsonl is read inside the pods" in r.stderr and "data.eval" not in r.stderr


def _dicts(node):
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _dicts(v)
    elif isinstance(node, list):
        for v in node:
            yield from _dicts(v)


def _at(doc: dict, path: str) -> dict:
    for part in path.split("."):
        doc = doc[int(part)] if part.isdigit() else doc[part]
    return doc
