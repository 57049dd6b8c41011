# Corral: `make run` starts the whole cluster in the foreground; `make test` runs the suite.
# Both install what they need (uv from PyPI, RabbitMQ and, for the browser tests, Chromium from
# Debian) on a fresh machine.

SHELL := /bin/bash
UV ?= $(shell command -v uv 2>/dev/null || echo "$(HOME)/.local/bin/uv")
export UV_LINK_MODE ?= copy

.PHONY: run run-demo test lint typecheck check bench bench-install bench-latency bench-estimates bench-fairness \
	bench-pool install rabbitmq \
	chromium deploy-tools embedded-model test-embedded-model images check-deploy

$(UV):
	python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv

install: $(UV)
	$(UV) sync --all-packages --frozen 2>/dev/null || $(UV) sync --all-packages

rabbitmq:
	@test -x /usr/lib/rabbitmq/bin/rabbitmq-server || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server)

## Headless Chromium for tests/e2e/test_browser_cors.py (about 20 s here). Where it cannot be
## installed, those tests skip; under CI (CI set) a failed install fails the run.
chromium:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
			chromium-driver >/dev/null) || \
		{ [ -z "$$CI" ] && echo "chromium not installed: the browser tests will skip" >&2; }

## What the deploy checks (tests/deploy) run: Prometheus and promtool, Podman with buildah and
## runc, debootstrap for a locally made base image. Where they cannot be installed those tests
## skip; under CI (CI set) a failed install fails the run.
deploy-tools:
	@command -v promtool >/dev/null && command -v podman >/dev/null && \
		command -v debootstrap >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus \
			podman buildah runc debootstrap libpython3.11 >/dev/null) || \
		{ [ -z "$$CI" ] && echo "deploy tools not installed: the deploy checks will skip" >&2; }

## Corral's container images, built with Podman on a Debian base made here by debootstrap (no
## registry needed; the base is cached under ~/.cache/corral): localhost/corral:latest (every
## service: the top-level Dockerfile), localhost/corral-standins:latest (the emulator and
## SecantusDB) and localhost/corral-rabbitmq:local (deploy/compose/build-images.sh, docs/deploy.md).
images: install deploy-tools
	UV=$(UV) deploy/compose/build-images.sh all

## The container checks (tests/deploy, marker `containers`, off in `make test`): the images built
## and run with testcontainers, docker-compose.yml brought up on loopback with a chat answered
## through it, then taken down. The static deploy checks (hadolint, compose config and schema)
## run in `make test`. Where Podman cannot be installed they skip; under CI they fail.
check-deploy: install deploy-tools
	CORRAL_CONTAINER_TESTS=1 $(UV) run pytest tests/deploy -m containers

## The embedded model server `make run` falls back to (llama-cpp-python serving SmolLM2-135M), in a
## venv of its own under ~/.cache/corral, outside the uv workspace. The first time builds
## llama-cpp-python from source (several minutes; the wheel is kept), later runs take seconds.
embedded-model: install
	$(UV) run python -m corral_devstack embedded-model

## For `make test`: where it cannot be built (no compiler), tests/e2e/test_real_model.py skips;
## under CI (CI set) a failed install fails the run.
test-embedded-model: install
	@$(UV) run python -m corral_devstack embedded-model || \
		{ [ -z "$$CI" ] && echo "embedded model not installed: the real-model tests will skip" >&2; }

## Start the cluster against CORRAL_OLLAMA_URL (default http://127.0.0.1:11434); when nothing
## answers there (and no CORRAL_BACKEND_KIND is set), in front of the embedded model instead
## (CORRAL_DEV_EMBEDDED_MODEL=0 turns that off).
run: install rabbitmq
	CORRAL_DEV_EMBEDDED_MODEL=$${CORRAL_DEV_EMBEDDED_MODEL:-auto} $(UV) run python -m corral_devstack run

## Start the cluster with the bundled Ollama emulator as the backend (no Ollama needed).
run-demo: install rabbitmq
	$(UV) run python -m corral_devstack run --emulator

test: install rabbitmq chromium deploy-tools test-embedded-model
	$(UV) run pytest

lint: install
	$(UV) run ruff check .
	$(UV) run ruff format --check .

typecheck: install
	$(UV) run mypy services/*/src tools/*/src services/*/tests tools/*/tests tests
	$(UV) run mypy bench

check: lint typecheck test

## Corral next to the backend called directly, and next to LiteLLM's proxy, in one run on this
## machine (about 3 minutes; docs/performance.md): time to first token and total time added (p50,
## p99), CPU per request of every process (RabbitMQ's included), broker messages per request; a
## markdown table on stdout and docs/img/compare-*.png. Corral runs as `make run` starts it
## (session store, sessions, queue feedback). LiteLLM's side runs once `make bench-install` has
## installed it, else it is skipped. Options through BENCH_ARGS (`uv run python bench/compare.py
## --help`), e.g. BENCH_ARGS="--corral bare" (scheduler and gateway only, stateless requests),
## "--sessions off", "--repeats 3", "--clients 1", "--no-litellm", "--token-delay-ms 20".
bench: install rabbitmq
	$(UV) sync --all-packages --frozen --inexact --group bench 2>/dev/null || \
		$(UV) sync --all-packages --inexact --group bench
	$(UV) run python bench/compare.py $(BENCH_ARGS)

## What `make bench` needs beyond `make install`, kept out of it and of CI: matplotlib (the
## `bench` group) and LiteLLM's proxy, large and pinning older packages than the services use,
## so in an environment of its own (bench/litellm/.venv).
bench-install: install
	$(UV) sync --all-packages --frozen --inexact --group bench
	$(UV) sync --project bench/litellm --frozen

## The latency Corral adds without sessions, hop by hop (scheduler and gateway only; about 20 s).
bench-latency: install rabbitmq
	$(UV) run python bench/latency.py

## How close the queue's wait estimates come to real waits (about 2 minutes; docs/performance.md).
bench-estimates: install rabbitmq
	$(UV) run python bench/estimates.py

## A pool of 1, 2 and 4 emulated servers under mixed-model load, model affinity against round
## robin (about 7 minutes; docs/performance.md, "Backend pools").
bench-pool: install rabbitmq
	$(UV) run python bench/pool.py

## Queue ordering policies compared by simulation (no cluster needed; docs/queue.md).
bench-fairness: install
	$(UV) run python bench/fairness.py
