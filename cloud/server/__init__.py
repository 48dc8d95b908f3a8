"""The cloud server: gRPC service, device registry, upload inbox and the adaptation worker."""
