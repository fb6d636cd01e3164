#!/usr/bin/env bash
# The release-gate step of github-actions.yml and gitlab-ci.yml: one `qeval compare` of a
# candidate checkpoint against its full-precision baseline, a JUnit XML file for the CI's test
# report, and the verdict as the job's outcome. Settings come from the environment:
#   GATE_MODEL          the baseline: an HF checkpoint directory, a .gguf file or an alias  (required)
#   GATE_CANDIDATES     the candidate(s): gptq=DIR, awq=DIR, gguf=FILE.gguf, int8, ...      (required)
#   GATE_BASE           baseline dtype: fp16 (default), bf16, fp32
#   GATE_SUITE          task suite (default clinical-core); GATE_POLICY: gate policy (default)
#   GATE_INCLUDE        a folder of your own tasks/ and suites/ (qeval init), optional
#   GATE_LIMIT          score only the first N items of each task (a smoke run), optional
#   GATE_OUT            run directory to create (default qeval-run)
#   GATE_JUNIT          JUnit XML file (default qeval-junit.xml)
#   GATE_MLFLOW_URI     MLflow tracking URI to log the run to, optional
#   GATE_MLFLOW_MODEL   NAME/VERSION of the registered model version to tag with the verdict, optional
#   GATE_FAIL_ON_INCONCLUSIVE=1   fail the job when the data cannot tell (default: pass, warn)
#   GATE_EXTRA_ARGS     more `qeval compare` flags, split on spaces, optional
# Exit: 0 GO (or INCONCLUSIVE when allowed), 1 NO_GO, 3 INCONCLUSIVE (when it fails), 2 bad input.
set -uo pipefail

args=(compare --model "$GATE_MODEL" --candidates "$GATE_CANDIDATES" --base "${GATE_BASE:-fp16}"
      --suite "${GATE_SUITE:-clinical-core}" --policy "${GATE_POLICY:-default}"
      --out "${GATE_OUT:-qeval-run}" --junit-xml "${GATE_JUNIT:-qeval-junit.xml}")
if [ -n "${GATE_INCLUDE:-}" ]; then args+=(--include "$GATE_INCLUDE"); fi
if [ -n "${GATE_LIMIT:-}" ]; then args+=(--limit "$GATE_LIMIT"); fi
if [ -n "${GATE_MLFLOW_URI:-}" ]; then args+=(--mlflow-uri "$GATE_MLFLOW_URI"); fi
if [ -n "${GATE_MLFLOW_MODEL:-}" ]; then args+=(--mlflow-model "$GATE_MLFLOW_MODEL"); fi
if [ "${GATE_FAIL_ON_INCONCLUSIVE:-0}" = 1 ]; then args+=(--inconclusive-fails); fi
read -r -a extra <<< "${GATE_EXTRA_ARGS:-}"

qeval "${args[@]}" "${extra[@]}"
code=$?
case $code in
  0) echo "qeval gate: GO" ;;
  1) echo "qeval gate: NO_GO - the candidate degrades beyond the policy; see report.html" >&2
     exit 1 ;;
  3) echo "qeval gate: INCONCLUSIVE - the data cannot tell; see report.html" >&2
     if [ "${GATE_FAIL_ON_INCONCLUSIVE:-0}" = 1 ]; then exit 3; fi ;;
  *) echo "qeval gate: qeval failed (exit $code)" >&2
     exit "$code" ;;
esac
exit 0
