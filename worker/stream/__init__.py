"""Kafka: the only librdkafka module (`kafka`), offset tracking (`offsets`) and the consume
loop with flow control, rebalance and shutdown (`consumer`)."""

from .admin import KafkaUnavailable
from .consumer import Stages, Worker
from .kafka import DeliveryError, KafkaBridge
from .offsets import OffsetTracker, PartitionOffsets

__all__ = [
    "DeliveryError",
    "KafkaBridge",
    "KafkaUnavailable",
    "OffsetTracker",
    "PartitionOffsets",
    "Stages",
    "Worker",
]
