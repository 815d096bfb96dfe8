"""Graph-topology reward (Video-STR): the scene graph the model writes while thinking, against the true one.

Schema (the prediction and ``sample.extra["graph"]`` share it; unknown extra keys are ignored)::

    {"nodes": [{"id": "n1", "name": "red square", "pos": [x, y]}, ...],
     "edges": [{"src": "n1", "dst": "n2", "rel": "left of"}, ...],             # optional, default []
     "keyframes": [{"t": seconds, "nodes": [{"id": "n1", "pos": [x, y]}, ...]}, ...]}   # optional

``id`` is a string or an integer (compared as text) and unique, ``name``/``rel`` are strings, ``pos`` two
finite numbers. The ground truth is read by the rules of services/common/ground_truth.py (edges and keyframes
must be valid too); a malformed one raises ``ValueError``.

Extraction: the text searched is the last ``<think>`` block (to ``</think>``, else to ``<answer>``, else to
the end), or the whole completion when there is no ``<think>``, cut to its last ``GRAPH_CHARS``. The graph
is the last top-level JSON object in it that has a ``"nodes"`` key (or holds, one level down, an object that
has one: ``{"scene_graph": {...}}``). Objects are tried with ``json``'s C decoder from each ``{"``; nested
objects are skipped once their parent parses, and all attempts together may scan at most ``PARSE_BUDGET``
characters, so a megabyte of broken JSON costs about what 256 KiB does. No graph, or nodes that break the
schema (or more than ``MAX_NODES``), score 0 overall; broken edges (malformed, an undeclared node, more than
``MAX_EDGES``) score 0 for the edge part; broken keyframes 0 for the keyframe part. Never an exception.

Formula. Ground truth G has n nodes (names a_i, positions g_i) and edges E_G; the prediction P has m nodes
(b_j, p_j) and edges E_P.

- Normalise each layout: x̂ = (x − mean(x)) / rms, rms = sqrt(mean |x − mean(x)|²) (all x̂ = 0 when rms = 0).
- Name similarity S_ij = Jaccard(words(a_i), words(b_j)) on casefolded ``\\w+`` words (two empty names: 1).
- Matching: π₀ = Hungarian on (1 − S_ij) + min(1, | |ĝ_i| − |p̂_j| |) (radii are rotation invariant); then
  up to three times: R = the rotation (no reflection) that best maps the matched p̂ onto ĝ (least squares,
  θ = atan2(Σ p̂ × ĝ, Σ p̂ · ĝ)), q_j = R p̂_j, π = Hungarian on 1 − s_ij with
  s_ij = ½ S_ij + ½ (1 − min(1, |ĝ_i − q_j|)), until π stops changing. Costs are rounded to 1e-9 before
  each assignment, so exact ties (symmetric layouts) stay ties after any transform and are broken by node
  order: scipy.optimize.linear_sum_assignment.
- Node part  N = Σ_{(i,j) ∈ π} s_ij / max(n, m).
- Edge part: a ground-truth edge e = (u → v, rel) is present when u and v are matched and P has an edge
  π(u) → π(v) (direction matters). For a present edge, with d = |v̂ − û| and α its direction in each layout:
  dist_e = 1 − |d_G − d_P| / max(d_G, d_P) (1 when both are 0); δ_e = α_P − α_G;
  angle_e = mean over the other present edges f of (1 + cos(δ_e − δ_f)) / 2 (1 when there is none; an edge of
  length 0 on either side has no direction: angle_e = 1 if it has length 0 on both, else 0, and it is no f);
  rel_e = Jaccard of the relation words. E = Σ_present (rel_e + dist_e + angle_e) / 3 / max(|E_G|, |E_P|),
  and E = 1 when both graphs have no edges (edges are counted as distinct (src, dst) pairs).
- Keyframe part (only when G has keyframes): both sides' keyframes sorted by t and paired in order (a
  missing one scores 0). In a pair, C = the ground-truth keyframe's nodes whose match appears in the
  predicted keyframe; both point sets over C are normalised as above and rotated together as above;
  k = Σ_C (1 − min(1, |ĝ − q|)) / (nodes in the ground-truth keyframe). K = mean over ground-truth keyframes.
- Score = (N + E) / 2, or (N + E + K) / 3 when G has keyframes.

Every term uses only distances, radii and differences of angles of normalised layouts, and the rotation R
is fitted from the data, so the score does not change when the whole predicted layout (or a keyframe's) is
translated, rotated or uniformly scaled; a mirrored layout is a different layout and scores lower.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, TypeGuard

import numpy as np
from scipy.optimize import linear_sum_assignment

from services.common.ground_truth import GroundTruthError, check_graph
from services.reward.registry import Sample, register
from services.reward.text import ANSWER_OPEN, THINK_CLOSE, THINK_OPEN

GRAPH_CHARS = 1 << 16
PARSE_BUDGET = 1 << 18
MAX_NODES = 64
MAX_EDGES = 512
MAX_KEYFRAMES = 64

_OBJECT_START = re.compile(r'\{\s*"')
_DECODER = json.JSONDecoder()
_WORD = re.compile(r"\w+")


class _Invalid(Exception):
    """A part of a graph breaks the schema; the message says how."""


@dataclass(frozen=True)
class Keyframe:
    t: float
    pos: dict[int, np.ndarray]  # node index -> position (2,)


@dataclass(frozen=True)
class Graph:
    names: list[frozenset[str]]  # words of each node's name
    pos: np.ndarray  # (n, 2)
    edges: dict[tuple[int, int], frozenset[str]] | None  # (src, dst) -> relation words; None = invalid
    keyframes: list[Keyframe] | None  # sorted by t; None = invalid


# --------------------------------------------------------------------------------------------- parsing


def _words(text: Any) -> frozenset[str]:
    if not isinstance(text, str):
        raise _Invalid(f"expected a string, got {text!r:.80}")
    return frozenset(_WORD.findall(unicodedata.normalize("NFKC", text).casefold()))


def _finite(v: Any) -> TypeGuard[int | float]:
    """A JSON number a float can hold: not a bool, not inf or nan, and not an integer too large for a float."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:   # an int of more than ~308 digits
        return False


def _point(value: Any) -> np.ndarray:
    if not isinstance(value, list) or len(value) != 2:
        raise _Invalid(f"pos must be [x, y], got {value!r:.80}")
    for v in value:
        if not _finite(v):
            raise _Invalid(f"pos must hold finite numbers, got {value!r:.80}")
    return np.array([float(value[0]), float(value[1])])


def _node_id(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _Invalid(f"node id must be a string or an integer, got {value!r:.80}")
    return str(value)


def _edges(raw: Any, index: dict[str, int]) -> dict[tuple[int, int], frozenset[str]]:
    if not isinstance(raw, list) or len(raw) > MAX_EDGES:
        raise _Invalid(f"edges must be a list of at most {MAX_EDGES}")
    edges: dict[tuple[int, int], frozenset[str]] = {}
    for edge in raw:
        if not isinstance(edge, dict):
            raise _Invalid(f"an edge must be an object, got {edge!r:.80}")
        src, dst = _node_id(edge.get("src")), _node_id(edge.get("dst"))
        if src not in index or dst not in index:
            raise _Invalid(f"edge {src!r} -> {dst!r} names an undeclared node")
        edges.setdefault((index[src], index[dst]), _words(edge.get("rel", "")))
    return edges


def _keyframes(raw: Any, index: dict[str, int]) -> list[Keyframe]:
    if not isinstance(raw, list) or len(raw) > MAX_KEYFRAMES:
        raise _Invalid(f"keyframes must be a list of at most {MAX_KEYFRAMES}")
    frames = []
    for frame in raw:
        if not isinstance(frame, dict) or not isinstance(frame.get("nodes"), list) or len(frame["nodes"]) > MAX_NODES:
            raise _Invalid(f"a keyframe must be an object with a list of at most {MAX_NODES} nodes")
        t = frame.get("t")
        if not _finite(t):
            raise _Invalid(f"keyframe t must be a finite number, got {t!r:.80}")
        pos: dict[int, np.ndarray] = {}
        for node in frame["nodes"]:
            if not isinstance(node, dict) or _node_id(node.get("id")) not in index:
                raise _Invalid(f"a keyframe node must name a declared node, got {node!r:.80}")
            pos[index[_node_id(node["id"])]] = _point(node.get("pos"))
        frames.append(Keyframe(float(t), pos))
    return sorted(frames, key=lambda f: f.t)


def parse_graph(raw: Any) -> Graph:
    """A graph in the schema above; raises ``ValueError`` when its nodes break it.

    Broken edges or keyframes do not raise: they come back as ``None`` (that part scores 0).
    """
    try:
        nodes = raw.get("nodes") if isinstance(raw, dict) else None
        if not isinstance(nodes, list) or not 1 <= len(nodes) <= MAX_NODES:
            raise _Invalid(f"nodes must be a list of 1 to {MAX_NODES} nodes")
        index: dict[str, int] = {}
        names, points = [], []
        for node in nodes:
            if not isinstance(node, dict):
                raise _Invalid(f"a node must be an object, got {node!r:.80}")
            node_id = _node_id(node.get("id"))
            if node_id in index:
                raise _Invalid(f"node id {node_id!r} is declared twice")
            index[node_id] = len(index)
            names.append(_words(node.get("name")))
            points.append(_point(node.get("pos")))
    except _Invalid as e:
        raise ValueError(f"invalid graph: {e}") from None
    edges: dict[tuple[int, int], frozenset[str]] | None
    keyframes: list[Keyframe] | None
    try:
        edges = _edges(raw.get("edges", []), index)
    except _Invalid:
        edges = None
    try:
        keyframes = _keyframes(raw.get("keyframes", []), index)
    except _Invalid:
        keyframes = None
    return Graph(names, np.array(points), edges, keyframes)


def _think_window(completion: str) -> str:
    start = completion.rfind(THINK_OPEN)
    if start < 0:
        return completion[-GRAPH_CHARS:]
    start += len(THINK_OPEN)
    end = completion.find(THINK_CLOSE, start)
    if end < 0:
        end = completion.find(ANSWER_OPEN, start)
    if end < 0:
        end = len(completion)
    return completion[max(start, end - GRAPH_CHARS) : end]


def find_graph(completion: str) -> Any | None:
    """The last top-level JSON object with a ``"nodes"`` key in the thinking (see the module docstring).

    >>> find_graph('<think>see {"nodes": [], "x": {"nodes": 1}} then {"nodes": [2]}</think><answer/>')
    {'nodes': [2]}
    """
    text = _think_window(completion)
    found, budget, skip_to = None, PARSE_BUDGET, 0
    for start in _OBJECT_START.finditer(text):
        at = start.start()
        if at < skip_to:
            continue  # inside an object already parsed
        if budget <= 0:
            break
        try:
            obj, end = _DECODER.raw_decode(text, at)
        except json.JSONDecodeError as e:
            budget -= max(1, e.pos - at)
            continue
        except (ValueError, RecursionError):  # integers too long to convert, nesting too deep
            budget -= 1 << 13
            continue
        budget -= end - at
        skip_to = end
        if "nodes" in obj:
            found = obj
        else:
            found = next((v for v in obj.values() if isinstance(v, dict) and "nodes" in v), found)
    return found


# --------------------------------------------------------------------------------------------- scoring


def _normalised(points: np.ndarray) -> np.ndarray:
    centred = points - points.mean(axis=0)
    rms = math.sqrt(float(np.mean(np.sum(centred * centred, axis=1))))
    if not rms > 0.0 or not math.isfinite(rms):
        return np.zeros_like(points)
    out = centred / rms
    return out if np.isfinite(out).all() else np.zeros_like(points)


def _rotation_onto(p: np.ndarray, g: np.ndarray) -> np.ndarray:
    """The rotation matrix R minimising Σ |R p_k − g_k|² (rows are points; no reflection)."""
    cross = float(np.sum(p[:, 0] * g[:, 1] - p[:, 1] * g[:, 0]))
    dot = float(np.sum(p[:, 0] * g[:, 0] + p[:, 1] * g[:, 1]))
    theta = math.atan2(cross, dot)
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]])


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return 1.0 if not a and not b else len(a & b) / len(a | b)


def _tied(cost: np.ndarray) -> np.ndarray:
    """``cost`` rounded so that costs equal in exact arithmetic (a symmetric layout, names that all differ)
    are equal in floating point too, whatever transform the layout went through; the assignment solver then
    breaks the tie by node order, which no transform changes."""
    return np.round(cost, 9)


def _match(gt: Graph, pred: Graph, g: np.ndarray, p: np.ndarray) -> tuple[dict[int, int], np.ndarray]:
    """The matching π (ground-truth index -> predicted index) and the similarity matrix s it maximises."""
    names = np.array([[_jaccard(a, b) for b in pred.names] for a in gt.names])
    radii = np.abs(np.linalg.norm(g, axis=1)[:, None] - np.linalg.norm(p, axis=1)[None, :])
    rows, cols = linear_sum_assignment(_tied((1.0 - names) + np.minimum(1.0, radii)))
    sim = names
    for _ in range(3):
        q = p @ _rotation_onto(p[cols], g[rows]).T
        dist = np.linalg.norm(g[:, None, :] - q[None, :, :], axis=2)
        sim = 0.5 * names + 0.5 * (1.0 - np.minimum(1.0, dist))
        new_rows, new_cols = linear_sum_assignment(_tied(1.0 - sim))
        if np.array_equal(new_cols, cols) and np.array_equal(new_rows, rows):
            break
        rows, cols = new_rows, new_cols
    return dict(zip(rows.tolist(), cols.tolist(), strict=True)), sim


def _edge_part(gt: Graph, pred: Graph, pi: dict[int, int], g: np.ndarray, p: np.ndarray) -> float:
    assert gt.edges is not None
    if pred.edges is None:
        return 0.0
    if not gt.edges and not pred.edges:
        return 1.0
    present: list[tuple[float, float, float | None, bool]] = []  # (rel_e, dist_e, δ_e or None, both lengths 0)
    for (u, v), words in gt.edges.items():
        key = (pi.get(u, -1), pi.get(v, -1))
        if key not in pred.edges:
            continue
        dg, dp = g[v] - g[u], p[key[1]] - p[key[0]]
        lg, lp = float(np.hypot(*dg)), float(np.hypot(*dp))
        dist = 1.0 if max(lg, lp) == 0.0 else 1.0 - abs(lg - lp) / max(lg, lp)
        delta = math.atan2(dp[1], dp[0]) - math.atan2(dg[1], dg[0]) if lg > 0.0 and lp > 0.0 else None
        present.append((_jaccard(words, pred.edges[key]), dist, delta, lg == lp == 0.0))
    deltas = np.array([d for _, _, d, _ in present if d is not None])
    total = 0.0
    for rel, dist, delta, both_zero in present:
        if delta is None:
            angle = 1.0 if both_zero else 0.0
        elif len(deltas) > 1:  # pairs with itself add cos(0) = 1 once: leave that pair out
            angle = (float(np.sum((1.0 + np.cos(delta - deltas)) / 2.0)) - 1.0) / (len(deltas) - 1)
        else:
            angle = 1.0
        total += (rel + dist + angle) / 3.0
    return total / max(len(gt.edges), len(pred.edges))


def _keyframe_part(gt: Graph, pred: Graph, pi: dict[int, int]) -> float:
    assert gt.keyframes
    if pred.keyframes is None:
        return 0.0
    scores = []
    for kg, kp in zip(gt.keyframes, pred.keyframes, strict=False):
        common = [i for i in kg.pos if i in pi and pi[i] in kp.pos]
        if not common or not kg.pos:
            scores.append(0.0)
            continue
        g = _normalised(np.array([kg.pos[i] for i in common]))
        p = _normalised(np.array([kp.pos[pi[i]] for i in common]))
        q = p @ _rotation_onto(p, g).T
        close = 1.0 - np.minimum(1.0, np.linalg.norm(g - q, axis=1))
        scores.append(float(np.sum(close)) / len(kg.pos))
    return math.fsum(scores) / len(gt.keyframes)


def graph_score(gt: Graph, pred: Graph) -> float:
    """The score of ``pred`` against ``gt`` by the formula in the module docstring."""
    g, p = _normalised(gt.pos), _normalised(pred.pos)
    pi, sim = _match(gt, pred, g, p)
    nodes = float(sum(sim[i, j] for i, j in pi.items())) / max(len(gt.names), len(pred.names))
    edges = _edge_part(gt, pred, pi, g, p)
    parts = [nodes, edges]
    if gt.keyframes:
        parts.append(_keyframe_part(gt, pred, pi))
    value = math.fsum(parts) / len(parts)
    return min(1.0, max(0.0, value)) if math.isfinite(value) else 0.0


@register("graph")
def graph_reward(completion: str, sample: Sample) -> float:
    """Video-STR graph-topology reward of the JSON scene graph in the thinking against ``extra["graph"]``.

    >>> gt = {"nodes": [{"id": "a", "name": "red square", "pos": [0, 0]},
    ...                 {"id": "b", "name": "blue circle", "pos": [2, 0]}],
    ...       "edges": [{"src": "a", "dst": "b", "rel": "left of"}]}
    >>> s = Sample(task="graph", answer="", extra={"graph": gt})
    >>> moved = json.dumps({**gt, "nodes": [{**gt["nodes"][0], "pos": [5, 5]}, {**gt["nodes"][1], "pos": [5, 9]}]})
    >>> graph_reward(f"<think>{moved}</think><answer>A</answer>", s)  # rotated, moved and scaled: same graph
    1.0
    >>> graph_reward("<think>{\\"nodes\\": [</think><answer>A</answer>", s)
    0.0
    """
    try:  # the ground-truth rules, strict
        gt = parse_graph(check_graph(sample.extra.get("graph")).as_json())
    except GroundTruthError as e:
        raise ValueError(f"invalid graph: {e}") from None
    raw = find_graph(completion)
    if raw is None:
        return 0.0
    try:
        pred = parse_graph(raw)
    except ValueError:
        return 0.0
    return graph_score(gt, pred)
