"""A row's task-specific ground truth, typed, and the one set of rules it is validated by.

The dataset reader (services/common/dataset.py) checks a row's ground truth with these rules and names the file,
line and field; the rewards read their targets with the same rules (services/reward/temporal.py, bbox.py,
graph.py), so a row the reader accepts is one every reward can score. On the wire it is `videorl.v1.GroundTruth`
(`to_proto` / `from_proto`; a message from a foreign writer is checked again on the way in).

Rules: a segment is [start, end] seconds, finite, 0 <= start <= end (<= duration when the duration is known); a
duration is finite and > 0; a box is [x1, y1, x2, y2], finite, x1 <= x2 and y1 <= y2; a box list has at least one
box (null = the object is not in that frame); a scene graph has 1..MAX_NODES nodes with unique ids (text or
integer, compared as text), string names and a position [x, y] of finite numbers, edges whose src and dst are
declared ids and whose rel is a string (at most MAX_EDGES), and optional keyframes {t, nodes: [{id, pos}]} that
name declared nodes (at most MAX_KEYFRAMES).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from services.common.pb.videorl.v1 import rollout_pb2 as pb

MAX_NODES, MAX_EDGES, MAX_KEYFRAMES = 64, 512, 64

Segment = tuple[float, float]
Box = tuple[float, float, float, float]
Point = tuple[float, float]


class GroundTruthError(ValueError):
    """A ground-truth value that breaks the rules; the message starts with the field: "field 'segment' must ..." or
    "field 'graph.nodes[1].id': duplicate node id 'a'"."""

    def __init__(self, field: str, message: str):
        super().__init__(f"field {field!r} {message}" if message.startswith("must") else f"field {field!r}: {message}")
        self.field = field


@dataclass(frozen=True)
class GraphNode:
    id: str
    name: str
    pos: Point


@dataclass(frozen=True)
class GraphEdge:
    src: str
    dst: str
    rel: str


@dataclass(frozen=True)
class Keyframe:
    t: float
    pos: tuple[tuple[str, Point], ...]  # (node id, position) in that keyframe


@dataclass(frozen=True)
class SceneGraph:
    nodes: tuple[GraphNode, ...]
    edges: tuple[GraphEdge, ...] = ()
    keyframes: tuple[Keyframe, ...] = ()

    def as_json(self) -> dict[str, Any]:
        """The schema the graph reward reads (services/reward/graph.py)."""
        out: dict[str, Any] = {"nodes": [{"id": n.id, "name": n.name, "pos": list(n.pos)} for n in self.nodes],
                               "edges": [{"src": e.src, "dst": e.dst, "rel": e.rel} for e in self.edges]}
        if self.keyframes:
            out["keyframes"] = [{"t": k.t, "nodes": [{"id": i, "pos": list(p)} for i, p in k.pos]}
                                for k in self.keyframes]
        return out


@dataclass(frozen=True)
class GroundTruth:
    segments: tuple[Segment, ...] = ()
    single_segment: bool = False      # the row gave one `segment` rather than a list of `segments`
    duration: float | None = None
    box: Box | None = None
    boxes: tuple[Box | None, ...] = ()
    graph: SceneGraph | None = None
    reference: str = ""
    num_options: int = 0              # MCQ only
    reverse_time: bool = False        # played backwards (ST-R1's reverse-time variant)
    synth_task: str = ""              # the synthetic suite's task name

    def target(self) -> dict[str, Any]:
        """What rewards read as `Sample.extra`, under the dataset's field names; absent values are left out."""
        t: dict[str, Any] = {}
        if self.segments:
            if self.single_segment:
                t["segment"] = list(self.segments[0])
            else:
                t["segments"] = [list(s) for s in self.segments]
        if self.duration is not None:
            t["duration"] = self.duration
        if self.box is not None:
            t["box"] = list(self.box)
        if self.boxes:
            t["boxes"] = [None if b is None else list(b) for b in self.boxes]
        if self.graph is not None:
            t["graph"] = self.graph.as_json()
        if self.reference:
            t["reference"] = self.reference
        if self.num_options:
            t["num_options"] = self.num_options
        return t

    def to_proto(self) -> pb.GroundTruth:
        m = pb.GroundTruth(segments=[pb.Segment(start=s, end=e) for s, e in self.segments],
                           single_segment=self.single_segment, reference=self.reference,
                           num_options=self.num_options, reverse_time=self.reverse_time, synth_task=self.synth_task,
                           boxes=[pb.FrameBox(box=_box_pb(b)) if b is not None else pb.FrameBox() for b in self.boxes])
        if self.duration is not None:
            m.duration = self.duration
        if self.box is not None:
            m.box.CopyFrom(_box_pb(self.box))
        if self.graph is not None:
            m.graph.CopyFrom(_graph_pb(self.graph))
        return m

    @classmethod
    def from_proto(cls, m: pb.GroundTruth) -> GroundTruth:
        """The message as a checked GroundTruth; GroundTruthError names what breaks the rules."""
        duration = check_duration(m.duration, "duration") if m.HasField("duration") else None
        name = "segment" if m.single_segment else "segments"
        segments = tuple(check_segment([s.start, s.end], f"{name}[{i}]", duration) for i, s in enumerate(m.segments))
        boxes = tuple(_box_value(b.box, f"boxes[{i}]") if b.HasField("box") else None for i, b in enumerate(m.boxes))
        if boxes and all(b is None for b in boxes):
            raise GroundTruthError("boxes", "must hold at least one box")
        graph = None
        if m.HasField("graph"):
            graph = check_graph(_graph_json(m.graph))
        return cls(segments=segments, single_segment=m.single_segment and len(segments) == 1, duration=duration,
                   box=_box_value(m.box, "box") if m.HasField("box") else None, boxes=boxes, graph=graph,
                   reference=m.reference, num_options=m.num_options, reverse_time=m.reverse_time,
                   synth_task=m.synth_task)


# ---- the rules -------------------------------------------------------------------------------------------


def finite(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def check_duration(v: object, field: str = "duration") -> float:
    if not finite(v) or v <= 0:  # type: ignore[operator]
        raise GroundTruthError(field, "must be a finite number of seconds > 0")
    return float(v)  # type: ignore[arg-type]


def check_segment(v: object, field: str = "segment", duration: float | None = None) -> Segment:
    if isinstance(v, str) or not isinstance(v, list | tuple) or len(v) != 2 or not all(finite(x) for x in v):
        raise GroundTruthError(field, "must be [start, end], two finite numbers of seconds")
    s, e = float(v[0]), float(v[1])
    if not 0 <= s <= e:
        raise GroundTruthError(field, f"must have 0 <= start <= end, got [{s}, {e}]")
    if duration is not None and e > duration:
        raise GroundTruthError(field, f"end {e} is past duration {duration}")
    return s, e


def check_segments(v: object, field: str = "segments", duration: float | None = None) -> tuple[Segment, ...]:
    if isinstance(v, str) or not isinstance(v, list | tuple) or not v:
        raise GroundTruthError(field, "must be a non-empty list of [start, end]")
    return tuple(check_segment(s, f"{field}[{i}]", duration) for i, s in enumerate(v))


def check_box(v: object, field: str = "box") -> Box:
    if isinstance(v, str) or not isinstance(v, list | tuple) or len(v) != 4 or not all(finite(x) for x in v):
        raise GroundTruthError(field, "must be [x1, y1, x2, y2], four finite numbers")
    x1, y1, x2, y2 = (float(x) for x in v)
    if x1 > x2 or y1 > y2:
        raise GroundTruthError(field, f"must have x1 <= x2 and y1 <= y2, got {list(v)}")
    return x1, y1, x2, y2


def check_boxes(v: object, field: str = "boxes") -> tuple[Box | None, ...]:
    if isinstance(v, str) or not isinstance(v, list | tuple) or not any(b is not None for b in v):
        raise GroundTruthError(field, "must be a list of boxes or nulls with at least one box")
    return tuple(None if b is None else check_box(b, f"{field}[{i}]") for i, b in enumerate(v))


def check_graph(v: object, field: str = "graph") -> SceneGraph:
    if not isinstance(v, dict) or not isinstance(v.get("nodes"), list):
        raise GroundTruthError(field, "must be an object with a list 'nodes' (and optional 'edges', 'keyframes')")
    if not 1 <= len(v["nodes"]) <= MAX_NODES:
        raise GroundTruthError(f"{field}.nodes", f"must hold 1 to {MAX_NODES} nodes")
    nodes: list[GraphNode] = []
    for i, n in enumerate(v["nodes"]):
        where = f"{field}.nodes[{i}]"
        if not isinstance(n, dict):
            raise GroundTruthError(where, "must be an object with 'id', 'name' and 'pos'")
        node_id = _node_id(n.get("id"), f"{where}.id")
        if any(node_id == m.id for m in nodes):
            raise GroundTruthError(f"{where}.id", f"duplicate node id {node_id!r}")
        if not isinstance(n.get("name"), str):
            raise GroundTruthError(f"{where}.name", "must be a string")
        nodes.append(GraphNode(node_id, n["name"], _point(n.get("pos"), f"{where}.pos")))
    ids = {n.id for n in nodes}
    return SceneGraph(tuple(nodes), _edges(v.get("edges", []), ids, f"{field}.edges"),
                      _keyframes(v.get("keyframes", []), ids, f"{field}.keyframes"))


def _node_id(v: object, field: str) -> str:
    if isinstance(v, bool) or not isinstance(v, str | int):
        raise GroundTruthError(field, "must be a string or an integer")
    return str(v)


def _point(v: object, field: str) -> Point:
    if isinstance(v, str) or not isinstance(v, list | tuple) or len(v) != 2 or not all(finite(x) for x in v):
        raise GroundTruthError(field, "must be [x, y], two finite numbers")
    return float(v[0]), float(v[1])


def _edges(v: object, ids: set[str], field: str) -> tuple[GraphEdge, ...]:
    if not isinstance(v, list) or len(v) > MAX_EDGES:
        raise GroundTruthError(field, f"must be a list of at most {MAX_EDGES} edges")
    edges = []
    for i, e in enumerate(v):
        if not isinstance(e, dict):
            raise GroundTruthError(f"{field}[{i}]", "must be an object with 'src', 'dst', 'rel'")
        ends = []
        for k in ("src", "dst"):
            if k not in e or _node_id(e[k], f"{field}[{i}].{k}") not in ids:
                raise GroundTruthError(f"{field}[{i}].{k}", f"{e.get(k)!r} is not a declared node id")
            ends.append(str(e[k]))
        if not isinstance(e.get("rel"), str):
            raise GroundTruthError(f"{field}[{i}].rel", "must be a string")
        edges.append(GraphEdge(ends[0], ends[1], e["rel"]))
    return tuple(edges)


def _keyframes(v: object, ids: set[str], field: str) -> tuple[Keyframe, ...]:
    if not isinstance(v, list) or len(v) > MAX_KEYFRAMES:
        raise GroundTruthError(field, f"must be a list of at most {MAX_KEYFRAMES} keyframes")
    frames = []
    for i, k in enumerate(v):
        where = f"{field}[{i}]"
        if not isinstance(k, dict) or not finite(k.get("t")) or not isinstance(k.get("nodes"), list):
            raise GroundTruthError(where, "must be an object with a finite time 't' and a list 'nodes'")
        pos = []
        for j, n in enumerate(k["nodes"]):
            if not isinstance(n, dict) or _node_id(n.get("id"), f"{where}.nodes[{j}].id") not in ids:
                raise GroundTruthError(f"{where}.nodes[{j}]", "must name a declared node")
            pos.append((str(n["id"]), _point(n.get("pos"), f"{where}.nodes[{j}].pos")))
        frames.append(Keyframe(float(k["t"]), tuple(pos)))
    return tuple(frames)


# ---- wire form -------------------------------------------------------------------------------------------


def _box_pb(b: Box) -> pb.Box:
    return pb.Box(x1=b[0], y1=b[1], x2=b[2], y2=b[3])


def _box_value(b: pb.Box, field: str) -> Box:
    return check_box([b.x1, b.y1, b.x2, b.y2], field)


def _graph_pb(g: SceneGraph) -> pb.SceneGraph:
    return pb.SceneGraph(
        nodes=[pb.GraphNode(id=n.id, name=n.name, pos=pb.Point(x=n.pos[0], y=n.pos[1])) for n in g.nodes],
        edges=[pb.GraphEdge(src=e.src, dst=e.dst, rel=e.rel) for e in g.edges],
        keyframes=[pb.Keyframe(t=k.t, nodes=[pb.KeyframeNode(id=i, pos=pb.Point(x=p[0], y=p[1])) for i, p in k.pos])
                   for k in g.keyframes])


def _graph_json(m: pb.SceneGraph) -> dict[str, Any]:
    return {"nodes": [{"id": n.id, "name": n.name, "pos": [n.pos.x, n.pos.y]} for n in m.nodes],
            "edges": [{"src": e.src, "dst": e.dst, "rel": e.rel} for e in m.edges],
            "keyframes": [{"t": k.t, "nodes": [{"id": n.id, "pos": [n.pos.x, n.pos.y]} for n in k.nodes]}
                          for k in m.keyframes]}
