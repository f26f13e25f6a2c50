"""Time kernels the way ../BENCHMARKING.md says, in one reusable harness.

Every GPU lab's grader and ``bench/kernels.py`` time through here. The method, per shape:

1. fresh inputs for every call, generated from a seed by a counter-based hash, so the trusted
   side can regenerate any call's inputs (on any device, any subset of elements) to check it;
2. warm-up (about 25 ms of calls, at least one);
3. before each timed call, outside the timed region: reset the persisting-L2 window and flush L2
   by writing a buffer of twice its size (at least 256 MiB);
4. ``synchronize``; start event; the call; end event; ``synchronize``. The host time around it,
   device-wide synchronised, is kept too: work on a side stream shows up as a gap between the two;
5. adaptive repetitions: stop once the standard error is under 0.5% of the mean, or at the time
   cap, with at least ``min_samples``;
6. kernels under ~10 us: replay a CUDA graph of calls (each after a flush), minus a graph of the
   flushes alone;
7. every timed call's output leaves a fingerprint (values at hashed positions, sum, sum of
   magnitudes) for the trusted side to check against a reference it computes itself.

Distributed: a barrier on all ranks before each timed call; rank 0 times and decides when to
stop. CPU labs are not timed here: their timed cases run in the worker's timing phase
(``gpu_runner/timing.py``), against a reference in a clean process, on the worker's clock.

This module imports only torch (and triton, optionally, for its version): it is copied into the
job's sandbox as ``kernels/bench.py``, where it runs next to the student's code. Nothing it
reports is trusted on its own; ``kernels.guards`` checks its reports from outside.
"""

from __future__ import annotations

import ctypes
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

FORMAT = "aisys-benchmark/1"
MIN_FLUSH_BYTES = 256 * 2**20  # BENCHMARKING.md: at least 2x L2; 256 MiB covers H100/H200's 50 MB
GRAPH_THRESHOLD_SECONDS = 10e-6  # below this, launch overhead dominates event timing
GRAPH_CALLS = 20  # calls per graph replay; with a flush each, a replay stays well above timer resolution
FINGERPRINT_POINTS = 256

_MASK64 = (1 << 64) - 1


def _signed(value: int) -> int:
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN, _MIX1, _MIX2 = (_signed(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def _shr(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def _hash(index: torch.Tensor, seed: int) -> torch.Tensor:
    """splitmix64 of ``index + seed * golden``: the same bits on every device and any subset."""
    z = index + _signed(seed * 0x9E3779B97F4A7C15 + 1) + _GOLDEN
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    return z ^ _shr(z, 31)


def fresh_values(
    shape: Sequence[int],
    dtype: torch.dtype,
    seed: int,
    *,
    low: float = -1.0,
    high: float = 1.0,
    device="cpu",
    flat_indices: torch.Tensor | None = None,
) -> torch.Tensor:
    """Uniform values in [low, high) for a tensor of ``shape``, or only at ``flat_indices``.

    Element ``i`` depends only on ``(seed, i)``, so the checker can rebuild exactly the elements it
    needs (a few rows of a softmax input, one row and column of a matmul) without the rest.
    """
    if flat_indices is None:
        index = torch.arange(math.prod(shape), dtype=torch.int64, device=device)
    else:
        index = flat_indices.to(device=device, dtype=torch.int64)
    bits = _hash(index, seed)
    if dtype == torch.float64:
        unit = _shr(bits, 11).to(torch.float64) * 2.0**-53
        values = low + (high - low) * unit
    else:
        unit = _shr(bits, 40).to(torch.float32) * 2.0**-24
        values = (low + (high - low) * unit).to(torch.float32)
        if not dtype.is_floating_point:
            values = values.floor()
    values = values.to(dtype)
    return values.reshape(shape) if flat_indices is None else values


def make_inputs(
    specs: Sequence[dict],
    seed: int,
    device="cpu",
    *,
    flat_indices: Sequence[torch.Tensor | None] | None = None,
) -> list[torch.Tensor]:
    """Tensors for one call from specs like ``{"shape": [n], "dtype": "float32", "low": -1, "high": 1}``;
    with ``flat_indices`` (one entry per input, None for all of it), only those elements, flat."""
    return [
        fresh_values(
            spec["shape"],
            dtype_of(spec["dtype"]),
            call_seed(seed, position),
            low=float(spec.get("low", -1.0)),
            high=float(spec.get("high", 1.0)),
            device=device,
            flat_indices=None if flat_indices is None else flat_indices[position],
        )
        for position, spec in enumerate(specs)
    ]


def dtype_of(name: str) -> torch.dtype:
    dtype = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dtype


def call_seed(seed: int, call: int) -> int:
    """The seed of one call (or one input of a call): distinct, and cheap to recompute outside."""
    return (seed * 1_000_003 + call * 7919 + 1) & ((1 << 62) - 1)


def fingerprint_positions(numel: int, seed: int, call: int, points: int = FINGERPRINT_POINTS) -> torch.Tensor:
    """Which elements of call ``call``'s output are recorded: hashed, different for every call."""
    if numel <= points:
        return torch.arange(numel, dtype=torch.int64)
    bits = _hash(torch.arange(points, dtype=torch.int64), call_seed(seed ^ 0x5EED, call))
    return _shr(bits, 1) % numel


def fingerprint(output: torch.Tensor, seed: int, call: int, points: int = FINGERPRINT_POINTS) -> dict:
    """A small record of one output: values at hashed positions, its sum and its sum of magnitudes."""
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"the timed function returned {type(output).__name__}, expected a torch.Tensor")
    flat = output.detach().reshape(-1)
    positions = fingerprint_positions(flat.numel(), seed, call, points).to(flat.device)
    wide = flat.to(torch.float64)
    return {
        "call": call,
        "shape": list(output.shape),
        "dtype": str(output.dtype).removeprefix("torch."),
        "values": flat[positions].to(torch.float64).cpu(),
        "sum": float(wide.sum()),
        "abs_sum": float(wide.abs().sum()),
        "finite": bool(torch.isfinite(wide).all()),
    }


# --------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------


def summarize(samples: Sequence[float]) -> dict:
    """Median, mean, min, max, std and count of a list of seconds."""
    values = list(samples)
    if not values:
        return {"median": None, "mean": None, "min": None, "max": None, "std": None, "samples": 0}
    return {
        "median": statistics.median(values),
        "mean": statistics.fmean(values),
        "min": min(values),
        "max": max(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "samples": len(values),
    }


def geometric_mean(values: Sequence[float]) -> float:
    values = [v for v in values if v and v > 0]
    return math.exp(statistics.fmean(math.log(v) for v in values)) if values else float("nan")


def relative_standard_error(values: Sequence[float]) -> float:
    if len(values) < 2:
        return float("inf")
    mean = statistics.fmean(values)
    return statistics.stdev(values) / math.sqrt(len(values)) / mean if mean > 0 else float("inf")


# --------------------------------------------------------------------------------------------
# the environment
# --------------------------------------------------------------------------------------------


def interpreted() -> bool:
    """True when Triton kernels run in the interpreter: correct results, meaningless timings."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _driver_version() -> str | None:
    try:
        with open("/proc/driver/nvidia/version", encoding="utf-8") as f:
            first = f.readline()
    except OSError:
        return None
    for word in first.split():
        if word[:1].isdigit() and "." in word:
            return word
    return first.strip() or None


def environment(device="cpu") -> dict:
    """What a result was measured on: recorded with every result (BENCHMARKING.md step 8)."""
    device = torch.device(device)
    env = {
        "device": device.type,
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "interpreter": interpreted(),
        "cpu": platform.processor() or platform.machine(),
    }
    try:
        import triton

        env["triton"] = str(triton.__version__)
    except Exception:  # noqa: BLE001 - triton is optional for pure-torch benchmarks
        env["triton"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            gpu=props.name,
            gpu_memory_bytes=int(props.total_memory),
            l2_bytes=int(getattr(props, "L2_cache_size", 0)),
            sm_count=int(props.multi_processor_count),
            capability=f"{props.major}.{props.minor}",
            cuda=str(torch.version.cuda),
            driver=_driver_version(),
        )
        env.update(_clocks(device))
    return env


def _clocks(device) -> dict:
    """SM and memory clocks now and at most, from NVML when it is installed (nvidia-ml-py)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.device(device).index or 0)
        return {
            "sm_clock_mhz": pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
            "sm_clock_max_mhz": pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM),
            "memory_clock_mhz": pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM),
        }
    except Exception:  # noqa: BLE001 - NVML absent or not allowed in the sandbox
        return {"clocks": "unavailable (no NVML)"}


# --------------------------------------------------------------------------------------------
# L2 and synchronisation
# --------------------------------------------------------------------------------------------


class CacheFlusher:
    """Evicts the GPU's L2 between timed calls: resets any persisting window, then writes a
    buffer of at least twice the L2 (allocated once). A no-op on the CPU."""

    def __init__(self, device, nbytes: int | None = None):
        self.device = torch.device(device)
        self.buffer = None
        self._reset = None
        if self.device.type != "cuda":
            return
        l2 = int(getattr(torch.cuda.get_device_properties(self.device), "L2_cache_size", 0))
        size = nbytes or max(MIN_FLUSH_BYTES, 2 * l2)
        self.buffer = torch.empty(size // 4, dtype=torch.int32, device=self.device)
        self._reset = _persisting_l2_reset()

    @property
    def resets_persisting_l2(self) -> bool:
        return self._reset is not None

    def __call__(self) -> None:
        if self.buffer is None:
            return
        if self._reset is not None:
            self._reset()
        self.buffer.zero_()


def _persisting_l2_reset():
    """cudaCtxResetPersistingL2Cache from the CUDA runtime torch loaded, when it can be found."""
    for name in ("libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0"):
        try:
            library = ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
            return library.cudaCtxResetPersistingL2Cache
        except (OSError, AttributeError):
            continue
    return None


def _synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # device-wide: every stream, not only the current one


@dataclass
class Distributed:
    """Rank layout when timing a collective; rank 0 times, all ranks call."""

    rank: int
    world_size: int
    tensor_device: torch.device

    @classmethod
    def detect(cls) -> Distributed | None:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return None
        backend = dist.get_backend()
        tensor_device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        return cls(dist.get_rank(), dist.get_world_size(), tensor_device)

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def agree(self, keep_going: bool) -> bool:
        """Rank 0's decision, broadcast: every rank runs the same number of calls."""
        import torch.distributed as dist

        flag = torch.tensor([1 if keep_going else 0], dtype=torch.int32, device=self.tensor_device)
        dist.broadcast(flag, src=0)
        return bool(flag.item())


# --------------------------------------------------------------------------------------------
# timing one shape
# --------------------------------------------------------------------------------------------


@dataclass
class Settings:
    min_samples: int = 10
    max_samples: int = 1000
    time_cap_seconds: float = 10.0
    target_relative_error: float = 0.005
    warmup_seconds: float = 0.025
    graph: bool | None = None  # None: graphs for kernels under GRAPH_THRESHOLD_SECONDS (CUDA only)
    fingerprint_points: int = FINGERPRINT_POINTS

    @classmethod
    def from_dict(cls, values: dict | None) -> Settings:
        known = {k: v for k, v in (values or {}).items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass
class Timing:
    """One shape's timed calls. ``seconds`` are event times on a GPU (per-call averages of a
    replay in graph mode) and host times on the CPU; ``host_seconds`` are the synchronised host
    times of the same calls."""

    label: str
    mode: str  # "cuda-events" | "cuda-graph" | "host"
    seconds: list[float] = field(default_factory=list)
    host_seconds: list[float] = field(default_factory=list)
    fingerprints: list[dict] = field(default_factory=list)
    calls: int = 0
    calls_per_sample: int = 1
    warmup_calls: int = 0
    null_gap_seconds: float = 0.0

    def summary(self) -> dict:
        return summarize(self.seconds)

    def as_dict(self) -> dict:
        return {
            "label": self.label,
            "mode": self.mode,
            "seconds": list(self.seconds),
            "host_seconds": list(self.host_seconds),
            "fingerprints": list(self.fingerprints),
            "calls": self.calls,
            "calls_per_sample": self.calls_per_sample,
            "warmup_calls": self.warmup_calls,
            "null_gap_seconds": self.null_gap_seconds,
            "summary": self.summary(),
        }


def time_function(
    fn: Callable[..., torch.Tensor],
    inputs_for: Callable[[int], Sequence[torch.Tensor]],
    *,
    label: str = "",
    device="cpu",
    settings: Settings | None = None,
    on_output: Callable[[int, torch.Tensor], dict | None] | None = None,
    flusher: CacheFlusher | None = None,
) -> Timing:
    """Time ``fn(*inputs_for(call))`` over fresh inputs for every call (see the module's method).

    ``on_output(call, output)`` runs after each timed call, outside the timed region, and may
    return a record (a fingerprint) kept with the timing.
    """
    settings = settings or Settings()
    device = torch.device(device)
    flusher = flusher or CacheFlusher(device)
    group = Distributed.detect()
    timing = Timing(label=label, mode="host" if device.type != "cuda" else "cuda-events")

    timing.warmup_calls = _warm_up(fn, inputs_for, device, settings, group)
    if device.type == "cuda":
        timing.null_gap_seconds = _null_gap(device)
        use_graph = settings.graph
        if use_graph is None and group is None:
            probe = [_timed_call(fn, inputs_for(-100 - i), device, flusher, None)[0] for i in range(3)]
            use_graph = statistics.median(probe) < GRAPH_THRESHOLD_SECONDS
        if use_graph and group is None:
            try:
                timing.mode = "cuda-graph"
                return _time_graph(fn, inputs_for, timing, device, settings, flusher, on_output)
            except RuntimeError:
                # Not capturable (a host sync such as .item() inside fn): time with events instead.
                torch.cuda.synchronize(device)
                timing.mode, timing.seconds, timing.host_seconds, timing.fingerprints = "cuda-events", [], [], []

    started = time.perf_counter()
    call = 0
    while True:
        event_s, host_s, output = _timed_call(fn, inputs_for(call), device, flusher, group)
        if group is None or group.rank == 0:
            timing.seconds.append(event_s if event_s is not None else host_s)
            timing.host_seconds.append(host_s)
        if on_output is not None:
            record = on_output(call, output)
            if record is not None:
                timing.fingerprints.append(record)
        del output
        call += 1
        enough = call >= settings.min_samples and (
            relative_standard_error(timing.seconds) < settings.target_relative_error
            or time.perf_counter() - started > settings.time_cap_seconds
        )
        keep_going = not enough and call < settings.max_samples
        if group is not None:
            keep_going = group.agree(keep_going)
        if not keep_going:
            break
    timing.calls = call
    return timing


def _warm_up(fn, inputs_for, device, settings: Settings, group) -> int:
    calls = 0
    started = time.perf_counter()
    while True:
        fn(*inputs_for(-1 - calls))
        _synchronize(device)
        calls += 1
        keep_going = time.perf_counter() - started < settings.warmup_seconds and calls < 1000
        if group is not None:
            keep_going = group.agree(keep_going)
        if not keep_going:
            return calls


def _timed_call(fn, inputs, device, flusher: CacheFlusher, group):
    """One timed call: (event seconds or None, synchronised host seconds, output)."""
    if group is not None:
        group.barrier()
    _synchronize(device)
    flusher()
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        _synchronize(device)
        host_start = time.perf_counter()
        start.record()
        output = fn(*inputs)
        end.record()
        _synchronize(device)
        host_s = time.perf_counter() - host_start
        return start.elapsed_time(end) / 1e3, host_s, output
    host_start = time.perf_counter()
    output = fn(*inputs)
    host_s = time.perf_counter() - host_start
    return None, host_s, output


def _null_gap(device) -> float:
    """Host-minus-event time of an empty timed region: launch and synchronisation overhead,
    the baseline against which a side stream's gap is judged."""
    gaps = []
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        _synchronize(device)
        host_start = time.perf_counter()
        start.record()
        end.record()
        _synchronize(device)
        gaps.append(time.perf_counter() - host_start - start.elapsed_time(end) / 1e3)
    return statistics.median(gaps)


def _time_graph(fn, inputs_for, timing: Timing, device, settings: Settings, flusher, on_output) -> Timing:
    """Per-call time of tiny kernels: a graph of GRAPH_CALLS (flush, call) pairs minus a graph of the
    flushes alone. The inputs are refilled with fresh values before every replay, and each replay's
    outputs are fingerprinted, so a kernel cannot replay a cached answer."""
    static = [[t.clone() for t in inputs_for(i)] for i in range(GRAPH_CALLS)]
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            fn(*static[0])
    torch.cuda.current_stream(device).wait_stream(side)
    work, flushes = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
    with torch.cuda.graph(work):
        outputs = []
        for i in range(GRAPH_CALLS):
            flusher.buffer.zero_()
            outputs.append(fn(*static[i]))
    with torch.cuda.graph(flushes):
        for _ in range(GRAPH_CALLS):
            flusher.buffer.zero_()

    def replay(graph) -> tuple[float, float]:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        _synchronize(device)
        host_start = time.perf_counter()
        start.record()
        graph.replay()
        end.record()
        _synchronize(device)
        return start.elapsed_time(end) / 1e3, time.perf_counter() - host_start

    started, replays = time.perf_counter(), 0
    while True:
        first_call = replays * GRAPH_CALLS
        for i, tensors in enumerate(static):
            for target, value in zip(tensors, inputs_for(first_call + i), strict=True):
                target.copy_(value)
        work_s, work_host = replay(work)
        flush_s, flush_host = replay(flushes)
        timing.seconds.append(max(work_s - flush_s, 0.0) / GRAPH_CALLS)
        timing.host_seconds.append(max(work_host - flush_host, 0.0) / GRAPH_CALLS)
        if on_output is not None:
            for i, output in enumerate(outputs):
                record = on_output(first_call + i, output)
                if record is not None:
                    timing.fingerprints.append(record)
        replays += 1
        if replays >= settings.min_samples and (
            relative_standard_error(timing.seconds) < settings.target_relative_error
            or time.perf_counter() - started > settings.time_cap_seconds
            or replays >= settings.max_samples
        ):
            break
    timing.calls = replays * GRAPH_CALLS
    timing.calls_per_sample = GRAPH_CALLS
    return timing


# --------------------------------------------------------------------------------------------
# CPU: a ratio against a reference, interleaved
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# a benchmark case, as graders send it into the sandbox
# --------------------------------------------------------------------------------------------


def run_case(fn: Callable[..., torch.Tensor], case: dict, *, marks=None) -> dict:
    """Run a grader's benchmark case (``kernels.guards.benchmark_case`` builds it) on ``fn``.

    ``marks`` brackets each shape's timed batch (``marks.begin(label)`` / ``marks.end(label)``);
    in a job it is the harness, which waits for the trusted parent's go-ahead before each batch
    so the parent's clock encloses every timed call.
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    settings = Settings.from_dict(case.get("settings"))
    flusher = CacheFlusher(device)
    results = []
    for shape in case["shapes"]:
        seed = int(shape["seed"])

        def inputs_for(call: int, _specs=shape["inputs"], _seed=seed):
            return make_inputs(_specs, call_seed(_seed, call), device)

        def record(call: int, output, _seed=seed) -> dict:
            return fingerprint(output, _seed, call, settings.fingerprint_points)

        if marks is not None:
            marks.begin(shape["label"])
        timing = time_function(
            fn, inputs_for, label=shape["label"], device=device, settings=settings, on_output=record, flusher=flusher
        )
        if marks is not None:
            marks.end(shape["label"])
        results.append(timing.as_dict())
    return {
        "format": FORMAT,
        "environment": environment(device),
        "flush_bytes": 0 if flusher.buffer is None else flusher.buffer.numel() * 4,
        "persisting_l2_reset": flusher.resets_persisting_l2,
        "shapes": results,
    }
