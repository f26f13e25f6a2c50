"""What the hardware can do at best: peak memory bandwidth and peak FLOP/s, and the roofline.

A kernel's time means little alone; "1.9 TB/s on an H100 SXM, 57% of peak" says how good it is,
and a time below what the memory system or the arithmetic units can physically deliver is proof
of a cheat (docs/benchmarks.md). Peaks come from the vendors' datasheets, dense figures (the
"with sparsity" numbers are twice these and no dense kernel reaches them). A GPU not in the table,
and the CPU, are measured with a short copy and matmul probe instead.

Plain torch: this module is shipped into the sandbox next to ``kernels/bench.py``.
"""

from __future__ import annotations

import functools
import re
import statistics
import time
from dataclasses import dataclass, field

TB = 1e12
TFLOP = 1e12


@dataclass(frozen=True)
class DeviceSpec:
    """Peaks of one device: bytes/s of its main memory and FLOP/s per dtype (dense)."""

    name: str
    memory_bandwidth: float  # bytes per second
    flops: dict[str, float] = field(default_factory=dict)  # dtype name -> FLOP/s
    l2_bytes: int = 0
    source: str = ""
    measured: bool = False  # True when the figures come from the probe, not a datasheet

    def peak_flops(self, dtype: str) -> float | None:
        """Peak FLOP/s for ``dtype`` ("float16", "bfloat16", "float32", "tf32", ...), if known."""
        return self.flops.get(_dtype_name(dtype))


def _spec(name, tbps, l2_mib, source, **tflops) -> DeviceSpec:
    return DeviceSpec(
        name=name,
        memory_bandwidth=tbps * TB,
        flops={k: v * TFLOP for k, v in tflops.items()},
        l2_bytes=int(l2_mib * 2**20),
        source=source,
    )


# Matched in order against torch.cuda.get_device_name(); the first pattern that matches wins, so
# the more specific names come first. float32 is the non-tensor-core figure; tf32, float16 and
# bfloat16 are tensor-core figures with float32 accumulation, dense.
KNOWN_DEVICES: tuple[tuple[str, DeviceSpec], ...] = (
    (
        r"H200",
        _spec(
            "NVIDIA H200 SXM",
            4.8,
            50,
            "NVIDIA H200 Tensor Core GPU datasheet (2024): 4.8 TB/s HBM3e; compute as H100 SXM",
            float64=34,
            float32=67,
            tf32=494.5,
            float16=989.5,
            bfloat16=989.5,
            float8=1979,
        ),
    ),
    (
        r"H100.*(PCIe|PCI-E)",
        _spec(
            "NVIDIA H100 PCIe",
            2.0,
            50,
            "NVIDIA H100 Tensor Core GPU datasheet (2023), PCIe column: 2.0 TB/s HBM2e",
            float64=26,
            float32=51,
            tf32=378,
            float16=756,
            bfloat16=756,
            float8=1513,
        ),
    ),
    (
        r"H100",
        _spec(
            "NVIDIA H100 SXM",
            3.35,
            50,
            "NVIDIA H100 Tensor Core GPU datasheet (2023), SXM column: 3.35 TB/s HBM3",
            float64=34,
            float32=67,
            tf32=494.5,
            float16=989.5,
            bfloat16=989.5,
            float8=1979,
        ),
    ),
    (
        r"A100.*80GB.*PCIe|A100.*PCIe.*80GB",
        _spec(
            "NVIDIA A100 80GB PCIe",
            1.935,
            40,
            "NVIDIA A100 datasheet (2021), 80GB PCIe column",
            float64=9.7,
            float32=19.5,
            tf32=156,
            float16=312,
            bfloat16=312,
        ),
    ),
    (
        r"A100.*80GB",
        _spec(
            "NVIDIA A100 80GB SXM",
            2.039,
            40,
            "NVIDIA A100 datasheet (2021), 80GB SXM column",
            float64=9.7,
            float32=19.5,
            tf32=156,
            float16=312,
            bfloat16=312,
        ),
    ),
    (
        r"A100",
        _spec(
            "NVIDIA A100 40GB",
            1.555,
            40,
            "NVIDIA A100 datasheet (2021), 40GB columns: 1,555 GB/s HBM2",
            float64=9.7,
            float32=19.5,
            tf32=156,
            float16=312,
            bfloat16=312,
        ),
    ),
    (
        r"L40S",
        _spec(
            "NVIDIA L40S",
            0.864,
            96,
            "NVIDIA L40S datasheet (2023): 864 GB/s GDDR6",
            float32=91.6,
            tf32=183,
            float16=362,
            bfloat16=362,
            float8=733,
        ),
    ),
    (
        r"\bL4\b",
        _spec(
            "NVIDIA L4",
            0.3,
            48,
            "NVIDIA L4 datasheet (2023): 300 GB/s GDDR6",
            float32=30.3,
            tf32=60,
            float16=121,
            bfloat16=121,
            float8=242.5,
        ),
    ),
    (
        r"A10G",
        _spec(
            "NVIDIA A10G",
            0.6,
            6,
            "AWS EC2 G5 documentation: 600 GB/s; tensor figures from NVIDIA's A10 datasheet (AWS publishes none "
            "for the A10G, so treat them as an upper bound)",
            float32=31.2,
            tf32=62.5,
            float16=125,
            bfloat16=125,
        ),
    ),
    (
        r"\bA10\b",
        _spec(
            "NVIDIA A10",
            0.6,
            6,
            "NVIDIA A10 datasheet (2021): 600 GB/s GDDR6",
            float32=31.2,
            tf32=62.5,
            float16=125,
            bfloat16=125,
        ),
    ),
    (
        r"\bT4\b",
        _spec(
            "NVIDIA T4",
            0.32,
            4,
            "NVIDIA T4 datasheet (2019): 320 GB/s GDDR6; no bfloat16 tensor cores",
            float32=8.1,
            float16=65,
        ),
    ),
    (
        r"RTX 4090",
        _spec(
            "NVIDIA GeForce RTX 4090",
            1.008,
            72,
            "NVIDIA Ada Lovelace architecture whitepaper (2022), RTX 4090: 1,008 GB/s GDDR6X; tensor figures "
            "with float32 accumulation",
            float32=82.6,
            tf32=82.6,
            float16=165.2,
            bfloat16=165.2,
            float8=330.3,
        ),
    ),
)


def lookup(device_name: str) -> DeviceSpec | None:
    """The datasheet spec for a device name as torch reports it, or None for an unknown device."""
    for pattern, spec in KNOWN_DEVICES:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return spec
    return None


def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


# --------------------------------------------------------------------------------------------
# the probe: for a GPU not in the table, and for the CPU
# --------------------------------------------------------------------------------------------


def _median_seconds(fn, device, repeats: int) -> float:
    import torch

    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def probe(device="cpu", *, copy_bytes: int = 256 * 2**20, matmul_size: int = 2048, repeats: int = 5) -> DeviceSpec:
    """Measure a device's copy bandwidth and matmul FLOP/s (about a second; a best case, not a peak).

    A copy reads and writes ``copy_bytes`` each; the matmul is ``matmul_size``^3 in float32 and,
    on a GPU, in float16 and bfloat16. Measured figures are below the true peaks, so a floor
    computed from them is looser than a datasheet's only if the kernel beats torch's own copy.
    """
    import torch

    device = torch.device(device)
    src = torch.empty(copy_bytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)  # first touch: page faults are not bandwidth
    copy_s = _median_seconds(lambda: dst.copy_(src), device, repeats)
    src = dst = None  # free the buffers before the matmuls allocate theirs
    dtypes = [torch.float32] + ([torch.float16, torch.bfloat16] if device.type == "cuda" else [])
    size = matmul_size if device.type == "cuda" else min(matmul_size, 1024)
    flops = {}
    for dtype in dtypes:
        a = torch.ones(size, size, dtype=dtype, device=device)
        b = torch.ones(size, size, dtype=dtype, device=device)
        a @ b
        seconds = _median_seconds(lambda a=a, b=b: a @ b, device, repeats)
        flops[_dtype_name(dtype)] = 2 * size**3 / seconds
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        l2 = int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0))
    else:
        name, l2 = "CPU", 0
    return DeviceSpec(
        name=name,
        memory_bandwidth=2 * copy_bytes / copy_s,
        flops=flops,
        l2_bytes=l2,
        source=f"measured by kernels.devices.probe ({repeats} runs, median)",
        measured=True,
    )


@functools.cache
def current(device="cuda") -> DeviceSpec:
    """The spec of ``device``: its datasheet row when known, else a probe (cached per process)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        spec = lookup(torch.cuda.get_device_name(device))
        if spec is not None:
            return spec
        return probe(device)
    return probe(device, copy_bytes=64 * 2**20)  # a CPU's memory copies 64 MiB in ~10 ms: enough


# --------------------------------------------------------------------------------------------
# roofline
# --------------------------------------------------------------------------------------------


def achieved_bandwidth(bytes_moved: float, seconds: float) -> float:
    """Bytes per second a kernel moved (its compulsory traffic over its time)."""
    return bytes_moved / seconds


def achieved_flops(flops: float, seconds: float) -> float:
    return flops / seconds


def fraction_of_peak(achieved: float, peak: float | None) -> float | None:
    return achieved / peak if peak else None


def floor_seconds(spec: DeviceSpec, *, bytes_moved: float = 0.0, flops: float = 0.0, dtype=None) -> float:
    """The least time the workload can take on ``spec``: the slower of moving its bytes at peak
    bandwidth and doing its FLOPs at peak compute (for ``dtype``; the fastest listed if unknown).

    A reported time below this is physically impossible and is rejected (kernels.guards).
    """
    memory = bytes_moved / spec.memory_bandwidth if bytes_moved else 0.0
    compute = 0.0
    if flops:
        peak = spec.peak_flops(dtype) if dtype is not None else None
        peak = peak or max(spec.flops.values(), default=0.0)
        compute = flops / peak if peak else 0.0
    return max(memory, compute)


def roofline(spec: DeviceSpec, *, seconds: float, bytes_moved: float = 0.0, flops: float = 0.0, dtype=None) -> dict:
    """Achieved GB/s and TFLOP/s of one timed workload, their fractions of peak, and the floor."""
    out: dict = {
        "seconds": seconds,
        "floor_seconds": floor_seconds(spec, bytes_moved=bytes_moved, flops=flops, dtype=dtype),
    }
    if bytes_moved:
        bandwidth = achieved_bandwidth(bytes_moved, seconds)
        out["gb_per_s"] = bandwidth / 1e9
        out["bandwidth_fraction"] = fraction_of_peak(bandwidth, spec.memory_bandwidth)
    if flops:
        rate = achieved_flops(flops, seconds)
        out["tflop_per_s"] = rate / TFLOP
        peak = spec.peak_flops(dtype) if dtype is not None else None
        out["compute_fraction"] = fraction_of_peak(rate, peak)
    return out
