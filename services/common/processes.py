"""Local ports and child processes: a free loopback port for a server to bind, and stopping a child by its pid
(never by name), for every service and test that starts one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen | None, term_timeout_s: float = 5.0) -> None:
    """Stop a server this process started, by its pid: SIGTERM, then SIGKILL if it has not exited in time."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=term_timeout_s)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
    except ProcessLookupError:
        pass
