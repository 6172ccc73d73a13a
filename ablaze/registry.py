"""The model versions experiment cells may name: the approved versions in the model registry.

The platform's delivery workflow deploys approved model packages only, and the serving app's
``MODEL_VERSION`` and ``CANDIDATE_MODEL_VERSION`` are their ``ModelPackageVersion`` numbers,
so those are the versions a cell can be served by.
"""

from __future__ import annotations

from typing import Any


def approved_model_versions(*, client: Any, model_package_group: str) -> frozenset[str]:
    """The version numbers, as text, of the group's approved model packages."""
    pages = client.get_paginator("list_model_packages").paginate(
        ModelPackageGroupName=model_package_group,
        ModelApprovalStatus="Approved",
        ModelPackageType="Versioned",
    )
    return frozenset(
        str(package["ModelPackageVersion"])
        for page in pages
        for package in page["ModelPackageSummaryList"]
    )
