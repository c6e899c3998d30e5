# `make demo` and `make test` create .venv on first use and install the project into it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test test-fast browser demo-model docs demo-results bench clean-outputs

$(STAMP): pyproject.toml setup.py constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip uninstall --quiet --yes pipeline 2>/dev/null || true  # the distribution's former name
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[cpu,test]'
	touch $(STAMP)

## the main job on the embedded default (synthetic corpus, demo model); ARGS=... adds Hydra overrides
demo: $(STAMP)
	$(BIN)/python -m pipeline $(ARGS)

## the whole test suite, as CI runs it, on two pytest workers (installs Debian's chromium for the
## report's browser test first); PYTEST_ARGS=... adds pytest options (-k, -x, --durations=0)
test: $(STAMP) browser
	$(BIN)/python -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

## the inner loop: every test that starts no Ray and trains no model, one process (fails if Ray starts)
test-fast: $(STAMP)
	ACE3D_TEST_TIER=fast $(BIN)/python -m pytest -m "not ray and not slow" $(PYTEST_ARGS)

## headless Chromium and its WebDriver from Debian's packages (the report test opens the page in it)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then exit 0; fi; \
	command -v apt-get >/dev/null || { echo "make test needs /usr/bin/chromium and /usr/bin/chromedriver (Debian: apt-get install chromium chromium-driver)" >&2; exit 1; }; \
	echo "installing chromium and chromium-driver (Debian packages) for the report's browser test"; \
	$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null

## rewrite docs/reference/ (the configuration, output-schema and Python API references) from the code
docs: $(STAMP)
	$(BIN)/python -m pipeline.reference_docs

## rewrite docs/demo-results.md from the demo's run folder (make demo first)
demo-results: $(STAMP)
	$(BIN)/python -m pipeline.results_page outputs/synthetic-demo docs/demo-results.md

## retrain the shipped demo model (pipeline/models/weights/demo.pt) from scratch
demo-model: $(STAMP)
	$(BIN)/python -m pipeline.train dataset.synthetic.seed=1000 dataset.synthetic.videos_per_class=200 \
	    train.output=pipeline/models/weights/demo.pt

clean-outputs:
	rm -rf outputs data
