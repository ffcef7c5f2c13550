# The README's commands. `.ci/run` calls `make test` and `make test-kafka`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo dev test test-kafka lint typecheck unit integration bench schemas clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

## demo: start the local stack (broker, Postgres, fake provider, worker), send sample prompts,
##       print their completions, keep running until Ctrl-C
demo: $(STAMP)
	$(BIN)/llm-worker dev --demo

## dev: the local stack without the sample prompts
dev: $(STAMP)
	$(BIN)/llm-worker dev

## test: lint, type-check, unit and integration tests (what CI runs)
test: lint typecheck unit integration

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit -q -p no:cacheprovider

integration: $(STAMP)
	$(BIN)/python -m pytest tests/integration -q -p no:cacheprovider -rs

## test-kafka: the integration tests on Apache Kafka 4 (KRaft, one node) instead of Tansu;
##             needs Java 17+ and KAFKA_HOME or Maven (jars fetched once into ~/.cache)
test-kafka: $(STAMP)
	LLM_WORKER_TEST_BROKER=kafka $(BIN)/python -m pytest tests/integration -q -p no:cacheprovider -rs

## bench: 20,000 prompts through a worker process, fake provider at 20 ms
bench: $(STAMP)
	$(BIN)/llm-worker bench -n 20000 --latency-ms 20

schemas: $(STAMP)
	$(BIN)/python -c "import json; from worker.messages import prompt_schema as p, completion_schema as c; \
	[open(f'schemas/{n}.schema.json','w').write(json.dumps(f(), indent=2) + '\n') for n, f in (('prompt', p), ('completion', c))]"

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
