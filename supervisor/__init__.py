"""The master process: lifecycle of the proxy worker and the ConfigMap syncer (no grpc, no kubernetes)."""
