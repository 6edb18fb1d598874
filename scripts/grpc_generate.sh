#!/usr/bin/env bash
# Regenerates the committed Python modules of the vendored gRPC protocol (service/http/grpc/):
# grpc_predict_v2_pb2.py (the messages), grpc_predict_v2_pb2.pyi (their types) and grpc_predict_v2_pb2_grpc.py
# (the service's stubs and servicer base). Needs grpcio-tools (the test extra): `bash scripts/grpc_generate.sh`.
#
# The proto is compiled from the repository root, so the generated module imports its sibling as
# service.http.grpc.grpc_predict_v2_pb2.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
"$PYTHON" -m grpc_tools.protoc \
    --proto_path=. \
    --python_out=. \
    --pyi_out=. \
    --grpc_python_out=. \
    service/http/grpc/grpc_predict_v2.proto
echo "generated service/http/grpc/grpc_predict_v2_pb2{.py,.pyi,_grpc.py} with $("$PYTHON" -m grpc_tools.protoc --version)"
