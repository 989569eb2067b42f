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
# NPROC=2: torchrun starts 2 training processes (DistributedDataParallel; gloo on cpu, nccl on cuda)
TEXTPIPE := $(if $(filter 1,$(NPROC)),$(PY) -m textpipe,$(VENV)/bin/torchrun --standalone --nproc_per_node=$(NPROC) -m textpipe)

.PHONY: help venv train predict evaluate info quantize serve test clean bench-memory bench bench-quantize bench-serve bench-accuracy

help:  ## list targets and variables
	@echo "targets:"
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | sed 's/^/  make /'
	@echo "variables:"
	@echo "  TRAIN=file TEST=file [DEV=file]  your labelled data (.csv/.tsv with label,text header, or .jsonl); without TRAIN: rotten_tomatoes"
	@echo "  OUT=dir                          where train writes the bundle and the report (now: $(OUT))"
	@echo "  CONFIG=file.toml                 a config file for train, e.g. configs/cnn.toml (flags in ARGS override it)"
	@echo "  MODEL=dir                        the bundle predict/evaluate/info use (now: $(MODEL))"
	@echo "  TEXT=\"...\" or INPUT=file         what predict labels; INPUT=- reads stdin"
	@echo "  FORMAT=json|csv|text             predict's output format (now: $(FORMAT))"
	@echo "  HOST=addr PORT=n                 make serve: where to listen (now: $(HOST):$(PORT))"
	@echo "  TEST=file REPORT=dir             evaluate's data (default: the rotten_tomatoes test split) and report folder (default: MODEL/eval-NAME)"
	@echo "  NPROC=2                          make train: that many training processes (torchrun, DistributedDataParallel)"
	@echo "  ARGS=\"...\"                       extra flags for the textpipe command, e.g. ARGS=\"--epochs 5 --quiet\""
	@echo "example: make train TRAIN=data/mine/train.csv TEST=data/mine/test.csv OUT=runs/mine && make predict MODEL=runs/mine TEXT=\"great fun\""

venv: $(STAMP)  ## create .venv and install the pinned stack

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[test,vectors]"
	touch $(STAMP)

train: $(STAMP)  ## train (default dataset, or TRAIN=... TEST=...) and write the bundle and report to OUT
ifeq ($(strip $(TRAIN)),)
	$(TEXTPIPE) train --dataset rotten_tomatoes --out $(OUT) --overwrite $(if $(CONFIG),--config $(CONFIG)) $(ARGS)
else
	$(TEXTPIPE) train --train $(TRAIN) --test $(TEST) $(if $(DEV),--dev $(DEV)) --out $(OUT) --overwrite $(if $(CONFIG),--config $(CONFIG)) $(ARGS)
endif

predict: $(STAMP)  ## label TEXT="..." or INPUT=file (INPUT=- for stdin) with the bundle in MODEL
	@test -n "$(TEXT)$(INPUT)" || { echo 'give TEXT="some text" or INPUT=file.txt (INPUT=- reads stdin)'; exit 2; }
	@# TEXT reaches the shell through the environment, so quotes inside it need no escaping.
	@$(PY) -m textpipe predict --model $(MODEL) --format $(FORMAT) $(if $(INPUT),--input "$(INPUT)") $(if $(TEXT),"$$TEXT") $(ARGS)

evaluate: $(STAMP)  ## score the bundle in MODEL on TEST=file; metrics JSON on stdout, report in REPORT
	$(PY) -m textpipe evaluate --model $(MODEL) --data $(or $(TEST),data/rotten_tomatoes/test.csv) $(if $(REPORT),--out $(REPORT)) $(ARGS)

info: $(STAMP)  ## describe the bundle in MODEL (labels, metrics, versions, weights sha256)
	@$(PY) -m textpipe info $(MODEL) $(ARGS)

quantize: $(STAMP)  ## write a compact copy of the bundle in MODEL to MODEL-quantized (about 4% of the size)
	$(PY) -m textpipe quantize --model $(MODEL) --out $(MODEL)-quantized $(ARGS)

serve: $(STAMP)  ## serve the bundle in MODEL at http://HOST:PORT/ (a page; POST /predict; GET /healthz)
	$(PY) -m textpipe serve --model $(MODEL) --host $(HOST) --port $(PORT) $(ARGS)

test: $(STAMP)  ## run the test suite
	OMP_NUM_THREADS=1 $(PY) -m pytest -q $(ARGS)

clean:  ## remove the venv and trained runs (keeps the data cache)
	rm -rf $(VENV) runs

bench-memory: $(STAMP)  ## peak RSS of one epoch on 100k vs 1M rows -> bench/results/memory.json (about 3 min)
	OMP_NUM_THREADS=1 $(PY) bench/memory.py

bench: $(STAMP)  ## speed of every stage vs fastText and TF-IDF+LR, and the server under load -> bench/results/speed.{json,md}, serve.json (about 9 min)
	$(PY) -m pip install --quiet -e ".[bench]"
	OMP_NUM_THREADS=1 $(PY) bench/speed.py
	OMP_NUM_THREADS=1 $(PY) bench/serve.py

bench-quantize: $(STAMP)  ## default model on rotten_tomatoes, mr, trec6: size and test accuracy before/after quantize -> bench/results/quantize.json
	OMP_NUM_THREADS=1 $(PY) bench/quantize.py

bench-serve: $(STAMP)  ## textpipe serve under load: 8 clients x 2 rounds of 2,000 requests -> bench/results/serve.json (p50/p99, memory)
	OMP_NUM_THREADS=1 $(PY) bench/serve.py $(ARGS)

bench-accuracy: $(STAMP)  ## textpipe default, default + GloVe and --autotune 120 vs fastText and TF-IDF+LR on every dataset -> bench/results/accuracy.{json,md} (about 12 min)
	$(PY) -m pip install --quiet -e ".[bench]"
	OMP_NUM_THREADS=1 $(PY) bench/accuracy.py $(ARGS)
