from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Prompt(_message.Message):
    __slots__ = ("prompt_id", "sample_id", "task", "video_uri", "question", "options", "answer", "split", "truth")
    PROMPT_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    VIDEO_URI_FIELD_NUMBER: _ClassVar[int]
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    TRUTH_FIELD_NUMBER: _ClassVar[int]
    prompt_id: str
    sample_id: str
    task: str
    video_uri: str
    question: str
    options: _containers.RepeatedScalarFieldContainer[str]
    answer: str
    split: str
    truth: GroundTruth
    def __init__(self, prompt_id: _Optional[str] = ..., sample_id: _Optional[str] = ..., task: _Optional[str] = ..., video_uri: _Optional[str] = ..., question: _Optional[str] = ..., options: _Optional[_Iterable[str]] = ..., answer: _Optional[str] = ..., split: _Optional[str] = ..., truth: _Optional[_Union[GroundTruth, _Mapping]] = ...) -> None: ...

class GroundTruth(_message.Message):
    __slots__ = ("segments", "single_segment", "duration", "box", "boxes", "graph", "reference", "num_options", "reverse_time", "synth_task")
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    SINGLE_SEGMENT_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    BOXES_FIELD_NUMBER: _ClassVar[int]
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    NUM_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    REVERSE_TIME_FIELD_NUMBER: _ClassVar[int]
    SYNTH_TASK_FIELD_NUMBER: _ClassVar[int]
    segments: _containers.RepeatedCompositeFieldContainer[Segment]
    single_segment: bool
    duration: float
    box: Box
    boxes: _containers.RepeatedCompositeFieldContainer[FrameBox]
    graph: SceneGraph
    reference: str
    num_options: int
    reverse_time: bool
    synth_task: str
    def __init__(self, segments: _Optional[_Iterable[_Union[Segment, _Mapping]]] = ..., single_segment: _Optional[bool] = ..., duration: _Optional[float] = ..., box: _Optional[_Union[Box, _Mapping]] = ..., boxes: _Optional[_Iterable[_Union[FrameBox, _Mapping]]] = ..., graph: _Optional[_Union[SceneGraph, _Mapping]] = ..., reference: _Optional[str] = ..., num_options: _Optional[int] = ..., reverse_time: _Optional[bool] = ..., synth_task: _Optional[str] = ...) -> None: ...

class Segment(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: float
    end: float
    def __init__(self, start: _Optional[float] = ..., end: _Optional[float] = ...) -> None: ...

class Box(_message.Message):
    __slots__ = ("x1", "y1", "x2", "y2")
    X1_FIELD_NUMBER: _ClassVar[int]
    Y1_FIELD_NUMBER: _ClassVar[int]
    X2_FIELD_NUMBER: _ClassVar[int]
    Y2_FIELD_NUMBER: _ClassVar[int]
    x1: float
    y1: float
    x2: float
    y2: float
    def __init__(self, x1: _Optional[float] = ..., y1: _Optional[float] = ..., x2: _Optional[float] = ..., y2: _Optional[float] = ...) -> None: ...

class FrameBox(_message.Message):
    __slots__ = ("box",)
    BOX_FIELD_NUMBER: _ClassVar[int]
    box: Box
    def __init__(self, box: _Optional[_Union[Box, _Mapping]] = ...) -> None: ...

class Point(_message.Message):
    __slots__ = ("x", "y")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ...) -> None: ...

class GraphNode(_message.Message):
    __slots__ = ("id", "name", "pos")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    POS_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    pos: Point
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., pos: _Optional[_Union[Point, _Mapping]] = ...) -> None: ...

class GraphEdge(_message.Message):
    __slots__ = ("src", "dst", "rel")
    SRC_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    REL_FIELD_NUMBER: _ClassVar[int]
    src: str
    dst: str
    rel: str
    def __init__(self, src: _Optional[str] = ..., dst: _Optional[str] = ..., rel: _Optional[str] = ...) -> None: ...

class KeyframeNode(_message.Message):
    __slots__ = ("id", "pos")
    ID_FIELD_NUMBER: _ClassVar[int]
    POS_FIELD_NUMBER: _ClassVar[int]
    id: str
    pos: Point
    def __init__(self, id: _Optional[str] = ..., pos: _Optional[_Union[Point, _Mapping]] = ...) -> None: ...

class Keyframe(_message.Message):
    __slots__ = ("t", "nodes")
    T_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    t: float
    nodes: _containers.RepeatedCompositeFieldContainer[KeyframeNode]
    def __init__(self, t: _Optional[float] = ..., nodes: _Optional[_Iterable[_Union[KeyframeNode, _Mapping]]] = ...) -> None: ...

class SceneGraph(_message.Message):
    __slots__ = ("nodes", "edges", "keyframes")
    NODES_FIELD_NUMBER: _ClassVar[int]
    EDGES_FIELD_NUMBER: _ClassVar[int]
    KEYFRAMES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[GraphNode]
    edges: _containers.RepeatedCompositeFieldContainer[GraphEdge]
    keyframes: _containers.RepeatedCompositeFieldContainer[Keyframe]
    def __init__(self, nodes: _Optional[_Iterable[_Union[GraphNode, _Mapping]]] = ..., edges: _Optional[_Iterable[_Union[GraphEdge, _Mapping]]] = ..., keyframes: _Optional[_Iterable[_Union[Keyframe, _Mapping]]] = ...) -> None: ...

class Completion(_message.Message):
    __slots__ = ("run_id", "prompt_id", "group_id", "sample_index", "group_size", "policy_version", "prompt_token_ids", "completion_token_ids", "logprobs", "text", "finish_reason", "actor_id", "prompt")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_INDEX_FIELD_NUMBER: _ClassVar[int]
    GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    prompt_id: str
    group_id: str
    sample_index: int
    group_size: int
    policy_version: int
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    completion_token_ids: _containers.RepeatedScalarFieldContainer[int]
    logprobs: _containers.RepeatedScalarFieldContainer[float]
    text: str
    finish_reason: str
    actor_id: str
    prompt: Prompt
    def __init__(self, run_id: _Optional[str] = ..., prompt_id: _Optional[str] = ..., group_id: _Optional[str] = ..., sample_index: _Optional[int] = ..., group_size: _Optional[int] = ..., policy_version: _Optional[int] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., completion_token_ids: _Optional[_Iterable[int]] = ..., logprobs: _Optional[_Iterable[float]] = ..., text: _Optional[str] = ..., finish_reason: _Optional[str] = ..., actor_id: _Optional[str] = ..., prompt: _Optional[_Union[Prompt, _Mapping]] = ...) -> None: ...

class GroupAck(_message.Message):
    __slots__ = ("group_id", "prompt_id", "status", "reason", "rewards")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATUS_UNSPECIFIED: _ClassVar[GroupAck.Status]
        SCORED: _ClassVar[GroupAck.Status]
        DUPLICATE: _ClassVar[GroupAck.Status]
        REJECTED: _ClassVar[GroupAck.Status]
    STATUS_UNSPECIFIED: GroupAck.Status
    SCORED: GroupAck.Status
    DUPLICATE: GroupAck.Status
    REJECTED: GroupAck.Status
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    prompt_id: str
    status: GroupAck.Status
    reason: str
    rewards: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, group_id: _Optional[str] = ..., prompt_id: _Optional[str] = ..., status: _Optional[_Union[GroupAck.Status, str]] = ..., reason: _Optional[str] = ..., rewards: _Optional[_Iterable[float]] = ...) -> None: ...

class RewardComponent(_message.Message):
    __slots__ = ("name", "weight", "values")
    NAME_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    name: str
    weight: float
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, name: _Optional[str] = ..., weight: _Optional[float] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class ScoredGroup(_message.Message):
    __slots__ = ("run_id", "group_id", "prompt_id", "policy_version", "prompt", "completions", "rewards", "components", "actor_id", "scored_at")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    COMPLETIONS_FIELD_NUMBER: _ClassVar[int]
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    SCORED_AT_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    group_id: str
    prompt_id: str
    policy_version: int
    prompt: Prompt
    completions: _containers.RepeatedCompositeFieldContainer[Completion]
    rewards: _containers.RepeatedScalarFieldContainer[float]
    components: _containers.RepeatedCompositeFieldContainer[RewardComponent]
    actor_id: str
    scored_at: float
    def __init__(self, run_id: _Optional[str] = ..., group_id: _Optional[str] = ..., prompt_id: _Optional[str] = ..., policy_version: _Optional[int] = ..., prompt: _Optional[_Union[Prompt, _Mapping]] = ..., completions: _Optional[_Iterable[_Union[Completion, _Mapping]]] = ..., rewards: _Optional[_Iterable[float]] = ..., components: _Optional[_Iterable[_Union[RewardComponent, _Mapping]]] = ..., actor_id: _Optional[str] = ..., scored_at: _Optional[float] = ...) -> None: ...
