#!/usr/bin/env bash
# Runs each tests/test_*.py module in a pytest process of its own, then prints a table of every
# module's result and duration. A module that passes in the full run but fails alone depends on
# something another module set up. Not used by CI.
#
#   bash tests/run_modules_alone.sh                              # every module
#   bash tests/run_modules_alone.sh -m "not ray and not trained"  # extra arguments go to each pytest run
#
# Exits non-zero if any module fails (pytest's exit 5, every test deselected, counts as a pass).
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
logs=$(mktemp -d "${TMPDIR:-/tmp}/modules-alone.XXXXXX")
declare -a names results durations
failed=0

for module in tests/test_*.py; do
  name=$(basename "$module" .py)
  echo "=== $name"
  start=$(date +%s)
  "$PYTHON" -m pytest -q "$module" "$@" >"$logs/$name.log" 2>&1
  rc=$?
  seconds=$(( $(date +%s) - start ))
  tail -n 1 "$logs/$name.log"
  case $rc in
    0) result=pass ;;
    5) result="pass (no test selected)" ;;
    *) result="FAIL (exit $rc)"; failed=$((failed + 1)) ;;
  esac
  names+=("$name"); results+=("$result"); durations+=("$seconds")
done

echo
printf '%-28s %8s  %s\n' module seconds result
for i in "${!names[@]}"; do
  printf '%-28s %8s  %s\n' "${names[$i]}" "${durations[$i]}" "${results[$i]}"
done
echo
if (( failed )); then
  echo "$failed module(s) failed alone:"
  for i in "${!names[@]}"; do
    [[ ${results[$i]} == FAIL* ]] && echo "  ${names[$i]}  (log: $logs/${names[$i]}.log)"
  done
  exit 1
fi
echo "every module passed alone (logs: $logs)"
