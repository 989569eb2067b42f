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
TEXT   ?=
INPUT  ?=
ARGS   ?=

.PHONY: help venv train predict evaluate test clean bench-memory

help:  ## list targets and variables
	@echo "targets:"
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | sed 's/^/  make /'
	@echo "variables: TRAIN=file TEST=file [DEV=file] OUT=$(OUT) (train); TEXT=\"...\" or INPUT=file, MODEL=$(MODEL) (predict); ARGS=extra flags"

venv: $(STAMP)  ## create .venv and install the pinned stack

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

train: $(STAMP)  ## train (default dataset, or TRAIN=... TEST=...) and write a bundle to OUT
ifeq ($(strip $(TRAIN)),)
	$(PY) -m textpipe train --dataset rotten_tomatoes --out $(OUT) $(ARGS)
else
	$(PY) -m textpipe train --train $(TRAIN) --test $(TEST) $(if $(DEV),--dev $(DEV)) --out $(OUT) $(ARGS)
endif

predict: $(STAMP)  ## label TEXT="..." or INPUT=file (one text per line) with the bundle in MODEL
	@test -n "$(TEXT)$(INPUT)" || { echo 'give TEXT="some text" or INPUT=file.txt'; exit 2; }
	@# TEXT reaches the shell through the environment, so quotes inside it need no escaping.
	@$(PY) -m textpipe predict --model $(MODEL) $(if $(INPUT),--input "$(INPUT)") $(if $(TEXT),"$$TEXT") $(ARGS)

evaluate: $(STAMP)  ## score the bundle in MODEL on TEST=file
	$(PY) -m textpipe evaluate --model $(MODEL) --data $(TEST)

test: $(STAMP)  ## run the test suite
	$(PY) -m pytest -q $(ARGS)

clean:  ## remove the venv and trained runs (keeps the data cache)
	rm -rf $(VENV) runs

bench-memory: $(STAMP)  ## peak RSS of one epoch on 100k vs 1M rows -> bench/results/memory.json (about 3 min)
	OMP_NUM_THREADS=1 $(PY) bench/memory.py
