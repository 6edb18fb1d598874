#!/usr/bin/env bash
# Install MLServer into a venv of its own, .venv-mlserver in the checkout, only when it is missing or at
# another version, so it is cheap to call before every test run. tests/service/test_mlserver_codecs.py runs a
# client script with this venv's python: it builds v2 requests with MLServer's codecs and types and decodes
# the answers of a real `vae serve` with them.
#
# Why a venv of its own: mlserver 1.7.1 requires fastapi<0.116, and installing it into .venv would replace
# the service's own FastAPI. The client needs none of the service, so nothing else goes in (never torch).
# Needs no root: only python3 with venv and pip, and PyPI (or the pip index configured on the machine).
set -euo pipefail

MLSERVER_PIN="mlserver==1.7.1"
cd "$(dirname "$0")/.."
venv=.venv-mlserver
stamp=$venv/.installed

if [[ -f $stamp && $(cat "$stamp") == "$MLSERVER_PIN" ]]; then
  exit 0
fi
PYTHON=${PYTHON:-python3}
echo "mlserver_setup: installing $MLSERVER_PIN into $venv (its own venv: it pins fastapi<0.116)"
rm -rf "$venv"
"$PYTHON" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$MLSERVER_PIN"
"$venv/bin/python" -c "import mlserver.codecs, mlserver.types"
echo "$MLSERVER_PIN" > "$stamp"
