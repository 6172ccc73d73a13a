"""Orchestrator: typed workflows compiled to Step Functions, with their four trigger kinds."""

from __future__ import annotations

import json
import re

import pytest

from cdk_constructs.base import CONTAINER_TAG
from cdk_constructs.workflow import with_run_date
from stacks.orchestration_stack import BACKFILL_PREFIX, SIGNALS


def resources(synth, cfn_type: str) -> dict[str, dict]:
    return synth.template("orchestration").find_resources(cfn_type)


def maestro(synth, cfn_type: str) -> dict[str, dict]:
    """The orchestrator's own resources of `cfn_type` (by the tag contract's container tag;
    the stack also holds training's and monitoring's)."""
    return {
        lid: resource
        for lid, resource in resources(synth, cfn_type).items()
        if {"Key": CONTAINER_TAG, "Value": "maestro"} in resource["Properties"].get("Tags", [])
    }


def role_statements(template: dict, role_id: str) -> list[dict]:
    """Every statement of the template's policies attached to the role `role_id`."""
    return [
        statement
        for resource in template["Resources"].values()
        if resource["Type"] == "AWS::IAM::Policy"
        and {"Ref": role_id} in resource["Properties"]["Roles"]
        for statement in resource["Properties"]["PolicyDocument"]["Statement"]
    ]


def workflow_role_statements(synth, workflow: str) -> list[dict]:
    """The statements of the role the `workflow` state machine runs with."""
    (role_arn,) = [
        machine["Properties"]["RoleArn"]
        for machine in resources(synth, "AWS::StepFunctions::StateMachine").values()
        if machine["Properties"]["StateMachineName"] == f"{synth.config.resource_prefix}-{workflow}"
    ]
    return role_statements(synth.template_json("orchestration"), role_arn["Fn::GetAtt"][0])


def function_role_statements(template: dict, description: str) -> list[dict]:
    """The statements of the role of the template's function so described."""
    (role_arn,) = [
        resource["Properties"]["Role"]
        for resource in template["Resources"].values()
        if resource["Type"] == "AWS::Lambda::Function"
        and resource["Properties"].get("Description") == description
    ]
    return role_statements(template, role_arn["Fn::GetAtt"][0])


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


def all_states(states: dict) -> dict:
    """Every state of a definition, those inside Parallel branches included."""
    found = {}
    for name, state in states.items():
        found[name] = state
        for branch in state.get("Branches", []):
            found.update(all_states(branch["States"]))
    return found


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


def test_train_recommender_loads_features_and_trains_at_once(each_env):
    states = definition(each_env, "train-recommender")["States"]
    # train depends only on spark-features: it must not wait for the feature-store load.
    fork = states[states["spark-features"]["Next"]]
    assert fork["Type"] == "Parallel"
    branches = {b["StartAt"]: b["States"] for b in fork["Branches"]}
    assert set(branches) == {"ingest-features", "train"}
    assert branches["ingest-features"]["ingest-features"]["End"] is True
    assert branches["train"]["train"]["Next"] == "register-model"
    assert branches["train"]["register-model"]["End"] is True
    # Every branch passes the run's state on; the block's output is their merge.
    assert fork["Output"] == "{% $merge($states.result) %}"
    assert fork["Next"] == "Done"


def test_every_run_and_every_task_has_a_time_out(each_env):
    orchestrator = each_env.config.orchestrator
    for workflow in ("train-recommender", "validate-features"):
        machine = definition(each_env, workflow)
        assert machine["TimeoutSeconds"] == orchestrator.workflow_timeout_minutes * 60
        for name, state in all_states(machine["States"]).items():
            if state["Type"] == "Task":
                assert state["TimeoutSeconds"] > 0, name
    states = all_states(definition(each_env, "train-recommender")["States"])
    for emr_step in ("spark-features", "ingest-features"):
        assert states[emr_step]["TimeoutSeconds"] == orchestrator.emr_step_timeout_minutes * 60
    training = each_env.config.training
    longest = (
        training.max_wait_minutes if training.use_spot else training.max_runtime_minutes
    ) * 60
    assert states["train"]["TimeoutSeconds"] > longest


def test_every_task_retries_transient_errors_only(each_env):
    for workflow in ("train-recommender", "validate-features"):
        states = all_states(definition(each_env, workflow)["States"])
        tasks = {n: s for n, s in states.items() if s["Type"] == "Task"}
        assert tasks
        for task in tasks.values():
            (retry,) = task["Retry"]
            assert retry["MaxAttempts"] == 3
            assert "States.ALL" not in retry["ErrorEquals"]
            # A failure fails the run; the status rule reports it (a Catch would hide it).
            assert "Catch" not in task


def test_every_unsuccessful_run_is_reported_to_the_alert_topic(each_env):
    (rule,) = [
        r
        for r in rules(each_env)
        if r["EventPattern"].get("detail", {}).get("status") == ["FAILED", "TIMED_OUT", "ABORTED"]
    ]
    watched = json.dumps(rule["EventPattern"]["detail"]["stateMachineArn"])
    assert "trainrecommender" in watched.lower()
    assert "validatefeatures" in watched.lower()
    (target,) = rule["Targets"]
    topic = f"ml-platform-{each_env.config.env_name}-alerts"
    assert topic in json.dumps(target["Arn"])
    # EventBridge puts each path's JSON value (quoted string, or null) where <name> stands.
    template = re.sub(r"<[\w-]+>", "null", target["InputTransformer"]["InputTemplate"])
    message = json.loads(template)
    assert set(message) == {"alert", "status", "execution", "error", "cause"}
    assert target["InputTransformer"]["InputPathsMap"]["detail-error"] == "$.detail.error"
    assert "DeadLetterConfig" in target


def test_every_trigger_retries_and_keeps_what_it_cannot_deliver(each_env):
    (dead_letters,) = maestro(each_env, "AWS::SQS::Queue")
    targets = [t for r in rules(each_env) for t in r["Targets"]]
    schedules = resources(each_env, "AWS::Scheduler::Schedule").values()
    targets.extend(schedule["Properties"]["Target"] for schedule in schedules)
    assert len(targets) >= 6
    for target in targets:
        assert dead_letters in json.dumps(target["DeadLetterConfig"])
        assert target["RetryPolicy"]["MaximumRetryAttempts"] == 8
    (starter,) = [
        f
        for f in resources(each_env, "AWS::Lambda::Function").values()
        if "PREFIX" in f["Properties"]["Environment"]["Variables"]
    ]
    assert dead_letters in json.dumps(starter["Properties"]["DeadLetterConfig"])


def test_state_machines_log_and_trace(each_env):
    for machine in resources(each_env, "AWS::StepFunctions::StateMachine").values():
        properties = machine["Properties"]
        assert properties["LoggingConfiguration"]["Level"] == "ALL"
        assert properties["TracingConfiguration"] == {"Enabled": True}


def test_time_trigger_is_a_schedule_in_the_configured_zone(each_env):
    orchestrator = each_env.config.orchestrator
    (properties,) = [
        schedule["Properties"]
        for schedule in resources(each_env, "AWS::Scheduler::Schedule").values()
        if schedule["Properties"]["ScheduleExpression"]
        == f"cron({orchestrator.train_recommender_cron})"
    ]
    assert properties["ScheduleExpression"] == f"cron({orchestrator.train_recommender_cron})"
    assert properties["ScheduleExpressionTimezone"] == orchestrator.timezone
    assert json.loads(properties["Target"]["Input"]) == {
        "trigger": {"type": "time", "cron": orchestrator.train_recommender_cron},
    }


def bus_id(synth) -> str:
    buses = resources(synth, "AWS::Events::EventBus")
    (bus,) = [
        lid
        for lid, bus in buses.items()
        if bus["Properties"]["Name"] == f"ml-platform-{synth.config.env_name}-signals"
    ]
    return bus


def rules(synth) -> list[dict]:
    """The orchestrator's own rules (the stack also holds monitoring's)."""
    return [rule["Properties"] for rule in maestro(synth, "AWS::Events::Rule").values()]


def test_signal_triggers_match_name_and_parameters_on_the_signal_bus(each_env):
    signal_rules = [
        r for r in rules(each_env) if r["EventPattern"].get("source") == ["ml-platform.signals"]
    ]
    patterns = sorted(
        (r["EventPattern"]["detail-type"], r["EventPattern"]["detail"]) for r in signal_rules
    )
    assert patterns == [
        (["analysis-requested"], {"params": {"reason": ["manual"]}}),
        (["features-requested"], {"params": {"reason": ["manual"]}}),
        (["retrain-requested"], {"params": {"model": ["recommender"]}}),
    ]
    for rule in signal_rules:
        assert rule["EventBusName"] == {"Ref": bus_id(each_env)}


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
    (rule,) = [
        r
        for r in rules(each_env)
        if r["EventPattern"].get("source") == ["aws.states"]
        and r["EventPattern"]["detail"]["status"] == ["SUCCEEDED"]
    ]
    detail = rule["EventPattern"]["detail"]
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
    ((table_id, table),) = resources(each_env, "AWS::DynamoDB::GlobalTable").items()
    assert environment["IDEMPOTENCY_TABLE"] == {"Ref": table_id}
    assert table["Properties"]["TimeToLiveSpecification"] == {
        "AttributeName": "expiration",
        "Enabled": True,
    }


def test_quality_gate_may_only_list_the_buckets_it_checks(each_env):
    statements = function_role_statements(
        each_env.template_json("orchestration"), "Data-quality gate of the platform's workflows"
    )
    assert {json.dumps(s["Action"]) for s in statements} == {'"s3:ListBucket"'}
    listed = json.dumps([s["Resource"] for s in statements])
    assert "-raw-" in listed
    assert "-curated-" in listed
    assert "/*" not in listed


def test_embedded_run_date_placeholders_are_refused():
    assert with_run_date("{run_date}") == "{% $states.input.run_date %}"
    assert with_run_date("--run-date") == "--run-date"
    with pytest.raises(ValueError, match="whole argument"):
        with_run_date("s3://bucket/{run_date}/")


def test_only_the_publisher_may_put_events_on_the_signal_bus(each_env):
    (policy,) = resources(each_env, "AWS::Events::EventBusPolicy").values()
    statement = policy["Properties"]["Statement"]
    assert statement["Effect"] == "Deny"
    assert statement["Principal"] == {"AWS": "*"}
    assert statement["Action"] == "events:PutEvents"
    role_id, attribute = statement["Condition"]["ArnNotEquals"]["aws:PrincipalArn"]["Fn::GetAtt"]
    assert attribute == "Arn"
    assert statement["Resource"] == {"Fn::GetAtt": [bus_id(each_env), "Arn"]}
    functions = resources(each_env, "AWS::Lambda::Function")
    (publisher,) = [
        f for f in functions.values() if "SIGNALS" in f["Properties"]["Environment"]["Variables"]
    ]
    assert publisher["Properties"]["Role"] == {"Fn::GetAtt": [role_id, "Arn"]}


def test_the_workflow_may_add_steps_to_the_spark_cluster_only(each_env):
    statements = [
        s
        for s in workflow_role_statements(each_env, "train-recommender")
        if "elasticmapreduce:AddJobFlowSteps" in json.dumps(s["Action"])
    ]
    assert statements
    for statement in statements:
        resource = json.dumps(statement["Resource"])
        assert "cluster/*" not in resource
        assert "SparkCluster" in resource
        assert "Flink" not in resource
