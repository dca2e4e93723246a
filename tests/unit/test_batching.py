"""Splitting a batch into rounds for set-based handlers keeps each account's order."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from shared.runtime.registry import one_per_account


@dataclass
class Msg:
    account_id: str
    n: int


def test_a_catch_up_of_three_cycles_takes_three_rounds_in_order() -> None:
    batch = [Msg("a", 1), Msg("b", 1), Msg("a", 2), Msg("a", 3), Msg("c", 1), Msg("b", 2)]

    rounds = one_per_account(batch)

    assert [[(m.account_id, m.n) for m in r] for r in rounds] == [
        [("a", 1), ("b", 1), ("c", 1)],
        [("a", 2), ("b", 2)],
        [("a", 3)],
    ]


@given(st.lists(st.sampled_from("abcde"), max_size=40))
def test_every_message_is_in_exactly_one_round_once_per_account_and_in_order(accounts: list[str]) -> None:
    batch = [Msg(a, i) for i, a in enumerate(accounts)]

    rounds = one_per_account(batch)

    assert sorted(m.n for r in rounds for m in r) == list(range(len(batch)))
    assert all(len({m.account_id for m in r}) == len(r) for r in rounds)
    for account in set(accounts):
        assert [m.n for r in rounds for m in r if m.account_id == account] == [
            m.n for m in batch if m.account_id == account
        ]
