"""Chapter 7: what a GPU can do, from its vendor's specification, and the roofline.

    attainable FLOP/s = min(peak FLOP/s, intensity * bandwidth),   intensity = FLOPs / bytes

A kernel whose arithmetic intensity (FLOPs per byte moved to and from the GPU's main
memory, HBM or GDDR) is below the device's balance point, peak / bandwidth, cannot reach
the peak whatever it does: it waits for memory.  `GPUS` holds the published figures of
the GPUs the course meets (dense, i.e. without the 2:4 sparsity that doubles the
headline numbers); `gpu_spec` finds the entry for a device name as CUDA reports it.
These are the vendors' numbers, not the course's measurements.
"""

import re
from typing import NamedTuple

from attnlib._checks import require_positive_int


class GPUSpec(NamedTuple):
    """Published figures of one GPU (dense tensor-core throughput, no sparsity)."""

    name: str
    pattern: str  #: regular expression that finds this GPU in CUDA's device name
    fp16_tflops: float  #: dense float16 tensor-core peak, TFLOP/s (float32 accumulation)
    bf16_tflops: float | None  #: dense bfloat16 peak, TFLOP/s (None: no bfloat16 tensor cores)
    bandwidth_gbs: float  #: memory bandwidth, GB/s
    memory_gb: float  #: memory, GB (decimal)
    shared_memory_kib: int  #: shared memory (on-chip SRAM) per streaming multiprocessor, KiB
    source: str  #: where the figures come from

    def peak_tflops(self, dtype_name):
        """Dense peak in TFLOP/s for "float16" or "bfloat16" (None where there is none)."""
        peaks = {"float16": self.fp16_tflops, "bfloat16": self.bf16_tflops}
        if dtype_name not in peaks:
            raise ValueError(f"dtype_name must be 'float16' or 'bfloat16', got {dtype_name!r}")
        return peaks[dtype_name]

    def balance(self, dtype_name="float16"):
        """FLOPs the GPU can do in the time it moves one byte from memory: peak / bandwidth."""
        return self.peak_tflops(dtype_name) * 1e12 / (self.bandwidth_gbs * 1e9)


#: The GPUs of the course: Colab's T4 and L4, and the data-centre A100, H100 and H200.
#: Dense figures are half the "with sparsity" ones on the vendor's page.  Shared memory per
#: SM: NVIDIA's CUDA C++ Programming Guide, table "Technical Specifications per Compute
#: Capability" (7.5: 64 KiB, 8.0: 164 KiB, 8.9: 100 KiB, 9.0: 228 KiB).
GPUS = (
    GPUSpec("H200", r"\bH200\b", 989.5, 989.5, 4800, 141, 228,
            "https://www.nvidia.com/en-us/data-center/h200/ (H200 SXM: FP16/BF16 tensor "
            "1,979 TFLOPS with sparsity, 4.8 TB/s, 141 GB)"),
    GPUSpec("H100 PCIe", r"\bH100\b.*\bPCIE\b", 756.0, 756.0, 2000, 80, 228,
            "https://www.nvidia.com/en-us/data-center/h100/ (H100 PCIe: FP16/BF16 tensor "
            "1,513 TFLOPS with sparsity, 2 TB/s, 80 GB)"),
    GPUSpec("H100", r"\bH100\b", 989.5, 989.5, 3350, 80, 228,
            "https://www.nvidia.com/en-us/data-center/h100/ (H100 SXM: FP16/BF16 tensor "
            "1,979 TFLOPS with sparsity, 3.35 TB/s, 80 GB)"),
    GPUSpec("A100 80GB", r"\bA100\b.*\b80GB\b", 312.0, 312.0, 2039, 80, 164,
            "https://www.nvidia.com/en-us/data-center/a100/ (A100 80GB SXM: FP16/BF16 tensor "
            "312 TFLOPS, 2,039 GB/s)"),
    GPUSpec("A100", r"\bA100\b", 312.0, 312.0, 1555, 40, 164,
            "https://www.nvidia.com/en-us/data-center/a100/ (A100 40GB: FP16/BF16 tensor "
            "312 TFLOPS, 1,555 GB/s)"),
    GPUSpec("L4", r"\bL4\b", 121.0, 121.0, 300, 24, 100,
            "https://www.nvidia.com/en-us/data-center/l4/ (FP16/BF16 tensor 242 TFLOPS with "
            "sparsity, 300 GB/s, 24 GB)"),
    GPUSpec("T4", r"\bT4\b", 65.0, None, 320, 16, 64,
            "https://www.nvidia.com/en-us/data-center/tesla-t4/ (mixed-precision FP16/FP32 "
            "tensor 65 TFLOPS, 320 GB/s, 16 GB; Turing has no bfloat16 tensor cores)"),
)


def gpu_spec(device_name):
    """The `GPUSpec` of a device name as `torch.cuda.get_device_name` gives it ("NVIDIA
    H100 80GB HBM3", "Tesla T4", ...), or None for a GPU not in `GPUS`."""
    if not isinstance(device_name, str):
        raise TypeError(f"device_name must be a str, got {type(device_name).__name__}")
    name = device_name.upper().replace("-", " ")
    return next((spec for spec in GPUS if re.search(spec.pattern, name)), None)


def attainable_tflops(intensity, peak_tflops, bandwidth_gbs):
    """The roofline: min(peak, intensity * bandwidth) in TFLOP/s, for an arithmetic
    intensity in FLOPs per byte."""
    for name, value in (("intensity", intensity), ("peak_tflops", peak_tflops),
                        ("bandwidth_gbs", bandwidth_gbs)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(f"{name} must be a number > 0, got {value!r}")
    return min(peak_tflops, intensity * bandwidth_gbs / 1e3)


def naive_intensity(n, d, bytes_per_element=2):
    """FLOPs per byte of naive attention for one head: its forward FLOPs (4 n^2 d, as
    `cost.attention_flops`) over the bytes that chapter 6's `flash.naive_io` counts."""
    from attnlib.flash import naive_io

    for name, value in (("n", n), ("d", d), ("bytes_per_element", bytes_per_element)):
        require_positive_int(name, value)
    return 4 * n * n * d / (naive_io(n, d) * bytes_per_element)


def fused_intensity(n, d, block_q, bytes_per_element=2):
    """FLOPs per byte of a fused, tiled forward (FlashAttention) for one head: 4 n^2 d over
    the bytes of chapter 6's `flash.tiled_io` with query blocks of `block_q`."""
    from attnlib.flash import tiled_io

    for name, value in (("n", n), ("d", d), ("block_q", block_q),
                        ("bytes_per_element", bytes_per_element)):
        require_positive_int(name, value)
    return 4 * n * n * d / (tiled_io(n, d, block_q) * bytes_per_element)
