"""Call costs as the calls ledger's integer micro-dollars, one at a time and a batch at once."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.usage_metering.storage import micro_dollars, micro_dollars_each, usd


@given(st.lists(st.decimals(min_value=0, max_value=10_000, places=6), max_size=50))
def test_a_batch_converts_as_each_amount_alone_and_back_exactly(amounts):
    each = micro_dollars_each(amounts)

    assert each == [micro_dollars(amount) for amount in amounts]
    assert [usd(m) for m in each] == amounts


@pytest.mark.parametrize(
    "amounts",
    [
        [Decimal("1.00"), Decimal("0.0000005")],  # a fraction of a micro-dollar
        [Decimal("2.5000001"), Decimal("0.1")],
        [Decimal("0.5"), Decimal("-0.5")],  # a negative amount, whatever the sum
    ],
)
def test_a_batch_with_an_amount_that_is_not_whole_micro_dollars_is_refused(amounts):
    with pytest.raises(ValueError):
        micro_dollars_each(amounts)
