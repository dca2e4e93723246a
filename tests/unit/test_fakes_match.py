"""The fake stores offer each method of the real ones, with the same parameters, so a handler
test on a fake exercises the calls the handler makes on the real store."""

from __future__ import annotations

import inspect

import pytest

from services.cycle_close.storage import CloseStore
from services.license_orders.storage import LicenseStore
from services.usage_metering.storage import MeterStore
from shared.runtime.seals import SealLedger
from tests.unit.fakes import FakeCloseStore, FakeLicenseStore, FakeMeterStore, FakeSealLedger


def coroutines(cls: type) -> dict[str, list[str]]:
    return {
        name: list(inspect.signature(function).parameters)
        for name, function in inspect.getmembers(cls, inspect.iscoroutinefunction)
        if not name.startswith("_")
    }


# Real methods only other real methods call (a building block, not for handlers).
INTERNAL = {"save_balance_and"}


@pytest.mark.parametrize(
    ("fake", "real"),
    [
        (FakeLicenseStore, LicenseStore),
        (FakeMeterStore, MeterStore),
        (FakeCloseStore, CloseStore),
        (FakeSealLedger, SealLedger),
    ],
)
def test_a_fake_store_has_the_methods_of_the_real_one(fake: type, real: type) -> None:
    wanted = {name: params for name, params in coroutines(real).items() if name not in INTERNAL}
    assert coroutines(fake) == wanted
