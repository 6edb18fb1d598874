"""The Open Inference Protocol v2 over gRPC: the vendored grpc_predict_v2.proto, its generated modules
(scripts/grpc_generate.sh) and the server (server.py), which app.py starts only when VAE_GRPC_PORT is set."""
