"""Money arithmetic: Decimal only, rounded half-up to the cent where the rules say so."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

CENT = Decimal("0.01")
ZERO = Decimal("0")


def to_cents(amount: Decimal) -> Decimal:
    """Round an amount half-up to the cent (``15.005`` -> ``15.01``)."""
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


def money(value: str | int | Decimal) -> Decimal:
    """Build a Decimal from a string or int; floats are refused on purpose."""
    if isinstance(value, float):  # pragma: no cover - guarded by typing too
        raise TypeError("money is never a float")
    return Decimal(value)


def tidy(amount: Decimal) -> Decimal:
    """The same amount with no trailing zeros past the cent (``130.000000`` -> ``130.00``)."""
    cents = amount.quantize(CENT)
    if cents == amount:
        return cents
    return amount.normalize()
