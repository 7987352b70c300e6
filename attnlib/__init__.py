"""attnlib: the companion library of the course "Self-Attention, Step by Step".

One module per chapter (projections, attention, ...), plus the shared pieces the
notebooks use: `plotting`, `widgets`, `exercises`, `source` and `device`.
"""

from attnlib import exercises, projections
from attnlib.device import best_device, describe_device
from attnlib.exercises import check
from attnlib.source import show_source

__version__ = "0.1.0"
__all__ = ["best_device", "check", "describe_device", "exercises", "projections", "show_source"]
