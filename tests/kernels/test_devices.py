"""Peak table, probe and roofline: the numbers every "fraction of peak" and every floor rests on."""

from __future__ import annotations

import pytest

from kernels import devices


@pytest.mark.parametrize(
    ("reported", "expected", "bandwidth_tbps"),
    [
        ("NVIDIA H100 80GB HBM3", "NVIDIA H100 SXM", 3.35),
        ("NVIDIA H100 PCIe", "NVIDIA H100 PCIe", 2.0),
        ("NVIDIA H200", "NVIDIA H200 SXM", 4.8),
        ("NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB SXM", 2.039),
        ("NVIDIA A100-PCIE-40GB", "NVIDIA A100 40GB", 1.555),
        ("NVIDIA L40S", "NVIDIA L40S", 0.864),
        ("NVIDIA L4", "NVIDIA L4", 0.3),
        ("NVIDIA A10G", "NVIDIA A10G", 0.6),
        ("Tesla T4", "NVIDIA T4", 0.32),
        ("NVIDIA GeForce RTX 4090", "NVIDIA GeForce RTX 4090", 1.008),
    ],
)
def test_names_as_torch_reports_them_find_their_datasheet_row(reported, expected, bandwidth_tbps):
    spec = devices.lookup(reported)
    assert spec is not None and spec.name == expected
    assert spec.memory_bandwidth == pytest.approx(bandwidth_tbps * 1e12)
    assert spec.source and not spec.measured


def test_l40s_is_not_mistaken_for_an_l4_nor_an_unknown_gpu_for_anything():
    assert devices.lookup("NVIDIA L40S").name == "NVIDIA L40S"
    assert devices.lookup("NVIDIA B200") is None
    assert devices.lookup("NVIDIA T4") is devices.lookup("Tesla T4")


def test_peaks_are_dense_tensor_core_figures_per_dtype():
    h100 = devices.lookup("NVIDIA H100 80GB HBM3")
    assert h100.peak_flops("bfloat16") == pytest.approx(989.5e12)
    assert h100.peak_flops("torch.float16") == h100.peak_flops("float16")
    assert h100.peak_flops("float32") == pytest.approx(67e12)
    assert devices.lookup("Tesla T4").peak_flops("bfloat16") is None  # no bf16 tensor cores


def test_floor_is_the_slower_of_memory_and_compute():
    h100 = devices.lookup("NVIDIA H100 80GB HBM3")
    # A 4096^3 bf16 matmul: 137 GFLOP and 100 MB; compute-bound.
    flops, moved = 2 * 4096**3, 3 * 2 * 4096**2
    floor = devices.floor_seconds(h100, bytes_moved=moved, flops=flops, dtype="bfloat16")
    assert floor == pytest.approx(flops / 989.5e12)
    # A 256 MiB copy: memory-bound.
    assert devices.floor_seconds(h100, bytes_moved=2**28) == pytest.approx(2**28 / 3.35e12)


def test_roofline_reports_rates_and_fractions_of_peak():
    h100 = devices.lookup("NVIDIA H100 80GB HBM3")
    figures = devices.roofline(h100, seconds=1e-3, bytes_moved=1.675e9)
    assert figures["gb_per_s"] == pytest.approx(1675)
    assert figures["bandwidth_fraction"] == pytest.approx(0.5)
    figures = devices.roofline(h100, seconds=1.0, flops=494.75e12, dtype="bfloat16")
    assert figures["tflop_per_s"] == pytest.approx(494.75) and figures["compute_fraction"] == pytest.approx(0.5)


def test_the_probe_measures_a_cpu_it_knows_nothing_about():
    spec = devices.probe("cpu", copy_bytes=16 * 2**20, matmul_size=256, repeats=3)
    assert spec.measured and spec.name == "CPU"
    # Any machine this runs on copies between 100 MB/s and 1 TB/s and multiplies at >= 100 MFLOP/s.
    assert 1e8 < spec.memory_bandwidth < 1e12
    assert spec.peak_flops("float32") > 1e8
    assert devices.current("cpu") is devices.current("cpu")  # probed once per process
