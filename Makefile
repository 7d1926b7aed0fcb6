# The two commands a new user runs: `make demo` and `make test`. Both set everything up first: a
# virtual environment with the project (and, for the tests, its dev extra) and the Debian data packages.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# the project with what serving, training, export and the demo need; then what the tests need too
# (pytest, Ray, Milvus Lite, Playwright, ...)
STAMP  := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
DATA_PACKAGES := dict-gcide dataset-fashion-mnist openclipart-png
# the playground's browser test drives Debian's Chromium (no browser download)
TEST_PACKAGES := chromium

.PHONY: demo test fuzz screenshots setup setup-dev data browser serve clean

demo: setup
	$(BIN)/embedserve demo

test: setup-dev browser
	$(BIN)/python -m pytest

# The schemathesis run over the live server's OpenAPI that `make test` makes short, made long:
# FUZZ_EXAMPLES cases per operation and generation mode (same seed, so a failure reproduces).
FUZZ_EXAMPLES ?= 500
fuzz: setup-dev
	EMBEDSERVE_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest tests/serving/test_openapi_fuzz.py

# The playground's pictures in docs/playground.md (docs/screenshots/*.png): its browser test, one screenshot
# per tab, on the demo's models when `make demo` has made them (else on the test's tiny ones).
DEMO_CLIP_INDEX := artifacts/indexes/fashion-mnist-test-clip/current
screenshots: setup-dev browser
	@if [ -f $(DEMO_CLIP_INDEX) ]; then artifacts=$(CURDIR)/artifacts; else artifacts=""; \
		echo "no demo artifacts (make demo makes them): the screenshots show the test's tiny untrained models"; fi; \
	EMBEDSERVE_PLAYGROUND_ARTIFACTS=$$artifacts EMBEDSERVE_SCREENSHOTS=docs/screenshots \
		$(BIN)/python -m pytest -q -p no:cacheprovider tests/serving/test_playground_browser.py -k classifies

serve: setup
	$(BIN)/embedserve serve

# The demo installs no test tools, so a first `make demo` spends its minutes on the models.
setup: $(STAMP) data
setup-dev: $(DEV_STAMP) data

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --progress-bar on --no-cache-dir -e '.[cpu,train,plot]'
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(BIN)/pip install --progress-bar on --no-cache-dir -e '.[cpu,train,plot,dev]'
	touch $(DEV_STAMP)

# Install Debian packages when missing: as root directly, otherwise say what to run.
define apt_install
	@missing=""; \
	for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
		echo "Missing Debian packages:$$missing"; \
		echo "Install them once with: sudo apt-get update && sudo apt-get install -y$$missing"; exit 1; \
	fi; \
	echo "Installing Debian packages:$$missing"; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing
endef

data:
	$(call apt_install,$(DATA_PACKAGES))

browser:
	$(call apt_install,$(TEST_PACKAGES))

clean:
	rm -rf $(VENV) artifacts .pytest_cache
