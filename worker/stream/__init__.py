"""Kafka: the seam (`transport`: plain types and the `Transport` protocol), its librdkafka side
(`kafka`, `kafka_conf`, `kafka_producer`, `admin`, `kafka_client`: the only modules of the
service that import confluent_kafka), one assignment's state and rebalance steps (`assignment`),
offset tracking (`offsets`) and the consume loop with flow control and shutdown (`consumer`)."""

from .admin import KafkaUnavailable
from .consumer import Stages, Worker
from .kafka import KafkaBridge
from .offsets import OffsetTracker, PartitionOffsets
from .transport import DeliveryError, Transport

__all__ = [
    "DeliveryError",
    "KafkaBridge",
    "KafkaUnavailable",
    "OffsetTracker",
    "PartitionOffsets",
    "Stages",
    "Transport",
    "Worker",
]
