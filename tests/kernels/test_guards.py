"""Each guard on its own, against reports built the way kernels.bench builds them, then forged.

The end-to-end cheats (a caching kernel, a fake clock, a forged report) are graded through the
sandbox in tests/labs/test_vector_add.py; the side-stream cheat needs a GPU and is at the end.
"""

from __future__ import annotations

import copy

import pytest
import torch

from kernels import bench, guards
from kernels.devices import DeviceSpec

SPEC = DeviceSpec(name="test GPU", memory_bandwidth=1e12, flops={"float32": 1e14}, source="test")
N = 50_000  # 600 kB per call: a floor of 0.6 us on SPEC
SETTINGS = {"min_samples": 10, "max_samples": 10, "warmup_seconds": 0.0}


def make_case(seed: int = 3) -> dict:
    shapes = [{"label": "n", "inputs": [{"shape": [N], "dtype": "float32"}] * 2, "bytes": 12 * N, "dtype": "float32"}]
    return guards.benchmark_case(name="benchmark", seed=seed, shapes=shapes, settings=SETTINGS)


def add(x, y):
    return x + y


def expected_at(shape, call, positions):
    x, y = guards.call_inputs(shape, call, flat_indices=[positions, positions])
    return (x + y).double()


def verify(case, report, envelopes=None, spec=SPEC):
    return guards.verify(
        case,
        report,
        spec=spec,
        envelopes={"n": 10.0} if envelopes is None else envelopes,
        expected_at=expected_at,
        output_shape=lambda shape: shape["inputs"][0]["shape"],
        rtol=1e-6,
        atol=0.0,
    )


@pytest.fixture(scope="module")
def honest():
    case = make_case()
    return case, bench.run_case(add, case["inputs"])


def test_an_honest_report_passes_with_roofline_figures(honest):
    case, report = honest
    results = verify(case, report)["n"]
    assert results["samples"] == 10 and results["calls"] == 10 and results["mode"] == "host"
    assert results["gb_per_s"] == pytest.approx(12 * N / results["median"] / 1e9)
    assert results["bandwidth_fraction"] == pytest.approx(results["gb_per_s"] * 1e9 / 1e12)
    assert results["floor_seconds"] == pytest.approx(12 * N / 1e12)


def test_a_kernel_that_returns_a_cached_answer_fails_the_timed_output_audit():
    case = make_case()
    cache = {}

    def caching_add(x, y):
        return cache.setdefault("out", x + y)

    with pytest.raises(guards.BenchmarkRejected, match=r"timed call \d+ of 10: wrong output.*do not cache"):
        verify(case, bench.run_case(caching_add, case["inputs"]))


def test_a_kernel_that_skips_one_percent_of_the_work_is_caught():
    case = make_case()

    def lazy_add(x, y):
        out = x + y
        out[: N // 100] = 0
        return out

    with pytest.raises(guards.BenchmarkRejected, match="wrong output"):
        verify(case, bench.run_case(lazy_add, case["inputs"]))


def test_which_calls_are_audited_is_decided_outside_the_sandbox(honest):
    """Only some calls are recomputed, but which ones depends on the audit seed the sandbox never
    sees: a forged fingerprint on any call may be the one checked."""
    case, report = honest
    caught = 0
    for call in range(10):
        forged = copy.deepcopy(report)
        forged["shapes"][0]["fingerprints"][call]["values"] += 1.0
        try:
            verify(case, forged)
        except guards.BenchmarkRejected:
            caught += 1
    assert caught == 10  # 10 calls, all audited (up to AUDIT_CALLS are)


def test_a_time_below_the_physical_floor_is_rejected(honest):
    case, report = honest
    forged = copy.deepcopy(report)
    forged["shapes"][0]["seconds"][3] = 0.5e-6  # 600 kB in 0.5 us is 1.2 TB/s on a 1 TB/s device
    with pytest.raises(guards.BenchmarkRejected, match="below the physical floor of 0.6 us on test GPU"):
        verify(case, forged)
    forged["shapes"][0]["seconds"][3] = 0.59e-6  # within the 5% allowed for datasheet rounding
    verify(case, forged)


def test_reported_times_must_fit_in_the_workers_own_clock(honest):
    case, report = honest
    total = sum(report["shapes"][0]["seconds"])
    verify(case, report, envelopes={"n": total * 1.2})
    with pytest.raises(guards.BenchmarkRejected, match="grader's own clock saw the batch take"):
        verify(case, report, envelopes={"n": total / 10 - 0.006})
    with pytest.raises(guards.BenchmarkRejected, match="saw no timed batch"):
        verify(case, report, envelopes={})


def test_graph_mode_samples_count_every_call_of_a_replay_against_the_envelope():
    case = make_case()
    case["inputs"]["settings"].update(min_samples=200, max_samples=200)
    report = bench.run_case(add, case["inputs"])
    timing = report["shapes"][0]
    per_call = timing["seconds"]
    # As a graph replay reports them: 10 samples, each the mean of 20 calls.
    timing.update(
        mode="cuda-graph", calls_per_sample=20, seconds=[sum(per_call[i : i + 20]) / 20 for i in range(0, 200, 20)]
    )
    verify(case, report, envelopes={"n": sum(per_call) * 1.1})
    with pytest.raises(guards.BenchmarkRejected, match="200 calls reported"):
        verify(case, report, envelopes={"n": sum(per_call) / 2 - 0.006})


def test_every_timed_call_must_be_accounted_for(honest):
    case, report = honest
    forged = copy.deepcopy(report)
    del forged["shapes"][0]["fingerprints"][4]
    with pytest.raises(guards.BenchmarkRejected, match="not every timed call left its output fingerprint"):
        verify(case, forged)
    forged = copy.deepcopy(report)
    forged["shapes"][0]["seconds"].append(1.0)
    with pytest.raises(guards.BenchmarkRejected, match="do not make the 10 calls reported"):
        verify(case, forged)
    with pytest.raises(guards.BenchmarkRejected, match="did not return a kernels.bench report"):
        verify(case, {"seconds": [1.0]})
    forged = copy.deepcopy(report)
    forged["shapes"][0]["seconds"][0] = float("nan")
    with pytest.raises(guards.BenchmarkRejected, match="not finite"):
        verify(case, forged)


def event_mode_report(event_us: float, host_us: float, null_gap_us: float = 8.0) -> tuple[dict, dict]:
    case = make_case()
    report = bench.run_case(add, case["inputs"])
    timing = report["shapes"][0]
    timing["mode"] = "cuda-events"
    timing["seconds"] = [event_us * 1e-6] * 10
    timing["host_seconds"] = [host_us * 1e-6] * 10
    timing["null_gap_seconds"] = null_gap_us * 1e-6
    return case, report


def test_host_time_far_beyond_event_time_means_work_off_the_timed_stream():
    verify(*event_mode_report(event_us=100, host_us=115))  # launch + sync overhead: fine
    with pytest.raises(guards.BenchmarkRejected, match="work ran outside the timed stream"):
        verify(*event_mode_report(event_us=2, host_us=600))  # a side stream did the 600 us of work


def test_a_claimed_huge_null_gap_does_not_hide_a_side_stream():
    with pytest.raises(guards.BenchmarkRejected, match="outside the timed stream"):
        verify(*event_mode_report(event_us=2, host_us=5000, null_gap_us=4900))


@pytest.mark.gpu
def test_side_stream_kernel_is_caught_on_a_real_gpu():
    case = make_case()
    case["inputs"]["settings"]["graph"] = False
    side = torch.cuda.Stream()

    def side_stream_add(x, y):
        out = torch.empty_like(x)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(200):  # enough work to dwarf launch overhead
                torch.add(x, y, out=out)
        return out

    report = bench.run_case(side_stream_add, case["inputs"])
    from kernels import devices

    with pytest.raises(guards.BenchmarkRejected, match="outside the timed stream"):
        verify(case, report, spec=devices.current("cuda"))
    honest_report = bench.run_case(add, case["inputs"])
    verify(case, honest_report, spec=devices.current("cuda"))
