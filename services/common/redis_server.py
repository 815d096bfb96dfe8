"""A real Redis server owned by this process, for runs and tests with no `redis.url`.

Uses the first `redis-server` of version 7 or newer, from the system folders first, then PATH (setup.sh
installs Debian's). Older servers are refused by name: the control plane needs Redis 7 stream replies
(XAUTOCLAIM's deleted-ids field, XINFO GROUPS' lag). It listens on 127.0.0.1 only, on a free port, and is
stopped by its pid, never by name.

With `appendonly`, every write is in the append-only file and fsynced before Redis replies (appendfsync always):
a server killed with SIGKILL and started again on the same data dir has every write a client saw acknowledged.
"everysec" would lose up to a second of them, and with them the exactly-once guarantees of the run (a group the
learner trained and recorded in the ledger could come back untrained).
"""

from __future__ import annotations

import logging
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from services.common.processes import free_port, stop_process

log = logging.getLogger("videorl.redis")
MIN_VERSION = (7, 0)


def _version(exe: str) -> tuple[int, int]:
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10).stdout
    m = re.search(r"v=(\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def find_redis_server() -> str:
    """The first redis-server >= 7.0: /usr/bin, /usr/local/bin, then PATH. Raises naming what was found."""
    seen = []
    for path in ("/usr/bin:/usr/local/bin", None):
        exe = shutil.which("redis-server", path=path)
        if exe and exe not in seen:
            seen.append(exe)
            if _version(exe) >= MIN_VERSION:
                return exe
    found = ", ".join(f"{e} ({'.'.join(map(str, _version(e)))})" for e in seen) or "none"
    raise RuntimeError(f"videorl needs redis-server >= 7.0 (scripts/setup.sh installs it); found: {found}")


class EmbeddedRedis:
    """Start with `start()`, stop with `stop()`; also a context manager. `url` is valid once started."""

    def __init__(self, data_dir: Path | None = None, port: int | None = None, appendonly: bool = False,
                 password: str | None = None):
        self.port = port or free_port()
        self.data_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="videorl-redis-"))
        self.appendonly = appendonly
        self.password = password   # AUTH (--requirepass); passed on the command line: for tests and local use
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> EmbeddedRedis:
        exe = find_redis_server()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
                "--dir", str(self.data_dir),
                "--daemonize", "no", "--protected-mode", "yes", "--loglevel", "warning"]
        if self.password:
            args += ["--requirepass", self.password]
        log = open(self.data_dir / "redis.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}; see {self.data_dir}/redis.log")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith((b"+PONG", b"-NOAUTH")):   # up; with AUTH, PING needs a password
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout_s}s")

    def stop(self) -> None:
        stop_process(self.proc)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class RedisKeeper:
    """Starts the run's embedded Redis again, on the same port and data dir, whenever its process dies.

    A thread, so that a restart never waits on the main loop, which may itself be inside a Redis command that is
    retrying until the server is back. `error` is set (and the keeper stops) after `limit` restarts or a failed
    start; the owner checks it (rlctl.local.LocalRun.wait raises it)."""

    def __init__(self, server: EmbeddedRedis, on_restart: Callable[[], None], limit: int, poll_s: float = 0.2):
        self.server, self.on_restart, self.limit, self.poll_s = server, on_restart, limit, poll_s
        self.restarts = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="redis-keeper", daemon=True)

    def start(self) -> RedisKeeper:
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            code = self.server.proc.poll() if self.server.proc else None
            if code is None:
                continue
            if self.restarts >= self.limit:
                self.error = f"the embedded Redis died (exit {code}) and was already restarted {self.limit} times"
                return
            log.warning("the embedded Redis on port %d died (exit %s): starting it again on its data in %s",
                        self.server.port, code, self.server.data_dir)
            try:
                self.server.start()
            except RuntimeError as e:
                self.error = f"the embedded Redis died (exit {code}) and could not be started again: {e}"
                return
            self.restarts += 1
            self.on_restart()

    def stop(self) -> None:
        """Stop watching (before the server is stopped on purpose)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
