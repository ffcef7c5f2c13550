# syntax=docker/dockerfile:1
#
# llm-worker container image.
#
#   docker build -t llm-worker:0.1.0 --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) .
#   docker run --rm -e KAFKA_BOOTSTRAP_SERVERS=... -e DATABASE_URL=... llm-worker:0.1.0
#
# Two stages: the builder installs the package and its dependencies into a virtualenv at
# /opt/venv; the runtime stage copies that virtualenv only. Every dependency ships manylinux
# wheels (librdkafka is inside confluent-kafka, libpq inside psycopg[binary]), so neither stage
# needs a compiler and the runtime image has none.
#
# Runs as UID/GID 10001 and needs nothing writable but /tmp, so it runs with a read-only root
# filesystem (the Helm chart mounts an emptyDir at /tmp).

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Only what the wheel is built from (.dockerignore keeps everything else out of the context).
COPY pyproject.toml README.md constraints.txt ./
# llm_worker/ holds links to the four folders: the wheel installs them as llm_worker.* (the
# devkit's link is left dangling here: the image holds the service alone).
COPY llm_worker ./llm_worker
COPY worker ./worker
COPY adapters ./adapters
COPY registry ./registry
COPY migrations ./migrations
# A non-editable install from pyproject.toml: the package and its dependencies land in the venv;
# the source tree stays behind in this stage. Every dependency at the exact version pinned in
# constraints.txt (generated from pyproject.toml by `make constraints`), so a rebuild installs
# what CI tested. The `grpc` extra: OTLP over gRPC as well as HTTP (OTEL_EXPORTER_OTLP_PROTOCOL=
# grpc, the chart's `otel.protocol`). Byte-compile here, because at run time the filesystem is
# read-only. DL3013 (pin versions) mistakes ".[grpc]" for a package name: this is the project
# itself; its dependencies are pinned by the constraints file.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir -c constraints.txt ".[grpc]" \
    && python -m compileall -q /opt/venv \
    && llm-worker --help > /dev/null


FROM ${PYTHON_IMAGE} AS runtime

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown

LABEL org.opencontainers.image.title="llm-worker" \
      org.opencontainers.image.description="Kafka stream-processing worker for LLM completions with a PostgreSQL model registry" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/example/llm-worker" \
      org.opencontainers.image.documentation="https://github.com/example/llm-worker/blob/main/docs/DEPLOY.md"

# A named user for tools that look up the UID; the image works with any UID all the same.
RUN groupadd --system --gid 10001 llm-worker \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin llm-worker

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp

WORKDIR /tmp
USER 10001:10001

# /metrics, /healthz (liveness), /readyz (readiness): LLM_WORKER_HTTP_PORT, 8080 by default.
# API keys are read from files in LLM_WORKER_SECRETS_DIR (/var/run/secrets/llm-worker).
EXPOSE 8080

# Exec form: the worker is PID 1 and gets SIGTERM itself (it installs its own handlers: stop
# polling, drain in-flight work within LLM_WORKER_SHUTDOWN_TIMEOUT_S, flush, commit, exit).
STOPSIGNAL SIGTERM
ENTRYPOINT ["llm-worker"]
CMD ["run"]
