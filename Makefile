.PHONY: demo test setup lint
setup:
	scripts/setup --test
demo:
	scripts/demo
test:
	scripts/test
lint:
	.venv/bin/ruff check . && .venv/bin/mypy
