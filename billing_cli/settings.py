"""The operator command's own settings: how it reaches Kafka (``BILLING_KAFKA_*``, as the
services) and who the operator is (``BILLING_OPERATOR_ID``, else the login name)."""

from __future__ import annotations

import getpass
from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


def _login() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return "operator"


class CliSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="BILLING_", extra="ignore")
    uses_database: ClassVar[bool] = False  # each service's database, with that service's settings
    reads_commands: ClassVar[bool] = False  # it sends commands (signed with its key), it believes none

    operator_id: str = Field(default_factory=_login)
