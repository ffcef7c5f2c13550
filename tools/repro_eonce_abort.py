"""Reproduce the librdkafka abort that `worker/stream/admin.group_members` avoids.

    .venv/bin/python tools/repro_eonce_abort.py describe 12   # aborts within 1-2 restarts
    .venv/bin/python tools/repro_eonce_abort.py list 12       # survives all 12

A local Apache Kafka broker (`devkit.kafka_broker`), one consumer in group `g`, and a
thread that counts the group's members in a loop with either `describe_consumer_groups`
(the admin API's coordinator request) or `list_groups` (ListGroups + DescribeGroups), while
the broker is stopped and started again N times. With librdkafka 2.16 the first one dies with
`rd_kafka_enq_once_del_source_return: Assertion 'eonce->refcnt > 0' failed` (SIGABRT).
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections import Counter

from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, NewTopic

from llm_worker.devkit.kafka_broker import KafkaBroker


def main(mode: str, restarts: int) -> None:
    broker = KafkaBroker().start()
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic("t", 4, 1)])["t"].result(30)
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "g"})
    consumer.subscribe(["t"])
    stop = threading.Event()
    seen: Counter[str] = Counter()

    def poll() -> None:
        while not stop.is_set():
            consumer.poll(0.2)

    def count() -> None:
        while not stop.is_set():
            try:
                if mode == "describe":
                    done = admin.describe_consumer_groups(["g"], request_timeout=5.0)
                    seen[f"members={len(done['g'].result(timeout=5.0).members)}"] += 1
                else:
                    groups = admin.list_groups(group="g", timeout=5.0)
                    seen[f"members={sum(len(g.members) for g in groups)}"] += 1
            except Exception as exc:  # the broker is down: expected, count it
                seen[type(exc).__name__] += 1
            time.sleep(random.uniform(0, 0.3))

    for target in (poll, count):
        threading.Thread(target=target, daemon=True).start()
    try:
        for i in range(restarts):
            time.sleep(random.uniform(3, 8))
            broker.stop()
            time.sleep(random.uniform(0.5, 4))
            broker.start()
            print(f"restart {i + 1}: {dict(seen)}", flush=True)
        print(f"survived {restarts} restarts", flush=True)
    finally:
        stop.set()
        broker.close()


if __name__ == "__main__":
    main(
        sys.argv[1] if len(sys.argv) > 1 else "describe",
        int(sys.argv[2]) if len(sys.argv) > 2 else 12,
    )
