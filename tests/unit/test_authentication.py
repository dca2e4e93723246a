"""Commands bound to their sender: what a signature covers, which claims a key may make, and that
a key toward one service is worth nothing toward another."""

from __future__ import annotations

import base64
import json
import secrets
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from contracts import Actor
from contracts import messages as m
from contracts.access import COMMAND_TOPICS, receiver_of
from deploy import credentials
from shared.runtime.authentication import (
    KEY_ID_HEADER,
    SIGNATURE_HEADER,
    Signer,
    TrustedKey,
    TrustedKeys,
    command_refusal,
    receiver_key,
    signed_bytes,
    tag,
)
from shared.runtime.codec import Record

ADMIN_UI = Signer("admin-ui", secrets.token_bytes(32))
SUPPORT_TOOLS = Signer("support-tools", secrets.token_bytes(32))
TOPIC = "metering.commands"  # read by usage metering
TRUSTED = TrustedKeys(  # usage metering's registry: the keys toward it
    {
        "admin-ui": TrustedKey(ADMIN_UI.key_toward("usage-metering"), frozenset({"office_admin"})),
        "support-tools": TrustedKey(SUPPORT_TOOLS.key_toward("usage-metering"), frozenset({"support", "sales"})),
    }
)


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
    stranger = Signer("support-tools", secrets.token_bytes(32))  # same key id, another key
    assert "does not match" in str(TRUSTED.refusal(TOPIC, key, value, stranger.headers(TOPIC, key, value), "support"))
    nobody = Signer("nobody", secrets.token_bytes(32))
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
    [(_, mac)] = [h for h in headers if h[0] == SIGNATURE_HEADER]
    truncated = [(KEY_ID_HEADER, b"support-tools"), (SIGNATURE_HEADER, base64.b64encode(base64.b64decode(mac)[:16]))]
    assert "does not match" in str(TRUSTED.refusal(TOPIC, key, value, truncated, "support"))


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


def test_a_command_tagged_for_one_service_is_refused_by_another() -> None:
    """A service holds the senders' keys toward itself only: with them it cannot make a command
    another service believes, and a command meant for it is worthless elsewhere."""
    _, key, value = cap_change("support")
    license_orders = TrustedKeys(
        {"support-tools": TrustedKey(SUPPORT_TOOLS.key_toward("license-orders"), frozenset({"support"}))}
    )
    toward_metering = SUPPORT_TOOLS.headers(TOPIC, key, value)
    assert TRUSTED.refusal(TOPIC, key, value, toward_metering, "support") is None
    assert "does not match" in str(license_orders.refusal(TOPIC, key, value, toward_metering, "support"))
    # What license orders could make with the key it holds, sent to usage metering's topic:
    held = license_orders.keys["support-tools"].key
    forged = [(KEY_ID_HEADER, b"support-tools"), (SIGNATURE_HEADER, base64.b64encode(tag(held, TOPIC, key, value)))]
    assert "does not match" in str(TRUSTED.refusal(TOPIC, key, value, forged, "support"))
    assert SUPPORT_TOOLS.key_toward("license-orders") != SUPPORT_TOOLS.key_toward("usage-metering")


def test_the_key_toward_a_service_is_the_documented_derivation() -> None:
    """contracts/signing.md: HMAC-SHA256(master, "license-billing command key v1|" + service), and
    the tag HMAC-SHA256(that key, signed bytes), base64 in the header."""
    import hashlib
    import hmac

    master = bytes(range(32))
    derived = hmac.new(master, b"license-billing command key v1|usage-metering", hashlib.sha256).digest()
    assert receiver_key(master, "usage-metering") == derived
    headers = dict(Signer("support-tools", master).headers(TOPIC, b"k", b"v"))
    expected = hmac.new(derived, signed_bytes(TOPIC, b"k", b"v"), hashlib.sha256).digest()
    assert headers == {KEY_ID_HEADER: b"support-tools", SIGNATURE_HEADER: base64.b64encode(expected)}


def test_every_command_topic_has_one_receiving_service_and_nothing_else_is_signed() -> None:
    assert {t: receiver_of(t).name for t in COMMAND_TOPICS} == {
        "licensing.commands": "license-orders",
        "metering.commands": "usage-metering",
        "billing.commands": "cycle-close",
    }
    with pytest.raises(ValueError, match="not a command topic"):
        ADMIN_UI.headers("licensing.events", b"k", b"v")
    with pytest.raises(ValueError, match="32 bytes"):
        Signer("admin-ui", b"short")


def test_neither_a_signer_nor_a_registry_shows_its_keys() -> None:
    shown = repr(ADMIN_UI) + repr(TRUSTED) + repr(TRUSTED.keys)
    for secret in (ADMIN_UI.master, ADMIN_UI.key_toward("usage-metering"), SUPPORT_TOOLS.key_toward("usage-metering")):
        assert secret.hex() not in shown and base64.b64encode(secret).decode() not in shown
        assert repr(secret) not in shown


def test_the_stacks_registry_files_are_secret_and_believe_the_stacks_signers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STACK_DIR", str(tmp_path))
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()  # as an older stack left it: an Ed25519 key, a public registry readable by all
    (secrets_dir / "signing-admin-ui.pem").write_text("-----BEGIN PRIVATE KEY-----\n")
    (secrets_dir / "trusted-keys-usage-metering.json").write_text('{"keys": {}}')
    (secrets_dir / "trusted-keys-usage-metering.json").chmod(0o644)
    credentials.ensure()
    assert not (secrets_dir / "signing-admin-ui.pem").exists()
    master = (secrets_dir / "signing-support-tools.key").read_bytes()
    registry = secrets_dir / "trusted-keys-usage-metering.json"
    assert len(master) == 32 and registry.stat().st_mode & 0o777 == 0o600
    document = json.loads(registry.read_text())
    assert set(document["keys"]) == {"support-tools", "operator"}

    loaded = TrustedKeys.from_file(registry)
    _, key, value = cap_change("support")
    signer = Signer.from_file("support-tools", secrets_dir / "signing-support-tools.key")
    assert loaded.refusal(TOPIC, key, value, signer.headers(TOPIC, key, value), "support") is None
    credentials.ensure()  # again: the keys are kept, the registry rewritten the same, still private
    assert (secrets_dir / "signing-support-tools.key").read_bytes() == master
    assert json.loads(registry.read_text()) == document and registry.stat().st_mode & 0o777 == 0o600
