# `make demo` and `make test` create .venv on first use and install the project into it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test demo-model bench clean-outputs

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[cpu,test]'
	touch $(STAMP)

## the main job on the embedded default (synthetic corpus, demo model); ARGS=... adds Hydra overrides
demo: $(STAMP)
	$(BIN)/python -m pipeline $(ARGS)

## the test suite
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## retrain the shipped demo model (pipeline/models/weights/demo.pt) from scratch
demo-model: $(STAMP)
	$(BIN)/python -m pipeline.train dataset.synthetic.seed=1000 dataset.synthetic.videos_per_class=200 \
	    train.epochs=20 train.output=pipeline/models/weights/demo.pt

clean-outputs:
	rm -rf outputs data
