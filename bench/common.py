"""What the three benchmark scripts share: the stack they run on, the workers as subprocesses,
fast Kafka producing and reading, consumer-group offsets, CPU sampling and latency statistics.

Benchmarks run on their own stack (not the test stack on 9092 / 55432), started with
``STACK_DIR=/tmp/bench-stack KAFKA_PORT=29092 KAFKA_CONTROLLER_PORT=29093 PG_PORT=55434
bash deploy/stack.sh up``; see ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import random
import secrets
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import murmur2
from aiokafka.structs import OffsetAndMetadata

from contracts.topics import COMMAND_TOPICS, PLATFORM_ACCOUNTS
from deploy.credentials import env_for
from shared.db import postgres_dsn

ROOT = Path(__file__).resolve().parents[1]
BENCH_BOOTSTRAP = "127.0.0.1:29092"
BENCH_PG_PORT = 55434
DEFAULT_STACK_PORTS = ("9092", 55432)  # the test stack: benchmarks refuse it unless told otherwise
SERVICE_GROUPS = {"license_orders": "license-orders", "usage_metering": "usage-metering", "cycle_close": "cycle-close"}
SERVICE_INPUTS = {
    "license_orders": ("platform.accounts", "licensing.commands", "billing.cycles"),
    "usage_metering": ("platform.accounts", "usage.calls", "metering.commands", "billing.cycles"),
    "cycle_close": ("platform.accounts", "billing.charges", "billing.commands", "licensing.events", "metering.usage"),
}

now = time.perf_counter  # the one clock every timing in the benchmarks uses


# ------------------------------------------------------------------------------------------ the stack


@dataclass(frozen=True)
class Stack:
    bootstrap: str
    pg_host: str
    pg_port: int
    stack_dir: Path
    log_dir: Path

    def worker_env(self) -> dict[str, str]:
        return {
            "BILLING_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "BILLING_DATABASE_HOST": self.pg_host,
            "BILLING_DATABASE_PORT": str(self.pg_port),
            "BILLING_LOG_FORMAT": "text",
        }

    def dsn(self, database: str) -> str:
        """As the service that owns ``database`` (its role has the database's name); the harness's own
        databases (``postgres``, ``bench_raw`` for the floors) as the stack's superuser."""
        from deploy.credentials import PG_SUPERUSER, pg_password, pg_roles

        role = database if database in pg_roles() else PG_SUPERUSER
        return postgres_dsn(role, pg_password(role), self.pg_host, self.pg_port, database)


def kafka_security() -> dict[str, Any]:
    """The harness plays every outside party and reads the floors: it connects as the stack's own
    principal (deploy/credentials.py); the workers connect as their services."""
    from deploy.credentials import STACK_PRINCIPAL, kafka_options

    return kafka_options(STACK_PRINCIPAL)


def add_stack_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("stack (defaults: BILLING_* env vars, else the separate bench stack)")
    group.add_argument(
        "--bootstrap", default=os.environ.get("BILLING_KAFKA_BOOTSTRAP_SERVERS", BENCH_BOOTSTRAP), help="Kafka"
    )
    group.add_argument(
        "--pg-host",
        default=os.environ.get("BILLING_DATABASE_HOST", "auto"),
        help="auto (default): the stack's Unix socket when PostgreSQL runs on this machine, else 127.0.0.1; "
        "pass 127.0.0.1 to measure over TCP",
    )
    group.add_argument("--pg-port", type=int, default=int(os.environ.get("BILLING_DATABASE_PORT", BENCH_PG_PORT)))
    group.add_argument(
        "--stack-dir",
        type=Path,
        default=Path(os.environ.get("STACK_DIR", "/tmp/bench-stack")),
        help="the STACK_DIR the stack was started with (only used to find the broker and postgres pids for CPU figures)",
    )
    group.add_argument("--log-dir", type=Path, default=ROOT / ".stack" / "bench-logs", help="worker logs")
    group.add_argument(
        "--allow-default-stack",
        action="store_true",
        help="allow Kafka :9092 / PostgreSQL :55432 (the test stack other people use); refused otherwise",
    )


def stack_from(args: argparse.Namespace) -> Stack:
    on_default = args.bootstrap.endswith(":" + DEFAULT_STACK_PORTS[0]) or args.pg_port == DEFAULT_STACK_PORTS[1]
    if on_default and not args.allow_default_stack:
        raise SystemExit(
            f"refusing to benchmark on the shared test stack ({args.bootstrap}, postgres :{args.pg_port}); "
            f"start the bench stack (docs/benchmarks.md) or pass --allow-default-stack"
        )
    args.log_dir.mkdir(parents=True, exist_ok=True)
    pg_host = args.pg_host if args.pg_host != "auto" else _local_socket_dir(args.stack_dir, args.pg_port)
    stack = Stack(args.bootstrap, pg_host, args.pg_port, args.stack_dir, args.log_dir)
    # deploy.provision and deploy.client read the bootstrap from the environment.
    os.environ["BILLING_KAFKA_BOOTSTRAP_SERVERS"] = stack.bootstrap
    os.environ["STACK_DIR"] = str(args.stack_dir)  # where deploy.credentials finds the stack's passwords
    return stack


def _local_socket_dir(stack_dir: Path, port: int) -> str:
    """The directory of the stack's PostgreSQL socket for ``port``, or 127.0.0.1 when there is none."""
    with contextlib.suppress(OSError):
        data = Path((stack_dir / "postgres.path").read_text().strip()) / "data"
        if (data / f".s.PGSQL.{port}").exists():
            return str(data)
    return "127.0.0.1"


def run_prefix(tag: str) -> str:
    """A fresh account-id prefix per run, so runs share a stack without seeing each other's data."""
    return f"{tag}{datetime.now(UTC):%m%d%H%M%S}{secrets.token_hex(2)}"


def banner(title: str, stack: Stack, **sizes: Any) -> None:
    print(f"== {title}  ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)")
    print(f"   stack: kafka {stack.bootstrap}, postgres {stack.pg_host}:{stack.pg_port}; {os.cpu_count()} cores")
    print(f"   code: {code_version()}")
    overrides = {k: v for k, v in os.environ.items() if k.startswith("BILLING_") and "PASSWORD" not in k}
    overrides.pop("BILLING_KAFKA_BOOTSTRAP_SERVERS", None)
    overrides.pop("BILLING_DATABASE_PORT", None)
    if overrides:
        print(f"   worker settings from the environment: {overrides}")
    if sizes:
        print("   sizes: " + ", ".join(f"{k}={v}" for k, v in sizes.items()))
    sys.stdout.flush()


def code_version() -> str:
    """The commit measured, and whether the service code had uncommitted changes (workers run the work tree)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "services", "shared", "contracts"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    changed = [line[3:] for line in dirty if line.strip()]
    return f"commit {commit or '?'}" + (f" + uncommitted changes in {', '.join(changed)}" if changed else "")


def say(text: str) -> None:
    print(text, flush=True)


@dataclass(frozen=True)
class Bench:
    """What every phase of a benchmark run uses: the stack, the run's prefix, its workers, the CPU sampler."""

    stack: Stack
    prefix: str
    workers: Workers
    sampler: CpuSampler


async def begin(args: argparse.Namespace, tag: str, title: str, **sizes: Any) -> Bench:
    """The start of every run: the stack from the arguments, a fresh prefix, the banner, the topics."""
    stack = stack_from(args)
    prefix = run_prefix(tag)
    banner(title, stack, **sizes, run=prefix)
    await provision(stack)
    workers = Workers(stack, prefix)
    return Bench(stack, prefix, workers, CpuSampler(stack, workers))


# -------------------------------------------------------------------------------------------- workers


@dataclass
class Worker:
    name: str
    service: str
    proc: subprocess.Popen[bytes]
    log: Path
    started_at: float


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def replica_names(service: str, replicas: int) -> list[str]:
    """Process names of a service's replicas (one consumer group): ``service`` alone when one."""
    return [service] if replicas == 1 else [f"{service}-{i + 1}" for i in range(replicas)]


def replicas_cpu(cpu: dict[str, tuple[float, float]], service: str) -> float:
    """The replicas' average CPU together, in % of one core."""
    return sum(avg for name, (avg, _) in cpu.items() if name.startswith(service))


class Workers:
    """The services as real processes (``python -m services.<name>``) pointed at the bench stack."""

    def __init__(self, stack: Stack, run: str) -> None:
        self.stack = stack
        self.run = run
        self.running: dict[str, Worker] = {}
        self._count = 0

    def start(self, service: str, name: str | None = None, **env: str) -> Worker:
        """Each replica gets a metrics listener on a free port of its own; ``BILLING_METRICS_PORT=0``
        in the environment runs every worker with metrics off (to compare the rates)."""
        name = name or service
        self._count += 1
        if os.environ.get("BILLING_METRICS_PORT") != "0":
            env.setdefault("BILLING_METRICS_PORT", str(free_port()))
        log = self.stack.log_dir / f"{self.run}-{self._count:02d}-{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", f"services.{service}"],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.stack.worker_env(), **env_for(service.replace("_", "-")), **env},
            )
        worker = Worker(name, service, proc, log, now())
        self.running[name] = worker
        return worker

    async def wait_ready(self, name: str, timeout: float = 120.0) -> float:
        """Wait for the worker's "worker started" log line; returns when it was seen (``now()``)."""
        worker = self.running[name]
        deadline = now() + timeout
        while now() < deadline:
            if worker.proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {worker.proc.returncode}:\n{tail(worker.log)}")
            if b"worker started" in worker.log.read_bytes():
                return now()
            await asyncio.sleep(0.05)
        raise TimeoutError(f"{name} not ready after {timeout} s:\n{tail(worker.log)}")

    async def start_ready_together(self, workers: Sequence[tuple[str, str]]) -> None:
        """Start ``(service, name)`` workers all at once, then wait until each one is ready."""
        for service, name in workers:
            self.start(service, name)
        for _, name in workers:
            await self.wait_ready(name)

    def stop(self, name: str, timeout: float = 30.0) -> None:
        worker = self.running.pop(name)
        if worker.proc.poll() is None:
            worker.proc.terminate()
            try:
                worker.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait()

    def stop_all(self) -> None:
        for name in list(self.running):
            self.stop(name)

    def pids(self) -> dict[str, int]:
        return {name: w.proc.pid for name, w in self.running.items() if w.proc.poll() is None}

    def check_alive(self) -> None:
        for name, worker in self.running.items():
            if worker.proc.poll() is not None:
                raise RuntimeError(f"{name} died (exit {worker.proc.returncode}):\n{tail(worker.log)}")


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ------------------------------------------------------------------------------------- CPU sampling

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, utime+stime ticks, start time ticks) of a process, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[19])


def _machine_ticks() -> tuple[int, int, int]:
    """(busy, total, stolen) ticks of all CPUs since boot, from /proc/stat; stolen: the time the
    hypervisor gave a virtual CPU's turn to another machine (counted busy)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values[:8]) - idle, sum(values[:8]), values[7]


def _uptime_ticks() -> int:
    return int(float(Path("/proc/uptime").read_text().split()[0]) * CLK_TCK)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class CpuSampler:
    """CPU use of the processes that matter (workers, broker, PostgreSQL, this script) over a phase.

    Reads ``/proc`` once a second from a thread. Figures are % of one core (200 % = both cores).
    """

    def __init__(self, stack: Stack, workers: Workers) -> None:
        self.stack = stack
        self.workers = workers

    def _groups(self) -> dict[str, set[int]]:
        groups: dict[str, set[int]] = {name: {pid} for name, pid in self.workers.pids().items()}
        kafka = _read_pid(self.stack.stack_dir / "kafka" / "broker.pid")
        if kafka:
            groups["kafka"] = {kafka}
        pg_root = None
        with contextlib.suppress(OSError):
            pg_root = Path((self.stack.stack_dir / "postgres.path").read_text().strip())
        postmaster = _read_pid(pg_root / "data" / "postmaster.pid") if pg_root else None
        if postmaster:
            members = {postmaster}
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit():
                    stat = _stat(int(entry.name))
                    if stat and stat[0] == postmaster:
                        members.add(int(entry.name))
            groups["postgres"] = members
        groups["bench"] = {os.getpid()}
        return groups

    @contextlib.contextmanager
    def phase(self, label: str) -> Iterator[dict[str, tuple[float, float]]]:
        """Sample during the ``with`` block; the yielded dict is filled with {group: (avg %, peak %)}."""
        result: dict[str, tuple[float, float]] = {}
        stop = threading.Event()
        start_ticks = _uptime_ticks()
        started = now()
        seen: dict[int, int] = {}
        totals: dict[str, int] = {}
        peaks: dict[str, float] = {}

        def sample() -> dict[str, int]:
            deltas: dict[str, int] = {}
            for group, pids in self._groups().items():
                for pid in pids:
                    stat = _stat(pid)
                    if stat is None:
                        continue
                    _, ticks, born = stat
                    before = seen.get(pid, 0 if born >= start_ticks else ticks)
                    seen[pid] = ticks
                    deltas[group] = deltas.get(group, 0) + max(0, ticks - before)
            return deltas

        def loop() -> None:
            sample()
            last = now()
            while not stop.wait(1.0):
                deltas = sample()
                elapsed = max(now() - last, 1e-6)
                last = now()
                for group, ticks in deltas.items():
                    totals[group] = totals.get(group, 0) + ticks
                    peaks[group] = max(peaks.get(group, 0.0), 100.0 * ticks / CLK_TCK / elapsed)

        machine_before = _machine_ticks()
        thread = threading.Thread(target=loop, name=f"cpu-{label}", daemon=True)
        thread.start()
        try:
            yield result
        finally:
            stop.set()
            thread.join()
            for group, ticks in sample().items():
                totals[group] = totals.get(group, 0) + ticks
            elapsed = max(now() - started, 1e-6)
            for group, ticks in sorted(totals.items(), key=lambda kv: -kv[1]):
                result[group] = (100.0 * ticks / CLK_TCK / elapsed, peaks.get(group, 0.0))
            busy_after, total_after, stolen_after = _machine_ticks()
            cores = os.cpu_count() or 1
            ticks = max(1, total_after - machine_before[1])
            machine = 100.0 * cores * (busy_after - machine_before[0]) / ticks
            result["other processes"] = (max(0.0, machine - sum(avg for avg, _ in result.values())), 0.0)
            result["stolen"] = (100.0 * cores * (stolen_after - machine_before[2]) / ticks, 0.0)
            result["machine"] = (machine, 100.0 * cores)
            say(f"   CPU during {label} ({elapsed:.1f} s; % of one core, avg/peak-1s): {format_cpu(result)}")


def format_cpu(result: dict[str, tuple[float, float]]) -> str:
    parts = []
    for group, (avg, peak) in result.items():
        if group == "machine":
            parts.append(f"whole machine {avg:.0f} of {peak:.0f}")
        elif group == "other processes":
            parts.append(f"other processes {avg:.0f}")
        elif group == "stolen":
            parts.append(f"stolen by the hypervisor {avg:.0f}")
        else:
            parts.append(f"{group} {avg:.0f}/{peak:.0f}")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------- Kafka


async def provision(stack: Stack) -> None:
    from deploy.provision import create_topics, grant_access

    grant_access(stack.bootstrap)
    await create_topics(stack.bootstrap)


class KeyPartitioner:
    """The producer's default key partitioning (murmur2), cached per key: same partition as ``send(key=...)``."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self._cache: dict[bytes, int] = {}

    def __call__(self, key: bytes) -> int:
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = (murmur2(key) & 0x7FFFFFFF) % self.partitions
        return found


def producer(stack: Stack, linger_ms: int = 20) -> AIOKafkaProducer:
    """Like a platform producer that loses nothing (acks=all, idempotent), batching for throughput."""
    return AIOKafkaProducer(
        bootstrap_servers=stack.bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=linger_ms,
        max_batch_size=512 * 1024,
        request_timeout_ms=60000,
        **kafka_security(),
    )


# (offset_s, topic, partition, key, value[, headers]): a command without headers is signed when sent.
OpenLoopItem = tuple[float, str, int, bytes, bytes] | tuple[float, str, int, bytes, bytes, list[tuple[str, bytes]]]


def command_headers(topic: str, key: bytes, value: bytes) -> list[tuple[str, bytes]]:
    """What a client adds to a command (contracts/signing.md): the signature of the client whose key
    may claim its role, as deploy/client.py's Bus does; nothing on other topics. About 0.1 ms a
    command: a run signs its commands before it starts timing."""
    if topic not in COMMAND_TOPICS:
        return []
    from contracts.access import sender_of
    from deploy.signing import signer_for

    role = json.loads(value)["actor"]["role"]
    return signer_for(sender_of(topic, role).name).headers(topic, key, value)


async def produce_batched(
    producer: AIOKafkaProducer,
    topic: str,
    partitions: int,
    records: Iterable[tuple[bytes, bytes] | tuple[bytes, bytes, list[tuple[str, bytes]]]],
) -> int:
    """Send (key, value[, headers]) records in full per-partition batches without awaiting each;
    returns the count. A command without its headers is signed here."""
    partition_of = KeyPartitioner(partitions)
    builders: dict[int, Any] = {}
    pending: list[asyncio.Future[Any]] = []
    count = 0
    for record in records:
        key, value = record[0], record[1]
        headers = record[2] if len(record) > 2 else command_headers(topic, key, value)
        p = partition_of(key)
        builder = builders.get(p)
        if builder is None:
            builder = builders[p] = producer.create_batch()
        if builder.append(key=key, value=value, timestamp=None, headers=headers) is None:
            pending.append(await producer.send_batch(builder, topic, partition=p))
            builder = builders[p] = producer.create_batch()
            if builder.append(key=key, value=value, timestamp=None, headers=headers) is None:
                raise ValueError(f"a record of {len(value)} bytes does not fit an empty batch")
        count += 1
        if len(pending) > 200:  # bound what is in flight
            await asyncio.gather(*pending)
            pending.clear()
    for p, builder in builders.items():
        if builder.record_count():
            pending.append(await producer.send_batch(builder, topic, partition=p))
    await asyncio.gather(*pending)
    return count


async def produce_accounts_opened(producer: AIOKafkaProducer, account_ids: Iterable[str], opened_at: str) -> int:
    """An ``AccountOpened`` per account on ``platform.accounts`` (billing day 1)."""
    return await produce_batched(
        producer,
        PLATFORM_ACCOUNTS.name,
        PLATFORM_ACCOUNTS.partitions,
        ((a.encode(), account_opened_json(new_id(), a, opened_at)) for a in account_ids),
    )


async def raw_consumer_rate(
    stack: Stack, starts: dict[TopicPartition, int], ends: dict[TopicPartition, int], timeout: float
) -> tuple[int, float]:
    """(records, seconds) for a bare consumer reading [starts, ends): getmany + json.loads, nothing else."""
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.bootstrap, enable_auto_commit=False, **kafka_security())
    await consumer.start()
    try:
        consumer.assign(list(ends))
        for tp, offset in starts.items():
            consumer.seek(tp, offset)
        wanted = {tp: end for tp, end in ends.items() if end > starts[tp]}
        count = 0
        started = now()
        while wanted:
            batches = await consumer.getmany(timeout_ms=1000, max_records=5000)
            for tp, records in batches.items():
                for record in records:
                    if record.offset < ends[tp]:
                        json.loads(record.value)
                        count += 1
                if tp in wanted and records and records[-1].offset + 1 >= wanted[tp]:
                    del wanted[tp]
                    consumer.pause(tp)
            if now() - started > timeout:
                raise TimeoutError("raw consumer did not reach the end of the range")
        return count, now() - started
    finally:
        await consumer.stop()


async def end_offsets(stack: Stack, topics: Sequence[str]) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.bootstrap, enable_auto_commit=False, **kafka_security())
    await consumer.start()
    try:
        partitions = [TopicPartition(t, p) for t in topics for p in sorted(await _partitions(consumer, t))]
        ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
        return ends
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    found = consumer.partitions_for_topic(topic)
    if not found:
        await consumer._client.force_metadata_update()
        found = consumer.partitions_for_topic(topic)
    if not found:
        raise RuntimeError(f"topic {topic} not found (python -m deploy.provision)")
    return set(found)


class Admin:
    """Consumer-group offsets and state (aiokafka's admin client), and topic end offsets."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.client = AIOKafkaAdminClient(
            bootstrap_servers=stack.bootstrap, request_timeout_ms=30000, **kafka_security()
        )
        self.offsets = AIOKafkaConsumer(bootstrap_servers=stack.bootstrap, enable_auto_commit=False, **kafka_security())

    async def __aenter__(self) -> Admin:
        await self.client.start()
        await self.offsets.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.offsets.stop()
        await self.client.close()

    async def partitions(self, topics: Sequence[str]) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t in topics for p in sorted(await _partitions(self.offsets, t))]

    async def ends(self, topics: Sequence[str]) -> dict[TopicPartition, int]:
        found: dict[TopicPartition, int] = await self.offsets.end_offsets(await self.partitions(topics))
        return found

    async def committed(self, group: str, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        found = await self.client.list_consumer_group_offsets(group, partitions=list(partitions))
        return {tp: found[tp].offset if tp in found else -1 for tp in partitions}

    async def state(self, group: str) -> tuple[str, int]:
        [response] = await self.client.describe_consumer_groups([group])
        entry = response.groups[0]
        return entry[2], len(entry[5])

    async def lag(self, group: str, topics: Sequence[str]) -> int:
        """Records in ``topics`` the group has not committed yet (no commit counts from the log start)."""
        ends = await self.ends(topics)
        committed = await self.committed(group, list(ends))
        starts: dict[TopicPartition, int] = await self.offsets.beginning_offsets(list(ends))
        return sum(max(0, end - (committed[tp] if committed[tp] >= 0 else starts[tp])) for tp, end in ends.items())

    async def wait_caught_up(self, group: str, topics: Sequence[str], timeout: float, what: str) -> float:
        """Wait until the group has committed everything in ``topics``; returns the seconds it took."""
        started = now()
        deadline = started + timeout
        next_report = started + 15
        while True:
            remaining = await self.lag(group, topics)
            if remaining == 0:
                return now() - started
            if now() > deadline:
                raise TimeoutError(f"{what}: {group} still {remaining} records behind after {timeout:.0f} s")
            if now() > next_report:
                say(f"   ... {what}: {group} {remaining:,} records behind ({now() - started:.0f} s)")
                next_report = now() + 15
            await asyncio.sleep(0.5)

    async def wait_empty(self, group: str, timeout: float = 60.0) -> None:
        deadline = now() + timeout
        while True:
            state, members = await self.state(group)
            if members == 0:
                return
            if now() > deadline:
                raise TimeoutError(f"group {group} still {state} with {members} members after {timeout} s")
            await asyncio.sleep(0.2)


class BacklogMonitor:
    """Samples how far a group's commits trail the topic's end, in the background (max and mean)."""

    def __init__(self, admin: Admin, group: str, topics: Sequence[str], interval: float = 0.2) -> None:
        self.admin = admin
        self.group = group
        self.topics = topics
        self.interval = interval
        self.samples: list[int] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        partitions = await self.admin.partitions(self.topics)
        while True:
            ends: dict[TopicPartition, int] = await self.admin.offsets.end_offsets(partitions)
            committed = await self.admin.committed(self.group, partitions)
            self.samples.append(sum(max(0, end - committed[tp]) for tp, end in ends.items() if committed[tp] >= 0))
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def summary(self) -> str:
        if not self.samples:
            return "no samples"
        return f"max {max(self.samples):,}, mean {sum(self.samples) / len(self.samples):,.0f} records (n={len(self.samples)})"


async def set_group_offsets(stack: Stack, group: str, offsets: dict[TopicPartition, int]) -> None:
    """Commit ``offsets`` for ``group`` (which must have no members: stop its workers first)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=stack.bootstrap, group_id=group, enable_auto_commit=False, **kafka_security()
    )
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit({tp: OffsetAndMetadata(offset, "") for tp, offset in offsets.items()})
    finally:
        await consumer.stop()


class Reader:
    """Reads topics from their end as of ``start()``; calls ``on_record(arrival, record)`` for each record.

    ``arrival`` is ``now()`` when ``getmany`` handed the records over.
    """

    def __init__(
        self,
        stack: Stack,
        topics: Sequence[str | TopicPartition],
        on_record: Callable[[float, ConsumerRecord[Any, Any]], None],
    ):
        self.stack = stack
        self.topics = topics
        self.on_record = on_record
        self.count = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # A short fetch wait, so the reader itself adds no waiting to the latencies it measures.
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.stack.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=10, **kafka_security()
        )
        await self.consumer.start()
        partitions = []
        for topic in self.topics:
            if isinstance(topic, TopicPartition):
                partitions.append(topic)
            else:
                partitions += [TopicPartition(topic, p) for p in sorted(await _partitions(self.consumer, topic))]
        self.consumer.assign(partitions)
        await self.consumer.seek_to_end(*partitions)
        for tp in partitions:  # resolve positions now, so nothing sent after start() is missed
            await self.consumer.position(tp)
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            batches = await self.consumer.getmany(timeout_ms=100, max_records=10000)
            arrival = now()
            for records in batches.values():
                self.count += len(records)
                for record in records:
                    self.on_record(arrival, record)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.consumer.stop()

    def check(self) -> None:
        if self._task is not None and self._task.done() and not self._task.cancelled():
            self._task.result()  # raise what killed the reader


async def wait_for(
    check: Callable[[], Awaitable[Any]] | Callable[[], Any],
    timeout: float,
    what: str,
    interval: float = 0.2,
    progress: Callable[[], str] | None = None,
    progress_every: float = 10.0,
) -> float:
    """Poll ``check`` (sync or async) until truthy; returns the seconds it took. Bounded by ``timeout``."""
    started = now()
    next_report = started + progress_every
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return now() - started
        if now() - started > timeout:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        if progress is not None and now() >= next_report:
            say(f"   ... {what}: {progress()} ({now() - started:.0f} s)")
            next_report = now() + progress_every
        await asyncio.sleep(interval)


# ------------------------------------------------------------------------------------ open-loop load


@dataclass
class OpenLoopResult:
    sent: int
    duration: float
    send_lag: list[float] = field(default_factory=list)
    errors: int = 0


async def open_loop(
    producer: AIOKafkaProducer,
    items: Sequence[OpenLoopItem],
    clock: list[float],
    lead: float = 0.5,
    batch_every: float = 0.0,
) -> OpenLoopResult:
    """Send ``(offset_s, topic, partition, key, value)`` items at ``start + offset_s`` (open loop).

    ``start`` is ``now() + lead`` once the garbage collector is quiet; it is put in ``clock[0]``
    so readers can turn offsets into intended send times. A slow system does not slow the
    schedule down: each item keeps its intended time, and how late the sender itself was is
    returned (``send_lag``) so it can be told apart from the system.

    ``batch_every`` > 0: wake that often and send what is due as one batch per partition, like a
    producer's ``linger.ms`` but without aiokafka's per-message work (``send`` costs ~25 µs of
    CPU a record; at thousands of records a second the generator would take a core's share
    from the system it measures). Each record still counts from its own intended time.
    """
    result = OpenLoopResult(sent=0, duration=0.0)
    futures: list[asyncio.Future[Any]] = []
    n = len(items)
    with quiet_gc():
        start = clock[0] = now() + lead
        if batch_every > 0:
            await _open_loop_batched(producer, items, start, batch_every, result, futures)
        else:
            await _open_loop(producer, items, start, result, futures)
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    result.errors += sum(1 for r in outcomes if isinstance(r, BaseException))
    result.sent = n
    result.duration = now() - start
    return result


@contextlib.contextmanager
def quiet_gc() -> Iterator[None]:
    """No garbage-collector pauses in the load generator while it keeps a schedule."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


async def _open_loop(
    producer: AIOKafkaProducer,
    items: Sequence[OpenLoopItem],
    start: float,
    result: OpenLoopResult,
    futures: list[asyncio.Future[Any]],
) -> None:
    i = 0
    n = len(items)
    while i < n:
        elapsed = now() - start
        due = items[i][0]
        if due > elapsed:
            await asyncio.sleep(due - elapsed)
            continue
        while i < n and items[i][0] <= now() - start:
            item = items[i]
            offset, topic, partition, key, value = item[:5]
            headers = item[5] if len(item) > 5 else command_headers(topic, key, value)
            futures.append(await producer.send(topic, value, key=key, partition=partition, headers=headers))
            result.send_lag.append(now() - start - offset)
            i += 1
        _settle(futures, result)


def _settle(futures: list[asyncio.Future[Any]], result: OpenLoopResult, keep: int = 5000) -> None:
    """Count the failed sends among those done, and stop holding them (a long run sends millions)."""
    if len(futures) > keep:
        done = [f for f in futures if f.done()]
        result.errors += sum(1 for f in done if f.exception() is not None)
        futures[:] = [f for f in futures if not f.done()]


async def _open_loop_batched(
    producer: AIOKafkaProducer,
    items: Sequence[OpenLoopItem],
    start: float,
    every: float,
    result: OpenLoopResult,
    futures: list[asyncio.Future[Any]],
) -> None:
    i = 0
    n = len(items)
    while i < n:
        elapsed = now() - start
        if items[i][0] > elapsed:
            await asyncio.sleep(max(items[i][0] - elapsed, every))
            continue
        due_until = now() - start
        j = i
        while j < n and items[j][0] <= due_until:
            j += 1
        batches: dict[tuple[str, int], Any] = {}
        for item in items[i:j]:
            _offset, topic, partition, key, value = item[:5]
            headers = item[5] if len(item) > 5 else command_headers(topic, key, value)
            batch = batches.get((topic, partition))
            if batch is None:
                batch = batches[(topic, partition)] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:  # full: another
                futures.append(await producer.send_batch(batch, topic, partition=partition))
                batch = batches[(topic, partition)] = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None, headers=headers)
        for (topic, partition), batch in batches.items():
            futures.append(await producer.send_batch(batch, topic, partition=partition))
        sent_at = now() - start
        result.send_lag.extend(sent_at - items[k][0] for k in range(i, j))
        i = j
        _settle(futures, result)
        await asyncio.sleep(every)


class CommitProbe:
    """How long PostgreSQL takes to make a tiny transaction durable, every ``every`` seconds.

    The probe's transaction writes one WAL record (a transactional logical message, no table),
    so its commit waits for a WAL flush exactly like a service's commit. A latency spike that
    comes with a slow probe is the disk's (every commit waited for it), not the service's.
    """

    def __init__(self, stack: Stack, database: str, every: float = 0.1) -> None:
        self.stack = stack
        self.database = database
        self.every = every
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.samples.clear()
        self.conn = await connect(self.stack, self.database)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            started = now()
            async with self.conn.transaction():
                await self.conn.execute("select pg_logical_emit_message(true, 'bench-commit-probe', '')")
            self.samples.append(now() - started)
            await asyncio.sleep(self.every)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.conn.close()

    def summary(self, slow_s: float = 0.05) -> str:
        slow = sum(1 for s in self.samples if s >= slow_s)
        return f"{latency_line(self.samples)}; {slow} took {1000 * slow_s:.0f} ms or more"


class StatementTimes:
    """PostgreSQL's execution time by statement in one database over a phase, from
    ``pg_stat_statements`` (the stack preloads it, deploy/stack.sh; read in the ``postgres``
    database as the stack's superuser). A ``COPY``'s time includes its wait for the client's rows.
    Where it cannot be read (another PostgreSQL, or one started before the stack preloaded it),
    ``summary`` says why and nothing is measured."""

    QUERY = (
        "select s.query, s.calls, s.total_exec_time from pg_stat_statements s "
        "join pg_database d on d.oid = s.dbid where d.datname = $1"
    )

    def __init__(self, stack: Stack, database: str) -> None:
        self.stack = stack
        self.database = database
        self.missing = ""
        self._before: dict[str, tuple[int, float]] = {}
        self.spent: dict[str, tuple[int, float]] = {}  # statement -> (executions, ms) in the phase

    async def _read(self) -> dict[str, tuple[int, float]]:
        conn = await connect(self.stack, "postgres")
        try:
            rows = await conn.fetch(self.QUERY, self.database)
        finally:
            await conn.close()
        totals: dict[str, tuple[int, float]] = {}
        for query, calls, ms in rows:  # one text can be several entries (per role, per top level)
            known = totals.get(query, (0, 0.0))
            totals[query] = (known[0] + calls, known[1] + ms)
        return totals

    async def start(self) -> None:
        try:
            self._before = await self._read()
        except (asyncpg.PostgresError, OSError) as exc:
            self.missing = f"{type(exc).__name__}: {exc}".splitlines()[0]

    async def stop(self) -> None:
        if self.missing:
            return
        after = await self._read()
        self.spent = {}
        for query, (calls, ms) in after.items():
            before = self._before.get(query, (0, 0.0))
            if calls > before[0]:
                self.spent[query] = (calls - before[0], ms - before[1])

    def summary(self, events: int, top: int = 5) -> str:
        """Each of the ``top`` costliest statements' time an event, then all of them."""
        if self.missing:
            return f"not measured (pg_stat_statements: {self.missing})"
        ranked = sorted(self.spent.items(), key=lambda item: -item[1][1])
        total = sum(ms for _, ms in self.spent.values())
        parts = [f"{1000 * ms / events:.2f} µs {_short(query)} (x{calls:,})" for query, (calls, ms) in ranked[:top]]
        return f"{'; '.join(parts)}; all {len(ranked)} statements {1000 * total / events:.2f} µs an event"


def _short(query: str, width: int = 60) -> str:
    text = " ".join(query.split())
    return text if len(text) <= width else text[: width - 3] + "..."


# ----------------------------------------------------------------------------------------- PostgreSQL


async def connect(stack: Stack, database: str) -> asyncpg.Connection:
    return await asyncpg.connect(stack.dsn(database))


def prefix_bounds(prefix: str) -> tuple[str, str]:
    """Account ids of a run sort between these (ids use [A-Za-z0-9_-], all below '~')."""
    return f"{prefix}-", f"{prefix}-~"


async def count_between(conn: asyncpg.Connection, table: str, lo: str, hi: str) -> int:
    """Rows of ``table`` whose account id sorts between ``lo`` and ``hi`` (one run's accounts)."""
    return int(await conn.fetchval(f"select count(*) from {table} where account_id between $1 and $2", lo, hi))


# ------------------------------------------------------------------------------------------ messages


def new_id() -> str:
    return str(uuid.uuid4())


def micro_cost(rng: random.Random, low: int = 10_000, high: int = 3_000_000) -> int:
    """A call cost in micro-USD between 0.01 and 3.00, skewed to short cheap calls (u squared)."""
    return low + int((high - low) * rng.random() ** 2)


def money_text(micros: int) -> str:
    """Micro-USD as the contract's decimal string with 6 places (``1234567`` -> ``"1.234567"``)."""
    return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"


def call_json(message_id: str, account_id: str, occurred_at: str, call_id: str, cost: str) -> bytes:
    """A ``CallCharged`` serialised by hand (the contract's fields, same JSON pydantic writes)."""
    return (
        f'{{"message_id":"{message_id}","type":"CallCharged","account_id":"{account_id}",'
        f'"occurred_at":"{occurred_at}","schema_version":1,"causation_id":null,'
        f'"call_id":"{call_id}","cost":"{cost}"}}'
    ).encode()


def account_opened_json(message_id: str, account_id: str, occurred_at: str, billing_day: int = 1) -> bytes:
    return (
        f'{{"message_id":"{message_id}","type":"AccountOpened","account_id":"{account_id}",'
        f'"occurred_at":"{occurred_at}","schema_version":1,"causation_id":null,'
        f'"billing_day":{billing_day},"currency":"USD"}}'
    ).encode()


def check_contract(model: Any, sample: bytes) -> None:
    """Fail fast if a hand-written message is not what the contract model reads."""
    model.model_validate_json(sample)


# ----------------------------------------------------------------------------------------- statistics


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), int(-(-p * len(sorted_values) // 100))))
    return sorted_values[rank - 1]


def latency_line(values_s: Sequence[float]) -> str:
    ordered = sorted(values_s)
    if not ordered:
        return "no samples"
    ms = [1000 * percentile(ordered, p) for p in (50, 90, 99)]
    return f"p50 {ms[0]:.1f} ms, p90 {ms[1]:.1f} ms, p99 {ms[2]:.1f} ms, max {1000 * ordered[-1]:.1f} ms (n={len(ordered)})"


def p99_ms(values_s: Sequence[float]) -> float:
    return 1000 * percentile(sorted(values_s), 99)


def verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def run_main(main: Callable[[], Coroutine[Any, Any, int]]) -> None:
    code: int
    try:
        code = asyncio.run(main())
    except KeyboardInterrupt:
        code = 130
    raise SystemExit(code)
