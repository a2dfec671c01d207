"""Process-level tuning every service applies once it has started."""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Move everything allocated at start-up (modules, models, metadata) out of the
    collector's reach: full collections then walk only request garbage, which removes
    the 50-70 ms pauses that otherwise set the p99 of a busy service."""
    gc.collect()
    gc.freeze()
