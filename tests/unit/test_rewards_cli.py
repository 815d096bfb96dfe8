"""`rlctl rewards score`: one output line per input line, in order, errors on their own line."""

import doctest
import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from rlctl import rewards_cmd
from rlctl.rewards_cmd import rewards

REPO = Path(__file__).resolve().parents[2]
GRAPH = {
    "nodes": [{"id": "a", "name": "red square", "pos": [0, 0]}, {"id": "b", "name": "blue circle", "pos": [2, 0]}],
    "edges": [{"src": "a", "dst": "b", "rel": "left of"}],
}
ROWS = [
    ({"reward": "mcq", "completion": "<think>x</think><answer>B</answer>", "target": {"answer": "B", "num_options": 4}},
     1.0),
    ({"reward": "mcq", "completion": "<answer>Direction: left</answer>", "target": {"answer": "D", "num_options": 4}},
     0.0),
    ({"reward": "numeric_mra", "completion": "<answer>8</answer>", "target": {"answer": 10.0}}, 0.6),
    ({"reward": "numeric_mra", "completion": "<answer>9.5</answer>", "target": {"answer": 10}}, 1.0),
    ({"reward": "temporal_iou", "completion": "<answer>12.5 - 20</answer>", "target": {"segment": [10, 20],
                                                                                       "duration": 60}}, 0.75),
    ({"reward": "bbox_iou", "completion": "<answer>[5, 0, 15, 10]</answer>", "target": {"box": [0, 0, 10, 10]}},
     1 / 3),
    ({"reward": "graph", "completion": f"<think>{json.dumps(GRAPH)}</think><answer>A</answer>",
      "target": {"graph": GRAPH}}, 1.0),
    ({"reward": "format", "completion": "<think>a</think><answer>b</answer>", "target": {}}, 1.0),
    ({"reward": "format", "completion": "b"}, 0.0),  # target may be left out when the reward needs none
]


def run(stdin: str, *args: str):
    result = CliRunner().invoke(rewards, ["score", *(args or ["-"])], input=stdin)
    return result, [json.loads(line) for line in result.stdout.splitlines()]


def test_docstring_examples_hold():
    assert doctest.testmod(rewards_cmd).failed == 0


def test_scores_every_reward_in_order():
    result, out = run("".join(json.dumps(row) + "\n" for row, _ in ROWS))
    assert result.exit_code == 0, result.output
    assert len(out) == len(ROWS)
    for (row, expected), got in zip(ROWS, out, strict=True):
        assert got["error"] is None, (row, got)
        assert abs(got["reward"] - expected) < 1e-12, (row, got)
    assert "scored 9 lines, 0 with an error" in result.stderr


def test_a_malformed_line_gets_its_own_error_and_the_rest_go_on():
    good = json.dumps(ROWS[0][0])
    lines = [
        good,
        "{not json",
        "",
        "[1, 2, 3]",
        json.dumps({"reward": "nope", "completion": "x", "target": {}}),
        json.dumps({"reward": "mcq", "completion": 5, "target": {"answer": "B", "num_options": 4}}),
        json.dumps({"reward": "mcq", "completion": "B", "target": "B"}),
        json.dumps({"reward": "mcq", "completion": "B", "target": {"answer": "B"}}),  # no option count
        json.dumps({"reward": "numeric_mra", "completion": "<answer>1</answer>", "target": {"answer": "ten"}}),
        json.dumps({"reward": "temporal_iou", "completion": "1 2", "target": {"segment": "x"}}),
        json.dumps({"reward": "graph", "completion": "{}", "target": {"graph": {"nodes": []}}}),
        json.dumps({"reward": "mcq", "completion": "B", "target": {"answer": "B", "options": [1, 2]}}),
        json.dumps({"reward": None, "completion": "B", "target": {}}),
        good,
    ]
    result, out = run("\n".join(lines) + "\n")
    assert result.exit_code == 0
    assert len(out) == len(lines)
    assert out[0] == out[-1] == {"reward": 1.0, "error": None}
    for i, got in enumerate(out[1:-1], start=1):
        assert got["reward"] is None and got["error"], (lines[i], got)
    assert out[1]["error"].startswith("not JSON")
    assert out[2]["error"] == "empty line"
    assert "unknown reward 'nope'" in out[4]["error"]
    assert "options" in out[7]["error"]
    assert "numeric sample answer" in out[8]["error"]
    assert "invalid graph" in out[10]["error"]


def test_nan_is_null_and_unscorable(monkeypatch):
    from services.reward import registry

    monkeypatch.setitem(registry._REGISTRY, "always_nan", lambda completion, sample: float("nan"))
    _, out = run(json.dumps({"reward": "always_nan", "completion": "x", "target": {}}) + "\n")
    assert out == [{"reward": None, "error": "unscorable"}]


def test_reads_a_file_and_odd_text(tmp_path):
    path = tmp_path / "saved.jsonl"
    odd = {"reward": "mcq", "completion": "<answer>（Ｂ）</answer>\x00🎥", "target": {"answer": "B", "num_options": 2}}
    path.write_text(json.dumps(odd, ensure_ascii=False) + "\r\n" + json.dumps(ROWS[2][0]) + "\n", encoding="utf-8")
    result, out = run("", str(path))
    assert result.exit_code == 0
    assert out == [{"reward": 1.0, "error": None}, {"reward": 0.6, "error": None}]
    assert CliRunner().invoke(rewards, ["score", str(tmp_path / "missing.jsonl")]).exit_code != 0


def test_runs_as_a_module():
    stdin = json.dumps(ROWS[2][0]) + "\nnope\n"
    proc = subprocess.run([sys.executable, "-m", "rlctl.rewards_cmd", "score", "-"], input=stdin, text=True,
                          capture_output=True, cwd=REPO, timeout=120, check=True)
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert lines[0] == {"reward": 0.6, "error": None}
    assert lines[1]["reward"] is None and lines[1]["error"].startswith("not JSON")
