#!/usr/bin/env bash
# Sets up a fresh clone: Python virtualenv with pinned CPU torch, the project
# with its local model, generated gRPC code and the offline contract tools.
# Idempotent: a second run only does what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "setup: Python 3.11 is required (found $("$PYTHON" --version))" >&2
  exit 1
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi
PY=.venv/bin/python
stamp=.venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "setup: installing Python packages (first run takes a few minutes)"
  $PY -m pip install --quiet --upgrade pip
  # The CPU build of torch first: sentence-transformers would otherwise pull a
  # multi-GB CUDA build.
  $PY -m pip install --quiet "torch==2.13.0"
  $PY -m pip install --quiet -e ".[local-model,dev]"
  rm -f .venv/.installed-*
  touch "$stamp"
fi

# Generated code is produced here, never edited by hand, never committed.
echo "setup: generating gRPC code from protos/"
rm -rf gen/python && mkdir -p gen/python
PATH="$PWD/.venv/bin:$PATH" $PY -m grpc_tools.protoc -Iprotos \
  --python_out=gen/python --grpc_python_out=gen/python \
  --mypy_out=gen/python --mypy_grpc_out=gen/python \
  protos/ragplatform/v1/*.proto >/dev/null
site=$($PY -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$PWD/gen/python" > "$site/ragplatform_gen.pth"

# buf (npm) lints the contract offline; tsc type-checks the Grafana dashboards
# against @grafana/schema.
if [ ! -x tools/node_modules/.bin/buf ] || [ ! -x tools/node_modules/.bin/tsc ]; then
  echo "setup: installing contract tools (npm)"
  (cd tools && npm install --silent --no-audit --no-fund)
fi
# Prometheus and promtool (Debian's package) check and test the chart's rules and
# scrape a real platform in tests/observability. Without recommends: they would
# bring node-exporter, a daemon (on port 9100) that nothing here needs.
if ! { command -v prometheus && command -v promtool; } >/dev/null; then
  echo "setup: installing prometheus (apt)"
  (export DEBIAN_FRONTEND=noninteractive
   apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null)
fi
# redis-server (Debian's package) is what the Redis cache backend is tested
# against; the platform itself needs none (its default caches are in-process).
if ! command -v redis-server >/dev/null; then
  echo "setup: installing redis-server (apt)"
  (export DEBIAN_FRONTEND=noninteractive
   apt-get update -qq && apt-get install -y -qq --no-install-recommends redis-server >/dev/null)
fi
# The Firestore emulator (the Vector Search store's side store in the contract
# and integration tests; tests/emulators.py) comes with Google's apt repository,
# which these machines cannot reach: it is checked, not installed. Without it
# the tests that use it fail, naming the same packages.
gcloud_bin=$(command -v gcloud || true)
if [ -z "$gcloud_bin" ] || ! command -v java >/dev/null \
   || [ ! -d "$(dirname "$(readlink -f "$gcloud_bin")")/../platform/cloud-firestore-emulator" ]; then
  echo "setup: WARNING: the Firestore emulator is missing: install the Debian packages" \
    "google-cloud-cli-firestore-emulator (Google's apt repository" \
    "https://packages.cloud.google.com/apt) and openjdk-17-jre-headless" >&2
fi
# Offline deployment checks: helm, kubectl, checkov, terraform fmt, validators.
bash scripts/infra_setup.sh
echo "setup: done"
