"""videorl's vLLM general plugin (pyproject.toml, entry point group `vllm.general_plugins`): vLLM loads it in every
process it starts (the EngineCore and each worker, which an engine in a Ray actor spawns rather than forks, so
nothing set in the actor's own interpreter reaches them). It does nothing unless the actor asked for it through
the environment, which spawned processes inherit: another vLLM in the same venv is left as it is.

What it sets: how long an engine process busy-waits for its next message on vLLM's shared-memory queues
(`SpinCondition`: the worker waiting for the scheduler's next step, the scheduler waiting for the worker's output)
before it parks on a socket until woken. vLLM spins for 1 s after each message, yielding the core in a loop; on a
machine where the engines share their cores with the learner and the other actors, those yields are CPU the model
and the learner need (bench/README.md, "Where the cores go": 38% of the loop's CPU on 2 cores). VLLMEngine.create
(rollout/engine.py) sets VIDEORL_VLLM_SPIN_S from rollout.engine.spin_wait_s.

Invariant kept here: vLLM's own behaviour is kept whenever the variable is unset, and a vLLM without the patched
method fails loudly in tests (tests/unit/test_vllm_plugin.py) instead of silently spinning again.
"""

from __future__ import annotations

import logging
import os

SPIN_ENV = "VIDEORL_VLLM_SPIN_S"
log = logging.getLogger("videorl.rollout")


def register() -> None:
    """vLLM's entry point: apply the settings the environment asks for (none: nothing)."""
    if (raw := os.environ.get(SPIN_ENV)) is not None:
        limit_spin(float(raw))


def limit_spin(seconds: float) -> None:
    """Busy-wait at most `seconds` (0: park at once) on vLLM's shared-memory queues in this process."""
    from vllm.distributed.device_communicators.shm_broadcast import SpinCondition

    wait = getattr(SpinCondition.wait, "__wrapped__", SpinCondition.wait)

    def limited_wait(self, timeout_ms: int | None = None) -> None:
        self.busy_loop_s = min(self.busy_loop_s, seconds)   # readers are built with 1 s; the writer's is 0
        wait(self, timeout_ms)

    limited_wait.__wrapped__ = wait  # type: ignore[attr-defined]
    limited_wait.spin_s = seconds  # type: ignore[attr-defined]
    SpinCondition.wait = limited_wait  # type: ignore[method-assign]
