# The two quick-start commands: `make run` (set up + default pipeline) and `make test`.
VENV ?= .venv
CORES ?= $(shell nproc)
ACTIVATE = . $(VENV)/bin/activate &&

.PHONY: setup run test lint report clean

setup:
	VENV=$(VENV) scripts/setup.sh

run: setup
	$(ACTIVATE) snakemake --cores $(CORES)

test: setup
	$(ACTIVATE) python -m pytest -q

lint: setup
	$(ACTIVATE) ruff format --check kshot tests benchmarks && ruff check kshot tests benchmarks && \
		snakefmt --check Snakefile workflow/rules && snakemake --lint

report: setup
	$(ACTIVATE) snakemake --cores $(CORES) --report reports/report.html

clean:
	rm -rf data/prepared data/episodes data/checkpoints data/activations data/groups data/search data/runs data/logs data/regime \
		reports/tables reports/figures reports/regime
