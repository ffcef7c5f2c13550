#!/usr/bin/env bash
# Run every mutant of one module, each in a fresh Python process, against the tests named.
#
#   tools/mutation-loop.sh llm_worker/worker/stream/offsets.py tests/unit/test_offsets.py > offsets.out
#   MUTANT_FILTER='_begin' tools/mutation-loop.sh llm_worker/worker/pipeline.py tests/unit/test_pipeline.py
#
# MODULE is named through the links in llm_worker/ (pyproject.toml [tool.mutmut]): mutmut names a
# mutant by its path, and only a name that matches the module's import name is ever run.
#
# This is how docs/TESTING.md's "every mutant" rows were made: no `mutmut run` (it maps each
# mutant to every test that reaches it, the slow real-HTTP and component ones included, and
# forks from a process that imported the code already). `mutants/` is generated first, by
# mutmut's own generation step, when it is missing or older than the module. One line per
# mutant: `killed NAME`, `timeout NAME` (counted as killed: it hung or spun), `survived NAME`;
# then `mutmut show NAME` (or the diff between the mutant's and the original function in
# mutants/MODULE) shows what it changed. Put the fastest test files first: `-x` stops at the
# first failure. MUTANT_TIMEOUT (default 60) bounds each run.
set -euo pipefail
module=${1:?usage: tools/mutation-loop.sh MODULE.py TEST_FILE...}
shift
[ $# -gt 0 ] || { echo "name the test files to run against each mutant" >&2; exit 2; }
BIN=$(cd "${VENV:-.venv}/bin" && pwd)
if [ ! -e "mutants/$module.meta" ] || [ "$module" -nt "mutants/$module.meta" ]; then
	"$BIN/python" - <<'PY' >&2
import os
import mutmut.__main__ as m

m.set_mutant_under_test("mutant_generation")
os.makedirs("mutants", exist_ok=True)
m.copy_src_dir()
m.copy_also_copy_files()
m.setup_source_paths()
m.store_lines_covered_by_tests()
print(m.create_mutants(1))
PY
fi
names=$("$BIN/python" -c 'import json, sys; print("\n".join(sorted(json.load(open(sys.argv[1]))["exit_code_by_key"])))' "mutants/$module.meta" |
	grep -E -- "${MUTANT_FILTER:-.}" || true)
cd mutants
for name in $names; do
	rc=0
	MUTANT_UNDER_TEST=$name timeout "${MUTANT_TIMEOUT:-60}" "$BIN/python" -m pytest -x -q -p no:cacheprovider "$@" >/dev/null 2>&1 || rc=$?
	case $rc in
	0) echo "survived $name" ;;
	1) echo "killed $name" ;;
	124) echo "timeout $name" ;;
	*) echo "error$rc $name" ;;
	esac
done
