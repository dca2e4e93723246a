"""Roles bound to the sender: the running workers believe a command only when it is signed by a
key that may claim its role (contracts/signing.md), against the real secured broker and database."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from datetime import date
from decimal import Decimal

import pytest

from contracts import Actor
from contracts import messages as m
from deploy.credentials import trusted_keys_file
from deploy.signing import signer_for
from shared.runtime.authentication import KEY_ID_HEADER, SIGNATURE_HEADER, tag
from tests.support import ADMIN, SCHEDULER, SUPPORT, Bus, message, open_account, scalar

pytestmark = pytest.mark.stack

ALERTS = "metering.alerts"
BILLING = "billing.commands"
OPERATOR = Actor(id="ops-1", role="operator")
NOV_12 = date(2026, 11, 12)


async def cap_of(dbs, account: str) -> Decimal:
    cap: Decimal = await scalar(dbs["usage_metering"], "select cap from accounts where account_id = :a", a=account)
    return cap


async def rejection_of(bus: Bus, topic: str, command: m.Command) -> dict:
    [reply] = await bus.wait_count(topic, 1, causation_id=str(command.message_id))
    assert reply["type"] == "CommandRejected"
    return reply


async def test_a_cap_change_claiming_support_is_believed_only_when_signed_by_the_support_tools(stack: Bus, dbs) -> None:
    account = await open_account(stack)

    # The admin UI's key may claim office_admin only.
    forged = message(m.SetCallingCreditCap, account, NOV_12, actor=SUPPORT, cap=Decimal("900.00"))
    await stack.send("metering.commands", forged, signed_as="admin-ui")
    refused = await rejection_of(stack, ALERTS, forged)
    assert refused["reason_code"] == "not_authorized"
    assert refused["reason"] == "key 'admin-ui' is not trusted"  # usage metering trusts no admin UI key

    unsigned = message(m.SetCallingCreditCap, account, NOV_12, actor=SUPPORT, cap=Decimal("901.00"))
    await stack.send("metering.commands", unsigned, signed=False)
    assert (await rejection_of(stack, ALERTS, unsigned))["reason_code"] == "not_authorized"

    # Signed by the support tools, then its cap changed on the way.
    honest = message(m.SetCallingCreditCap, account, NOV_12, actor=SUPPORT, cap=Decimal("300.00"))
    value = honest.model_dump_json().encode()
    headers = signer_for("support-tools").headers("metering.commands", account.encode(), value)
    tampered = value.replace(b'"300.00"', b'"902.00"')
    await stack.send_record("metering.commands", account.encode(), tampered, headers, as_principal="support-tools")
    refused = await rejection_of(stack, ALERTS, honest)
    assert refused["reason_code"] == "not_authorized" and "does not match" in refused["reason"]
    assert await cap_of(dbs, account) == Decimal("250.00")  # none of them changed anything
    assert stack.matching(ALERTS, account_id=account, type="CallingCreditCapChanged") == []

    signed = message(m.SetCallingCreditCap, account, NOV_12, actor=SUPPORT, cap=Decimal("400.00"))
    await stack.send("metering.commands", signed)  # signed by the support tools, as the Bus does
    [changed] = await stack.wait_count(ALERTS, 1, causation_id=str(signed.message_id))
    assert changed["type"] == "CallingCreditCapChanged" and changed["cap"] == "400.00"
    assert await cap_of(dbs, account) == Decimal("400.00")


async def test_a_purchase_signed_by_provisioning_is_refused_and_one_by_the_admin_ui_applies(stack: Bus, dbs) -> None:
    account = await open_account(stack)
    day = date(2026, 11, 16)
    forged = message(m.PurchaseLicenses, account, day, actor=ADMIN, product="user", quantity=5)
    await stack.send("licensing.commands", forged, as_principal="provisioning")  # provisioning may claim service
    assert (await rejection_of(stack, "licensing.events", forged))["reason_code"] == "not_authorized"
    bought = await scalar(dbs["license_orders"], "select count(*) from purchases where account_id = :a", a=account)
    assert not bought

    honest = message(m.PurchaseLicenses, account, day, actor=ADMIN, product="user", quantity=2)
    await stack.send("licensing.commands", honest)
    [purchased] = await stack.wait_count("licensing.events", 1, causation_id=str(honest.message_id))
    assert purchased["type"] == "LicensesPurchased" and purchased["balance"]["purchased"] == 2


async def test_a_close_trigger_needs_the_schedulers_or_an_operators_key(stack: Bus) -> None:
    trigger = message(m.CloseBillingCycles, "platform", date(2026, 11, 1), actor=SCHEDULER, as_of=date(2026, 11, 1))
    await stack.send("billing.commands", trigger, signed_as="support-tools")
    assert (await rejection_of(stack, "billing.cycles", trigger))["reason_code"] == "not_authorized"


async def test_a_service_cannot_sign_toward_another_with_the_keys_its_registry_holds(stack: Bus) -> None:
    """License orders' registry holds the operators' key toward license orders; a close trigger
    tagged with it (a leaked registry, sent with the operators' Kafka login) is refused by cycle
    close, which checks the operators' key toward cycle close."""
    registry = json.loads(trusted_keys_file("license-orders").read_text())
    held = base64.b64decode(registry["keys"]["operator"]["key"])
    day = date(2026, 11, 1)
    forged = message(m.CloseBillingCycles, "platform", day, actor=OPERATOR, as_of=day)
    value = forged.model_dump_json().encode()
    headers = [
        (KEY_ID_HEADER, b"operator"),
        (SIGNATURE_HEADER, base64.b64encode(tag(held, BILLING, b"platform", value))),
    ]
    await stack.send_record(BILLING, b"platform", value, headers, as_principal="operator")
    refused = await rejection_of(stack, "billing.cycles", forged)
    assert refused["reason_code"] == "not_authorized"
    assert refused["reason"] == "the signature of key 'operator' does not match the command"


async def test_the_signature_cost_measure_times_signed_commands_that_usage_metering_applies(dbs) -> None:
    """``python -m deploy.signing --measure``'s parts, tiny: in a process of its own (it wires a
    usage-metering processor, logging and metrics included); it fails unless the commands applied."""
    script = (
        "import asyncio, json; from deploy.signing import measure_handling, measure_steps; "
        "print(json.dumps({**measure_steps(rounds=20), **asyncio.run(measure_handling(commands=4, rounds=1))}))"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()[-2000:]
    costs = json.loads(out.decode().splitlines()[-1])
    assert set(costs) == {
        "sign",
        "check",
        "parse",
        "handling",
        "handling, unchecked",
        "handling CPU",
        "handling CPU, unchecked",
    }
    assert all(us > 0 for us in costs.values())
