"""Named parameters for statements sent on the asyncpg connection directly."""

from __future__ import annotations

from shared.db import positional


def test_named_parameters_become_numbered_once_each_in_order_of_first_use() -> None:
    text, names = positional("insert into t (a, b) values (:account_id, :price) returning :price, :account_id")
    assert text == "insert into t (a, b) values ($1, $2) returning $2, $1"
    assert names == ("account_id", "price")


def test_casts_and_literals_with_colons_are_left_alone() -> None:
    text, names = positional("select x::text, cast(:day as date), '{a}'::text[] from t where w = :who")
    assert text == "select x::text, cast($1 as date), '{a}'::text[] from t where w = $2"
    assert names == ("day", "who")
