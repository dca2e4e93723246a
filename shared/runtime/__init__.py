"""The consumer runtime every service uses: inbox, outbox, dead letters, batch processing."""

from shared.runtime.processor import BatchProcessor, ConcurrentUpdate, HandlerRegistry, Rejected, Unit
from shared.runtime.relay import OutboxRelay

__all__ = ["BatchProcessor", "ConcurrentUpdate", "HandlerRegistry", "OutboxRelay", "Rejected", "Unit"]
