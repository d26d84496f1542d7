"""Model serving: a TF Serving-compatible gRPC server, its client, serving-sync and the TF Serving runner."""
