"""Writes the AsyncAPI 3.0 document of the whole public contract from the topic registry.

``python -m contracts.asyncapi > docs/asyncapi/contract.json``. Every topic, who may send
what on it, and the JSON schema of every message (money as decimal strings).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic.json_schema import models_json_schema

from contracts.access import ACCESS
from contracts.envelope import Command
from contracts.topics import TOPICS

# Every command is signed by its sender (contracts/signing.md); unsigned, it is refused.
SIGNATURE_HEADERS = {
    "type": "object",
    "description": "HMAC-SHA256 tag of the sender over the topic, record key and value, under its key toward "
    "the topic's receiving service (contracts/signing.md); "
    "a command without them, or signed by a key that may not claim its actor.role, gets CommandRejected "
    "not_authorized.",
    "required": ["billing-key-id", "billing-signature"],
    "properties": {
        "billing-key-id": {"type": "string", "description": "the sender's key id, e.g. admin-ui"},
        "billing-signature": {"type": "string", "description": "base64 of the 32-byte HMAC-SHA256 tag"},
    },
}


def _names(principals: Any) -> str:
    return ", ".join(p.name for p in principals) or "nobody"


def document() -> dict[str, Any]:
    models = sorted({model for topic in TOPICS for model in topic.messages}, key=lambda m: m.__name__)
    _, schemas = models_json_schema(
        [(model, "serialization") for model in models], ref_template="#/components/schemas/{model}"
    )
    channels: dict[str, Any] = {}
    for topic in TOPICS:
        access = ACCESS[topic.name]
        channels[topic.name] = {
            "address": topic.name,
            "description": f"{topic.description} Key: account_id. Partitions: {topic.partitions}. "
            f"Written by: {_names(access.writers)}. Read by: {_names(access.readers)} "
            f"(its dead letters, {topic.dlq}: written by {_names(ACCESS[topic.dlq].writers)}, read by operator).",
            "messages": {
                model.__name__: {"$ref": f"#/components/messages/{model.__name__}"} for model in topic.messages
            },
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "License billing: public contract",
            "version": "1",
            "description": "Envelope on every message: message_id, type, account_id, occurred_at, schema_version. "
            "Commands carry actor {id, role} and their sender's HMAC-SHA256 tag in the record headers "
            "billing-key-id and billing-signature (contracts/signing.md); events caused by a command carry causation_id. "
            "Unreadable input goes to <topic>.dlq.",
        },
        "servers": {
            "local": {
                "host": "127.0.0.1:9092",
                "protocol": "kafka",
                "description": "The local stack (deploy/stack.sh); SASL_SSL with KAFKA_TLS=1.",
                "security": [{"$ref": "#/components/securitySchemes/scram"}],
            }
        },
        "channels": channels,
        "components": {
            "securitySchemes": {
                "scram": {
                    "type": "scramSha512",
                    "description": "One SCRAM-SHA-512 user per party (contracts/access.py); the broker's ACLs "
                    "let each write and read only the topics named in its channels' descriptions.",
                }
            },
            "schemas": schemas.get("$defs", {}),
            "messages": {
                model.__name__: {
                    "name": model.__name__,
                    "payload": {"$ref": f"#/components/schemas/{model.__name__}"},
                    **({"headers": SIGNATURE_HEADERS} if issubclass(model, Command) else {}),
                }
                for model in models
            },
        },
    }


if __name__ == "__main__":
    print(json.dumps(document(), indent=2))
