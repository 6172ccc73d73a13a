"""Deployment units: each stack composes constructs, wires them and grants access."""
