"""cfn-lint over every synthesized template: nothing but the checks .cfnlintrc.yaml ignores."""

from __future__ import annotations

from pathlib import Path

import yaml
from cfnlint.api import lint_file
from cfnlint.config import ManualArgs

from tests.conftest import REPO_ROOT

IGNORED = yaml.safe_load((REPO_ROOT / ".cfnlintrc.yaml").read_text())["ignore_checks"]


def test_ignored_checks_are_listed_once():
    assert len(IGNORED) == len(set(IGNORED))


def test_templates_lint_clean(each_env):
    config = ManualArgs(regions=[each_env.config.region], ignore_checks=IGNORED)
    findings = [
        f"{Path(match.filename).name}: {match.rule.id} {match.message}"
        for template in each_env.template_files
        for match in lint_file(template, config)
    ]
    assert findings == []
