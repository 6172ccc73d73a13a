"""Keeps the PyFlink end-to-end tests out of the project venv's pytest run.

PyFlink cannot be installed in ``.venv`` (see requirements.txt here), so the main run ignores
this folder instead of failing or skipping it. ``make test-flink`` runs it in ``.venv-flink``
with ``--noconftest``: that leaves this file, and with it the ignore, unloaded, and keeps out
``tests/conftest.py``, whose CDK imports that venv does not have.
"""

collect_ignore_glob = ["test_*.py"]
