"""Rewards per second per core for every registered pure reward, on representative completions.

One process, one thread: the rate is per core. "typical" is a ~1.5 KB completion (a short thinking, then
the answer the task expects); "1 MB" is the same answer after a megabyte of thinking, the bounded-work case.

    python bench/rewards_bench.py [--seconds 0.5]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.reward import catalogue  # noqa: E402
from services.reward.catalogue import Sample  # noqa: E402

THINKING = ("The camera pans left past the door, then the red square moves towards the blue circle while the "
            "green triangle stays near the top of the frame. ") * 10
MB = 1 << 20
GRAPH = {
    "nodes": [{"id": f"n{i}", "name": name, "pos": [i * 1.5, (i * 7) % 5]}
              for i, name in enumerate(["red square", "blue circle", "green triangle", "yellow star", "purple hexagon",
                                        "orange diamond"])],
    "edges": [{"src": f"n{i}", "dst": f"n{i + 1}", "rel": "left of"} for i in range(5)],
}
PRED_GRAPH = {**GRAPH, "nodes": [{**n, "pos": [n["pos"][1] + 3, -n["pos"][0]]} for n in GRAPH["nodes"]]}

# reward -> (sample, thinking extra, answer)
CASES: dict[str, tuple[Sample, str, str]] = {
    "format": (Sample(task="mcq", answer="B", extra={"num_options": 4}), "", "B"),
    "answer_format": (Sample(task="mcq", answer="B", extra={"num_options": 4}), "", "B"),
    "mcq": (Sample(task="mcq", answer="B", options=("left", "right", "up", "down")), "", "The answer is B) right."),
    "numeric_mra": (Sample(task="n", answer="4.2"), "", "about 3.9 meters"),
    "numeric_exact": (Sample(task="n", answer="3"), "", "3"),
    "numeric_relative": (Sample(task="n", answer="4.2"), "", "3.9 m"),
    "temporal_iou": (Sample(task="t", answer="", extra={"segment": [12.0, 20.5], "duration": 60}), "",
                     "from 11.5 to 19 seconds"),
    "temporal_iou_time_r1": (Sample(task="t", answer="", extra={"segment": [12.0, 20.5], "duration": 60}), "",
                             "[11.5, 19.0]"),
    "bbox_iou": (Sample(task="b", answer="", extra={"box": [10, 20, 110, 220]}), "", '{"bbox_2d": [12, 25, 100, 210]}'),
    "graph": (Sample(task="g", answer="A", extra={"graph": GRAPH}), json.dumps(PRED_GRAPH), "A"),
}


def rate(fn, completion: str, sample: Sample, seconds: float) -> float:
    """Calls per second over at least ``seconds`` (after one warm-up call)."""
    fn(completion, sample)
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(10):
            fn(completion, sample)
        calls += 10
    return calls / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="time per measurement")
    args = parser.parse_args()
    rows = []
    for name in sorted(catalogue.REGISTRY):
        if name not in CASES:
            rows.append((name, None, None))
            continue
        sample, extra, answer = CASES[name]
        typical = f"<think>{THINKING}{extra}</think>\n<answer>{answer}</answer>"
        huge = f"<think>{THINKING * (MB // len(THINKING))}{extra}</think>\n<answer>{answer}</answer>"
        fn = catalogue.get(name)
        rows.append((name, rate(fn, typical, sample, args.seconds), rate(fn, huge, sample, args.seconds / 2)))
    print(f"{'reward':<22} {'typical (~1.5 KB) /s':>21} {'1 MB completion /s':>19} {'ms per 1 MB':>12}")
    for name, typical_rate, huge_rate in rows:
        if typical_rate is None or huge_rate is None:
            print(f"{name:<22} {'(no case in bench)':>21}")
            continue
        print(f"{name:<22} {typical_rate:>21,.0f} {huge_rate:>19,.0f} {1000 / huge_rate:>12.2f}")


if __name__ == "__main__":
    main()
