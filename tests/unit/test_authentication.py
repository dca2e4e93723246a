"""Commands bound to their sender: what a signature covers and which claims a key may make."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contracts import Actor
from contracts import messages as m
from shared.runtime.authentication import (
    KEY_ID_HEADER,
    SIGNATURE_HEADER,
    Signer,
    TrustedKey,
    TrustedKeys,
    command_refusal,
    signed_bytes,
)
from shared.runtime.codec import Record

ADMIN_UI = Signer("admin-ui", Ed25519PrivateKey.generate())
SUPPORT_TOOLS = Signer("support-tools", Ed25519PrivateKey.generate())
TRUSTED = TrustedKeys(
    {
        "admin-ui": TrustedKey(ADMIN_UI.private_key.public_key(), frozenset({"office_admin"})),
        "support-tools": TrustedKey(SUPPORT_TOOLS.private_key.public_key(), frozenset({"support", "sales"})),
    }
)
TOPIC = "metering.commands"


def cap_change(role: str) -> tuple[m.SetCallingCreditCap, bytes, bytes]:
    command = m.SetCallingCreditCap(
        message_id=uuid.uuid4(),
        account_id="acct-1",
        occurred_at=datetime(2026, 11, 20, 12, tzinfo=UTC),
        actor=Actor(id="someone", role=role),
        cap=Decimal("400.00"),
    )
    return command, command.account_id.encode(), command.model_dump_json().encode()


def test_a_command_signed_by_a_key_that_may_claim_its_role_is_believed() -> None:
    _, key, value = cap_change("support")
    assert TRUSTED.refusal(TOPIC, key, value, SUPPORT_TOOLS.headers(TOPIC, key, value), "support") is None


def test_a_role_the_key_may_not_claim_is_refused() -> None:
    _, key, value = cap_change("support")
    refusal = TRUSTED.refusal(TOPIC, key, value, ADMIN_UI.headers(TOPIC, key, value), "support")
    assert refusal == "key 'admin-ui' may not claim role 'support'"


def test_an_unsigned_command_or_an_unknown_key_is_refused() -> None:
    _, key, value = cap_change("support")
    assert TRUSTED.refusal(TOPIC, key, value, [], "support") == "the command is not signed"
    stranger = Signer("support-tools", Ed25519PrivateKey.generate())  # same key id, another key
    assert "does not match" in str(TRUSTED.refusal(TOPIC, key, value, stranger.headers(TOPIC, key, value), "support"))
    nobody = Signer("nobody", Ed25519PrivateKey.generate())
    assert (
        TRUSTED.refusal(TOPIC, key, value, nobody.headers(TOPIC, key, value), "support")
        == "key 'nobody' is not trusted"
    )


def test_changing_the_value_key_or_topic_after_signing_breaks_the_signature() -> None:
    _, key, value = cap_change("support")
    headers = SUPPORT_TOOLS.headers(TOPIC, key, value)
    raised = value.replace(b'"400.00"', b'"900.00"')
    for topic, k, v in [(TOPIC, key, raised), (TOPIC, b"acct-2", value), ("licensing.commands", key, value)]:
        assert "does not match" in str(TRUSTED.refusal(topic, k, v, headers, "support"))
    garbled = [(KEY_ID_HEADER, b"support-tools"), (SIGNATURE_HEADER, b"not base64!")]
    assert "does not match" in str(TRUSTED.refusal(TOPIC, key, value, garbled, "support"))


def test_the_signed_bytes_keep_their_parts_apart() -> None:
    assert signed_bytes("ab", b"c", b"") != signed_bytes("a", b"bc", b"")
    assert signed_bytes("t", None, b"v") == signed_bytes("t", b"", b"v")


def test_the_processor_checks_commands_only_and_only_with_a_registry() -> None:
    command, key, value = cap_change("support")
    record = Record(TOPIC, 0, 0, key, value, ())
    assert command_refusal(TRUSTED, record, command) == "the command is not signed"
    assert command_refusal(None, record, command) is None
    event = m.CallingBlocked(
        message_id=uuid.uuid4(),
        account_id="acct-1",
        occurred_at=datetime(2026, 11, 20, tzinfo=UTC),
        accrued=Decimal("1"),
        cap=Decimal("1"),
        cycle_start=datetime(2026, 11, 1).date(),
    )
    assert command_refusal(TRUSTED, Record("metering.alerts", 0, 0, key, b"{}", ()), event) is None


def test_a_registry_file_holds_public_keys_and_roles(tmp_path: Path) -> None:
    raw = ADMIN_UI.private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    path = tmp_path / "trusted.json"
    path.write_text(
        json.dumps({"keys": {"admin-ui": {"public_key": base64.b64encode(raw).decode(), "roles": ["office_admin"]}}})
    )
    loaded = TrustedKeys.from_file(path)
    _, key, value = cap_change("office_admin")
    assert loaded.refusal(TOPIC, key, value, ADMIN_UI.headers(TOPIC, key, value), "office_admin") is None
