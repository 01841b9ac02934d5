"""The embedded default (`mirror-stack`): every servicer on one gRPC server plus the HTTP port."""
