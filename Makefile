# textpipe: `make train`, `make predict TEXT="..."`, `make test`. `make help` lists everything.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

OUT    ?= runs/default
MODEL  ?= $(OUT)
TRAIN  ?=
TEST   ?=
DEV    ?=
CONFIG ?=
TEXT   ?=
INPUT  ?=
FORMAT ?= json
REPORT ?=
ARGS   ?=
HOST   ?= 127.0.0.1
PORT   ?= 8000
NPROC  ?= 1
TORCH  ?=
# TORCH=cpu: make venv installs the pinned torch's CPU build first (2.8 GB less than PyPI's CUDA build);
# pip then keeps it, since 2.3.1+cpu satisfies torch==2.3.1.
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
# NPROC=2: torchrun starts 2 training processes (DistributedDataParallel; gloo on cpu, nccl on cuda)
TEXTPIPE := $(if $(filter 1,$(NPROC)),$(PY) -m textpipe,$(VENV)/bin/torchrun --standalone --nproc_per_node=$(NPROC) -m textpipe)

.PHONY: help venv train resume predict evaluate info quantize serve test golden clean bench-memory bench bench-quantize bench-serve bench-accuracy bench-encoder bench-scale bench-calibration

help:  ## list targets and variables
	@echo "targets:"
	@awk -F ':.*## ' '/^[a-z-]+:.*## / {printf "  make %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "variables:"
	@printf '  %-34s %s\n' \
	  'TRAIN=file [TEST=file] [DEV=file]' 'your labelled data (.csv/.tsv with label,text header, or .jsonl); without TRAIN: rotten_tomatoes' \
	  'OUT=dir' 'where train writes (and resume finishes) the bundle and the report (now: $(OUT))' \
	  'CONFIG=file.toml' 'a config file for train, e.g. configs/cnn.toml (flags in ARGS override it)' \
	  'MODEL=dir' 'the bundle predict/evaluate/info/quantize/serve use (now: $(MODEL))' \
	  'TEXT="..." or INPUT=file' 'what predict labels; INPUT=- reads stdin' \
	  'FORMAT=json|csv|text' "predict's output format (now: $(FORMAT))" \
	  'HOST=addr PORT=n' 'make serve: where to listen (now: $(HOST):$(PORT))' \
	  'TEST=file REPORT=dir' "evaluate's data (default: the test file MODEL was trained with) and report folder (default: MODEL/eval-NAME)" \
	  'NPROC=2' 'make train: that many training processes (torchrun, DistributedDataParallel)' \
	  'TORCH=cpu' 'make venv on a machine without a GPU: the CPU build of torch first (a fresh .venv; 2.8 GB smaller)' \
	  'ARGS="..."' 'extra flags for the textpipe command, e.g. ARGS="--epochs 5 --quiet"; columns: ARGS="--text-columns review --label-column stars"'
	@echo 'example: make train TRAIN=data/mine/train.csv TEST=data/mine/test.csv OUT=runs/mine && make predict MODEL=runs/mine TEXT="great fun"'

venv: $(STAMP)  ## create .venv and install the pinned stack (TORCH=cpu: CPU-only torch, for machines without a GPU)

$(STAMP): pyproject.toml
	$(if $(filter-out cpu,$(TORCH)),$(error TORCH=$(TORCH): the only build to ask for is TORCH=cpu (leave it out for PyPI's CUDA build)))
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(if $(TORCH),$(PY) -m pip install --quiet torch==2.3.1 --index-url $(TORCH_CPU_INDEX))
	$(PY) -m pip install --quiet -e ".[test,vectors]"
	touch $(STAMP)

train: $(STAMP)  ## train (default dataset, or TRAIN=... TEST=...) and write the bundle and report to OUT
ifeq ($(strip $(TRAIN)),)
	$(TEXTPIPE) train --dataset rotten_tomatoes --out $(OUT) --overwrite $(if $(CONFIG),--config $(CONFIG)) $(ARGS)
else
	$(TEXTPIPE) train --train $(TRAIN) $(if $(TEST),--test $(TEST)) $(if $(DEV),--dev $(DEV)) --out $(OUT) --overwrite $(if $(CONFIG),--config $(CONFIG)) $(ARGS)
endif

resume: $(STAMP)  ## finish the stopped or killed training run in OUT from its newest checkpoint
	$(PY) -m textpipe train --resume $(OUT) $(ARGS)

# TEXT reaches the shell through the environment, unexpanded, so neither quotes nor $ inside it need escaping.
predict: export TEXTPIPE_TEXT := $(value TEXT)
predict: $(STAMP)  ## label TEXT="..." or INPUT=file (INPUT=- for stdin) with the bundle in MODEL
	@$(if $(value TEXT)$(INPUT),,echo 'give TEXT="some text" or INPUT=file.txt (INPUT=- reads stdin)' >&2; exit 2)
	@$(PY) -m textpipe predict --model $(MODEL) --format $(FORMAT) $(if $(INPUT),--input "$(INPUT)") $(if $(value TEXT),"$$TEXTPIPE_TEXT") $(ARGS)

evaluate: $(STAMP)  ## score the bundle in MODEL on TEST=file (default: its own test file); metrics JSON on stdout
	$(PY) -m textpipe evaluate --model $(MODEL) $(if $(TEST),--data $(TEST)) $(if $(REPORT),--out $(REPORT)) $(ARGS)

info: $(STAMP)  ## describe the bundle in MODEL (labels, metrics, versions, weights sha256)
	@$(PY) -m textpipe info $(MODEL) $(ARGS)

quantize: $(STAMP)  ## write a compact copy of the bundle in MODEL to MODEL-quantized (about 4% of the size)
	$(PY) -m textpipe quantize --model $(MODEL) --out $(MODEL)-quantized $(ARGS)

serve: $(STAMP)  ## serve the bundle in MODEL at http://HOST:PORT/ (a page; POST /predict; GET /healthz)
	$(PY) -m textpipe serve --model $(MODEL) --host $(HOST) --port $(PORT) $(ARGS)

test: $(STAMP)  ## run the test suite, one pytest-xdist worker per core (ARGS="-n 0": in one process)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n auto --dist worksteal $(ARGS)

golden: $(STAMP)  ## the six golden runs: the recorded weights and metrics, bit for bit (tests/golden.py)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n auto --dist worksteal --golden -m golden tests/e2e/test_golden.py $(ARGS)

clean:  ## remove the venv and trained runs (keeps the data cache)
	rm -rf $(VENV) runs

bench-memory: $(STAMP)  ## peak RSS of one epoch on 100k vs 1M rows -> bench/results/memory.json (about 3 min)
	OMP_NUM_THREADS=1 $(PY) bench/memory.py

bench: $(STAMP)  ## speed of every stage vs fastText and TF-IDF+LR, the server under load, and 1M rows vs fastText -> bench/results/speed.{json,md}, serve.json, scale.{json,md} (about 25 min)
	$(PY) -m pip install --quiet -e ".[bench]"
	OMP_NUM_THREADS=1 $(PY) bench/speed.py
	OMP_NUM_THREADS=1 $(PY) bench/serve.py
	OMP_NUM_THREADS=1 $(PY) bench/scale.py

bench-scale: $(STAMP)  ## issue 32's lines, each textpipe process paired with a fastText one: a 1,000,000-row tiling of mr (--epochs 5 --no-refit cold and warm, the default), mr's default; peak RSS at 100k vs 1M -> bench/results/scale.{json,md} (15 to 60 min)
	$(PY) -m pip install --quiet -e ".[bench]"
	OMP_NUM_THREADS=1 $(PY) bench/scale.py $(ARGS)

bench-encoder: $(STAMP)  ## the sentence encoder: texts/s (float32, int8, float16) on mr's test texts and this machine's float32 ceiling; ARGS="--bundle RUN --train" adds predict and train processes -> bench/results/encoder.json
	$(PY) bench/encoder.py $(ARGS)

bench-quantize: $(STAMP)  ## default model on rotten_tomatoes, mr, trec6: size and test accuracy before/after quantize -> bench/results/quantize.json
	OMP_NUM_THREADS=1 $(PY) bench/quantize.py

bench-serve: $(STAMP)  ## textpipe serve under load: 8 clients x 2 rounds of 2,000 requests -> bench/results/serve.json (p50/p99, memory)
	OMP_NUM_THREADS=1 $(PY) bench/serve.py $(ARGS)

bench-calibration: $(STAMP)  ## the default's test ECE beside what a perfectly calibrated model measures on that many rows, and other calibrators -> bench/results/calibration.{json,md} (about 10 min)
	$(PY) -m pip install --quiet -e ".[bench]"
	OMP_NUM_THREADS=1 $(PY) bench/calibration.py $(ARGS)

bench-accuracy: $(STAMP)  ## textpipe default, default + GloVe, --autotune 120 and --encoder minilm-l6 vs fastText and TF-IDF+LR on every dataset -> bench/results/accuracy.{json,md} (about 30 min, most of it encoding each text once); then textpipe --multi-label vs one-vs-rest LR and fastText -loss ova -> accuracy_multilabel.{json,md}
	$(PY) -m pip install --quiet -e ".[bench]"
	OMP_NUM_THREADS=1 $(PY) bench/accuracy.py $(ARGS)
	OMP_NUM_THREADS=1 $(PY) bench/accuracy_multilabel.py
