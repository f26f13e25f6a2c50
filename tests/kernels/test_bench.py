"""The timing harness on the CPU: inputs, fingerprints, statistics, stopping, ratios, distributed."""

from __future__ import annotations

import math
import socket

import pytest
import torch
import torch.multiprocessing as mp

from kernels import bench, guards


def test_fresh_values_are_the_same_bits_whole_or_at_any_subset():
    full = bench.fresh_values([1000], torch.float32, seed=7, low=-3, high=5)
    assert full.dtype == torch.float32 and full.min() >= -3 and full.max() < 5
    picks = torch.tensor([0, 17, 999, 17])
    assert torch.equal(
        bench.fresh_values([1000], torch.float32, seed=7, low=-3, high=5, flat_indices=picks), full[picks]
    )
    assert not torch.equal(full, bench.fresh_values([1000], torch.float32, seed=8, low=-3, high=5))
    # Roughly uniform: the mean of 1000 draws from U(-3, 5) is within 0.3 of 1.
    assert abs(full.mean().item() - 1.0) < 0.3


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16, torch.int32])
def test_fresh_values_in_every_dtype(dtype):
    values = bench.fresh_values([4, 5], dtype, seed=3, low=0, high=10)
    assert values.shape == (4, 5) and values.dtype == dtype
    assert values.min() >= 0 and values.max() <= 10 and len(values.unique()) > 5


def test_each_call_gets_different_inputs_that_the_checker_can_rebuild():
    case = guards.benchmark_case(
        name="b", seed=5, shapes=[{"label": "s", "inputs": [{"shape": [64], "dtype": "float32"}] * 2}]
    )
    sent = case["inputs"]["shapes"][0]
    kept = case["benchmark"]["shapes"]["s"]
    assert "audit_seed" not in str(case["inputs"])  # the audit's choice never enters the sandbox
    first = bench.make_inputs(sent["inputs"], bench.call_seed(sent["seed"], 0))
    second = bench.make_inputs(sent["inputs"], bench.call_seed(sent["seed"], 1))
    assert not torch.equal(first[0], second[0]) and not torch.equal(first[0], first[1])
    rebuilt = guards.call_inputs(kept, 1)
    assert all(torch.equal(a, b) for a, b in zip(rebuilt, second, strict=True))


def test_fingerprints_sample_different_positions_every_call():
    out = torch.arange(10_000, dtype=torch.float32)
    a, b = bench.fingerprint(out, 1, 0), bench.fingerprint(out, 1, 1)
    assert len(a["values"]) == bench.FINGERPRINT_POINTS and not torch.equal(a["values"], b["values"])
    positions = bench.fingerprint_positions(10_000, 1, 0)
    assert torch.equal(a["values"], out[positions].double())
    assert a["sum"] == pytest.approx(float(out.double().sum())) and a["finite"]
    small = bench.fingerprint(torch.ones(3), 1, 0)
    assert small["values"].tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(TypeError, match="expected a torch.Tensor"):
        bench.fingerprint([1, 2], 1, 0)


def test_summary_statistics_and_geometric_mean():
    s = bench.summarize([3.0, 1.0, 2.0, 4.0])
    assert s == {"median": 2.5, "mean": 2.5, "min": 1.0, "max": 4.0, "std": pytest.approx(1.29099, 1e-4), "samples": 4}
    assert bench.summarize([])["samples"] == 0
    assert bench.geometric_mean([1.0, 100.0]) == pytest.approx(10.0)
    assert math.isnan(bench.geometric_mean([]))


def test_timing_stops_at_the_minimum_sample_count_when_stable_and_at_the_cap_when_not():
    calls = []

    def steady(x):
        calls.append(1)
        return x * 2

    inputs = lambda call: [torch.ones(10)]  # noqa: E731
    settings = bench.Settings(min_samples=10, max_samples=500, time_cap_seconds=5.0, warmup_seconds=0.0)
    timing = bench.time_function(steady, inputs, settings=settings)
    assert timing.mode == "host" and timing.calls == len(timing.seconds) >= 10
    assert len(calls) == timing.calls + timing.warmup_calls

    noisy_sizes = iter([1, 200_000] * 1000)

    def noisy(x):
        torch.ones(next(noisy_sizes)).sum()
        return x

    capped = bench.time_function(
        noisy, inputs, settings=bench.Settings(min_samples=10, max_samples=40, time_cap_seconds=60, warmup_seconds=0)
    )
    assert capped.calls == 40  # never stable enough: stops at max_samples


def test_every_timed_call_is_fingerprinted_with_its_own_index():
    seen = []
    timing = bench.time_function(
        lambda x: x + 1,
        lambda call: [torch.full((4,), float(call))],
        settings=bench.Settings(min_samples=12, max_samples=12, warmup_seconds=0),
        on_output=lambda call, out: seen.append((call, out[0].item())) or {"call": call},
    )
    assert seen == [(i, i + 1.0) for i in range(12)] and [f["call"] for f in timing.fingerprints] == list(range(12))


def test_environment_is_recorded_with_versions():
    env = bench.environment("cpu")
    assert env["device"] == "cpu" and env["torch"] == str(torch.__version__) and env["triton"]
    assert isinstance(env["interpreter"], bool)


def test_run_case_reports_every_shape_in_the_benchmark_format():
    case = guards.benchmark_case(
        name="b",
        seed=11,
        shapes=[
            {"label": "a", "inputs": [{"shape": [256], "dtype": "float32"}]},
            {"label": "b", "inputs": [{"shape": [8, 8], "dtype": "float64"}]},
        ],
        settings={"min_samples": 10, "max_samples": 10, "warmup_seconds": 0},
    )
    marks = []

    class Marks:
        def begin(self, label):
            marks.append(("begin", label))

        def end(self, label):
            marks.append(("end", label))

    report = bench.run_case(lambda x: x * 3, case["inputs"], marks=Marks())
    assert report["format"] == bench.FORMAT and [s["label"] for s in report["shapes"]] == ["a", "b"]
    assert marks == [("begin", "a"), ("end", "a"), ("begin", "b"), ("end", "b")]
    assert all(s["calls"] == 10 and len(s["fingerprints"]) == 10 for s in report["shapes"])
    assert report["shapes"][1]["fingerprints"][0]["shape"] == [8, 8]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _distributed_worker(rank: int, world: int, port: int, results):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:

        def all_reduce(t):
            dist.all_reduce(t)
            return t

        timing = bench.time_function(
            all_reduce,
            lambda call: [torch.ones(1000)],
            settings=bench.Settings(min_samples=10, max_samples=200, time_cap_seconds=0.5, warmup_seconds=0.01),
        )
        results[rank] = (timing.calls, len(timing.seconds))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_timing_keeps_ranks_in_step_and_only_rank_zero_times():
    world = 2
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_distributed_worker, args=(world, _free_port(), results), nprocs=world, join=True)
        calls0, samples0 = results[0]
        calls1, samples1 = results[1]
    assert calls0 == calls1 >= 10  # rank 0 decided; every rank ran the same number of calls
    assert samples0 == calls0 and samples1 == 0


def test_stdev_based_stopping_rule():
    values = [1.0] * 9 + [1.001]
    assert bench.relative_standard_error(values) < 0.005
    assert bench.relative_standard_error([1.0]) == float("inf")
