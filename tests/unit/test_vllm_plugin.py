"""rollout/vllm_plugin.py against the installed vLLM: its entry point is one vLLM's own loader finds, it changes
nothing unless the environment asks, and it bounds the busy-wait of vLLM's real SpinCondition."""

import threading

import pytest
import zmq
from vllm.distributed.device_communicators.shm_broadcast import SpinCondition
from vllm.plugins import load_plugins_by_group

from services.common.config import CPU_SPIN_WAIT_S, RunConfig
from services.rollout.vllm_plugin import SPIN_ENV, register


@pytest.fixture
def original_wait(monkeypatch):
    """vLLM's own SpinCondition.wait (an engine built earlier in this process may have wrapped it already)."""
    monkeypatch.setattr(SpinCondition, "wait", SpinCondition.wait)   # restored after the test
    return getattr(SpinCondition.wait, "__wrapped__", SpinCondition.wait)


def test_vllms_own_loader_finds_the_plugin():
    assert load_plugins_by_group("vllm.general_plugins").get("videorl") is register


def test_without_the_variable_vllm_is_left_as_it_is(original_wait, monkeypatch):
    monkeypatch.delenv(SPIN_ENV, raising=False)
    before = SpinCondition.wait
    register()
    assert SpinCondition.wait is before


def test_a_reader_busy_waits_at_most_the_limit_then_sleeps_until_notified(original_wait, monkeypatch, tmp_path):
    monkeypatch.setenv(SPIN_ENV, "0.01")
    register()
    register()   # loaded again in the same process (vLLM loads plugins more than once): still one wrapper
    assert SpinCondition.wait.spin_s == 0.01 and SpinCondition.wait.__wrapped__ is original_wait
    ctx = zmq.Context()
    address = f"ipc://{tmp_path}/notify"
    writer = SpinCondition(is_reader=False, context=ctx, notify_address=address)
    reader = SpinCondition(is_reader=True, context=ctx, notify_address=address)
    assert reader.busy_loop_s == 1, "vLLM builds readers spinning for 1 s"
    try:
        reader.record_read()
        reader.last_read -= 1.0   # its last message is older than the limit, younger than vLLM's 1 s
        woke = threading.Event()

        def wait() -> None:
            reader.wait(timeout_ms=20_000)   # parks on the socket: returns only once notified
            woke.set()

        t = threading.Thread(target=wait, daemon=True)
        t.start()
        assert not woke.wait(0.5), "past the limit a reader sleeps instead of spinning"
        assert reader.busy_loop_s == 0.01
        while not woke.is_set():   # the subscription may still be connecting: notify until it lands
            writer.notify()
            woke.wait(0.05)
        t.join(5)
    finally:
        for s in (writer.local_notify_socket, reader.local_notify_socket, reader.read_cancel_socket,
                  reader.write_cancel_socket):
            s.close(linger=0)
        ctx.term()



def test_the_spin_limit_is_set_on_cpu_and_left_to_vllm_on_gpu_unless_given():
    assert RunConfig().on("cpu").rollout.engine.spin_wait_s == CPU_SPIN_WAIT_S
    assert RunConfig().on("gpu").rollout.engine.spin_wait_s is None
    given = RunConfig(rollout={"engine": {"spin_wait_s": 0.2}})
    assert given.on("cpu").rollout.engine.spin_wait_s == given.on("gpu").rollout.engine.spin_wait_s == 0.2
