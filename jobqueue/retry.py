"""Backoff arithmetic. Pure: takes the attempt number and a random source, returns milliseconds."""

from __future__ import annotations

import random
from typing import Any

from .models import Backoff

# A retry is never further away than this, whatever the policy (an uncapped exponential would
# otherwise pass year 9999 by attempt ~40 and overflow the datetime arithmetic).
MAX_DELAY_MS = 30 * 24 * 3600 * 1000


def backoff_delay_ms(policy: Backoff | dict[str, Any], attempt: int, rng: random.Random | None = None) -> int:
    """Delay before the attempt after `attempt` (1-based).

    fixed: `delay_ms`; exponential: `delay_ms * 2^(attempt-1)` capped by `max_delay_ms`.
    `jitter` j takes up to that fraction off ("equal jitter" for j=0.5, "full jitter" for j=1),
    so retries of many jobs that failed together spread out instead of stampeding.
    """
    p = policy if isinstance(policy, Backoff) else Backoff.model_validate(policy)
    delay = p.delay_ms if p.type == "fixed" else p.delay_ms * 2 ** min(max(attempt, 1) - 1, 40)
    delay = min(delay, p.max_delay_ms or MAX_DELAY_MS, MAX_DELAY_MS)
    if p.jitter > 0 and delay > 0:
        r = (rng or random).random()
        delay = int(delay * (1 - p.jitter * r))
    return int(delay)
