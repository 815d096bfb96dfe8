"""TLS and the shared token on a real reward server (grpc.aio, loopback) writing to a real Redis, with certificates
made by openssl for this test: who gets in, who is refused and how."""

import asyncio
import subprocess

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from services.common import grpc_security
from services.common.control import GROUPS
from services.common.pb.videorl.v1 import rollout_pb2 as pb
from services.common.pb.videorl.v1 import rollout_pb2_grpc as pb_grpc
from services.common.processes import free_port
from services.common.reward_config import RewardConfig
from services.reward.scoring import Scorer
from services.reward.server import start_health_server, start_server

TOKEN = "s3cret-token-for-the-test"
SERVICE = "videorl.v1.RewardService"


def _ca_and_cert(d, name):
    """A self-signed CA and a server certificate for 127.0.0.1 signed by it: (ca.pem, cert.pem, key.pem)."""
    def ssl(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name} test CA",
        "-keyout", f"{name}-ca.key", "-out", f"{name}-ca.pem")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=reward", "-keyout", f"{name}.key", "-out", f"{name}.csr")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:reward\n")
    ssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{name}-ca.pem", "-CAkey", f"{name}-ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", "san.ext", "-out", f"{name}.pem")
    return d / f"{name}-ca.pem", d / f"{name}.pem", d / f"{name}.key"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    return {"good": _ca_and_cert(d, "good"), "other": _ca_and_cert(d, "other")}


def _secure(pki, **extra):
    ca, cert, key = pki["good"]
    return RewardConfig(tls_cert=cert, tls_key=key, tls_ca=ca, require_token=True, **extra)


def _group(prompt_id):
    prompt = pb.Prompt(prompt_id=prompt_id, task="mcq", question="q", options=["up", "down"], answer="B",
                       split="train", video_uri="/v.mp4")
    return [pb.Completion(run_id="r", prompt_id=prompt_id, group_id=f"{prompt_id}/v1", sample_index=i, group_size=2,
                          policy_version=1, completion_token_ids=[1], logprobs=[-0.1], text="<answer>B</answer>",
                          actor_id="a0", prompt=prompt) for i in range(2)]


async def _try(channel, metadata, prompt_id):
    """(health status or the error code, acks or the error code) for one client."""
    try:
        h = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICE),
                                                             metadata=metadata, timeout=5)
        health = h.status
    except grpc.aio.AioRpcError as e:
        health = e.code()

    async def gen():
        for m in _group(prompt_id):
            yield m
    try:
        acks = [a.status async for a in pb_grpc.RewardServiceStub(channel).StreamCompletions(
            gen(), metadata=metadata, timeout=5)]
    except grpc.aio.AioRpcError as e:
        acks = e.code()
    return health, acks


def test_only_a_tls_client_with_the_token_gets_in(control, pki, monkeypatch):
    monkeypatch.setenv(grpc_security.TOKEN_ENV, TOKEN)
    cfg = _secure(pki)
    plain = RewardConfig()
    other_ca = RewardConfig(tls_cert=pki["good"][1], tls_key=pki["good"][2], tls_ca=pki["other"][0])

    async def scenario():
        server, port = await start_server(control, Scorer(cfg.components), CollectorRegistry(), security=cfg)
        addr = f"127.0.0.1:{port}"
        try:
            out = {}
            async with grpc_security.open_channel(cfg, addr) as ch:
                out["token"] = await _try(ch, grpc_security.call_metadata(cfg), "p-ok")
                out["no token"] = await _try(ch, (), "p-none")
                out["wrong token"] = await _try(ch, (("authorization", f"Bearer {TOKEN}x"),), "p-wrong")
                out["bare token"] = await _try(ch, (("authorization", TOKEN),), "p-bare")
            async with grpc_security.open_channel(plain, addr) as ch:          # no TLS, right token
                out["plaintext"] = await _try(ch, grpc_security.call_metadata(cfg), "p-plain")
            async with grpc_security.open_channel(other_ca, addr) as ch:       # TLS, trusts another CA
                out["untrusted server"] = await _try(ch, grpc_security.call_metadata(cfg), "p-ca")
            return out
        finally:
            await server.stop(1)

    out = asyncio.run(scenario())
    assert out["token"] == (health_pb2.HealthCheckResponse.SERVING, [pb.GroupAck.SCORED])
    unauth = grpc.StatusCode.UNAUTHENTICATED
    for who in ("no token", "wrong token", "bare token"):
        assert out[who] == (unauth, unauth), who
    for who in ("plaintext", "untrusted server"):     # the TLS handshake fails: nothing reaches a handler
        assert out[who] == (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE), who
    assert control.stream_len(GROUPS) == 1            # only the authenticated client's group was written
    assert control.counters()["completions_received"] == 2


def test_the_health_port_answers_probes_in_plaintext_and_nothing_else(control, pki, monkeypatch):
    monkeypatch.setenv(grpc_security.TOKEN_ENV, TOKEN)

    async def scenario():
        port = free_port()
        probe = await start_health_server("127.0.0.1", port)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                h = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=SERVICE))
                try:
                    # no request messages: writing them while the server refuses the call races its reset, which
                    # comes back INTERNAL about one run in ten instead of the refusal itself
                    await pb_grpc.RewardServiceStub(ch).StreamCompletions(iter(())).read()
                    reward = None
                except grpc.aio.AioRpcError as e:
                    reward = e.code()
            return h.status, reward
        finally:
            await probe.stop(0)

    assert asyncio.run(scenario()) == (health_pb2.HealthCheckResponse.SERVING, grpc.StatusCode.UNIMPLEMENTED)


def test_security_settings_are_checked_before_anything_listens(pki, monkeypatch):
    with pytest.raises(ValidationError, match="host '0.0.0.0' is not loopback: set tls_cert, tls_key and require_"):
        RewardConfig(host="0.0.0.0")
    with pytest.raises(ValidationError, match="require_token"):
        RewardConfig(host="0.0.0.0", tls_cert=pki["good"][1], tls_key=pki["good"][2])
    with pytest.raises(ValidationError, match="tls_cert and tls_key: give both"):
        RewardConfig(tls_cert=pki["good"][1])
    RewardConfig(host="0.0.0.0", tls_cert=pki["good"][1], tls_key=pki["good"][2], require_token=True)
    monkeypatch.delenv(grpc_security.TOKEN_ENV, raising=False)
    with pytest.raises(grpc_security.SecurityError, match="no VIDEORL_REWARD_TOKEN"):
        grpc_security.call_metadata(_secure(pki))
    monkeypatch.setenv(grpc_security.TOKEN_ENV, TOKEN)
    missing = RewardConfig(tls_cert=pki["good"][1].with_name("nope.pem"), tls_key=pki["good"][2])
    with pytest.raises(grpc_security.SecurityError, match="reward.tls_cert: cannot read .*nope.pem") as e:
        grpc_security.server_credentials(missing)
    assert TOKEN not in str(e.value)
