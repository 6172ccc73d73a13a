"""Orchestrator: typed workflows compiled to Step Functions, with their four trigger kinds."""

from __future__ import annotations

import json

import pytest

from cdk_constructs.orchestrator import EmrStep, execution_order
from stacks.orchestration_stack import BACKFILL_PREFIX, SIGNALS


def resources(synth, cfn_type: str) -> dict[str, dict]:
    return synth.template("orchestration").find_resources(cfn_type)


def definition(synth, workflow: str) -> dict:
    """The state machine's definition, with each CloudFormation reference replaced by REF."""
    machines = resources(synth, "AWS::StepFunctions::StateMachine")
    (machine,) = [
        m
        for m in machines.values()
        if m["Properties"]["StateMachineName"] == f"ml-platform-{synth.config.env_name}-{workflow}"
    ]
    body = machine["Properties"]["DefinitionString"]
    # Rendered as Fn::Join of literal text and references; references become placeholders.
    text = "".join(p if isinstance(p, str) else "REF" for p in body["Fn::Join"][1])
    return json.loads(text)


def step(name: str, *depends_on: str) -> EmrStep:
    return EmrStep(name=name, cluster_id="j-1", args=(), depends_on=depends_on)


def test_steps_run_in_dependency_order():
    ordered = execution_order((step("c", "b"), step("a"), step("b", "a")))
    assert [s.name for s in ordered] == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ((step("a", "b"), step("b", "a")), "cycle"),
        ((step("a", "x"),), "unknown"),
        ((step("a"), step("a")), "distinct"),
    ],
)
def test_bad_dependencies_are_refused(steps, message):
    with pytest.raises(ValueError, match=message):
        execution_order(steps)


def test_train_recommender_gates_then_runs_the_spark_feature_job(each_env):
    states = definition(each_env, "train-recommender")["States"]
    assert definition(each_env, "train-recommender")["StartAt"] == "raw-events-gate"
    gate = states["raw-events-gate"]
    # Invoked directly by function ARN (payload-only), so the arguments are the payload.
    assert gate["Resource"] == "REF"
    payload = gate["Arguments"]
    assert payload["prefix_template"] == "streaming/member_interactions/event_date={run_date}/"
    assert payload["min_objects"] == each_env.config.orchestrator.min_raw_objects
    assert payload["max_dead_letter_ratio"] == each_env.config.orchestrator.max_dead_letter_ratio
    assert "'run_date': $states.result.run_date" in gate["Output"]
    assert gate["Next"] == "spark-features"
    spark = states["spark-features"]
    assert spark["Resource"].endswith("elasticmapreduce:addStep.sync")
    assert spark["Output"] == "{% $states.input %}"
    args = spark["Arguments"]["Step"]["HadoopJarStep"]["Args"]
    assert args[args.index("--run-date") + 1] == "{% $states.input.run_date %}"
    assert "jobs/batch/interaction_etl.py" in " ".join(args)
    assert spark["Next"] == "ingest-features"


def test_every_task_retries_transient_errors_and_reports_failures(each_env):
    for workflow in ("train-recommender", "validate-features"):
        states = definition(each_env, workflow)["States"]
        tasks = {n: s for n, s in states.items() if s["Type"] == "Task" and n != "Notify failure"}
        assert tasks
        for task in tasks.values():
            (retry,) = task["Retry"]
            assert retry["MaxAttempts"] == 3
            assert "States.ALL" not in retry["ErrorEquals"]
            (catch,) = task["Catch"]
            assert catch["ErrorEquals"] == ["States.ALL"]
            assert catch["Next"] == "Notify failure"
        assert ":states:::sns:publish" in states["Notify failure"]["Resource"]
        message = states["Notify failure"]["Arguments"]["Message"]
        assert "$states.input.failure" in message["error"]
        assert states["Notify failure"]["Next"] == "Failed"


def test_state_machines_log_and_trace(each_env):
    for machine in resources(each_env, "AWS::StepFunctions::StateMachine").values():
        properties = machine["Properties"]
        assert properties["LoggingConfiguration"]["Level"] == "ALL"
        assert properties["TracingConfiguration"] == {"Enabled": True}


def test_failure_topic_is_encrypted_and_tls_only(each_env):
    (topic,) = resources(each_env, "AWS::SNS::Topic").values()
    assert "DataLakeKey" in json.dumps(topic["Properties"]["KmsMasterKeyId"])
    (policy,) = resources(each_env, "AWS::SNS::TopicPolicy").values()
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    assert any(
        s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        for s in statements
    )


def test_time_trigger_is_a_schedule_in_the_configured_zone(each_env):
    (schedule,) = resources(each_env, "AWS::Scheduler::Schedule").values()
    properties = schedule["Properties"]
    orchestrator = each_env.config.orchestrator
    assert properties["ScheduleExpression"] == f"cron({orchestrator.train_recommender_cron})"
    assert properties["ScheduleExpressionTimezone"] == orchestrator.timezone
    assert json.loads(properties["Target"]["Input"]) == {
        "trigger": {"type": "time", "cron": orchestrator.train_recommender_cron},
    }


def rules(synth) -> list[dict]:
    return [r["Properties"] for r in resources(synth, "AWS::Events::Rule").values()]


def test_signal_triggers_match_name_and_parameters_on_the_signal_bus(each_env):
    signal_rules = [
        r for r in rules(each_env) if r["EventPattern"].get("source") == ["ml-platform.signals"]
    ]
    patterns = sorted(
        (r["EventPattern"]["detail-type"], r["EventPattern"]["detail"]) for r in signal_rules
    )
    assert patterns == [
        (["features-requested"], {"params": {"reason": ["manual"]}}),
        (["retrain-requested"], {"params": {"model": ["recommender"]}}),
    ]
    for rule in signal_rules:
        assert "SignalBus" in json.dumps(rule["EventBusName"])


def test_data_trigger_listens_for_objects_under_the_backfill_prefix(each_env):
    (rule,) = [r for r in rules(each_env) if r["EventPattern"].get("source") == ["aws.s3"]]
    detail = rule["EventPattern"]["detail"]
    assert detail["object"] == {"key": [{"prefix": BACKFILL_PREFIX}]}
    assert "-raw-" in json.dumps(detail["bucket"])
    functions = resources(each_env, "AWS::Lambda::Function")
    (handler,) = [
        f for f in functions.values() if "PREFIX" in f["Properties"]["Environment"]["Variables"]
    ]
    environment = handler["Properties"]["Environment"]["Variables"]
    assert environment["PREFIX"] == BACKFILL_PREFIX
    assert environment["MARKER_FILE"] == "_SUCCESS"


def test_upstream_trigger_starts_validation_after_training_succeeds(each_env):
    (rule,) = [r for r in rules(each_env) if r["EventPattern"].get("source") == ["aws.states"]]
    detail = rule["EventPattern"]["detail"]
    assert detail["status"] == ["SUCCEEDED"]
    assert "trainrecommender" in json.dumps(detail["stateMachineArn"]).lower()
    assert "validatefeatures" in json.dumps(rule["Targets"][0]["Arn"]).lower()


def test_the_raw_bucket_sends_object_events_to_eventbridge(each_env):
    buckets = each_env.template("data").find_resources("Custom::S3BucketNotifications")
    configured = [json.dumps(b["Properties"]) for b in buckets.values()]
    assert any("DataLakeRawBucket" in c and "EventBridgeConfiguration" in c for c in configured)


def test_signal_publisher_knows_the_declared_signals_and_is_idempotent(each_env):
    functions = resources(each_env, "AWS::Lambda::Function")
    (publisher,) = [
        f for f in functions.values() if "SIGNALS" in f["Properties"]["Environment"]["Variables"]
    ]
    environment = publisher["Properties"]["Environment"]["Variables"]
    assert json.loads(environment["SIGNALS"]) == SIGNALS
    assert "SignalIdempotency" in json.dumps(environment["IDEMPOTENCY_TABLE"])
    (table,) = resources(each_env, "AWS::DynamoDB::GlobalTable").values()
    assert table["Properties"]["TimeToLiveSpecification"] == {
        "AttributeName": "expiration",
        "Enabled": True,
    }


def test_quality_gate_may_only_list_the_buckets_it_checks(each_env):
    policies = resources(each_env, "AWS::IAM::Policy")
    (gate,) = [p for lid, p in policies.items() if lid.startswith("OrchestratorQualityGate")]
    statements = gate["Properties"]["PolicyDocument"]["Statement"]
    assert {json.dumps(s["Action"]) for s in statements} == {'"s3:ListBucket"'}
    listed = json.dumps([s["Resource"] for s in statements])
    assert "-raw-" in listed
    assert "-curated-" in listed
    assert "/*" not in listed


def test_embedded_run_date_placeholders_are_refused():
    from cdk_constructs.orchestrator import _with_run_date

    assert _with_run_date("{run_date}") == "{% $states.input.run_date %}"
    assert _with_run_date("--run-date") == "--run-date"
    with pytest.raises(ValueError, match="whole argument"):
        _with_run_date("s3://bucket/{run_date}/")
