"""The rule every accepted finding's reason meets, for cdk-nag acknowledgments and checkov
skips alike: beyond naming its rule, it says at least 20 characters of why."""

from __future__ import annotations

_SCANNER_WORDS = {"awssolutions", "checkov"}


def assert_specific_reason(where: str, rule: str, reason: str) -> None:
    rule_words = {rule.lower(), rule.split("-")[-1].lower(), *_SCANNER_WORDS}
    specific = " ".join(w for w in reason.lower().split() if w.strip(".,:") not in rule_words)
    assert len(specific) >= 20, f"{where}: vague reason for {rule}: {reason!r}"
