"""``python -m services.cycle_close`` runs the worker; ``... close-cycles --as-of D`` triggers a close.

The trigger is what a cron job calls: it publishes ``CloseBillingCycles`` on ``billing.commands``
and, unless ``--no-wait``, follows the close in this service's database, printing progress and
a summary (accounts closed, invoices issued, total billed).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time as clock
import uuid
from datetime import UTC, date, datetime

import sqlalchemy as sa

from contracts import Actor
from contracts.messages import CloseBillingCycles
from contracts.topics import BILLING_COMMANDS
from services.cycle_close.settings import Settings
from shared.db import make_engine


async def trigger(args: argparse.Namespace) -> int:
    from aiokafka import AIOKafkaProducer

    settings = Settings()
    command = CloseBillingCycles(
        message_id=uuid.uuid4(),
        account_id=args.scope,
        occurred_at=datetime.now(UTC),
        actor=Actor(id=args.actor, role=args.role),
        as_of=args.as_of,
        account_ids=args.account or None,
    )
    producer = AIOKafkaProducer(acks="all", enable_idempotence=True, **settings.kafka_options())
    await producer.start()
    try:
        await producer.send_and_wait(BILLING_COMMANDS.name, command.model_dump_json().encode(), key=args.scope.encode())
    finally:
        await producer.stop()
    print(f"close-cycles as of {args.as_of}: trigger {command.message_id} sent", flush=True)
    if args.no_wait:
        return 0
    return await follow(settings, command.message_id, args.timeout)


async def follow(settings: Settings, trigger_id: uuid.UUID, timeout_s: float) -> int:
    engine = make_engine(settings.database_url, pool_size=1)
    started = clock.monotonic()
    last = ""
    try:
        while True:
            async with engine.connect() as conn:
                # Done with requesting once the chain's last chunk found no account left due.
                processed = await conn.scalar(
                    sa.text("select count(*) from close_chunks where trigger_id = :t and finished"), {"t": trigger_id}
                )
                row = (
                    await conn.execute(
                        sa.text(
                            "select count(*), count(i.invoice_id), count(distinct c.account_id), "
                            "coalesce(sum(i.total), 0) from cycle_closes c left join invoices i "
                            "on i.account_id = c.account_id and i.cycle_start = c.cycle_start where c.trigger_id = :t"
                        ),
                        {"t": trigger_id},
                    )
                ).one()
            requested, invoiced, accounts, billed = row
            if processed:
                line = f"  {invoiced}/{requested} invoices issued"
                if line != last:
                    print(line, flush=True)
                    last = line
                if invoiced == requested:
                    elapsed = clock.monotonic() - started
                    print(
                        f"done in {elapsed:.1f} s: accounts closed {accounts}, invoices issued {invoiced}, "
                        f"total billed {billed} USD",
                        flush=True,
                    )
                    return 0
            if clock.monotonic() - started > timeout_s:
                print(f"timed out after {timeout_s} s (is the cycle-close worker running?)", file=sys.stderr)
                return 1
            await asyncio.sleep(0.5)
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m services.cycle_close")
    sub = parser.add_subparsers(dest="command")
    close = sub.add_parser("close-cycles", help="close every cycle ending on or before --as-of")
    close.add_argument("--as-of", type=date.fromisoformat, required=True)
    close.add_argument("--account", action="append", help="only this account (repeatable)")
    close.add_argument("--actor", default="scheduler")
    close.add_argument("--role", default="service", help="service (scheduler) or operator")
    close.add_argument("--scope", default="platform", help="the command's account_id / record key")
    close.add_argument("--no-wait", action="store_true")
    close.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    if args.command == "close-cycles":
        raise SystemExit(asyncio.run(trigger(args)))
    from services.cycle_close.app import create_worker

    asyncio.run(create_worker().app.run())


if __name__ == "__main__":
    main()
