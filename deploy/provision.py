"""Creates every topic of the registry in ``contracts.topics`` (and its ``.dlq``); harmless to re-run.

Usage: ``python -m deploy.provision [--bootstrap 127.0.0.1:9092]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from contracts.topics import all_topic_names

# Kafka keeps a record 7 days: a reread from the start reaches back no further, which is what lets
# the inbox forget processed ids after BILLING_INBOX_RETENTION_DAYS (30; docs/architecture.md).
TOPIC_RETENTION_MS = 7 * 24 * 3600 * 1000


async def create_topics(bootstrap: str, timeout_s: float = 60.0) -> list[str]:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            wanted = [
                NewTopic(name, n, 1, topic_configs={"retention.ms": str(TOPIC_RETENTION_MS)})
                for name, n in all_topic_names()
                if name not in existing
            ]
            if wanted:
                await admin.create_topics(wanted)
            return [t.name for t in wanted]
        except Exception:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(1)
        finally:
            await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", default=os.environ.get("BILLING_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    args = parser.parse_args()
    created = asyncio.run(create_topics(args.bootstrap))
    print(f"topics: {len(created)} created, {len(all_topic_names()) - len(created)} already there")


if __name__ == "__main__":
    main()
