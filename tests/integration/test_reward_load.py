"""The reward service under 10x its normal stream: bounded memory, backpressure in its metrics, every group once.

A real redis-server, the scripted judge sleeping 20 ms per request (16 in flight: scoring is the slow part, so work
piles up) and `python -m services.reward` as its own process, with reward.max_held_completions = CAP. First the
normal load (4 streams: 4 rollout actors, twice the default run's 2), then 10x it (40 streams); every stream writes
all its groups as fast as gRPC lets it and never waits for an ack (bench/reward_load_bench.py's driver, ~22 KiB
completions).

The memory bound, over the service's VmRSS once the normal load is done (gRPC, aiohttp, the judge client warm):
- CAP x 6 x W, W a completion's wire size: a held completion exists at most as its parsed message (<= 2 W: token
  ids and log-probs are 4-byte arrays in memory, ~2-byte varints on the wire), its copy in the ScoredGroup (<= 2 W),
  the serialized group (W) and redis-py's command buffer (W);
- 1 MiB per stream: what its actor wrote before it was paused waits in gRPC's buffers (the 64 KiB flow-control
  window, BDP probing is off), plus the call's own objects; bench/results/reward_load.md measured ~0.3 MB;
- 32 MiB slack for the allocator (freed blocks are not always returned to the OS).
That is ~80 MiB over the baseline here. Without the cap the service reads everything it is sent: the bench's
uncapped row with the same 2,560 completions (80 streams x 8 groups) peaked 223 MB over its idle RSS.

`pytest -s` prints the numbers asserted.
"""


import pytest

from bench import reward_load_bench as bench
from services.common.control import GROUPS, ControlPlane
from services.common.pb.videorl.v1 import rollout_pb2 as pb

pytestmark = pytest.mark.integration

CAP = 64                      # completions: 16 groups of K=4, below what 4 flooding streams send
NORMAL_STREAMS, GROUPS_PER_STREAM = 4, 16
MIB = 1 << 20




@pytest.fixture(scope="module")
def judge_url():
    proc, url = bench.start_judge(0.02)
    try:
        yield url
    finally:
        bench.stop_process(proc)


def test_ten_times_the_normal_load_keeps_memory_bounded_reports_backpressure_and_writes_each_group_once(
        redis_server, judge_url, tmp_path):
    service = bench.ServiceProcess(tmp_path, redis_server.url, judge_url, CAP)
    control = ControlPlane(redis_server.url, service.run_id)
    try:
        service.wait_serving()
        normal = bench.flood(service.address, NORMAL_STREAMS, GROUPS_PER_STREAM, "normal")
        baseline = service.memory()[0]
        with bench.Sampler(service) as sampled:
            heavy = bench.flood(service.address, 10 * NORMAL_STREAMS, GROUPS_PER_STREAM, "heavy")
        m = service.metrics()
        peak = max(service.memory()[1], sampled.max_rss)   # VmHWM is updated lazily: it can trail VmRSS a little
        stored = [pb.ScoredGroup.FromString(fields[b"group"]).prompt_id
                  for _, fields in control.r.xrange(control.key(GROUPS))]
        counters = control.counters()
    finally:
        service.stop()
        control.close()

    wire = bench.group(bench.completion_template(), "x", 0, 0)[0].ByteSize()
    streams = heavy.streams
    bound = baseline + CAP * 6 * wire + streams * MIB + 32 * MIB
    sent = {f"{tag}-s{s}-g{g}" for tag, phase in (("normal", normal), ("heavy", heavy))
            for s in range(phase.streams) for g in range(GROUPS_PER_STREAM)}
    n_groups = normal.groups + heavy.groups
    print(f"\nnormal: {normal.streams} streams, {normal.groups * bench.K} completions in {normal.wall_s:.1f}s; "
          f"10x: {streams} streams, {heavy.groups * bench.K} completions in {heavy.wall_s:.1f}s "
          f"({heavy.groups * bench.K / heavy.wall_s:.0f}/s), completion {wire} B on the wire")
    print(f"RSS: baseline {baseline / MIB:.1f} MiB, peak {peak / MIB:.1f} MiB (VmHWM, or a larger sampled VmRSS), "
          f"bound {bound / MIB:.1f} MiB "
          f"(= baseline + {CAP} x 6 x {wire} B + {streams} x 1 MiB + 32 MiB)")
    print(f"held completions: peak {m['videorl_reward_held_completions_peak_count']:.0f}, largest sampled "
          f"{sampled.max_held:.0f}, cap {m['videorl_reward_held_completions_limit_count']:.0f}; streams open (largest "
          f"sampled) {sampled.max_streams:.0f}, paused {sampled.max_paused:.0f}; backpressure pauses "
          f"{m['videorl_reward_backpressure_pauses_total{limit=service}']:.0f} "
          f"({m['videorl_reward_backpressure_seconds_total{limit=service}']:.1f} stream-seconds)")
    print(f"groups: {n_groups} sent, {len(stored)} in Redis ({len(set(stored))} distinct), acks "
          f"{sum(len(a) for p in (normal, heavy) for a in p.acks.values())}")

    assert peak <= bound, f"peak RSS {peak / MIB:.1f} MiB above the bound {bound / MIB:.1f} MiB"
    assert m["videorl_reward_held_completions_limit_count"] == CAP
    assert m["videorl_reward_held_completions_peak_count"] <= CAP and sampled.max_held <= CAP
    assert m["videorl_reward_held_completions_peak_count"] == CAP          # the 10x load did reach the cap
    assert m["videorl_reward_backpressure_pauses_total{limit=service}"] > 0
    assert m["videorl_reward_backpressure_seconds_total{limit=service}"] > 0
    assert sampled.max_streams == streams and sampled.max_paused > 0
    for gauge in ("held_completions", "open_groups", "streams_open"):   # nothing left behind once the load stops
        assert m[f"videorl_reward_{gauge}_count"] == 0, gauge
    # exactly once: every group acked once, SCORED, and in Redis once
    assert len(sent) == n_groups and set(normal.acks) | set(heavy.acks) == sent
    assert all(statuses == [pb.GroupAck.SCORED] for p in (normal, heavy) for statuses in p.acks.values())
    assert len(stored) == len(set(stored)) == n_groups and set(stored) == sent
    assert counters["completions_received"] == counters["completions_scored"] == n_groups * bench.K
