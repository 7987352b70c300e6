"""The roofline and the published GPU figures."""

import pytest

from attnlib import hardware


@pytest.mark.parametrize(("cuda_name", "spec"), [
    ("NVIDIA H200", "H200"), ("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA H100 PCIe", "H100 PCIe"),
    ("NVIDIA A100-SXM4-80GB", "A100 80GB"), ("NVIDIA A100-SXM4-40GB", "A100"),
    ("Tesla T4", "T4"), ("NVIDIA L4", "L4"), ("NVIDIA L40S", None),
    ("NVIDIA GeForce RTX 4090", None),
])
def test_cuda_device_names_find_their_published_figures(cuda_name, spec):
    found = hardware.gpu_spec(cuda_name)
    assert (found.name if found else None) == spec


def test_published_figures_are_dense_and_sourced():
    for spec in hardware.GPUS:
        assert spec.source.startswith("https://www.nvidia.com/")
        assert spec.fp16_tflops > 0 and spec.bandwidth_gbs > 0
    t4, h200 = hardware.gpu_spec("Tesla T4"), hardware.gpu_spec("NVIDIA H200")
    assert t4.peak_tflops("bfloat16") is None  # Turing: no bfloat16 tensor cores
    assert h200.balance() == pytest.approx(989.5e12 / 4.8e12)
    with pytest.raises(ValueError, match="dtype_name must be 'float16' or 'bfloat16'"):
        h200.peak_tflops("float32")


def test_the_roofline_is_the_lower_of_the_memory_and_the_compute_limits():
    peak, bandwidth = 100.0, 1000.0  # TFLOP/s and GB/s: the balance point is 100 FLOP/B
    assert hardware.attainable_tflops(10, peak, bandwidth) == pytest.approx(10.0)
    assert hardware.attainable_tflops(100, peak, bandwidth) == pytest.approx(100.0)
    assert hardware.attainable_tflops(1000, peak, bandwidth) == peak
    with pytest.raises(ValueError, match="intensity must be a number > 0, got 0"):
        hardware.attainable_tflops(0, peak, bandwidth)


def test_intensities_are_flops_over_the_bytes_chapter_6_counts():
    n, d = 4096, 64
    naive_bytes = 2 * (4 * n * d + 4 * n * n)  # Q, K, V, O once; S and A twice each
    assert hardware.naive_intensity(n, d) == pytest.approx(4 * n * n * d / naive_bytes)
    tiled_bytes = 2 * (2 * n * d + 2 * n * d * (n // 128))
    assert hardware.fused_intensity(n, d, 128) == pytest.approx(4 * n * n * d / tiled_bytes)
    # naive attention is stuck below d / 2 FLOP per byte in float16; the fused one is not
    assert hardware.naive_intensity(n, d) < d / 2 < hardware.fused_intensity(n, d, 128)
    with pytest.raises(TypeError, match="device_name must be a str, got int"):
        hardware.gpu_spec(100)
