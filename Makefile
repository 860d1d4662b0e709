# The README's two commands: `make study` and `make test`. Both set up .venv first.
.PHONY: setup study test lint bench

setup:
	@bash scripts/setup_env.sh

study: setup
	.venv/bin/python -m studies.tslasso --layer 6 --out runs/tslasso

test: setup
	.venv/bin/python -m ruff check geomsae studies tests benchmarks
	.venv/bin/python -m pytest -q || [ $$? -eq 5 ]

lint: setup
	.venv/bin/python -m ruff check geomsae studies tests benchmarks
