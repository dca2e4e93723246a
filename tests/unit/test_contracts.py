"""The contract models: JSON round trips keep money exact; wrong types and floats are refused."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from pydantic import ValidationError

from contracts import Actor
from contracts import messages as m
from contracts.envelope import Envelope
from contracts.topics import TOPICS

NOW = datetime(2026, 11, 16, 12, 30, tzinfo=UTC)
BALANCE = m.Balance(purchased=3, assigned=1, scheduled_for_removal=1, available=1)


def _base(**extra) -> dict:
    return {"message_id": uuid.uuid4(), "account_id": "acct-1", "occurred_at": NOW, **extra}


def examples() -> list[Envelope]:
    """One valid instance of every message type in the registry."""
    admin = Actor(id="a", role="office_admin")
    d1, d2 = date(2026, 11, 1), date(2026, 12, 1)
    line = m.InvoiceLine(
        kind="device",
        description="Desk phone",
        quantity=2,
        unit_price=Decimal("49.99"),
        amount=Decimal("99.98"),
        period_start=d1,
        period_end=d1,
    )
    return [
        m.AccountOpened(**_base(), billing_day=31),
        m.PreviewLicensePurchase(**_base(actor=admin), product="user", quantity=2),
        m.PurchaseLicenses(**_base(actor=admin), product="room_phone", quantity=10_000),
        m.RemoveLicenses(**_base(actor=admin), product="fax", quantity=1),
        m.AssignLicense(**_base(actor=admin), product="shared_line", assignee_id="+15550100"),
        m.UnassignLicense(**_base(actor=admin), product="shared_line", assignee_id="+15550100"),
        m.LicensePurchasePreview(
            **_base(),
            product="user",
            quantity=2,
            quantity_restored=0,
            quantity_added=2,
            unit_price=Decimal("15.00"),
            prorated_amount=Decimal("15.00"),
            recurring_amount_per_cycle=Decimal("30.00"),
            cycle_start=d1,
            cycle_end=d2,
        ),
        m.LicensesPurchased(
            **_base(causation_id=uuid.uuid4()),
            product="user",
            quantity_restored=1,
            quantity_added=1,
            unit_price=Decimal("15.00"),
            prorated_amount=Decimal("7.50"),
            cycle_start=d1,
            cycle_end=d2,
            balance=BALANCE,
        ),
        m.LicenseRemovalScheduled(**_base(), product="user", quantity=1, effective_on=d2, balance=BALANCE),
        m.LicenseAssigned(**_base(), product="user", assignee_id="u1", balance=BALANCE),
        m.LicenseUnassigned(**_base(), product="user", assignee_id="u1", balance=BALANCE),
        m.LicensesRemoved(**_base(), product="user", quantity=1, effective_on=d2, balance=BALANCE),
        m.LicenseCycleSealed(
            **_base(),
            cycle_start=d1,
            cycle_end=d2,
            recurring=[
                m.RecurringCharge(
                    product="user",
                    quantity=2,
                    unit_price=Decimal("15.00"),
                    amount=Decimal("30.00"),
                    period_start=d2,
                    period_end=date(2027, 1, 1),
                )
            ],
            prorations=[
                m.ProrationCharge(
                    purchase_id=uuid.uuid4(),
                    product="user",
                    quantity=1,
                    unit_price=Decimal("15.00"),
                    amount=Decimal("0.33"),
                    period_start=d1,
                    period_end=d2,
                    late=True,
                )
            ],
        ),
        m.CommandRejected(**_base(), command_type="PurchaseLicenses", reason_code="invalid_quantity", reason="no"),
        m.CallCharged(**_base(), call_id="call-1", cost=Decimal("12.345678")),
        m.SetCallingCreditCap(**_base(actor=Actor(id="s", role="support")), cap=Decimal("400.00")),
        m.CallingCreditCapChanged(**_base(), cap=Decimal("400.00"), accrued=Decimal("250.000001"), cycle_start=d1),
        m.CallingCreditThresholdReached(
            **_base(), threshold_percent=80, accrued=Decimal("200.00"), cap=Decimal("250.00"), cycle_start=d1
        ),
        m.CallingBlocked(**_base(), accrued=Decimal("250.00"), cap=Decimal("250.00"), cycle_start=d1),
        m.CallingUnblocked(**_base(), reason="new_cycle", accrued=Decimal("0"), cap=Decimal("250.00"), cycle_start=d2),
        m.UsageCycleSealed(
            **_base(),
            cycle_start=d1,
            cycle_end=d2,
            cap=Decimal("250.00"),
            accrued=Decimal("20.000000"),
            over_cap=Decimal("0"),
            late=[m.LateUsage(cycle_start=d1, cycle_end=d2, amount=Decimal("4.005"))],
        ),
        m.DevicePurchased(
            **_base(), order_id="o-1", sku="VVX-450", description="Desk phone", quantity=2, unit_price=Decimal("49.99")
        ),
        m.CloseBillingCycles(
            **_base(actor=Actor(id="cron", role="service")), as_of=d2, account_ids=["acct-1", "acct-2"]
        ),
        m.InvoiceIssued(
            **_base(),
            invoice_id=uuid.uuid4(),
            cycle_start=d1,
            cycle_end=d2,
            issued_on=d2,
            due_on=d2,
            lines=[line],
            total=Decimal("99.98"),
        ),
        m.BillingCycleClosing(**_base(), cycle_start=d1, cycle_end=d2),
        m.BillingCycleClosed(
            **_base(), cycle_start=d1, cycle_end=d2, next_cycle_start=d2, next_cycle_end=date(2027, 1, 1)
        ),
    ]


def test_there_is_an_example_of_every_message_the_topics_carry() -> None:
    carried = {model for topic in TOPICS for model in topic.messages}
    assert carried == {type(e) for e in examples()}


@pytest.mark.parametrize("example", examples(), ids=lambda e: e.type)
def test_a_message_survives_json_with_money_exact(example: Envelope) -> None:
    raw = example.model_dump_json()
    back = type(example).model_validate_json(raw)

    assert back == example
    assert "e+" not in raw.lower() and "E-" not in raw


def test_money_is_a_decimal_string_in_json_never_a_number() -> None:
    call = m.CallCharged(**_base(), call_id="c", cost=Decimal("0.012500"))
    raw = call.model_dump_json()
    assert '"cost":"0.012500"' in raw
    with pytest.raises(ValidationError, match="JSON string"):
        m.CallCharged.model_validate_json(raw.replace('"0.012500"', "0.0125"))


def test_unknown_extra_fields_are_ignored_for_forward_compatibility() -> None:
    raw = m.AccountOpened(**_base(), billing_day=5).model_dump_json()
    parsed = m.AccountOpened.model_validate_json(raw[:-1] + ',"region":"eu-west"}')
    assert parsed.billing_day == 5


@pytest.mark.parametrize(
    ("field", "bad"),
    [("quantity", '"2"'), ("quantity", "0"), ("quantity", "10001"), ("product", '"desk_phone"'), ("quantity", "2.0")],
)
def test_a_wrong_type_or_out_of_range_value_is_refused(field: str, bad: str) -> None:
    good = m.PurchaseLicenses(**_base(actor=Actor(id="a", role="office_admin")), product="user", quantity=2)
    raw = good.model_dump_json()
    original = '"user"' if field == "product" else "2"
    broken = raw.replace(f'"{field}":{original}', f'"{field}":{bad}')
    assert broken != raw
    with pytest.raises(ValidationError):
        m.PurchaseLicenses.model_validate_json(broken)


def test_a_timestamp_without_offset_is_refused() -> None:
    raw = m.AccountOpened(**_base(), billing_day=5).model_dump_json().replace("Z", "")
    with pytest.raises(ValidationError):
        m.AccountOpened.model_validate_json(raw)


@pytest.mark.parametrize("cost", ["-0.01", "10000.01", "1.0000001", "NaN", "Infinity", "abc"])
def test_an_implausible_call_cost_is_refused(cost: str) -> None:
    raw = (
        m.CallCharged(**_base(), call_id="c", cost=Decimal("1"))
        .model_dump_json()
        .replace('"cost":"1"', f'"cost":"{cost}"')
    )
    with pytest.raises(ValidationError):
        m.CallCharged.model_validate_json(raw)


def test_the_committed_asyncapi_document_matches_the_contract_models() -> None:
    import json
    from pathlib import Path

    from contracts.asyncapi import document

    committed = json.loads((Path(__file__).parents[2] / "docs" / "asyncapi" / "contract.json").read_text())
    assert committed == json.loads(json.dumps(document())), (
        "run: python -m contracts.asyncapi > docs/asyncapi/contract.json"
    )


@pytest.mark.parametrize(
    ("occurred_at", "day"),
    [
        ("2026-11-30T23:30:00-05:00", date(2026, 12, 1)),  # already December in UTC
        ("2026-12-01T05:00:00+09:00", date(2026, 11, 30)),  # still November in UTC
        ("2026-12-01T00:00:00+00:00", date(2026, 12, 1)),
        ("2026-11-30T23:59:59.999999Z", date(2026, 11, 30)),
    ],
)
def test_the_business_date_is_the_utc_date_whatever_the_offset(occurred_at: str, day: date) -> None:
    call = m.CallCharged.model_validate_json(
        f'{{"message_id": "{uuid.uuid4()}", "type": "CallCharged", "account_id": "a-1", '
        f'"occurred_at": "{occurred_at}", "call_id": "c-1", "cost": "1.00"}}'
    )

    assert call.business_date == day
