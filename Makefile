# image-mirror: every target installs what it needs first.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml apt-packages.txt | sha256sum | cut -c1-12)
PROTO_OUT := clients
PROTOS := $(wildcard protos/mirror/v1/*.proto)

.PHONY: install system-deps protos check-protos lint typecheck test demo bench clean

system-deps:
	@missing=""; for p in $$(grep -v '^#' apt-packages.txt); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml apt-packages.txt
	$(MAKE) system-deps
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[server,test,dev,bench]'
	rm -f $(VENV)/.installed-*; touch $(STAMP)

install: $(STAMP)

# Regenerate the Python code (with mypy stubs) from protos/.
protos: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m grpc_tools.protoc -Iprotos \
	  --python_out=$(PROTO_OUT) --grpc_python_out=$(PROTO_OUT) \
	  --mypy_out=$(PROTO_OUT) --mypy_grpc_out=$(PROTO_OUT) $(PROTOS)

# Fails when the committed generated code differs from what protos/ produce.
check-protos: $(STAMP)
	@tmp=$$(mktemp -d); \
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=$$tmp --grpc_python_out=$$tmp \
	  --mypy_out=$$tmp --mypy_grpc_out=$$tmp $(PROTOS); \
	for f in $$(cd $$tmp && find . -type f); do \
	  cmp -s $$tmp/$$f $(PROTO_OUT)/$$f || { echo "generated code out of date: $$f (run make protos)"; rm -rf $$tmp; exit 1; }; \
	done; rm -rf $$tmp; echo "generated code matches protos/"

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy -p mirror -p policy_service -p transfer_service -p gateway -p scanner -p registry_client -p servicekit -p stack -p registry_testkit -p console

test: $(STAMP) check-protos lint typecheck
	$(BIN)/python -m pytest -n 2 --dist loadfile -q -p no:cacheprovider

demo: $(STAMP)
	$(BIN)/python -m stack.demo

bench: $(STAMP)
	@echo "see BENCHMARKS.md for each bench/ script"

clean:
	rm -rf $(VENV) build *.egg-info
