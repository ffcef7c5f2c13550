#!/usr/bin/env bash
# Re-run each mutant mutmut reported as survived in a fresh Python process.
#
# mutmut 3 forks its test runs from a process that has already imported the code, so a
# mutant in code that runs at import time (a table of closures built by a call, like
# worker/config.py `_CHECKS = {"max_in_flight": _at_least(1), ...}`) is never applied there
# and is reported as survived. Here MUTANT_UNDER_TEST is set before the import.
#
#   tools/mutation-recheck.sh [PATTERN] [PYTEST ARGS...]   after `make mutation`
#   tools/mutation-recheck.sh 'llm_worker.worker.config.*' tests/unit/test_config.py tests/unit/test_settings_table.py
#
# PATTERN (grep -E, default: every survivor) picks survivors; the pytest arguments default to
# the unit and component suites (a real survivor then costs a whole run: name the tests).
set -euo pipefail
BIN=$(cd "${VENV:-.venv}/bin" && pwd)
pattern=${1:-.}
shift || true
[ $# -gt 0 ] || set -- tests/unit tests/component -k "not test_layout"
names=$("$BIN/mutmut" results 2>/dev/null | awk -F': ' '$2 == "survived" {gsub(/ /, "", $1); print $1}' |
	grep -E -- "$pattern" || true)
cd mutants
for name in $names; do
	if MUTANT_UNDER_TEST=$name "$BIN/python" -m pytest -x -q -p no:cacheprovider "$@" >/dev/null 2>&1; then
		echo "survived $name"
	else
		echo "killed   $name"
	fi
done
