"""License orders over the real broker and database: the article's purchase, remove and restore flows."""

from __future__ import annotations

import asyncio
from datetime import date

import pytest

from contracts import messages as m
from tests import support
from tests.support import ADMIN, SERVICE, SUPPORT, Bus, message

pytestmark = pytest.mark.stack
EVENTS = "licensing.events"
NOV_1, NOV_16 = date(2026, 11, 1), date(2026, 11, 16)


async def open_account(bus: Bus, billing_day: int = 1, day: date = NOV_1) -> str:
    return await support.open_account(bus, day, billing_day)


async def command(bus: Bus, model: type[m.Command], account: str, day: date = NOV_16, actor=ADMIN, **fields) -> dict:
    sent = message(model, account, day, actor=actor, **fields)
    await bus.send("licensing.commands", sent)
    [reply] = await bus.wait_count(EVENTS, 1, causation_id=str(sent.message_id))
    return reply


async def test_buying_two_users_mid_cycle_charges_half_a_month_each(stack: Bus) -> None:
    account = await open_account(stack)
    preview = await command(stack, m.PreviewLicensePurchase, account, product="user", quantity=2)
    bought = await command(stack, m.PurchaseLicenses, account, product="user", quantity=2)

    assert preview["type"] == "LicensePurchasePreview"
    assert preview["prorated_amount"] == "15.00"
    assert preview["recurring_amount_per_cycle"] == "30.00"
    assert (preview["cycle_start"], preview["cycle_end"]) == ("2026-11-01", "2026-12-01")
    assert bought["type"] == "LicensesPurchased"
    assert bought["prorated_amount"] == preview["prorated_amount"]
    assert bought["quantity_added"] == 2 and bought["quantity_restored"] == 0
    assert bought["balance"] == {"purchased": 2, "assigned": 0, "scheduled_for_removal": 0, "available": 2}


async def test_removing_schedules_for_cycle_end_and_buying_again_restores_free(stack: Bus) -> None:
    account = await open_account(stack)
    await command(stack, m.PurchaseLicenses, account, product="room_phone", quantity=3)
    removal = await command(stack, m.RemoveLicenses, account, date(2026, 11, 20), product="room_phone", quantity=2)
    restore = await command(stack, m.PurchaseLicenses, account, date(2026, 11, 21), product="room_phone", quantity=1)

    assert removal["type"] == "LicenseRemovalScheduled"
    assert removal["effective_on"] == "2026-12-01"
    assert removal["balance"] == {"purchased": 3, "assigned": 0, "scheduled_for_removal": 2, "available": 1}
    assert restore["quantity_restored"] == 1 and restore["quantity_added"] == 0
    assert restore["prorated_amount"] == "0.00"
    assert restore["balance"] == {"purchased": 3, "assigned": 0, "scheduled_for_removal": 1, "available": 2}


async def test_removing_more_than_available_is_refused_with_how_many_could_go(stack: Bus) -> None:
    account = await open_account(stack)
    await command(stack, m.PurchaseLicenses, account, product="user", quantity=5)
    for n in range(3):
        await command(stack, m.AssignLicense, account, actor=SERVICE, product="user", assignee_id=f"u{n}")
    refused = await command(stack, m.RemoveLicenses, account, product="user", quantity=3)

    assert refused["type"] == "CommandRejected"
    assert refused["reason_code"] == "insufficient_available_licenses"
    assert "only 2 of your 5 user licenses" in refused["reason"]


async def test_twelve_invitations_against_ten_licenses_admit_exactly_the_first_ten(stack: Bus) -> None:
    account = await open_account(stack)
    await command(stack, m.PurchaseLicenses, account, product="user", quantity=10)
    sent = [
        message(m.AssignLicense, account, NOV_16, actor=SERVICE, product="user", assignee_id=f"u{n}") for n in range(12)
    ]
    for invite in sent:
        await stack.send("licensing.commands", invite)
    replies = [(await stack.wait_count(EVENTS, 1, causation_id=str(invite.message_id)))[0] for invite in sent]

    assert [r["type"] for r in replies] == ["LicenseAssigned"] * 10 + ["CommandRejected"] * 2
    assert {r["reason_code"] for r in replies[10:]} == {"no_license_available"}
    assert replies[9]["balance"]["available"] == 0


async def test_assigning_the_same_assignee_twice_takes_one_license(stack: Bus) -> None:
    account = await open_account(stack)
    await command(stack, m.PurchaseLicenses, account, product="fax", quantity=2)
    first = await command(stack, m.AssignLicense, account, actor=SERVICE, product="fax", assignee_id="+15550100")
    second = await command(stack, m.AssignLicense, account, actor=SERVICE, product="fax", assignee_id="+15550100")
    freed = await command(stack, m.UnassignLicense, account, actor=SERVICE, product="fax", assignee_id="+15550100")

    assert first["balance"]["assigned"] == 1
    assert second["reason_code"] == "already_assigned"
    assert freed["type"] == "LicenseUnassigned" and freed["balance"]["assigned"] == 0


async def test_a_command_delivered_three_times_has_one_effect_and_one_result(stack: Bus) -> None:
    account = await open_account(stack)
    once = message(m.PurchaseLicenses, account, NOV_16, actor=ADMIN, product="user", quantity=4)
    for _ in range(3):
        await stack.send("licensing.commands", once)
    check = await command(stack, m.PreviewLicensePurchase, account, product="user", quantity=1)
    await asyncio.sleep(0)  # the preview was processed after the three copies (same partition, in order)

    assert len(stack.matching(EVENTS, causation_id=str(once.message_id))) == 1
    assert check["quantity_added"] == 1
    purchased = stack.matching(EVENTS, causation_id=str(once.message_id))[0]
    assert purchased["balance"]["purchased"] == 4


async def test_a_role_that_may_not_buy_is_refused_and_nothing_changes(stack: Bus) -> None:
    account = await open_account(stack)
    refused = await command(stack, m.PurchaseLicenses, account, actor=SUPPORT, product="user", quantity=1)
    after = await command(stack, m.PurchaseLicenses, account, product="user", quantity=1)

    assert refused["reason_code"] == "not_authorized"
    assert after["balance"]["purchased"] == 1


async def test_invalid_quantity_and_unknown_product_are_refused_with_reason_codes(stack: Bus) -> None:
    account = await open_account(stack)
    bad_quantity = b'{"message_id":"%s","type":"PurchaseLicenses","account_id":"%s","occurred_at":"2026-11-16T12:00:00Z","schema_version":1,"actor":{"id":"a","role":"office_admin"},"product":"user","quantity":0}'
    bad_product = bad_quantity.replace(b'"product":"user","quantity":0', b'"product":"desk","quantity":1')
    import uuid

    ids = [uuid.uuid4(), uuid.uuid4()]
    await stack.send("licensing.commands", bad_quantity % (str(ids[0]).encode(), account.encode()), key=account)
    await stack.send("licensing.commands", bad_product % (str(ids[1]).encode(), account.encode()), key=account)
    [first] = await stack.wait_count(EVENTS, 1, causation_id=str(ids[0]))
    [second] = await stack.wait_count(EVENTS, 1, causation_id=str(ids[1]))

    assert first["reason_code"] == "invalid_quantity"
    assert second["reason_code"] == "unknown_product"


async def test_a_purchase_dated_after_a_removal_took_effect_buys_new_licenses_instead_of_restoring(stack: Bus) -> None:
    account = await open_account(stack)
    await command(stack, m.PurchaseLicenses, account, date(2026, 11, 1), product="user", quantity=5)
    await command(stack, m.RemoveLicenses, account, date(2026, 11, 20), product="user", quantity=2)
    # The November close has not run yet, but in business time the 2 left on Dec 1.
    late = await command(stack, m.PurchaseLicenses, account, date(2026, 12, 5), product="user", quantity=2)

    assert (late["quantity_restored"], late["quantity_added"]) == (0, 2)
    assert late["prorated_amount"] == "26.13"  # 15.00 * 2 * 27 / 31
    assert (late["cycle_start"], late["cycle_end"]) == ("2026-12-01", "2027-01-01")
