"""Command-line tools that ship with the platform (benchmarks, client configuration)."""
