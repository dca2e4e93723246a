"""Commands prove who sent them: an Ed25519 signature over the record's topic, key and value.

Kafka does not tell a consumer who produced a record, so the role a command claims in its body
proves nothing by itself. A sender signs ``signed_bytes(topic, key, value)`` with its private key
and puts its key id and the signature in the record's headers (``KEY_ID_HEADER``,
``SIGNATURE_HEADER``: base64). A service holds only public keys: a registry of the keys it
trusts and the roles each may claim (``TrustedKeys``, a JSON file). The processor asks
``command_refusal`` once per message, before its handler; any answer but ``None`` rejects the
command with ``not_authorized`` and changes nothing. The scheme is documented in ``contracts/signing.md``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from contracts.envelope import Command, Envelope
from shared.runtime.codec import KafkaRecord

KEY_ID_HEADER = "billing-key-id"
SIGNATURE_HEADER = "billing-signature"
_DOMAIN = b"license-billing command v1"


def signed_bytes(topic: str, key: bytes | None, value: bytes) -> bytes:
    """What is signed: a fixed prefix, then the topic, key and value, each preceded by its length
    (4 bytes, big-endian), so no two different records give the same bytes."""
    parts = (_DOMAIN, topic.encode(), key or b"", value)
    return b"".join(len(part).to_bytes(4, "big") + part for part in parts)


@dataclass(frozen=True)
class Signer:
    """Signs records as one key id (a client kind, e.g. ``admin-ui``)."""

    key_id: str
    private_key: Ed25519PrivateKey

    @classmethod
    def from_pem(cls, key_id: str, pem: bytes) -> Signer:
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        key = load_pem_private_key(pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("the signing key must be an Ed25519 private key")
        return cls(key_id, key)

    def headers(self, topic: str, key: bytes | None, value: bytes) -> list[tuple[str, bytes]]:
        signature = self.private_key.sign(signed_bytes(topic, key, value))
        return [(KEY_ID_HEADER, self.key_id.encode()), (SIGNATURE_HEADER, base64.b64encode(signature))]


@dataclass(frozen=True)
class TrustedKey:
    public_key: Ed25519PublicKey
    roles: frozenset[str]


class TrustedKeys:
    """A service's registry of the keys it trusts and the roles each may claim."""

    def __init__(self, keys: Mapping[str, TrustedKey]) -> None:
        self.keys = dict(keys)

    @classmethod
    def from_file(cls, path: str | Path) -> TrustedKeys:
        """``{"keys": {"<key id>": {"public_key": "<base64 of the 32 raw bytes>", "roles": [...]}}}``."""
        document = json.loads(Path(path).read_text())
        return cls(
            {
                key_id: TrustedKey(
                    Ed25519PublicKey.from_public_bytes(base64.b64decode(entry["public_key"])),
                    frozenset(entry["roles"]),
                )
                for key_id, entry in document["keys"].items()
            }
        )

    def refusal(
        self, topic: str, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]], role: str
    ) -> str | None:
        """Why this command may not be believed, or ``None`` when its signature and role check out."""
        found = {name: raw for name, raw in headers if name in (KEY_ID_HEADER, SIGNATURE_HEADER)}
        if KEY_ID_HEADER not in found or SIGNATURE_HEADER not in found:
            return "the command is not signed"
        key_id = found[KEY_ID_HEADER].decode("utf-8", "replace")
        trusted = self.keys.get(key_id)
        if trusted is None:
            return f"key {key_id!r} is not trusted"
        try:
            trusted.public_key.verify(base64.b64decode(found[SIGNATURE_HEADER]), signed_bytes(topic, key, value))
        except (InvalidSignature, ValueError):
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
