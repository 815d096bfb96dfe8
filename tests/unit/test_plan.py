"""`rlctl plan`: parameter counts from config.json equal transformers' own model built on the meta device from the same
file; model states equal DeepSpeed's own estimators (the functions and their printed `_all_cold` tables) for ZeRO-2
and ZeRO-3, optimizer offload on and off, 1 and 16 ranks; sizes parse or fail clearly; the command prints its tables
and exits 1 when something does not fit."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from rlctl import plan as pl
from rlctl.cli import main
from rlctl.model_arch import ArchError, count_params, model_shape
from services.common.config import RunConfig

ARCH = Path(__file__).resolve().parents[1] / "data" / "arch"
MODELS = {"Qwen2.5-VL-3B-Instruct": 3.75e9, "Qwen2.5-VL-7B-Instruct": 8.29e9, "Qwen2-VL-2B-Instruct": 2.21e9}


def hf_config(name: str) -> dict:
    return json.loads((ARCH / name / "config.json").read_text())


@pytest.fixture(scope="module")
def meta_models():
    """transformers' models of the arch configs, built on the meta device (no memory, no weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    built = {}
    for name in MODELS:
        with torch.device("meta"):
            built[name] = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(ARCH / name))
    return built


@pytest.mark.parametrize("name", list(MODELS))
def test_parameter_count_equals_transformers_model_on_the_meta_device(name, meta_models):
    model = meta_models[name]
    ours = count_params(model_shape(hf_config(name)))
    assert ours.total == sum(p.numel() for p in model.parameters())   # tied weights counted once, as parameters() does
    assert ours.total == pytest.approx(MODELS[name], rel=2e-3)
    assert ours.vision == sum(p.numel() for p in model.model.visual.parameters())
    # DeepSpeed's model_to_params (stage3.py): the most parameters one module holds itself
    assert ours.largest_layer == max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    assert model.config.tie_word_embeddings == hf_config(name)["tie_word_embeddings"]


def test_a_config_saved_by_transformers_5_counts_the_same(meta_models, tmp_path):
    """transformers 5 saves the text fields under text_config; both layouts give the same shapes."""
    name = "Qwen2.5-VL-7B-Instruct"
    meta_models[name].config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert "text_config" in saved
    assert model_shape(saved) == model_shape(hf_config(name))


def test_unknown_models_and_missing_fields_are_named():
    with pytest.raises(ArchError, match="model_type: 'llama'"):
        model_shape({"model_type": "llama"})
    broken = hf_config("Qwen2.5-VL-3B-Instruct")
    del broken["vision_config"]["depth"]
    with pytest.raises(ArchError, match="vision_config.depth"):
        model_shape(broken)


CASES = [(name, stage, offload, ranks) for name in ("Qwen2.5-VL-3B-Instruct", "Qwen2.5-VL-7B-Instruct")
         for stage in (2, 3) for offload in (False, True) for ranks in (1, 16)]


@pytest.mark.parametrize(("name", "stage", "offload", "ranks"), CASES)
def test_model_states_equal_deepspeeds_estimators(name, stage, offload, ranks):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    p = count_params(model_shape(hf_config(name)))
    ours = pl.model_states(p, stage, ranks, offload, "bfloat16")
    # each learner rank is a pod of its own: DeepSpeed's node of one GPU
    if stage == 2:
        cpu, gpu = estimate_zero2_model_states_mem_needs(
            total_params=p.total, num_gpus_per_node=1, num_nodes=ranks, cpu_offload=offload,
            additional_buffer_factor=1.5)
    else:
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
            total_params=p.total, largest_layer_params=p.largest_layer, num_gpus_per_node=1, num_nodes=ranks,
            cpu_offload=offload, cpu_offload_params=False, zero_init=True, additional_buffer_factor=1.5)
    assert (ours.gpu, ours.cpu) == (gpu, cpu)
    assert min(ours.params, ours.grads, ours.optimizer) >= 0 and (ours.optimizer == 0) == offload


@pytest.mark.parametrize("stage", [2, 3])
@pytest.mark.parametrize("ranks", [1, 16])
def test_model_states_match_the_all_cold_tables_deepspeed_prints(stage, ranks):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs_all_cold
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs_all_cold

    p = count_params(model_shape(hf_config("Qwen2.5-VL-7B-Instruct")))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        if stage == 2:
            estimate_zero2_model_states_mem_needs_all_cold(p.total, num_gpus_per_node=1, num_nodes=ranks)
        else:
            estimate_zero3_model_states_mem_needs_all_cold(p.total, p.largest_layer, num_gpus_per_node=1,
                                                           num_nodes=ranks)
    # the options column as DeepSpeed prints it: "offload_optimizer=cpu" (or "=OffloadDeviceEnum.cpu" on Python 3.11)
    rows = {re.sub(r"\s+|OffloadDeviceEnum\.", "", opts): (cpu, gpu)
            for cpu, gpu, opts in re.findall(r"([\d.]+)GB \|\s*([\d.]+)GB \| (.*)", out.getvalue())}
    for offload in (False, True):
        key = f"offload_optimizer={'cpu' if offload else 'none'}"
        if stage == 3:
            key = f"offload_param=none,{key},zero_init=1"
        ours = pl.model_states(p, stage, ranks, offload, "bfloat16")
        assert rows[key] == (f"{ours.cpu / 2**30:.2f}", f"{ours.gpu / 2**30:.2f}"), key


def test_fp32_has_no_16_bit_copy_and_stages_0_1_fall_between():
    p = count_params(model_shape(hf_config("Qwen2.5-VL-3B-Instruct")))
    total, big, n = p.total, p.largest_layer, 4
    fp32 = {s: pl.model_states(p, s, n, False, "float32").gpu for s in (0, 1, 2, 3)}
    bf16 = {s: pl.model_states(p, s, n, False, "bfloat16").gpu for s in (0, 1, 2, 3)}
    assert fp32[2] == 4 * total + int(8 * total / n) + int(12 * total / n)   # 4P + 20P/N
    assert fp32[3] == 8 * big + 2 * int(4 * total / n) + int(12 * total / n)  # 8L + 20P/N
    assert bf16[0] == 20 * total and fp32[0] == 16 * total                  # torch's Adam has no master copy
    assert bf16[0] > bf16[1] > bf16[2] > bf16[3] and fp32[0] > fp32[1] > fp32[2] > fp32[3]
    with pytest.raises(pl.PlanError, match="learner.dtype"):
        pl.model_states(p, 2, 1, False, "auto")


def test_sizes_parse_in_binary_and_decimal_units_or_fail_clearly():
    assert pl.parse_size("80GiB") == 80 * 2**30
    assert pl.parse_size("141GB") == 141 * 10**9
    assert pl.parse_size("24 GiB") == pl.parse_size("24gib") == 24 * 2**30
    assert pl.parse_size("1.5TiB") == int(1.5 * 2**40)
    for bad in ("80", "eighty GiB", "80 GiBs", "", "-1GiB"):
        with pytest.raises(pl.PlanError, match="not a memory size"):
            pl.parse_size(bad)


def test_the_kv_cache_per_token_follows_the_layers_kv_heads_and_tensor_parallel_size():
    shape = model_shape(hf_config("Qwen2.5-VL-7B-Instruct"))   # 28 layers, 4 KV heads of 128
    assert pl.kv_bytes_per_token(shape, 1, 2) == 2 * 28 * 4 * 128 * 2
    assert pl.kv_bytes_per_token(shape, 2, 2) == 2 * 28 * 2 * 128 * 2
    assert pl.kv_bytes_per_token(shape, 4, 2) == pl.kv_bytes_per_token(shape, 8, 2) == 2 * 28 * 1 * 128 * 2


def test_activations_grow_with_the_micro_batch_and_checkpointing_saves_most_of_them():
    shape = model_shape(hf_config("Qwen2.5-VL-3B-Instruct"))
    base = {"cluster": {"accelerator": "gpu"}, "rollout": {"engine": {"max_model_len": 4096}, "max_new_tokens": 512},
            "media": {"max_frames": 32, "max_pixels": 100352}, "group_size": 8}
    small = pl.activations(shape, RunConfig.model_validate({**base, "learner": {"micro_batch_tokens": 4096}}), 2)
    big = pl.activations(shape, RunConfig.model_validate({**base, "learner": {"micro_batch_tokens": 16384}}), 2)
    whole = pl.activations(shape, RunConfig.model_validate({**base, "learner": {"groups_per_step": 2}}), 2)
    assert (small.batch.rows, big.batch.rows, whole.batch.rows) == (1, 4, 16)
    assert small.batch.patches == 16 * 128 * 4   # 16 frame pairs x 128 tokens, 4 patches each
    assert small.with_checkpointing < big.with_checkpointing < whole.with_checkpointing
    for a in (small, big, whole):
        assert a.with_checkpointing < a.without_checkpointing / 3


def _plan(*args: str):
    return CliRunner().invoke(main, ["plan", *args])


def test_plan_prints_each_component_and_exits_1_when_one_does_not_fit(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("model: {path: /data/models/Qwen2.5-VL-7B-Instruct}\ncluster: {accelerator: gpu}\n"
                      "rollout: {engine: {max_model_len: 4096}}\n"
                      "learner: {zero_stage: 3, ranks: 8, micro_batch_tokens: 8192, gradient_checkpointing: true}\n")
    arch = str(ARCH / "Qwen2.5-VL-7B-Instruct" / "config.json")
    r = _plan(str(config), "--model-config", arch)
    assert r.exit_code == 0, r.output
    for words in ("8.292B parameters", "learner rank", "rollout actor (TP 1)", "optimizer states", "KV cache",
                  "learner rank: fits", "rollout actor (TP 1): fits", "DeepSpeed's estimate",
                  "= DeepSpeed's estimate_zero3_model_states_mem_needs(total_params=8292166656, "
                  "largest_layer_params=544997376, num_gpus_per_node=1, num_nodes=8, cpu_offload=False)"):
        assert words in r.output, words
    r = _plan(str(config), "--model-config", arch, "--gpu-mem", "24GiB")
    assert r.exit_code == 1 and "learner rank: does not fit, short by" in r.output
    r = _plan(str(config), "--model-config", arch, "--set", "rollout.engine.tensor_parallel_size=3")
    assert r.exit_code == 1 and "tensor_parallel_size: 3 does not divide num_attention_heads (28)" in r.output


def test_plan_names_what_is_missing_or_wrong(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("model: {path: /nowhere/Qwen2.5-VL-3B-Instruct}\n")
    r = _plan(str(config))
    assert r.exit_code == 2 and "--model-config" in r.output and "/nowhere" in r.output
    arch = str(ARCH / "Qwen2.5-VL-3B-Instruct" / "config.json")
    r = _plan(str(config), "--model-config", arch, "--gpu-mem", "80")
    assert r.exit_code == 2 and "not a memory size" in r.output and "--gpu-mem" in r.output
    r = _plan(str(config), "--model-config", arch, "--set", "cluster.accelerator=cpu")
    assert r.exit_code == 1 and "plans GPU runs" in r.output
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    r = _plan(str(config), "--set", f"model.path={tmp_path / 'm'}")   # <model.path>/config.json by default
    assert r.exit_code == 1 and "model_type: 'llama'" in r.output
