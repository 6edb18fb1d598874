#!/usr/bin/env bash
# What tests/test_deploy.py validates the KServe objects of deploy/ with: the KServe Python SDK's wheel,
# from PyPI, without its dependencies and never installed. KServe's CRD YAML is not in any package on
# PyPI, Debian or npm, so the test derives the JSON schema of ServingRuntime and InferenceService from
# the SDK's generated model classes (read from the wheel as source; nothing in it is imported or run).
# The Kubernetes schemas come with kubernetes-validate, in the test extra. Does nothing when the wheel
# is there already.
#
#   VAE_KSERVE_SDK   the version (default 0.21.0); the test looks for this one
#   VENV             the virtual environment whose pip downloads it (default .venv)
set -euo pipefail

version="${VAE_KSERVE_SDK:-0.21.0}"
venv="${VENV:-.venv}"
dest="$venv/share/vae-deploy"
wheel="$dest/kserve-$version-py3-none-any.whl"

if [[ -f "$wheel" ]]; then
  exit 0
fi
if [[ ! -x "$venv/bin/python" ]]; then
  echo "deploy_setup: no virtual environment at $venv: run make install first" >&2
  exit 1
fi
mkdir -p "$dest"
echo "deploy_setup: pip download kserve==$version (the wheel alone, for its model classes)"
"$venv/bin/python" -m pip download --quiet --no-deps --only-binary :all: --dest "$dest" "kserve==$version"
test -f "$wheel"
