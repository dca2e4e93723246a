"""Which handler takes which message type: one message at a time, or a whole batch at once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

from contracts.envelope import Command, Envelope
from contracts.topics import BY_NAME
from shared.runtime.unit_of_work import UnitOfWork

M = TypeVar("M", bound=Envelope)
Handler = Callable[[UnitOfWork[Any, Any], Any], Awaitable[None]]
BatchHandler = Callable[[UnitOfWork[Any, Any], list[Any]], Awaitable[None]]
BatchDecoder = Callable[[bytes], list[Any]]


class HandlerRegistry:
    """Maps message types to a service's handlers: one at a time, or a whole batch at once."""

    def __init__(self) -> None:
        self.single: dict[str, Handler] = {}
        self.batch: dict[str, BatchHandler] = {}
        self.deduplicated_by_handler: set[str] = set()
        self.decoders: dict[str, BatchDecoder] = {}

    def on(self, model: type[M]) -> Callable[[Callable[[Any, M], Awaitable[None]]], Any]:
        def register(handler: Callable[[Any, M], Awaitable[None]]) -> Any:
            self.single[model.model_fields["type"].default] = handler
            return handler

        return register

    def on_batch(
        self, model: type[M], deduplicates: bool = False, decoder: BatchDecoder | None = None
    ) -> Callable[[Callable[[Any, list[Any]], Awaitable[None]]], Any]:
        """``deduplicates=True``: the handler records each message by a business key in the same
        transaction (e.g. a call id) and ignores repeats, so the inbox row would only repeat it.

        ``decoder`` (only with ``deduplicates``, never for a command, whose sender must be checked
        one by one): reads a JSON array of the type faster than the
        model, into objects of its own with the model's fields (and ``message_id``, ``type``,
        ``account_id``), taking a subset of what the model takes with the same values and raising
        on anything else; the processor then reads that batch with the model. The handler gets
        either kind."""
        name = model.model_fields["type"].default
        if decoder is not None and (not deduplicates or issubclass(model, Command)):
            raise ValueError(f"a decoder of {name} needs an event whose handler deduplicates it")

        def register(handler: Callable[[Any, list[Any]], Awaitable[None]]) -> Any:
            self.batch[name] = handler
            if deduplicates:
                self.deduplicated_by_handler.add(name)
            if decoder is not None:
                self.decoders[name] = decoder
            return handler

        return register

    def wants(self, topic: str, message_type: str) -> bool:
        """False for a type the topic carries but this service has no handler for (e.g. cycle close
        reading ``licensing.events`` only for the seals): skipped without an inbox row. A type
        the topic does not carry is wanted: it gets its rejection or dead letter."""
        if message_type in self.single or message_type in self.batch:
            return True
        carried = BY_NAME.get(topic)
        return carried is None or carried.model_for(message_type) is None

    async def dispatch(self, unit: UnitOfWork[Any, Any], message: Envelope) -> None:
        """Run the single-message handler for ``message`` (used to replay parked messages too)."""
        handler = self.single.get(message.type)
        if handler is not None:
            await handler(unit, message)
        elif message.type in self.batch:
            await self.batch[message.type](unit, [message])


class _ForAccount(Protocol):
    @property
    def account_id(self) -> str: ...


A = TypeVar("A", bound=_ForAccount)


def one_per_account(messages: Sequence[A]) -> list[list[A]]:
    """Split a batch into rounds in which each account appears at most once, keeping each
    account's order: a set-based handler then runs round by round (e.g. catch-up seals)."""
    rounds: list[list[A]] = []
    seen_in: dict[str, int] = {}
    for message in messages:
        index = seen_in.get(message.account_id, -1) + 1
        if index == len(rounds):
            rounds.append([])
        rounds[index].append(message)
        seen_in[message.account_id] = index
    return rounds
