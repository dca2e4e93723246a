"""Money arithmetic: Decimal only, rounded half-up to the cent where the rules say so."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

CENT = Decimal("0.01")
MICRO_DOLLARS = Decimal(1_000_000)  # in a USD


def to_cents(amount: Decimal) -> Decimal:
    """Round an amount half-up to the cent (``15.005`` -> ``15.01``)."""
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


def tidy(amount: Decimal) -> Decimal:
    """The same amount with no trailing zeros past the cent (``130.000000`` -> ``130.00``)."""
    cents = amount.quantize(CENT)
    if cents == amount:
        return cents
    return amount.normalize()


def micro_dollars(amount: Decimal) -> int:
    """An amount of USD with at most 6 decimal places as integer micro-dollars, exactly (else ValueError)."""
    micros = amount * MICRO_DOLLARS
    whole = int(micros)
    if whole != micros:
        raise ValueError(f"{amount} USD is not a whole number of micro-dollars")
    return whole


def usd(micros: int) -> Decimal:
    """Integer micro-dollars as USD (6 decimal places), exactly."""
    return Decimal(micros).scaleb(-6)
