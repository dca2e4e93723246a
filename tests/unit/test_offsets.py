"""The offset committer: only processed offsets, at most one commit in flight, failures dropped."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiokafka import TopicPartition

from shared.runtime.offsets import OffsetCommitter, rewind


@dataclass
class Rec:
    topic: str
    partition: int
    offset: int


class FakeConsumer:
    def __init__(self, assigned: set[TopicPartition], fail: int = 0) -> None:
        self.assigned = assigned
        self.fail = fail
        self.commits: list[dict[TopicPartition, int]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.seeks: dict[TopicPartition, int] = {}

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        await self.release.wait()
        if self.fail:
            self.fail -= 1
            raise RuntimeError("rebalancing")
        self.commits.append(dict(offsets))

    def seek(self, tp: TopicPartition, offset: int) -> None:
        if tp not in self.assigned:
            raise RuntimeError("not assigned")
        self.seeks[tp] = offset


A0, A1 = TopicPartition("a", 0), TopicPartition("a", 1)


async def test_commits_the_offset_after_each_partitions_last_processed_record() -> None:
    consumer = FakeConsumer({A0, A1})
    committer = OffsetCommitter("test")
    committer.processed(consumer, [Rec("a", 0, 7), Rec("a", 1, 3), Rec("a", 0, 5)])
    await committer.drain()
    assert consumer.commits == [{A0: 8, A1: 4}]


async def test_batches_finished_while_a_commit_is_in_flight_go_in_one_next_commit() -> None:
    consumer = FakeConsumer({A0, A1})
    consumer.release.clear()  # the broker is slow with the first commit
    committer = OffsetCommitter("test")
    committer.processed(consumer, [Rec("a", 0, 1)])
    await asyncio.sleep(0)
    committer.processed(consumer, [Rec("a", 0, 2)])
    committer.processed(consumer, [Rec("a", 1, 9), Rec("a", 0, 3)])
    consumer.release.set()
    await committer.drain()
    assert consumer.commits == [{A0: 2}, {A0: 4, A1: 10}]


async def test_a_failed_commit_is_dropped_and_later_ones_still_go_out() -> None:
    consumer = FakeConsumer({A0}, fail=1)
    committer = OffsetCommitter("test")
    committer.processed(consumer, [Rec("a", 0, 1)])
    await committer.drain()
    committer.processed(consumer, [Rec("a", 0, 2)])
    await committer.drain()
    assert consumer.commits == [{A0: 3}]  # the first is redelivered after a restart; the inbox dedupes


async def test_partitions_revoked_meanwhile_are_left_to_their_new_owner() -> None:
    consumer = FakeConsumer({A0})
    committer = OffsetCommitter("test")
    committer.processed(consumer, [Rec("a", 0, 4), Rec("a", 1, 6)])
    await committer.drain()
    assert consumer.commits == [{A0: 5}]


async def test_with_an_interval_the_batches_after_a_commit_wait_and_go_in_one_commit() -> None:
    consumer = FakeConsumer({A0, A1})
    committer = OffsetCommitter("test", min_interval_s=0.05)
    committer.processed(consumer, [Rec("a", 0, 1)])
    await asyncio.sleep(0.01)
    assert consumer.commits == [{A0: 2}]  # the first goes at once
    committer.processed(consumer, [Rec("a", 0, 2)])
    committer.processed(consumer, [Rec("a", 1, 9)])
    await asyncio.sleep(0.01)
    assert consumer.commits == [{A0: 2}]  # still inside the interval
    await committer.drain()
    assert consumer.commits == [{A0: 2}, {A0: 3, A1: 10}]


def test_rewind_seeks_each_partition_back_to_the_batch_start() -> None:
    consumer = FakeConsumer({A0, A1})
    rewind(consumer, [Rec("a", 0, 7), Rec("a", 1, 3), Rec("a", 0, 5), Rec("b", 0, 1)])
    assert consumer.seeks == {A0: 5, A1: 3}
