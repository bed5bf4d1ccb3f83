# rosterdrop: one entry point for the local stack, tests, demo and benchmarks.
#   make up      start LocalStack (S3, SQS, SES, SES v2) + DynamoDB Local + the event runner
#   make down    stop them
#   make unit    the fast tier: domain and stages over in-memory ports, no stack, no network (seconds)
#   make test    install what is missing, start the stack, run every test, stop what it started
#   make demo    start the stack and run a 1,000-row sample roster through the pipeline
#   make bench   benchmarks: ingest vs raw readers, apply vs raw DynamoDB writes, end to end, Lambda init
#   make fuzz    fuzz decoding and row parsing (FUZZ_SECS per target, default 600)

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

# The local stack, through the standard AWS SDK variables (never hard-coded in function code).
export AWS_ENDPOINT_URL ?= http://127.0.0.1:4566
export AWS_ENDPOINT_URL_DYNAMODB ?= http://127.0.0.1:8000
export AWS_REGION ?= us-east-1
export AWS_ACCESS_KEY_ID ?= test
export AWS_SECRET_ACCESS_KEY ?= test
export ROSTERDROP_S3_PATH_STYLE ?= true
# Never let the SDK reach for instance metadata (no network beyond loopback here).
export AWS_EC2_METADATA_DISABLED ?= true

CLI := target/debug/rosterdrop

.PHONY: help install up down status unit test demo lint bench fuzz

help:
	@sed -n '2,9p' Makefile | sed 's/^# //'

install:
	scripts/stack.sh install

up:
	scripts/stack.sh up
	cargo build --quiet -p cli
	scripts/runner.sh start

down:
	scripts/runner.sh stop
	scripts/stack.sh down

status:
	scripts/stack.sh status || true
	scripts/runner.sh status || true

# Endpoints pointed at a closed port: a unit test that reached for AWS or the stack would fail.
unit:
	AWS_ENDPOINT_URL=http://127.0.0.1:9 AWS_ENDPOINT_URL_DYNAMODB=http://127.0.0.1:9 cargo nextest run --workspace --lib --bins

test:
	scripts/test.sh

demo: up
	scripts/demo.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	scripts/infra-tools.sh && .local/infra-venv/bin/cfn-lint infra/template.yaml

# Stack up (not the runner: the benchmark drives the handlers itself), function binaries built with
# the bench profile for the init measurement, then the table. BENCH_ONLY=ingest needs no stack.
bench:
	scripts/stack.sh install
	scripts/stack.sh up
	cargo build --profile bench -p ingest -p apply -p finalize -p invites
	cargo bench -p bench --bench rosterdrop

fuzz:
	scripts/fuzz.sh
