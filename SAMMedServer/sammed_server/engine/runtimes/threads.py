"""Thread budget: interactive decodes on their own thread, background encoding on the rest.

A click must not queue behind a slice being embedded in the background: the decoder gets one thread of its own
(a LiteMedSAM decode is too small to gain from more, measured in docs/performance.md) and the encoder the other
cores. Runtime thread pools do not spin while idle (``allow_spinning`` off, OpenMP ``PASSIVE``): spinning pools
steal the core the other pool needs and burn a laptop's battery while the user looks at the screen.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class ThreadPlan:
    """Threads for the encoder (background precompute and first clicks) and for the decoder (every click)."""

    encode: int
    decode: int

    @classmethod
    def for_threads(cls, threads: Optional[int] = None) -> "ThreadPlan":
        """``threads`` in total (default: the usable cores): decode on 1, encode on the others (at least 1)."""
        total = threads or usable_cores()
        if total < 1:
            raise ValueError(f"threads must be at least 1, got {total}")
        return cls(encode=max(1, total - 1), decode=1)
