"""attnlib: the companion library of the course "Self-Attention, Step by Step".

One module per chapter (projections, attention, ...), plus the shared pieces the
notebooks use: `plotting`, `widgets`, `exercises`, `source` and `device`.
"""

from attnlib import attention, exercises, masking, multihead, projections
from attnlib.device import best_device, describe_device
from attnlib.exercises import check
from attnlib.source import show_source

__version__ = "0.1.0"
__all__ = [
    "attention", "best_device", "check", "describe_device", "exercises", "masking",
    "multihead", "projections", "show_source",
]
