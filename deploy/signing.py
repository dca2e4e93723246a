"""The local stack's signing keys for the clients that send commands (``contracts/signing.md``).

``signer_for("admin-ui")`` signs as the admin UI with the key the stack generated for it
(``$STACK_DIR/secrets/signing-admin-ui.pem``); ``deploy/client.py``'s ``Bus`` signs every command
it sends with the key of the principal it sends as.

``python -m deploy.signing --measure`` prints what signing and checking one command cost.
"""

from __future__ import annotations

import argparse
import functools
import timeit
import uuid
from datetime import UTC, datetime
from decimal import Decimal

from deploy.credentials import signing_key_file
from shared.runtime.authentication import Signer, TrustedKey, TrustedKeys


@functools.cache
def signer_for(principal: str) -> Signer:
    path = signing_key_file(principal)
    if not path.exists():
        raise RuntimeError(f"{principal} has no signing key ({path}): it may claim no role (contracts/access.py)")
    return Signer.from_pem(principal, path.read_bytes())


def measure(rounds: int = 5000) -> dict[str, float]:
    """Microseconds per command: sign, check (signature and role), and reading the command's JSON
    into its contract model, for scale (one of the cheapest steps of handling it)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from contracts import Actor
    from contracts.messages import SetCallingCreditCap

    signer = Signer("support-tools", Ed25519PrivateKey.generate())
    keys = TrustedKeys({"support-tools": TrustedKey(signer.private_key.public_key(), frozenset({"support"}))})
    command = SetCallingCreditCap(
        message_id=uuid.uuid4(),
        account_id="acct-1234567890ab",
        occurred_at=datetime.now(UTC),
        actor=Actor(id="support-1", role="support"),
        cap=Decimal("400.00"),
    )
    value = command.model_dump_json().encode()
    key = command.account_id.encode()
    headers = signer.headers("metering.commands", key, value)
    assert keys.refusal("metering.commands", key, value, headers, "support") is None

    def per_call(fn: object) -> float:
        return min(timeit.repeat(fn, number=rounds, repeat=3)) / rounds * 1e6  # type: ignore[arg-type]

    return {
        "sign": per_call(lambda: signer.headers("metering.commands", key, value)),
        "check": per_call(lambda: keys.refusal("metering.commands", key, value, headers, "support")),
        "parse": per_call(lambda: SetCallingCreditCap.model_validate_json(value)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m deploy.signing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--measure", action="store_true", help="print the cost of signing and checking a command")
    args = parser.parse_args()
    if args.measure:
        for step, us in measure().items():
            print(f"{step:6} {us:7.1f} µs per command")


if __name__ == "__main__":
    main()
