"""Micro-benchmark of usage metering's calls path in one process, no broker or database: a batch's
decoding (the calls' own decoder, ``calls_codec.decode_calls``, beside the contract model's
``codec.list_decoder`` and a bare ``json.loads``), the fold of a batch (``handlers._fold``) and the
batch's lookups in and additions to ``RecentCalls``.

A batch of 5,000 calls over 10,000 accounts touches about 3,900 meters, one or two calls each, as
in the benchmark's fill; the figures are process CPU per call, the best of 30 rounds (the machine's
other load only adds to a round). Run: ``.venv/bin/python -m bench.micro_calls_path``.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal

from contracts import messages as m
from services.usage_metering import domain, handlers
from services.usage_metering.calls_codec import decode_calls
from services.usage_metering.storage import Account, RecentCalls, Tracked
from shared.cycles import cycle_containing
from shared.runtime.codec import list_decoder

CALLS, ACCOUNTS, ROUNDS = 5000, 10_000, 30


def best_of(rounds: int, work: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        work()
        best = min(best, time.process_time() - started)
    return best


def main() -> None:
    rng = random.Random(1)
    day = date(2027, 3, 5)
    cycle = cycle_containing(1, day)
    cap = Decimal("250.00")
    accounts = {f"a{i}": Account(f"a{i}", 1, cap, cycle, 0) for i in range(ACCOUNTS)}
    calls = [
        m.CallCharged(
            message_id=uuid.uuid4(),
            account_id=f"a{rng.randrange(ACCOUNTS)}",
            occurred_at=datetime(2027, 3, 5, 12, tzinfo=UTC),
            call_id=str(uuid.uuid4()),
            cost=Decimal(rng.randrange(10_000, 3_000_000)) / Decimal(1_000_000),
        )
        for _ in range(CALLS)
    ]
    data = b"[" + b"\n,".join(call.model_dump_json().encode() for call in calls) + b"]"
    contract = list_decoder(m.CallCharged)
    decoded = {
        "the calls' own decoder (calls_codec.decode_calls)": best_of(ROUNDS, lambda: decode_calls(data)),
        "the contract model (codec.list_decoder)": best_of(ROUNDS, lambda: contract(data)),
        "json.loads, no validation (the raw consumer's)": best_of(ROUNDS, lambda: json.loads(data)),
    }
    by_meter: handlers.ByMeter = {}
    for call in decode_calls(data):
        by_meter.setdefault((call.account_id, cycle.start), []).append(call)
    tracked = {
        key: Tracked(domain.in_micros(domain.Meter(cap=cap, billable=Decimal("10.5"))), cycle, 3, 3) for key in by_meter
    }
    fold = best_of(ROUNDS, lambda: handlers._fold(by_meter, tracked, accounts))

    keys = [(call.account_id, call.call_id) for call in calls]
    recent = RecentCalls(100_000)
    for _ in range(40):  # full: 200,000 older pairs added, as after a few minutes of traffic
        recent.add([(f"old{rng.random()}", "x") for _ in range(CALLS)])
    lookups = best_of(ROUNDS, lambda: [key in recent for key in keys])
    adds = best_of(ROUNDS, lambda: RecentCalls(100_000).add(keys))

    print(f"a batch of {CALLS:,} calls over {len(by_meter):,} meters ({ACCOUNTS:,} accounts), best of {ROUNDS}:")
    for name, seconds in decoded.items():
        print(f"  decode, {name}: {1e6 * seconds / CALLS:.2f} µs a call")
    print(f"  fold (handlers._fold): {1e6 * fold / CALLS:.2f} µs a call")
    print(f"  RecentCalls lookups: {1e6 * lookups / CALLS:.2f} µs a call, additions {1e6 * adds / CALLS:.2f} µs a call")


if __name__ == "__main__":
    main()
