"""Model serving: a TF Serving-compatible gRPC server and its client."""
