"""A run's control API on Kubernetes (`rlctl status|scale|stop --namespace NS --run-id RUN`), reached through the
API server's service proxy: /api/v1/namespaces/NS/services/videorl-<run>-api:http/proxy/v1/... (deploy/k8s/base/
api.yaml). The operator's kubeconfig authenticates to the API server, which consumes the Authorization header
(kubernetes/kubernetes#38775), so the run's own token goes as X-Videorl-Token; it is read from the run's Secret
videorl-<run>-api-token and never printed. No pod exec, and no port-forward to keep open.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import click

from rlctl.api_client import TOKEN_HEADER, ApiClient
from rlctl.submit import API_SERVICE, API_TOKEN_SECRET, run_name, run_slug


@dataclass(frozen=True)
class ServiceProxyClient(ApiClient):
    """ApiClient whose transport is `core` (a kubernetes CoreV1Api, or a fake of it in tests): the same answers and
    errors. `url` is the proxy URL, for messages."""

    core: Any = None
    namespace: str = ""
    service: str = ""

    @property
    def resource(self) -> str:
        return proxy_path(self.namespace, self.service)

    def _send(self, method: str, path: str, body: dict | None) -> tuple[int, bytes]:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        api = self.core.api_client
        request = api.param_serialize(method, self.resource + path, body=body, auth_settings=["BearerToken"],
                                      header_params={TOKEN_HEADER: self.token, "Accept": "application/json",
                                                     "Content-Type": "application/json"})
        try:
            r = api.call_api(*request, _request_timeout=self.timeout_s)
        except (ApiException, HTTPError) as e:   # no answer at all (status 0: TLS, DNS, refused)
            raise OSError(getattr(e, "reason", None) or e) from None
        return r.status, r.read()


def proxy_path(namespace: str, service: str) -> str:
    return f"/api/v1/namespaces/{namespace}/services/{service}:http/proxy"


def run_token(core: Any, namespace: str, run_id: str) -> str:
    """The run's API token, from its Secret."""
    name = run_name(API_TOKEN_SECRET, run_slug(run_id))
    try:
        secret = core.read_namespaced_secret(name, namespace)
    except Exception as e:  # noqa: BLE001 - the API client's errors carry the HTTP status; report it, not the body
        status = int(getattr(e, "status", 0) or 0)
        why = {404: "it does not exist (was the run submitted by an rlctl without a control API?)",
               403: "you may not read it (RBAC: get secrets)"}.get(status, f"{status} {getattr(e, 'reason', e)}")
        raise click.ClickException(f"the run's API token is in secret/{name} in namespace {namespace}, but "
                                   f"{why}") from None
    token = (secret.data or {}).get("token")
    if not token:
        raise click.ClickException(f"secret/{name} in namespace {namespace} has no key `token`")
    return base64.b64decode(token).decode().strip()


def proxy_client(core: Any, namespace: str, run_id: str) -> ServiceProxyClient:
    service = run_name(API_SERVICE, run_slug(run_id))
    url = core.api_client.configuration.host.rstrip("/") + proxy_path(namespace, service)
    return ServiceProxyClient(url, run_token(core, namespace, run_id), core=core, namespace=namespace,
                              service=service)


def connect_api(namespace: str, run_id: str) -> ServiceProxyClient:
    """The API of run `run_id` in `namespace`, on the current kubeconfig context (or the pod's service account)."""
    from kubernetes import client

    from rlctl.submit import load_kube

    load_kube()   # with submit's clear errors when there is no configuration
    return proxy_client(client.CoreV1Api(), namespace, run_id)
