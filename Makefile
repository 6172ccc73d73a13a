# Two commands on a fresh machine: `make synth` and `make test`.
# Both create .venv, install the pinned Python and Node dependencies into it, and
# run with .venv/bin first on PATH so jsii and the CDK CLI use the venv's Node.js 24.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := synth

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# What synth needs (CDK, cdk-nag, pydantic, Node) and, on top, what the tests need.
SYNTH_STAMP := $(VENV)/.installed-synth
STAMP := $(VENV)/.installed
# PyFlink 1.20 pins numpy and pyarrow too old for .venv, so its test has a venv of its own.
FLINK_VENV := .venv-flink
FLINK_REQUIREMENTS := tests/flink/requirements.txt
FLINK_STAMP := $(FLINK_VENV)/.installed
# checkov pins boto3 and packaging older than .venv's, so it too has a venv of its own.
CHECKOV_VENV := .venv-checkov
CHECKOV_REQUIREMENTS := tests/checkov/requirements.txt
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
# Both environments' cloud assemblies as the tests synthesized them, for the checkov scan.
ASSEMBLY := .make/assembly
export PATH := $(CURDIR)/$(BIN):$(PATH)
# The CLI would otherwise phone home for notices and telemetry; synth stays offline.
export CDK_DISABLE_CLI_TELEMETRY := true

ENV ?= dev
CONFIG ?=
CDK_CONTEXT := -c env=$(ENV) $(if $(CONFIG),-c config=$(CONFIG))
CDK := npx --no-install cdk --no-notices

.PHONY: install synth test test-fast test-lane-infra test-lane-workload test-flink test-checkov scan-checkov browser lint format bench bench-serving bench-training diff deploy clean

install: $(STAMP)

$(SYNTH_STAMP): requirements.txt package.json package-lock.json
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(STAMP): $(SYNTH_STAMP) requirements-dev.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

# The requirements file pulls in the EMR Flink requirements with -r, so those count too.
$(FLINK_STAMP): $(FLINK_REQUIREMENTS) jobs/requirements-emr-flink.txt jobs/requirements-emr.txt
	test -x $(FLINK_VENV)/bin/python || $(PYTHON) -m venv $(FLINK_VENV)
	$(FLINK_VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
		-r $(FLINK_REQUIREMENTS)
	touch $@

$(CHECKOV_STAMP): $(CHECKOV_REQUIREMENTS)
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
		-r $(CHECKOV_REQUIREMENTS)
	touch $@

synth: $(SYNTH_STAMP)
	$(CDK) synth --quiet $(CDK_CONTEXT)
	@echo "Templates for '$(ENV)' are in cdk.out/"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Two lanes at once, one per core, of about equal length (see README, "Performance"):
# - infrastructure tests (tests/test_*.py: each environment synthesized once, its templates
#   left where the checkov scan reads them), the scan, then the Spark jobs' tests;
# - the PyFlink test, then the other workload tests (serving, ABlaze, training, handlers).
# -O keeps each lane's output together.
WORKLOAD_TESTS := $(filter-out tests/jobs/ tests/flink/ tests/checkov/,$(wildcard tests/*/))

test: lint $(FLINK_STAMP) $(CHECKOV_STAMP) browser
	$(MAKE) --no-print-directory -j2 -O test-lane-infra test-lane-workload

test-lane-infra: $(STAMP) $(CHECKOV_STAMP)
	ML_PLATFORM_TEST_ASSEMBLY=$(CURDIR)/$(ASSEMBLY) $(BIN)/python -m pytest tests/test_*.py
	$(MAKE) --no-print-directory scan-checkov
	$(BIN)/python -m pytest tests/jobs

test-lane-workload: $(STAMP) $(FLINK_STAMP)
	$(MAKE) --no-print-directory test-flink
	$(BIN)/python -m pytest $(WORKLOAD_TESTS)

# The inner loop: every infrastructure test that builds its construct in a bare stack, and the
# config tests, without synthesizing the shipped environments.
test-fast: $(STAMP)
	$(BIN)/python -m pytest tests/test_*.py -m "not synthesized"

# The browser tests of ABlaze's results page drive Debian's Chromium (as root, installed here
# when missing; otherwise: sudo apt-get install chromium).
browser:
	@command -v chromium >/dev/null || { \
		echo "Installing Chromium (Debian package) for the browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# --noconftest: tests/conftest.py imports the CDK, which .venv-flink does not have.
test-flink: $(FLINK_STAMP)
	$(FLINK_VENV)/bin/python -m pytest --noconftest tests/flink

# Both shipped environments, synthesized by .venv and scanned by .venv-checkov; any finding
# not skipped on its resource with a reason (or listed in tests/checkov/pending.txt) fails.
test-checkov: $(STAMP) $(CHECKOV_STAMP)
	$(BIN)/python -m tools.synth_templates --out $(ASSEMBLY) dev prod
	$(MAKE) --no-print-directory scan-checkov

# Scans the templates that pytest (or test-checkov) left in $(ASSEMBLY).
scan-checkov: $(CHECKOV_STAMP)
	$(CHECKOV_VENV)/bin/python tests/checkov/scan.py $(ASSEMBLY)/dev $(ASSEMBLY)/prod

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(SYNTH_STAMP)
	$(BIN)/python tools/bench_synth.py

bench-serving: $(STAMP)
	$(BIN)/python tools/bench_serving.py

bench-training: $(STAMP)
	$(BIN)/python tools/bench_training.py

diff: $(SYNTH_STAMP)
	$(CDK) diff --all $(CDK_CONTEXT)

deploy: $(SYNTH_STAMP)
	$(CDK) deploy --all --concurrency 4 --require-approval broadening $(CDK_CONTEXT)

clean:
	rm -rf cdk.out .pytest_cache .ruff_cache
