"""`rlctl submit`: render deploy/k8s for one run and apply it to a Kubernetes cluster.

What is printed (`--dry-run`) or applied is an overlay rendered by `kubectl kustomize`, changed in exactly these
ways and no other: every object of the run is named `videorl-<run>-<part>` (references to it follow), carries the
run's label and selects only the run's pods, lives in one namespace, runs the chosen image, the rollout worker group
has rollout.num_actors replicas, and the config ConfigMap holds the run's config, validated by RunConfig.

Invariants:
- No secret is printed or written into a manifest; the manifests name the Secrets (SECRETS), nothing more. Pods read
  the Redis password from `videorl-<run>-redis-auth` (key `password`), the reward token from
  `videorl-<run>-reward-token` (key `token`) and the reward service's certificate, key and CA from
  `videorl-<run>-reward-tls`; submit creates each of them (random password and token, a fresh CA and certificate)
  only when it applies and only when that Secret is missing, and never echoes a value.
- The embedded config is valid and fit for the cluster: no redis.url (the pods build it from the Secret), run_dir
  on the shared volume, the reward server listening on the pod network at REWARD_PORT with TLS and the token
  required, gRPC health in plaintext on REWARD_HEALTH_PORT for the probes; the actors verify the server against the
  run's CA and expect the reward Service's name, which the certificate carries (reward_dns_names).
- The Grafana dashboards ConfigMap is shared by every run of a namespace and keeps its name.
- Every pod carries the exact run_id (annotation videorl.io/run-id): the scrape config makes it the `run` label
  that every dashboard query filters on.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import yaml

from rlctl.submit_judge import JUDGE, cluster_judge, customize_judge
from services.common.config import ConfigError, RunConfig, load_config

K8S_DIR = Path(__file__).resolve().parents[1] / "deploy" / "k8s"
OVERLAYS = ("dev-cpu", "gpu")
PREFIX = "videorl-"
SECRET = "videorl-redis-auth"                  # referenced by the manifests, created by submit or the operator
REWARD_TOKEN_SECRET = "videorl-reward-token"   # key `token`: VIDEORL_REWARD_TOKEN of the reward and rollout pods
REWARD_TLS_SECRET = "videorl-reward-tls"       # tls.crt, tls.key, ca.crt; mounted at TLS_DIR (rollout: ca.crt only)
REWARD_SERVICE = "videorl-reward"              # the Service the rollout actors dial (VIDEORL_REWARD_ADDRESS)
API_TOKEN_SECRET = "videorl-api-token"         # key `token`: VIDEORL_API_TOKEN of the head (the run's control API)
API_SERVICE = "videorl-api"                    # its ClusterIP Service, port `http` (base/api.yaml)
CONFIG_MAP = "videorl-config"
SHARED = frozenset({"videorl-grafana-dashboards"})
OPTIONAL_KINDS = frozenset({"PodMonitor"})    # skipped, with a warning, where the cluster lacks the operator
GPU_RESOURCE = "nvidia.com/gpu"               # requested only by the gpu overlay
RUN_LABEL = "videorl.io/run"
RUN_ANNOTATION = "videorl.io/run-id"
REWARD_PORT = 50051
REWARD_HEALTH_PORT = 50052                     # plaintext gRPC health only: the probes speak neither TLS nor tokens
TLS_DIR = Path("/etc/videorl/tls")
CERT_DAYS = 365                                # a longer run: delete the TLS Secret, submit again, restart the pods
API_PORT = 8300
DATA_MOUNT = Path("/data")
FIELD_MANAGER = "rlctl"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the config, run.sh, dashboards) as readable `|` blocks."""


_Dumper.add_representer(str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s
                                                            else None))


class SubmitError(click.ClickException):
    """A run that cannot be rendered or applied; the message says why and what to do."""


def run_slug(run_id: str) -> str:
    """The run's part of object names and its label value: a DNS label, short enough that every name stays under
    63 characters; a short hash keeps run ids that differ only in case or punctuation apart."""
    slug = re.sub(r"[^a-z0-9]+", "-", run_id.lower()).strip("-")
    if slug == run_id and len(slug) <= 30:
        return slug
    digest = hashlib.sha256(run_id.encode()).hexdigest()[:6]
    return f"{slug[:30].strip('-')}-{digest}".strip("-")


def run_name(name: str, slug: str) -> str:
    """`videorl-<part>` as the run names it: `videorl-<slug>-<part>`."""
    return name.replace(PREFIX, f"{PREFIX}{slug}-", 1)


def reward_dns_names(slug: str, namespace: str) -> list[str]:
    """The names of the run's reward Service, short to fully qualified (default cluster domain): the server
    certificate's SANs, so whichever form an actor dials verifies."""
    svc = run_name(REWARD_SERVICE, slug)
    return [svc, f"{svc}.{namespace}", f"{svc}.{namespace}.svc", f"{svc}.{namespace}.svc.cluster.local"]


def render_overlay(overlay: str, k8s_dir: Path | None = None) -> list[dict]:
    """The overlay as `kubectl kustomize` renders it, with no extra flag (as `kubectl apply -k` or Argo CD would)."""
    k8s_dir = k8s_dir or K8S_DIR
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise SubmitError("kubectl is not on PATH: it renders deploy/k8s (`kubectl kustomize`); install it first")
    out = subprocess.run([kubectl, "kustomize", str(k8s_dir / "overlays" / overlay)],
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise SubmitError(f"kubectl kustomize {k8s_dir / 'overlays' / overlay} failed:\n{out.stderr.strip()}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def cluster_config(cfg: RunConfig) -> str:
    """The run's config as the cluster runs it, as YAML: redis.url removed (a URL may hold a password; pods build
    theirs from the Secret), run_dir on the shared volume, the reward server on the pod network with TLS and the
    token (the reward section's other fields stay the run's)."""
    data = cfg.model_dump(mode="json", exclude_unset=True)
    data.pop("redis", None)
    data["run_id"] = cfg.run_id
    data["run_dir"] = str(DATA_MOUNT / "runs" / cfg.run_id)
    slug = run_slug(cfg.run_id)
    data["reward"] = {**data.get("reward", {}), **cluster_reward(slug)}
    if judge := cluster_judge(cfg, run_name(JUDGE, slug)):
        data["reward"]["judge"] = {**data["reward"].get("judge", {}), **judge}
    RunConfig.model_validate(data)  # what the pods read must load
    header = ("# Rendered by `rlctl submit`. redis.url comes from the environment (its Secret), run_dir is on the\n"
              "# shared volume, the reward server listens on the pod network with TLS (certificate and CA from the\n"
              "# Secret mounted at /etc/videorl/tls) and requires the token (VIDEORL_REWARD_TOKEN, from its Secret).\n")
    return header + yaml.safe_dump(data, sort_keys=False)


def cluster_reward(slug: str) -> dict:
    """The reward fields the cluster sets: where the server listens (and its plaintext health port, for the probes),
    its certificate and key, the CA and the name the actors verify it by (the Service they dial), the token."""
    return {"host": "0.0.0.0", "port": REWARD_PORT, "health_port": REWARD_HEALTH_PORT,
            "tls_cert": str(TLS_DIR / "tls.crt"), "tls_key": str(TLS_DIR / "tls.key"),
            "tls_ca": str(TLS_DIR / "ca.crt"), "tls_server_name": run_name(REWARD_SERVICE, slug),
            "require_token": True}


def customize(docs: list[dict], cfg: RunConfig, namespace: str, image: str | None,
              api_from: tuple[str, ...] = ()) -> list[dict]:
    """The rendered overlay made into this run's manifests (see the module docstring for the full list); `api_from`:
    CIDRs admitted to the control API besides the operator's pods (the API server's, for its service proxy)."""
    slug = run_slug(cfg.run_id)
    names = {d["metadata"]["name"] for d in docs} | {s.name for s in SECRETS}
    renames = {n: run_name(n, slug) for n in names - SHARED if n.startswith(PREFIX)}
    pattern = re.compile(r"(?<![a-z0-9-])(" + "|".join(map(re.escape, sorted(renames, key=len, reverse=True)))
                         + r")(?![a-z0-9-])")
    out = []
    for doc in docs:
        shared = doc["metadata"]["name"] in SHARED
        content = {k: dict(v) for k, v in doc.items() if doc["kind"] == "ConfigMap" and k in ("data", "binaryData")}
        doc = {**_map_strings({k: v for k, v in doc.items() if k not in content},
                              lambda s: pattern.sub(lambda m: renames[m.group(1)], s)), **content}
        meta = doc["metadata"]
        meta["namespace"] = namespace
        if not shared:
            meta.setdefault("labels", {})[RUN_LABEL] = slug
            meta.setdefault("annotations", {})[RUN_ANNOTATION] = cfg.run_id
            _select_run(doc, slug, cfg.run_id)
        if image:
            _set_image(doc, image)
        if doc["kind"] == "ConfigMap" and meta["name"] == renames[CONFIG_MAP]:
            doc["data"]["config.yaml"] = cluster_config(cfg)
        if doc["kind"] == "RayJob":
            _set_worker_groups(doc, cfg)
        if doc["kind"] == "NetworkPolicy" and meta["name"] == renames[API_SERVICE] and api_from:
            doc["spec"]["ingress"].append({"from": [{"ipBlock": {"cidr": c}} for c in api_from],
                                           "ports": [{"port": API_PORT, "protocol": "TCP"}]})
        out.append(doc)
    return customize_judge(out, cfg, renames[JUDGE])


def _map_strings(node, fn: Callable[[str], str]):
    if isinstance(node, dict):
        return {k: _map_strings(v, fn) for k, v in node.items()}
    if isinstance(node, list):
        return [_map_strings(v, fn) for v in node]
    return fn(node) if isinstance(node, str) else node


def _dicts(node) -> Iterator[dict]:
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _dicts(v)
    elif isinstance(node, list):
        for v in node:
            yield from _dicts(v)


def _select_run(doc: dict, slug: str, run_id: str) -> None:
    """The run label on every pod template and in every selector, so two runs in a namespace never mix pods; the
    run_id annotation on every pod template, which the scrape config turns into the metrics' `run` label."""
    if doc["kind"] == "Service":
        doc["spec"]["selector"][RUN_LABEL] = slug
    namespaces = {id(d["namespaceSelector"]) for d in _dicts(doc) if isinstance(d.get("namespaceSelector"), dict)}
    for d in list(_dicts(doc)):
        if "matchLabels" in d and id(d) not in namespaces:   # namespaces carry no run label
            d["matchLabels"][RUN_LABEL] = slug
        for key in ("template", "submitterPodTemplate"):
            if isinstance(d.get(key), dict) and "spec" in d[key]:
                meta = d[key].setdefault("metadata", {})
                meta.setdefault("labels", {})[RUN_LABEL] = slug
                meta.setdefault("annotations", {})[RUN_ANNOTATION] = run_id


def _set_image(doc: dict, image: str) -> None:
    """Every videorl container runs `image`; other images (Redis) stay."""
    for d in _dicts(doc):
        if "image" in d and "name" in d:  # a container
            repo = d["image"].split("@")[0].rsplit(":", 1)[0]
            if repo.rsplit("/", 1)[-1] == "videorl":
                d["image"] = image


def _set_worker_groups(rayjob: dict, cfg: RunConfig) -> None:
    """One pod per process, as ClusterTarget.place puts them (each pod offers one `videorl_<group>` resource): the
    rollout group gets rollout.num_actors pods, the learner group learner.ranks. Where the overlay gives a group's
    pods GPUs, a rollout pod gets tensor_parallel_size (its engine's shards, the bundles of its placement group) and a
    learner pod keeps one."""
    groups = {g["groupName"]: g for g in rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]}
    for name, pods, gpus in (("rollout", cfg.rollout.num_actors, cfg.rollout.engine.tensor_parallel_size),
                             ("learner", cfg.learner.ranks, 1)):
        group = groups[name]
        group["replicas"] = pods
        group["minReplicas"] = min(group.get("minReplicas", 0), pods)
        group["maxReplicas"] = max(group.get("maxReplicas", pods), pods)
        for container in group["template"]["spec"]["containers"]:
            for amounts in container.get("resources", {}).values():
                if GPU_RESOURCE in amounts:
                    amounts[GPU_RESOURCE] = gpus


def path_warnings(cfg: RunConfig) -> list[str]:
    """Paths the pods will read that are not on the shared volume (they were probably meant for this machine)."""
    paths = {"model.path": cfg.model.path, "data.train": cfg.data.train, "data.eval": cfg.data.eval,
             "reward.judge.serve.model": cfg.reward.judge.serve.model if cfg.reward.judge.serve else None}
    return [f"{field}={p} is read inside the pods; put it on the data volume (under {DATA_MOUNT}/)"
            for field, p in paths.items() if p is not None and not Path(p).is_relative_to(DATA_MOUNT)]


def load_kube() -> None:
    """Make the current kubeconfig context (or the pod's service account) the Kubernetes client's default."""
    from kubernetes import config
    from kubernetes.config.config_exception import ConfigException

    try:
        config.load_kube_config(os.environ.get("KUBECONFIG"))  # read now: the library's default froze at import
    except ConfigException as e:
        try:
            config.load_incluster_config()
        except ConfigException:
            raise SubmitError(f"no Kubernetes cluster configured ({e}): set KUBECONFIG or write ~/.kube/config, "
                              "or run inside a pod; `--dry-run` prints the manifests without a cluster") from None


def connect():
    """A dynamic client for the current kubeconfig context (or the pod's service account)."""
    from kubernetes import client
    from kubernetes.dynamic import DynamicClient

    load_kube()
    api = client.ApiClient()
    try:
        return DynamicClient(api)
    except Exception as e:  # noqa: BLE001 - any transport or API failure here means the cluster is unreachable
        raise SubmitError(f"cannot reach the Kubernetes API at {api.configuration.host}: {_why(e)}") from None


def reward_tls(dns_names: list[str], secret: str = REWARD_TLS_SECRET, days: int = CERT_DAYS) -> dict[str, str]:
    """A fresh CA and a server certificate it signs for `dns_names` (SANs; the first is also the CN), made with the
    openssl command line in a temporary directory that is deleted with everything in it: the Secret's tls.crt,
    tls.key and ca.crt (of the Secret `secret`, named in the error without openssl). The CA's key is thrown away,
    so that CA never signs anything else."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise SubmitError(f"openssl is not on PATH: submit makes the reward service's certificate with it; install "
                          f"openssl, or create the Secret {secret} yourself (deploy/k8s/README.md, Secrets)")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    with tempfile.TemporaryDirectory(prefix="videorl-tls-") as tmp:
        work = Path(tmp)
        # our own config: the system's openssl.cnf may add extensions of its own to the CA
        (work / "ca.cnf").write_text("[req]\ndistinguished_name = dn\nx509_extensions = ca\n[dn]\n[ca]\n"
                                     "basicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n"
                                     "subjectKeyIdentifier = hash\n")
        (work / "server.ext").write_text("basicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n"
                                         "extendedKeyUsage = serverAuth\nauthorityKeyIdentifier = keyid\n"
                                         f"subjectAltName = {','.join(f'DNS:{n}' for n in dns_names)}\n")
        for args in (["req", "-config", "ca.cnf", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt",
                      "-days", str(days), "-subj", f"/CN={dns_names[0]} CA"],
                     ["req", "-config", "ca.cnf", "-new", *ec, "-keyout", "tls.key", "-out", "tls.csr",
                      "-subj", f"/CN={dns_names[0]}"],
                     ["x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-days", str(days),
                      "-set_serial", str(secrets.randbits(120)), "-extfile", "server.ext", "-out", "tls.crt"]):
            out = subprocess.run([openssl, *args], cwd=work, capture_output=True, text=True, timeout=60)
            if out.returncode != 0:   # openssl's stderr names the step and the reason, never a key
                raise SubmitError(f"openssl {' '.join(args[:2])} failed making the reward service's certificate:\n"
                                  f"{out.stderr.strip()}")
        return {name: (work / name).read_text() for name in ("tls.crt", "tls.key", "ca.crt")}


@dataclass(frozen=True)
class RunSecret:
    """A Secret the manifests reference by name and submit creates, per run, when it is missing. `make(slug,
    namespace)` gives its stringData and runs only then, so a kept Secret keeps its values."""

    name: str                                   # as the manifests spell it; the run's is run_name(name, slug)
    what: str                                   # what it is created with, for the one line submit prints
    make: Callable[[str, str], dict[str, str]]
    type: str = "Opaque"


SECRETS = (
    RunSecret(SECRET, "a random Redis password", lambda slug, ns: {"password": secrets.token_hex(24)}),
    RunSecret(REWARD_TOKEN_SECRET, "a random reward service token",
              lambda slug, ns: {"token": secrets.token_urlsafe(32)}),
    RunSecret(API_TOKEN_SECRET, "a random control API token", lambda slug, ns: {"token": secrets.token_urlsafe(32)}),
    RunSecret(REWARD_TLS_SECRET, "a fresh CA and a reward server certificate for its Service names",
              lambda slug, ns: reward_tls(reward_dns_names(slug, ns), run_name(REWARD_TLS_SECRET, slug)),
              type="kubernetes.io/tls"),
)


def apply(docs: list[dict], dyn, namespace: str, slug: str, echo: Callable[[str], None]) -> None:
    """Create the run's Secrets that are missing, then server-side apply every manifest, in order."""
    from kubernetes.dynamic.exceptions import NotFoundError, ResourceNotFoundError

    try:
        dyn.get(dyn.resources.get(api_version="v1", kind="Namespace"), name=namespace)
    except NotFoundError:
        raise SubmitError(f"namespace {namespace!r} does not exist: kubectl create namespace {namespace}") from None
    secret_api = dyn.resources.get(api_version="v1", kind="Secret")
    for spec in SECRETS:
        name = run_name(spec.name, slug)
        try:
            dyn.get(secret_api, name=name, namespace=namespace)
            echo(f"secret/{name}: exists, kept as it is")
        except NotFoundError:
            dyn.create(secret_api, namespace=namespace, body={
                "apiVersion": "v1", "kind": "Secret", "type": spec.type,
                "metadata": {"name": name, "namespace": namespace, "labels": {RUN_LABEL: slug}},
                "stringData": spec.make(slug, namespace)})
            echo(f"secret/{name}: created with {spec.what}")
    for doc in docs:
        try:
            api = dyn.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
        except ResourceNotFoundError:
            if doc["kind"] in OPTIONAL_KINDS:
                echo(f"warning: the cluster does not serve {doc['apiVersion']} {doc['kind']}: "
                     f"{doc['metadata']['name']} skipped; Prometheus can scrape the pods by their annotations "
                     "(deploy/k8s/prometheus-scrape.yaml)")
                continue
            hint = " (install the KubeRay operator, >= 1.1)" if doc["apiVersion"].startswith("ray.io/") else ""
            raise SubmitError(f"the cluster does not serve {doc['apiVersion']} {doc['kind']}{hint}") from None
        dyn.server_side_apply(api, body=doc, namespace=namespace, field_manager=FIELD_MANAGER, force_conflicts=True)
        echo(f"{doc['kind'].lower()}/{doc['metadata']['name']}: applied")


def _cidr(value: str) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a CIDR (like 10.0.0.0/24)", param_hint="--api-from") from None


def _why(e: Exception) -> str:
    """A failure in one line, without response bodies (they can echo what was sent)."""
    status, reason = getattr(e, "status", None), getattr(e, "reason", None)
    if status is not None:
        try:  # a Kubernetes Status names the object and the rule, never a submitted value
            message = json.loads(getattr(e, "body", None) or "{}").get("message", "")
        except (ValueError, AttributeError):
            message = ""
        return " ".join(str(x) for x in ("HTTP", status, reason, message) if x)
    return str(getattr(e, "reason", None) or e).splitlines()[0]


@click.command("submit")
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--namespace", "-n", default="default", show_default=True, help="Kubernetes namespace of the run.")
@click.option("--overlay", type=click.Choice(OVERLAYS), default="dev-cpu", show_default=True,
              help="deploy/k8s overlay: dev-cpu (small CPU cluster) or gpu (GPU requests on rollout and learner).")
@click.option("--image", default=None, metavar="IMAGE",
              help="Image of every videorl pod (default: the overlay's, videorl:cpu or videorl:gpu).")
@click.option("--api-from", "api_from", multiple=True, metavar="CIDR",
              callback=lambda c, p, v: tuple(_cidr(x) for x in v),
              help="Admit this CIDR to the run's control API (port 8300), e.g. the control plane's addresses where "
                   "the CNI enforces policies on the API server's service proxy. Repeatable.")
@click.option("--dry-run", is_flag=True, help="Print the manifests as multi-document YAML; apply nothing.")
def submit(config: Path, namespace: str, overlay: str, image: str | None, api_from: tuple[str, ...],
           dry_run: bool) -> None:
    """Run CONFIG on Kubernetes: render deploy/k8s/overlays/OVERLAY with `kubectl kustomize`, make it this run's
    (objects named videorl-<run_id>-*, the config in a ConfigMap, the image, rollout.num_actors rollout pods and
    learner.ranks learner pods, with the gpu overlay tensor_parallel_size GPUs per rollout pod) and apply it with
    server-side apply: Redis with AUTH, the reward Deployment, a KubeRay RayJob whose cluster has a `rollout` and a
    `learner` worker group, the data volume, Grafana dashboards.

    Needs kubectl (rendering), openssl (the reward service's certificate), a kubeconfig (or a pod's service
    account) and, on the cluster, the KubeRay operator. The Redis password, the reward service's token and its
    TLS certificate and key, and the control API's token live only in the Secrets videorl-<run_id>-redis-auth,
    -reward-token, -reward-tls and -api-token: submit creates each one that is missing (random password and tokens,
    a fresh CA) and never prints them. `rlctl status|scale|stop -n NS --run-id RUN` reach the run's control API
    through the API server's service proxy.
    Paths in CONFIG are read inside the pods, so data and models belong on the data volume (/data)."""
    if not _DNS_LABEL.match(namespace):
        raise click.BadParameter(f"{namespace!r} is not a namespace name (a DNS label)", param_hint="--namespace")
    if image is not None and (not image or any(ch.isspace() for ch in image)):
        raise click.BadParameter(f"{image!r} is not an image reference", param_hint="--image")
    try:
        cfg = load_config(config)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    for warning in path_warnings(cfg):
        click.echo(f"warning: {warning}", err=True)
    docs = customize(render_overlay(overlay), cfg, namespace, image, api_from)
    if dry_run:
        sys.stdout.write(yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False))
        return
    dyn = connect()
    try:
        apply(docs, dyn, namespace, run_slug(cfg.run_id), click.echo)
    except SubmitError:
        raise
    except Exception as e:  # noqa: BLE001 - an API or transport failure: name it, not a traceback
        raise SubmitError(f"applying to {dyn.configuration.host} failed: {_why(e)}") from None
    click.echo(f"run {cfg.run_id} submitted to namespace {namespace}; watch it with: "
               f"kubectl -n {namespace} get rayjob,pods -l {RUN_LABEL}={run_slug(cfg.run_id)}")
