"""The public contract: topic names, the message envelope and every message model.

This package is the only thing the services share about messages. Field names and
types here are public: add optional fields and new message types, never rename or remove.
"""

from contracts.envelope import Actor, Command, Envelope, Event, Money
from contracts.topics import TOPICS, Topic

__all__ = ["TOPICS", "Actor", "Command", "Envelope", "Event", "Money", "Topic"]
