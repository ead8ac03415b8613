"""The CRI proxy worker process."""
