#!/usr/bin/env bash
# From a fresh clone to a bootstrapped local model registry: a virtualenv with the pinned
# dependencies, then the three model families trained on the bundled KOI data and registered
# (versions already registered are skipped, so running this again is quick).
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
