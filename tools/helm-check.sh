#!/usr/bin/env bash
# `make helm-check`: the chart and the image, checked without a cluster or a Docker engine.
#   1. helm (built from its Go module by tools/helm.sh, cached) lints the chart, plain and
#      --strict, with each ci/*-values.yaml (the chart needs a database, so no values at all
#      is an error by design);
#   2. hadolint lints the Dockerfile;
#   3. pytest renders the chart with `helm template` and checks the manifests (tests/helm),
#      with HELM_BIN pointing at that helm.
# Any missing tool (Go included) is a failure, never a skip.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PY:-.venv/bin/python}"
CHART=helm/llm-worker

HELM_BIN="$(tools/helm.sh)"
export HELM_BIN
echo "== $("$HELM_BIN" version --short) ($HELM_BIN)"

echo "== helm lint $CHART"
"$HELM_BIN" lint "$CHART" -f "$CHART/ci/minimal-values.yaml"
for values in "$CHART"/ci/*-values.yaml; do
    echo "== helm lint --strict $CHART -f $values"
    "$HELM_BIN" lint --strict "$CHART" -f "$values"
done

echo "== hadolint Dockerfile"
HADOLINT="$(PYTHON="${PYTHON:-python3}" tools/hadolint.sh)"
"$HADOLINT" Dockerfile

echo "== pytest tests/helm"
"$PY" -m pytest tests/helm -q -p no:cacheprovider
