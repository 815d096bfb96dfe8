"""The bad-input corpus (bad_corpus.py) and its summary: each module records one line with the counts it
asserted, printed at the end of the pytest run under "bad-input corpus" (so a closing note can quote them)."""

from __future__ import annotations

import pytest

_LINES: dict[str, str] = {}


@pytest.fixture
def summary(request):
    """summary(line): this test's one-line count summary, keyed by its module."""

    def record(line: str) -> None:
        _LINES[request.node.nodeid] = line
        print(line)

    return record


def pytest_terminal_summary(terminalreporter):
    if _LINES:
        terminalreporter.section("bad-input corpus")
        for nodeid, line in _LINES.items():
            terminalreporter.write_line(f"{line}    [{nodeid.split('::')[-1]}]")
