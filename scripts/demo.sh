#!/usr/bin/env bash
# `make demo`: start every service, ingest the shipped sample corpus, ask the
# demo questions and print the cited answers, then stop the services.
# Keep them running instead with KEEP=1 (stop later with `ragctl down`).
set -euo pipefail
cd "$(dirname "$0")/.."
RAGCTL=.venv/bin/ragctl
export RAG_DATA_DIR=${RAG_DATA_DIR:-.ragdata/demo}

$RAGCTL up --detach
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
