import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def judge_server():
    """The scripted OpenAI-compatible judge (judge_server.py) on a free loopback port: its base URL; stopped by pid."""
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("judge_server.py")), "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("PORT "), f"judge server did not start: {line!r}"
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        proc.terminate()
        proc.wait(10)
