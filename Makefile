.PHONY: demo test setup lint bench
setup:
	scripts/setup --test
demo:
	scripts/demo
test:
	scripts/test
# Throughput, latency and footprint against the machine's own limits (not a test; prints a table).
bench:
	.venv/bin/rpmgw bench --json bench-results.json
lint:
	.venv/bin/ruff check . && .venv/bin/mypy
