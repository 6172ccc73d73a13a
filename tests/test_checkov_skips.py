"""checkov findings skipped on a resource (`Metadata.checkov.skip`) each give one line that
names the specific cause; `make test-checkov` fails on any finding without one."""

from __future__ import annotations

import re

import pytest
from aws_cdk import App, CfnResource, Stack
from aws_cdk import aws_s3 as s3

from cdk_constructs.base import skip_checkov
from tests.checkov.reasons import assert_specific_reason

CHECK_ID = re.compile(r"CKV2?_AWS_\d+")


def checkov_skips(app: App) -> list[tuple[str, str, str]]:
    found = []
    for construct in app.node.find_all():
        if isinstance(construct, CfnResource):
            for skip in (construct.get_metadata("checkov") or {}).get("skip", []):
                found.append((construct.node.path, skip["id"], skip["comment"]))
    return found


def test_skips_give_specific_one_line_reasons(each_env):
    found = checkov_skips(each_env.app)
    assert len(found) >= 50, "expected the Lambda and log group skips of every stack"
    for path, check_id, reason in found:
        assert CHECK_ID.fullmatch(check_id), f"{path}: {check_id} is no checkov check id"
        assert "\n" not in reason, f"{path}: {check_id} reason spans lines"
        assert_specific_reason(path, check_id, reason)


def test_a_check_is_skipped_at_most_once_per_resource(each_env):
    found = checkov_skips(each_env.app)
    pairs = [(path, check_id) for path, check_id, _ in found]
    assert len(pairs) == len(set(pairs))


@pytest.mark.parametrize(
    "reason",
    ["CKV_AWS_18 checkov", "not needed", "CKV_AWS_18: accepted, see checkov."],
)
def test_a_vague_reason_is_rejected(reason):
    with pytest.raises(AssertionError, match="vague reason for CKV_AWS_18"):
        assert_specific_reason("Stack/Bucket", "CKV_AWS_18", reason)


def test_skips_merge_and_keep_the_path_metadata():
    app = App(context={"aws:cdk:enable-path-metadata": True})
    stack = Stack(app, "Stack")
    bucket = s3.Bucket(stack, "Bucket")
    skip_checkov(bucket, "CKV_AWS_18", "The first reason, long enough to be specific.")
    skip_checkov(bucket.node.default_child, "CKV_AWS_21", "The second reason, also specific.")
    (resource,) = app.synth().get_stack_by_name("Stack").template["Resources"].values()
    assert resource["Metadata"]["aws:cdk:path"] == "Stack/Bucket/Resource"
    assert resource["Metadata"]["checkov"] == {
        "skip": [
            {"id": "CKV_AWS_18", "comment": "The first reason, long enough to be specific."},
            {"id": "CKV_AWS_21", "comment": "The second reason, also specific."},
        ]
    }
