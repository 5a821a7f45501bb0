# RLHF pipeline: `make setup`, then one target per stage. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_SYS ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
# CPU machines get the CPU build of torch (no multi-GB CUDA download). GPU users pick theirs, e.g.
#   make setup TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0

RUN    ?= default   # outputs go to runs/$(RUN)/<stage>/
NPROC  ?= 1         # processes (GPUs) on this machine
ZERO   ?= 0         # DeepSpeed ZeRO stage: 0 (off), 2 or 3
RESUME ?= 0         # 1: continue from the latest checkpoint of this run
ARGS   ?=           # extra config overrides, e.g. ARGS="--num_train_epochs 1 --report_to none"
IMPORT_ARGS ?=      # candidates -> labeling items, e.g. IMPORT_ARGS="--rubric-gold-share 0.05" (demo gold items)
SFT_CONFIG ?= configs/sft.yaml
CANDIDATES_CONFIG ?= configs/candidates.yaml
RM_CONFIG ?= configs/rm.yaml
LABELING_CONFIG ?= configs/labeling.yaml
PPO_CONFIG ?= configs/ppo.yaml
EVAL_CONFIG ?= configs/eval.yaml
PIPELINE_CONFIG ?= configs/pipeline.yaml

RUN    := $(strip $(RUN))
NPROC  := $(strip $(NPROC))
ZERO   := $(strip $(ZERO))
RESUME := $(strip $(RESUME))

ifeq ($(ZERO),0)
  ifeq ($(NPROC),1)
    ACCEL_CONFIG ?= configs/accelerate/single.yaml
  else
    ACCEL_CONFIG ?= configs/accelerate/ddp.yaml
  endif
else
  ACCEL_CONFIG ?= configs/accelerate/zero$(ZERO).yaml
endif
# CPU threads per process (accelerate would give each one thread): OMP_NUM_THREADS if set, else the cores shared out.
THREADS ?= $(shell $(PYTHON_SYS) -c "import os; print(os.environ.get('OMP_NUM_THREADS') or max(1, len(os.sched_getaffinity(0)) // $(NPROC)))")
LAUNCH := $(VENV)/bin/accelerate launch --config_file $(ACCEL_CONFIG) --num_processes $(NPROC) \
          --num_cpu_threads_per_process $(THREADS)
STAGE_ARGS := --run $(RUN) $(if $(filter 1,$(RESUME)),--resume true) $(ARGS)

export HF_HUB_DISABLE_TELEMETRY := 1
export GRADIO_ANALYTICS_ENABLED := False
export TOKENIZERS_PARALLELISM := false

.PHONY: help setup demo pipeline report data base-model sft candidates label simulate export rm ppo eval bench test test-slow lint format clean

help:  ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'
	@echo "  variables: RUN=$(RUN) NPROC=$(NPROC) ZERO=$(ZERO) THREADS=$(THREADS) RESUME=$(RESUME) ARGS=..."

setup: $(VENV)/.installed  ## create .venv and install the project (CPU torch unless TORCH_SPEC says otherwise)

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install $(TORCH_SPEC)
	$(PY) -m pip install -e ".[dev]"
	@# The browser tests drive a real Chromium (Debian's); without it they are skipped with a message.
	@test -x /usr/bin/chromium || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get install -y -q chromium >/dev/null; } \
		|| echo "note: no /usr/bin/chromium (apt-get install chromium): the browser tests will be skipped"
	touch $@

demo: setup  ## the whole pipeline on the embedded model with simulated labelers (about 14 min on 2 CPU cores)
	$(PY) -m pipeline run --config configs/pipeline.yaml --run $(RUN) $(ARGS)

pipeline: setup  ## the whole pipeline from configs/pipeline.yaml; finished stages are skipped
	$(PY) -m pipeline run --config $(PIPELINE_CONFIG) --run $(RUN) $(ARGS)

report: setup  ## rebuild runs/$(RUN)/report.md and report.html from the stages' outputs
	$(PY) -m pipeline report --config $(PIPELINE_CONFIG) --run $(RUN)

data: setup  ## write the demo data set into runs/_data/
	$(PY) -c "from pipeline.demo.data import ensure_demo_data; print(ensure_demo_data())"

base-model: setup  ## build the embedded tiny base model into runs/_models/
	$(PY) -m pipeline.demo.base_model --preset tiny-llama

sft: setup  ## stage 1: supervised fine-tuning (configs/sft.yaml)
	$(LAUNCH) -m pipeline.sft --config $(SFT_CONFIG) $(STAGE_ARGS)

candidates: setup  ## stage 2a: the SFT model samples k candidates per prompt; they become items to label
	$(LAUNCH) -m pipeline.candidates --config $(CANDIDATES_CONFIG) --run $(RUN) $(ARGS)
	$(PY) -m labeling_ui import-candidates --run $(RUN) $(IMPORT_ARGS)

label: setup  ## stage 2b: the ranking app for people (prints the URL, and the admin login on first run)
	$(PY) -m labeling_ui serve --run $(RUN) --config $(LABELING_CONFIG) $(ARGS)

simulate: setup  ## stage 2b without people: simulated labelers rank every item (demo, tests)
	$(PY) -m labeling_ui simulate --run $(RUN) --config $(LABELING_CONFIG) $(ARGS)

export: setup  ## stage 2c: rankings -> preference pairs in runs/$(RUN)/export/
	$(PY) -m labeling_ui export --run $(RUN) $(ARGS)

rm: setup  ## stage 3: reward model on the exported preferences (configs/rm.yaml)
	$(LAUNCH) -m reward.train --config $(RM_CONFIG) $(STAGE_ARGS)

ppo: setup  ## stage 4: PPO against the reward model (configs/ppo.yaml)
	$(LAUNCH) -m ppo.train --config $(PPO_CONFIG) $(STAGE_ARGS)

eval: setup  ## the SFT policy against the PPO policy on held-out prompts: summary, report.md, plots
	$(PY) -m ppo.evaluate --config $(EVAL_CONFIG) --run $(RUN) $(ARGS)

bench: setup  ## benchmarks: each stage against plain TRL (PPO: TRL 1.12 in bench/.oracle, built once), packing, LoRA, ZeRO, labeling
	$(PY) -m bench $(ARGS)

test: setup  ## the test suite (CPU, tiny models, a few minutes)
	$(PY) -m pytest -q -m "not slow"

test-slow: setup  ## the long end-to-end tests only
	$(PY) -m pytest -q -m slow

lint: setup  ## ruff lint and format check
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: setup  ## ruff format and autofix
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

clean:  ## remove runs/ (all outputs and caches); keeps .venv
	rm -rf runs wandb
