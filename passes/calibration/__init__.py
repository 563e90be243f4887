"""Calibration analyses: observers that pick activation ranges from sample data.

The ``calibrate`` pass (issue 3) runs calibration batches, feeds each activation to an observer
from :data:`OBSERVERS` and records the resulting ranges; the observers themselves never touch
the graph.
"""

from .observers import (
                        OBSERVERS,
                        EntropyObserver,
                        Histogram,
                        MinMaxObserver,
                        MSEObserver,
                        Observer,
                        PercentileObserver,
                        kl_threshold_bin,
)

__all__ = [
                        "OBSERVERS",
                        "EntropyObserver",
                        "Histogram",
                        "MSEObserver",
                        "MinMaxObserver",
                        "Observer",
                        "PercentileObserver",
                        "kl_threshold_bin",
]
