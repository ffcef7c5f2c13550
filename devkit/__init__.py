"""The tools around the service, not the service: the local stack (`llm-worker dev`), the fake
provider, the Apache Kafka broker and cluster the tests start, and the benchmark suite. They run
from a checkout of the repository; the wheel and the image hold the service alone."""
