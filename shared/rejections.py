"""The one exception a domain raises to refuse a command: a reason code and a sentence for people."""


class Rejected(Exception):
    """A command is readable but refused. Raise it before writing anything in the transaction."""

    def __init__(self, reason_code: str, reason: str) -> None:
        super().__init__(f"{reason_code}: {reason}")
        self.reason_code = reason_code
        self.reason = reason
