"""The client side of a run's control API (rlctl/api.py) for `rlctl status|scale|stop`: found through the run's
record (run.json `api`, token in RUN_DIR/api-token) or given (`--api URL`, token from --token-file or
VIDEORL_API_TOKEN). Standard library only: the CLI stays light."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

TOKEN_ENV = "VIDEORL_API_TOKEN"


@dataclass(frozen=True)
class ApiClient:
    url: str
    token: str
    timeout_s: float = 10.0

    def get(self, path: str) -> Any:
        return self._call("GET", path, None)

    def post(self, path: str, body: dict | None = None) -> Any:
        return self._call("POST", path, body or {})

    def _call(self, method: str, path: str, body: dict | None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url.rstrip("/") + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                return json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            raise click.ClickException(f"{method} {self.url}{path}: {e.code} {_problem(e)}") from None
        except OSError as e:
            raise click.ClickException(f"{method} {self.url}{path}: the run's control API does not answer ({e}); "
                                       "is the run still going? (`rlctl status RUN_DIR`)") from None


def _problem(e: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(e.read())
    except (ValueError, OSError):
        return e.reason
    detail = body.get("detail") if isinstance(body, dict) else body
    if isinstance(detail, list):
        return "; ".join(f"{d.get('field')}: {d.get('error')}" for d in detail if isinstance(d, dict))
    return str(detail)


def client_for(record: dict | None, run_dir: Path | None, api: str | None, token_file: Path | None) -> ApiClient:
    """The API of `--api URL` (token from --token-file, else VIDEORL_API_TOKEN), else the run record's."""
    url = api or (record or {}).get("api")
    if not url:
        raise click.ClickException("this run has no control API in its record (started by an older rlctl?); "
                                   "give --api URL")
    if token_file is not None:
        token = token_file.read_text().strip()
    elif os.environ.get(TOKEN_ENV):
        token = os.environ[TOKEN_ENV].strip()
    elif api is None and run_dir is not None and (run_dir / "api-token").exists():
        token = (run_dir / "api-token").read_text().strip()
    else:
        raise click.ClickException(f"no token for {url}: give --token-file or set {TOKEN_ENV}")
    return ApiClient(url, token)
