#!/usr/bin/env bash
# `make demo`: start every service, ingest the shipped sample corpus, ask the
# demo questions and print the cited answers, then stop the services.
# Keep them running instead with KEEP=1 (stop later with `ragctl down`).
# With LLM=1 (`make demo-llm`) the local LLM writes the simple tier's answers.
set -euo pipefail
cd "$(dirname "$0")/.."
RAGCTL=.venv/bin/ragctl
export RAG_DATA_DIR=${RAG_DATA_DIR:-.ragdata/demo}
UP=(--detach)
if [ "${LLM:-0}" = 1 ]; then
  UP+=(--llm)
  # A CPU model takes up to a minute an answer; ragctl ask waits as long as the
  # platform does (services/llm/settings.py).
  export RAG_RPC_TIMEOUT_SECONDS=${RAG_RPC_TIMEOUT_SECONDS:-120}
fi

$RAGCTL up "${UP[@]}"
if [ "${KEEP:-0}" != 1 ]; then
  trap '$RAGCTL down' EXIT
fi
$RAGCTL ingest samples/corpus
echo
while IFS= read -r question; do
  [ -n "$question" ] || continue
  echo "━━ $question"
  $RAGCTL ask "$question"
  echo
done < samples/questions.txt
if [ "${KEEP:-0}" = 1 ]; then
  echo "Services keep running: try '$RAGCTL ask \"...\"', the REST gateway on :8080/docs, then '$RAGCTL down'."
fi
