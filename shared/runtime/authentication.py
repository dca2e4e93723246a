"""Commands prove who sent them: an HMAC-SHA256 tag over the record's topic, key and value, under a
key that only the sender and the one receiving service hold.

Kafka does not tell a consumer who produced a record, so the role a command claims in its body
proves nothing by itself. Each sender (a principal that may claim roles) keeps one master secret
(32 random bytes); its key toward a service S is ``receiver_key(master, S)``,
``HMAC-SHA256(master, b"license-billing command key v1|" + S)``. It tags
``signed_bytes(topic, key, value)`` with the key toward the service that reads the topic
(``contracts.access.receiver_of``) and puts its key id and the tag in the record's headers
(``KEY_ID_HEADER``, ``SIGNATURE_HEADER``: base64). A service holds a registry of the keys toward
itself only (``TrustedKeys``, a JSON file, a secret): the key id and derived key of each sender it
trusts, and the roles each may claim. So a service can forge no command toward another service;
what it holds could only tag commands toward itself. The processor asks ``command_refusal`` once
per message, before its handler; any answer but ``None`` rejects the command with
``not_authorized`` and changes nothing. The scheme is documented in ``contracts/signing.md``; why
HMAC and not a public-key signature in ``docs/security.md`` ("Cost").
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from contracts.access import receiver_of
from contracts.envelope import Command, Envelope
from shared.runtime.codec import KafkaRecord

KEY_ID_HEADER = "billing-key-id"
SIGNATURE_HEADER = "billing-signature"
_DOMAIN = b"license-billing command v1"
KEY_LABEL = b"license-billing command key v1|"
MASTER_SECRET_BYTES = 32


def signed_bytes(topic: str, key: bytes | None, value: bytes) -> bytes:
    """What is tagged: a fixed prefix, then the topic, key and value, each preceded by its length
    (4 bytes, big-endian), so no two different records give the same bytes."""
    parts = (_DOMAIN, topic.encode(), key or b"", value)
    return b"".join(len(part).to_bytes(4, "big") + part for part in parts)


def receiver_key(master: bytes, service: str) -> bytes:
    """A sender's key toward ``service``: what that service's registry holds for the sender."""
    return hmac.digest(master, KEY_LABEL + service.encode(), "sha256")


def tag(key: bytes, topic: str, record_key: bytes | None, value: bytes) -> bytes:
    """The 32-byte HMAC-SHA256 of the record's signed bytes."""
    return hmac.digest(key, signed_bytes(topic, record_key, value), "sha256")


@dataclass(frozen=True)
class Signer:
    """Signs records as one key id (a client kind, e.g. ``admin-ui``) with its master secret."""

    key_id: str
    master: bytes = field(repr=False)
    _keys: dict[str, bytes] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.master) != MASTER_SECRET_BYTES:
            raise ValueError(f"a signing key is {MASTER_SECRET_BYTES} bytes, not {len(self.master)}")

    @classmethod
    def from_file(cls, key_id: str, path: str | Path) -> Signer:
        """The master secret as stored: its 32 raw bytes."""
        return cls(key_id, Path(path).read_bytes())

    def key_toward(self, service: str) -> bytes:
        key = self._keys.get(service)
        if key is None:
            key = self._keys[service] = receiver_key(self.master, service)
        return key

    def headers(self, topic: str, key: bytes | None, value: bytes) -> list[tuple[str, bytes]]:
        """The two headers of a command sent to ``topic``, tagged for the service that reads it."""
        mac = tag(self.key_toward(receiver_of(topic).name), topic, key, value)
        return [(KEY_ID_HEADER, self.key_id.encode()), (SIGNATURE_HEADER, base64.b64encode(mac))]


@dataclass(frozen=True)
class TrustedKey:
    key: bytes = field(repr=False)
    """The sender's key toward this service (``receiver_key``)."""
    roles: frozenset[str]


class TrustedKeys:
    """A service's registry of the senders it trusts (their keys toward it) and the roles each may claim."""

    def __init__(self, keys: Mapping[str, TrustedKey]) -> None:
        self.keys = dict(keys)

    def __repr__(self) -> str:
        return f"TrustedKeys({sorted(self.keys)})"

    @classmethod
    def from_file(cls, path: str | Path) -> TrustedKeys:
        """``{"keys": {"<key id>": {"key": "<base64 of the 32-byte derived key>", "roles": [...]}}}``."""
        document = json.loads(Path(path).read_text())
        return cls(
            {
                key_id: TrustedKey(base64.b64decode(entry["key"], validate=True), frozenset(entry["roles"]))
                for key_id, entry in document["keys"].items()
            }
        )

    def refusal(
        self, topic: str, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]], role: str
    ) -> str | None:
        """Why this command may not be believed, or ``None`` when its tag and role check out."""
        key_id_raw = signature = None
        for name, raw in headers:
            if name == KEY_ID_HEADER:
                key_id_raw = raw
            elif name == SIGNATURE_HEADER:
                signature = raw
        if key_id_raw is None or signature is None:
            return "the command is not signed"
        key_id = key_id_raw.decode("utf-8", "replace")
        trusted = self.keys.get(key_id)
        if trusted is None:
            return f"key {key_id!r} is not trusted"
        try:
            given = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            given = b""
        if not hmac.compare_digest(given, tag(trusted.key, topic, key, value)):
            return f"the signature of key {key_id!r} does not match the command"
        if role not in trusted.roles:
            return f"key {key_id!r} may not claim role {role!r}"
        return None


def command_refusal(keys: TrustedKeys | None, record: KafkaRecord, message: Envelope) -> str | None:
    """Why the processor must not believe this command, or ``None`` (also for an event, and when
    the processor was built without a registry: the runtime's own tests)."""
    if keys is None or not isinstance(message, Command):
        return None
    return keys.refusal(record.topic, record.key, record.value or b"", record.headers, message.actor.role)
