"""A Qwen2-VL / Qwen2.5-VL model's shapes and parameter count, read from its config.json alone (no weights, no torch).

Invariant: `count_params` equals the parameter count of the model transformers builds from the same config, and
`largest_layer` the most parameters one module holds itself, as DeepSpeed's `model_to_params` counts them
(tests/unit/test_plan.py builds transformers' model on the meta device to check both).
"""

from __future__ import annotations

from dataclasses import dataclass


class ArchError(ValueError):
    """A config.json that does not describe a model `rlctl plan` knows; the message names the field."""


@dataclass(frozen=True)
class TextShape:
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool              # lm_head shares the embedding matrix


@dataclass(frozen=True)
class VisionShape:
    depth: int
    hidden: int             # width of the vision blocks
    intermediate: int       # MLP width of a block
    heads: int
    in_channels: int
    patch: int
    temporal_patch: int
    merge: int              # spatial_merge_size: merge² patches become one LLM token
    out_hidden: int         # the merger's output (the text model's width)
    gated_mlp: bool         # Qwen2.5-VL: gate/up/down with biases; Qwen2-VL: fc1/fc2
    rms_norm: bool          # Qwen2.5-VL: RMSNorm (weight only); Qwen2-VL: LayerNorm (weight and bias)


@dataclass(frozen=True)
class ModelShape:
    model_type: str
    text: TextShape
    vision: VisionShape


@dataclass(frozen=True)
class ParamCount:
    text: int
    vision: int
    largest_layer: int      # the most parameters one module holds itself (ZeRO-3 gathers one module at a time)

    @property
    def total(self) -> int:
        return self.text + self.vision


def _int(d: dict, key: str, where: str = "") -> int:
    if not isinstance(d.get(key), int):
        raise ArchError(f"{where}{key}: missing or not an integer in config.json")
    return int(d[key])


def model_shape(config: dict) -> ModelShape:
    """The shapes of a Qwen2-VL or Qwen2.5-VL config.json (flat, as published, or with a `text_config`, as
    transformers 5 saves it)."""
    kind = config.get("model_type")
    if kind not in ("qwen2_vl", "qwen2_5_vl"):
        raise ArchError(f"model_type: {kind!r} is not a model rlctl plan knows (qwen2_vl, qwen2_5_vl)")
    t = config.get("text_config") or config
    heads, hidden = _int(t, "num_attention_heads"), _int(t, "hidden_size")
    text = TextShape(vocab=_int(t, "vocab_size"), hidden=hidden, intermediate=_int(t, "intermediate_size"),
                     layers=_int(t, "num_hidden_layers"), heads=heads,
                     kv_heads=int(t.get("num_key_value_heads") or heads),
                     head_dim=int(t.get("head_dim") or hidden // heads),
                     tied=bool(config.get("tie_word_embeddings", t.get("tie_word_embeddings", False))))
    v = config.get("vision_config")
    if not isinstance(v, dict):
        raise ArchError("vision_config: missing in config.json")
    w = "vision_config."
    common = dict(depth=_int(v, "depth", w), heads=_int(v, "num_heads", w),
                  in_channels=int(v.get("in_channels") or v.get("in_chans") or 3), patch=int(v.get("patch_size", 14)),
                  temporal_patch=int(v.get("temporal_patch_size", 2)), merge=int(v.get("spatial_merge_size", 2)))
    if kind == "qwen2_5_vl":
        vision = VisionShape(hidden=_int(v, "hidden_size", w), intermediate=_int(v, "intermediate_size", w),
                             out_hidden=int(v.get("out_hidden_size", hidden)), gated_mlp=True, rms_norm=True, **common)
    else:  # Qwen2-VL calls the block width embed_dim; its hidden_size is the merger's output
        embed = _int(v, "embed_dim", w)
        vision = VisionShape(hidden=embed, intermediate=int(embed * float(v.get("mlp_ratio", 4))),
                             out_hidden=int(v.get("hidden_size", hidden)), gated_mlp=False, rms_norm=False, **common)
    return ModelShape(kind, text, vision)


def count_params(shape: ModelShape) -> ParamCount:
    """Parameters of the model transformers builds for this config.

    Text: embeddings V·h; per layer q (h·q + q), k and v (h·kv + kv each: GQA, with biases), o (q·h), the MLP
    (3·h·i) and two RMSNorms (2·h); the final norm (h); lm_head V·h unless tied. Vision: the patch embedding (a
    bias-free Conv3d), per block two norms, qkv and proj (with biases) and the MLP (with biases), then the merger: a
    norm over the block width and two linears from merge²·width."""
    t, v = shape.text, shape.vision
    q, kv = t.heads * t.head_dim, t.kv_heads * t.head_dim
    modules = _text_modules(t, q, kv) | _vision_modules(v)
    layer = sum(modules[k] for k in ("q", "k", "v", "o", "gate", "up", "down")) + 2 * t.hidden
    text = modules["embed"] * (1 if t.tied else 2) + t.layers * layer + t.hidden
    norm = modules["vnorm"]
    mlp = sum(modules[k] for k in ("vgate", "vup", "vdown") if k in modules)
    block = 2 * norm + modules["qkv"] + modules["proj"] + mlp
    vision = modules["patch_embed"] + v.depth * block + norm + modules["merge1"] + modules["merge2"]
    return ParamCount(text=text, vision=vision, largest_layer=max(modules.values()))


def _text_modules(t: TextShape, q: int, kv: int) -> dict[str, int]:
    """Parameters of each kind of text module (one of each)."""
    return {"embed": t.vocab * t.hidden, "q": t.hidden * q + q, "k": t.hidden * kv + kv, "v": t.hidden * kv + kv,
            "o": q * t.hidden, "gate": t.hidden * t.intermediate, "up": t.hidden * t.intermediate,
            "down": t.intermediate * t.hidden}


def _vision_modules(v: VisionShape) -> dict[str, int]:
    """Parameters of each kind of vision module (one of each)."""
    h, i, merged = v.hidden, v.intermediate, v.hidden * v.merge ** 2
    out = {"patch_embed": v.in_channels * v.temporal_patch * v.patch ** 2 * h, "vnorm": h if v.rms_norm else 2 * h,
           "qkv": 3 * h * h + 3 * h, "proj": h * h + h, "merge1": merged * merged + merged,
           "merge2": merged * v.out_hidden + v.out_hidden}
    if v.gated_mlp:
        out |= {"vgate": h * i + i, "vup": h * i + i, "vdown": i * h + h}
    else:   # Qwen2-VL's fc1 / fc2, stored under the same keys
        out |= {"vgate": h * i + i, "vdown": i * h + h}
    return out
