"""bench/profile_loop.py's reading of py-spy's collapsed stacks: a stack goes to the first category any of its frames
matches, so work a stage does through torch is counted as that stage's."""

from bench.profile_loop import categorize, read_stacks

DECODE = ("run (services/rollout/actor.py:120);sample_video (services/common/media.py:88);"
          "interpolate (torch/nn/functional.py:4500)")
MODEL = ("step (vllm/v1/engine/core.py:300);forward (vllm/model_executor/models/qwen2.py:40);"
         "linear (torch/nn/modules/linear.py:125)")


def test_a_stack_counts_for_the_stage_that_called_into_torch():
    assert categorize(DECODE) == "frames: decode + resize"
    assert categorize(MODEL) == "model forward (vLLM)"
    assert categorize("main (x.py:1);send (grpc/_channel.py:9);SerializeToString (google/protobuf/message.py:3)") \
        == "protobuf"
    assert categorize("main (x.py:1);helper (somewhere/odd.py:7)") == "other: odd.py"


def test_raw_py_spy_output_is_summed_per_role_category_and_leaf(tmp_path):
    (tmp_path / "actor_processes-11.txt").write_text(f"{DECODE} 30\n{MODEL} 10\n\ngarbage\n")
    (tmp_path / "actor_processes-12.txt").write_text(f"{DECODE} 5\n")
    cats, leaves = read_stacks(tmp_path)["actor processes"]
    assert cats == {"frames: decode + resize": 35, "model forward (vLLM)": 10}
    assert leaves.most_common(1) == [("interpolate (torch/nn/functional.py:4500)", 35)]


def test_vllms_queue_spin_is_its_own_category_even_under_the_engine_loop():
    spin = ("worker_busy_loop (vllm/v1/executor/multiproc_executor.py:800);dequeue "
            "(vllm/distributed/device_communicators/shm_broadcast.py:900);sched_yield (vllm/distributed/utils.py:46)")
    assert categorize(spin) == "vLLM queue busy-wait (sched_yield)"
