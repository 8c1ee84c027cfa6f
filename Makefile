# make test    - create .venv if missing, install medimg with its test extra,
#                run ruff, mypy and pytest (the README's test command; CI runs it)
# make demo    - install medimg, start `medimg sandbox` (local PACS + DICOMweb + FHIR)
#                in the background and tour the main commands on it; no other server needed
# make completions - regenerate completions/ from the app
# make bench   - benchmarks (bench/), comparing with DCMTK and pynetdicom's apps,
#                curl and dicomweb-client (installs the bench extra)

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint demo completions bench clean peers

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check medimg_cli tests bench scripts
	$(BIN)/mypy medimg_cli

peers:
	scripts/ensure-peers.sh

test: lint peers
	$(BIN)/pytest

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

completions: $(STAMP)
	for shell in bash zsh fish; do \
	  _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION=1 $(BIN)/medimg --show-completion $$shell \
	    > completions/medimg.$$shell; \
	done

bench: $(STAMP) peers
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	$(BIN)/python bench/startup.py
	$(BIN)/python bench/find.py
	$(BIN)/python bench/retrieve.py
	$(BIN)/python bench/store.py
	$(BIN)/python bench/wado.py
	$(BIN)/python bench/stow_rs.py

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
