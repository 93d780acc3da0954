#!/bin/bash
# make test's pytest run: two processes side by side, one per core of this project's 2-core CI
# machine, each with one torch thread (OMP_NUM_THREADS=1, set by make) and its own runs folder:
#   1. the course: tests/course (the smoke course runs once, papermill, for the tests that read it),
#      the real-data tests of tests/data (to even the halves out), then nbval over notebooks/,
#      whose cells run in order in one kernel and load what that course trained;
#   2. everything else in tests/.
# TEST_WORKERS=1 runs the whole suite in one process instead. The exit status is non-zero when
# either half fails; the second half's output follows the first's.
set -u
PY=${PY:-.venv/bin/python}
common=(--nbval-lax --nbval-sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider --durations=15)
if [ "${TEST_WORKERS:-2}" = 1 ]; then
  DWF_RUNS_DIR=$(mktemp -d) exec "$PY" -m pytest tests notebooks "${common[@]}"
fi
log=$(mktemp)
DWF_RUNS_DIR=$(mktemp -d) "$PY" -m pytest tests --ignore=tests/course --ignore=tests/data "${common[@]}" >"$log" 2>&1 &
other=$!
echo "[make test] the course half (tests/course, tests/data, then nbval over notebooks/) here; the rest of tests/ runs beside it and follows"
DWF_RUNS_DIR=$(mktemp -d) "$PY" -m pytest tests/course tests/data notebooks "${common[@]}"
course=$?
wait "$other"
rest=$?
echo "[make test] the other half (tests/ outside tests/course and tests/data):"
cat "$log"
rm -f "$log"
echo "[make test] course half: exit $course; the other half: exit $rest"
[ "$course" = 0 ] && [ "$rest" = 0 ]
