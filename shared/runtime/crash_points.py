"""Fault injection for the crash tests: a worker that dies like SIGKILL at a chosen batch."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass
class CrashPoints:
    """Fault injection for the crash tests: die like SIGKILL (no clean-up) in the Nth batch,
    just before its database commit or just after it (before the Kafka offsets are committed).
    0 = never. Set through ``BILLING_FAULT_CRASH_BEFORE_COMMIT`` / ``..._AFTER_COMMIT``."""

    before_commit: int = 0
    after_commit: int = 0
    batches: int = 0

    def check(self, point: str) -> None:
        if getattr(self, point) and self.batches == getattr(self, point):
            log.error("fault injection: crashing %s of batch %d", point.replace("_", " "), self.batches)
            logging.shutdown()
            os._exit(137)
