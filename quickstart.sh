#!/usr/bin/env bash
# From a fresh clone to a serving graph on http://127.0.0.1:8000:
#   1. a virtualenv with the pinned dependencies (constraints.txt),
#   2. the model registry bootstrapped from the bundled KOI data when it is empty (the three
#      families trained and registered, with progress; registered versions are skipped),
#   3. `serve run serve_config.yaml` (Ctrl-C stops it).
# Pass --no-serve to stop after step 2.
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -x .venv/bin/kepler-train ]; then
  echo "==> creating .venv and installing kepler-serve under constraints.txt"
  python3.11 -m venv .venv
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -c constraints.txt -e .
fi
echo "==> bootstrapping the model registry (${KEPLER_REGISTRY_URI:-~/.kepler-serve/registry})"
.venv/bin/kepler-train
.venv/bin/kepler-registry list
if [ "${1:-}" = "--no-serve" ]; then exit 0; fi

echo "==> serving on http://127.0.0.1:8000 (docs: http://127.0.0.1:8000/docs)"
echo "WARNING: authentication is off in serve_config.yaml (Router user_config auth.enabled: false):"
echo "         anyone who can reach 127.0.0.1:8000 may predict. See the README's Security section."
# A single local node: Ray's token authentication is for clusters (see the README).
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
# Serve's HAProxy ingress in front of the Router (configs/ingress.env says why and when not).
set -a; source configs/ingress.env; set +a
exec .venv/bin/serve run serve_config.yaml
