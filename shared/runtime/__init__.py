"""The consumer runtime every service uses: inbox, outbox, dead letters, batch processing."""

from shared.runtime import metrics
from shared.runtime.processor import BatchProcessor
from shared.runtime.registry import HandlerRegistry
from shared.runtime.relay import OutboxRelay
from shared.runtime.transient import ConcurrentUpdate
from shared.runtime.unit_of_work import Unit, UnitOfWork

__all__ = ["BatchProcessor", "ConcurrentUpdate", "HandlerRegistry", "OutboxRelay", "Unit", "UnitOfWork", "metrics"]
