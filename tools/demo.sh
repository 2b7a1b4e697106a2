#!/usr/bin/env bash
# The demo: a local cluster under PIPELINE_HOME runs the sample pipeline once.
set -euo pipefail
pipeline=${PIPELINE:-.venv/bin/pipeline}

echo "== cluster under ${PIPELINE_HOME}"
"$pipeline" cluster init
"$pipeline" cluster start
echo
echo "== submitting the sample pipeline"
instance=$("$pipeline" submit sample --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
"$pipeline" wait "$instance" --timeout 300 || status=$?
echo
"$pipeline" instances
"$pipeline" tasks "$instance"
cat <<TXT

The cluster is still running (PIPELINE_HOME=${PIPELINE_HOME}). Try next:
  export PIPELINE_HOME=${PIPELINE_HOME}
  $pipeline task <TASK>             # a task's details and history
  $pipeline subtasks <TASK>         # each subtask's state and attempts
  $pipeline params set algorithm throw_exception_subtask_0=true
  $pipeline submit sample           # ends ERRORS_STALLED with each permuter task at 3/4 (1)
  $pipeline restart --instance <ID> --mode resume-current-step   # stores the 3 good ones, goes on
  $pipeline files --instance <ID>   # what that instance stored, each file with its producer
  $pipeline lineage set-1/L3/averaged-image.png   # who made it, back to the data received
  $pipeline cluster status          # the HTTP API's and Flower's URLs
  $pipeline cluster credentials     # their token and login; Flower's Restart tab restarts tasks
Stop the cluster with:
  $pipeline cluster stop            # or: make stop
TXT
exit "${status:-0}"
