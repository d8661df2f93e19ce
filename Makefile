# The two commands a new user needs (see README.md): `make run` and `make test`.
VENV ?= .venv
ARGS ?=

.PHONY: setup run scan test lint bench clean image

setup:
	@./scripts/setup.sh

run: setup
	$(VENV)/bin/nodewarden run --dry-run $(ARGS)

scan: setup
	$(VENV)/bin/nodewarden scan $(ARGS)

test: setup
	$(VENV)/bin/python -m pytest -q $(ARGS)

# ruff (rules in pyproject.toml) over the code and tests, mypy over the package
lint: setup
	$(VENV)/bin/ruff check agent tests bench scripts
	$(VENV)/bin/mypy agent

# the agent image from the Dockerfile (docker, else buildah; see scripts/image.sh), cached
image:
	@./scripts/image.sh

bench: setup
	$(VENV)/bin/python bench/scan.py
	$(VENV)/bin/python bench/rules.py

clean:
	rm -rf $(VENV) build *.egg-info
