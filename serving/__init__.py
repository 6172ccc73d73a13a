"""Serving workloads of the platform, built into container images."""
