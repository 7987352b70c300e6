"""Pick the fastest device this machine has: CUDA, then Apple's MPS, then the CPU."""

import platform

import torch


def best_device():
    """torch.device("cuda") if a CUDA GPU is visible, else "mps" on Apple silicon, else "cpu"."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def describe_device(device=None):
    """One line naming the device, for benchmark records: model, torch and CUDA versions."""
    device = torch.device(device) if device is not None else best_device()
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return f"{name} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    if device.type == "mps":
        return f"Apple MPS ({platform.machine()}), torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"
