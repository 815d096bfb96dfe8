"""TLS and a shared token between the rollout actors and the reward service.

Invariants this module keeps:
- Off only in the explicit local default: a reward server that listens beyond loopback has TLS and requires the
  token (RewardConfig refuses anything else), so this module never has to decide whether security is wanted.
- The token is a secret: it comes from the environment (VIDEORL_REWARD_TOKEN, in a pod from a Secret), never from a
  config file, and never appears in a log line or an error message.
- Every RPC on the main port is checked, the health service included; a plaintext health-only port exists only
  when `reward.health_port` asks for it, for Kubernetes' gRPC probes.
- A refused call ends with UNAUTHENTICATED before any handler runs; the comparison is constant-time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from services.common.reward_config import RewardConfig

TOKEN_ENV = "VIDEORL_REWARD_TOKEN"
_HEADER = "authorization"
REFUSE_READ_S = 1.0


class SecurityError(RuntimeError):
    """The security settings cannot be honoured (missing token, unreadable certificate)."""


def token(cfg: RewardConfig) -> str | None:
    """The shared token when the config requires one; raises when it is required and not set."""
    if not cfg.require_token:
        return None
    value = os.environ.get(TOKEN_ENV, "")
    if not value:
        raise SecurityError(f"reward.require_token is set but the environment has no {TOKEN_ENV}")
    return value


def _read(path: Any, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise SecurityError(f"reward.{what}: cannot read {path}: {e.strerror}") from None


def server_credentials(cfg: RewardConfig) -> grpc.ServerCredentials | None:
    if cfg.tls_cert is None:
        return None
    return grpc.ssl_server_credentials([(_read(cfg.tls_key, "tls_key"), _read(cfg.tls_cert, "tls_cert"))])


def server_interceptors(cfg: RewardConfig) -> list[grpc.aio.ServerInterceptor]:
    secret = token(cfg)
    return [TokenInterceptor(secret)] if secret else []


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuse every call whose `authorization` metadata is not `Bearer <token>`."""

    def __init__(self, secret: str):
        self._expected = f"Bearer {secret}".encode()

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        given = dict(details.invocation_metadata or ()).get(_HEADER, "")
        given_bytes = given.encode() if isinstance(given, str) else bytes(given)
        if handler is None or hmac.compare_digest(given_bytes, self._expected):
            return handler
        return _refusal(handler, "missing token" if not given else "wrong token")


def _refusal(handler: grpc.RpcMethodHandler, reason: str) -> grpc.RpcMethodHandler:
    """A handler of the same streaming kind as `handler` that aborts with UNAUTHENTICATED."""
    async def abort(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"reward service: {reason}")

    async def abort_stream(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        # Take the client's first message (at most a second's wait) before refusing: aborting while its messages
        # were still arriving made gRPC core end about one call in five with INTERNAL instead of UNAUTHENTICATED
        # (measured on loopback). Nothing reaches the real handler either way.
        with contextlib.suppress(StopAsyncIteration, asyncio.TimeoutError):
            await asyncio.wait_for(requests.__anext__(), REFUSE_READ_S)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"reward service: {reason}")
        yield None

    kind = (handler.request_streaming, handler.response_streaming)
    if kind == (True, True):
        return grpc.stream_stream_rpc_method_handler(abort_stream, request_deserializer=handler.request_deserializer,
                                                     response_serializer=handler.response_serializer)
    make = {(False, False): grpc.unary_unary_rpc_method_handler, (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler}
    return make[kind](abort, request_deserializer=handler.request_deserializer,
                      response_serializer=handler.response_serializer)


def open_channel(cfg: RewardConfig, address: str) -> grpc.aio.Channel:
    """A channel to the reward service as `cfg` says: TLS (verifying the server against tls_ca) when the server
    has it, plaintext for the local default."""
    options: list[tuple[str, int | str]] = [("grpc.max_receive_message_length", 64 << 20)]
    if cfg.tls_cert is None:
        return grpc.aio.insecure_channel(address, options=options)
    roots = _read(cfg.tls_ca, "tls_ca") if cfg.tls_ca else None
    if cfg.tls_server_name:
        options.append(("grpc.ssl_target_name_override", cfg.tls_server_name))
    return grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=roots), options=options)


def call_metadata(cfg: RewardConfig) -> tuple[tuple[str, str], ...]:
    """Metadata every call to the reward service carries (the token, when one is required)."""
    secret = token(cfg)
    return ((_HEADER, f"Bearer {secret}"),) if secret else ()
