"""Reading records: bytes -> envelope -> contract model, and the dead-letter record for what fails."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import SchemaValidator, core_schema

from contracts.envelope import Envelope
from contracts.topics import BY_NAME

MAX_ERROR_CHARS = 2000
MAX_DLQ_VALUE_BYTES = 256 * 1024


class KafkaRecord(Protocol):
    """What the runtime reads of a record: aiokafka's ``ConsumerRecord`` as fetched (no copy on
    the hot path), or a ``Record`` built by hand."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...
    @property
    def timestamp(self) -> int | None: ...


@dataclass(frozen=True)
class Record:
    """The parts of a Kafka record the runtime needs (aiokafka's ConsumerRecord has them)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp: int = 0
    """The record's Kafka timestamp (ms). With topic/partition/offset it names one record even if
    a topic is recreated (offsets start again) while the service's database is kept."""


class Unreadable(Exception):
    """The record is not JSON, or its envelope cannot be read: it belongs in the DLQ."""


def read_envelope(record: KafkaRecord) -> Envelope:
    if not record.value:
        raise Unreadable("empty record value")
    try:
        return Envelope.model_validate_json(record.value)
    except ValidationError as exc:
        if any(error["type"] == "json_invalid" for error in exc.errors()):
            raise Unreadable("not JSON") from None
        if any(error["type"] == "model_type" for error in exc.errors()):
            raise Unreadable("not a JSON object") from None
        raise Unreadable(f"unreadable envelope: {describe(exc)}") from None


def parse_model(record: KafkaRecord, envelope: Envelope) -> Envelope | None:
    """The full contract model for this record, or None when the topic does not carry the type."""
    topic = BY_NAME.get(record.topic)
    model = topic.model_for(envelope.type) if topic else None
    if model is None:
        return None
    assert record.value is not None
    return model.model_validate_json(record.value)


M = TypeVar("M", bound=BaseModel)


def list_decoder(model: type[M]) -> Callable[[bytes], list[M]]:
    """A JSON array of ``model`` read as ``TypeAdapter(list[model]).validate_json`` reads it, at
    about two thirds of its cost (docs/architecture.md, Decisions).

    The array is validated as a list of plain dicts with the model's own field schemas and core
    config (the same types, constraints and validators, strictness and extra-field handling, so it
    accepts and refuses the same JSON), then each dict becomes the model's ``__dict__`` without a
    second validation: pydantic-core builds its model instances with more per-object work than
    that. Only for a flat model (fields only: no model validator, custom ``__init__``, aliases or
    private attributes), the only kind this can reproduce; any other gets pydantic's own adapter.
    Unlike pydantic, every field counts as set (``model_fields_set``), explicit or defaulted.
    """
    schema: dict[str, Any] = dict(model.__pydantic_core_schema__)
    inner = schema.get("schema", {})
    flat = (
        schema.get("type") == "model"
        and not schema.get("custom_init")
        and not schema.get("post_init")
        and inner.get("type") == "model-fields"
        and not inner.get("computed_fields")
        and not model.__private_attributes__
        and schema.get("config", {}).get("extra_fields_behavior") != "allow"
        and all(
            f.get("type") == "model-field" and "validation_alias" not in f and "serialization_alias" not in f
            for f in inner["fields"].values()
        )
    )
    if not flat:
        return TypeAdapter(list[model]).validate_json  # type: ignore[valid-type]
    fields = {
        name: core_schema.typed_dict_field(field["schema"], required=field["schema"]["type"] != "default")
        for name, field in inner["fields"].items()
    }
    try:
        config = schema.get("config")
        row = core_schema.typed_dict_schema(fields, config=config)  # the fields take their config from here
        validator = SchemaValidator(core_schema.list_schema(row), config)
    except Exception:  # e.g. a field that refers to a definition of the model's schema: pydantic's own way
        return TypeAdapter(list[model]).validate_json  # type: ignore[valid-type]
    every_field = set(fields)
    new, assign = object.__new__, object.__setattr__

    def decode(data: bytes) -> list[M]:
        instances = []
        for values in validator.validate_json(data):
            instance = new(model)
            assign(instance, "__dict__", values)
            assign(instance, "__pydantic_fields_set__", every_field)
            assign(instance, "__pydantic_extra__", None)
            assign(instance, "__pydantic_private__", None)
            instances.append(instance)
        return instances

    return decode


def describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False):
        location = ".".join(str(p) for p in error["loc"]) or "message"
        parts.append(f"{location}: {error['msg']}")
    return "; ".join(parts)[:MAX_ERROR_CHARS]


def dead_letter_payload(record: KafkaRecord, error: str, consumer: str = "") -> bytes:
    """What goes to ``<topic>.dlq``: the original bytes, where they came from, the error, when, and
    which consumer group gave up on it (a topic read by three services may get three records).

    The value is carried as text when it is UTF-8, else as base64. A value over
    ``MAX_DLQ_VALUE_BYTES`` is cut there (``value_truncated``, ``value_size``) so the dead letter
    always fits in a Kafka record; the whole value stays in the service's ``dead_letters`` table.
    """
    value = record.value or b""
    kept = value[:MAX_DLQ_VALUE_BYTES]
    try:
        text: str | None = kept.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    document = {
        "original_topic": record.topic,
        "consumer": consumer,
        "partition": record.partition,
        "offset": record.offset,
        "key": record.key.decode("utf-8", "replace") if record.key is not None else None,
        "headers": {name: base64.b64encode(raw or b"").decode() for name, raw in record.headers},
        "value_text": text,
        "value_base64": None if text is not None else base64.b64encode(kept).decode(),
        "value_size": len(value),
        "value_truncated": len(value) > len(kept),
        "error": error[:MAX_ERROR_CHARS],
        "failed_at": datetime.now(UTC).isoformat(),
    }
    return json.dumps(document).encode()
