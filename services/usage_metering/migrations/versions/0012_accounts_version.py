"""Usage metering: a version of the accounts table, so a worker can keep the accounts it read.

A batch of calls reads the accounts of its calls: about 3,900 primary-key lookups for 5,000 calls
over 10,000 accounts, a fifth of the PostgreSQL CPU of the calls path. ``accounts_version`` holds
one row, ``version``, which a statement trigger on ``accounts`` bumps with every update, delete or
truncate (a cap change, a seal moving the open cycles, anything done by hand). A worker keeps the accounts
it read with the version it read them at; under the metering lock held shared, which every
writer of ``accounts`` holds alone, it reads the version and only the accounts it does not hold,
and reads all of them again when the version moved. Opening an account inserts, which changes no
account a worker holds, so it bumps nothing.

Revision ID: 0012
Revises: 0011
"""

from alembic import op

revision = "0012"
down_revision = "0011"


def upgrade() -> None:
    op.execute(
        "create table accounts_version (version bigint not null, "
        "one boolean primary key default true constraint accounts_version_one_row check (one))"
    )
    op.execute("comment on table accounts_version is 'one row: bumped by every update, delete or truncate of accounts'")
    op.execute("insert into accounts_version (version) values (0)")
    op.execute(
        "create function bump_accounts_version() returns trigger language plpgsql as $$ "
        "begin update accounts_version set version = version + 1; return null; end $$"
    )
    op.execute(
        "create trigger accounts_changed after update or delete or truncate on accounts "
        "for each statement execute function bump_accounts_version()"
    )


def downgrade() -> None:
    op.execute("drop trigger accounts_changed on accounts")
    op.execute("drop function bump_accounts_version()")
    op.execute("drop table accounts_version")
