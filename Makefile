# Everyday commands. `make` alone lists them.
# Tools installed by .ci/tools.sh (helm, kubectl, the validators) are found in .tools/bin first.

export PATH := $(CURDIR)/.tools/bin:$(PATH)

CARGO ?= cargo
DOCKER ?= docker
# The images are tagged with the workspace version, which is also what the operator deploys by default.
VERSION = $(shell $(CARGO) pkgid -p chatsys-api | sed 's/.*[@#]//')
IMAGES := api worker operator
CRD := crds/chatsystems.chatsys.io.yaml
CHART_CRD := charts/chatsys-operator/crds/chatsystems.chatsys.io.yaml
# Cargo's target directory ($CARGO_TARGET_DIR, a config's, or ./target), as cargo itself reports it.
TARGET_DIR = $(shell bash scripts/target-dir.sh)
RENDERED = $(TARGET_DIR)/rendered

.DEFAULT_GOAL := help
.PHONY: help build test services openapi crds render tools chart-lint validate fuzz faults images e2e bench standalone ci

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

build: ## Build every crate of the workspace (debug)
	$(CARGO) build --workspace

test: ## Start MariaDB, Redis and RabbitMQ (installing them if missing), run every test and the client checks
	bash scripts/test.sh

services: ## Start MariaDB, Redis and RabbitMQ for the tests, installing them if missing
	bash scripts/services.sh

openapi: ## Read /openapi.json with openapi-spec-validator, Spectral and generated Python and TypeScript clients
	$(CARGO) build -q --workspace --bins
	bash scripts/check-openapi.sh

crds: ## Regenerate the ChatSystem CRD and its copy in the Helm chart
	mkdir -p $(dir $(CRD))
	$(CARGO) run -q -p chatsys-operator -- crd > $(CRD).tmp
	mv $(CRD).tmp $(CRD)
	cp $(CRD) $(CHART_CRD)

render: ## Print every manifest the operator would apply for each example, into rendered/ in cargo's target directory
	$(CARGO) build -q -p chatsys-operator
	mkdir -p $(RENDERED)
	@for example in examples/*.yaml; do \
	  $(TARGET_DIR)/debug/chatsys-operator render -f $$example > $(RENDERED)/$$(basename $$example) || exit 1; \
	  echo "$(RENDERED)/$$(basename $$example)"; \
	done

tools: ## Install helm, kubectl, kubernetes-validate, shellcheck, yamllint, hadolint into .tools/
	bash .ci/tools.sh

chart-lint: tools ## Lint the Helm chart, validate its output, lint the YAML, shell scripts and Dockerfile
	bash scripts/lint-chart.sh

validate: tools ## Validate the rendered examples against the Kubernetes schemas and the CRD
	$(CARGO) build -q -p chatsys-operator
	bash scripts/validate-manifests.sh

fuzz: tools ## Fuzz the API from its /openapi.json (schemathesis), standalone and full stack
	$(CARGO) build -q -p chatsys-api -p chatsys-worker
	PATH="$(CURDIR)/.tools/bin:$$PATH" bash scripts/fuzz-api.sh

faults: ## Run the fault suite (restarts the local MariaDB, Redis and RabbitMQ)
	$(CARGO) build --release --bins
	$(TARGET_DIR)/release/faults

images: ## Build the api, worker and operator images (needs Docker)
	@for image in $(IMAGES); do \
	  $(DOCKER) build --target $$image --build-arg VERSION=$(VERSION) -t chatsys/chatsys-$$image:$(VERSION) . || exit 1; \
	done

e2e: ## Run the end-to-end suite on a throwaway kind cluster (needs Docker and kind)
	bash tests/e2e/run.sh

bench: ## Build the release binaries and run the benchmark
	$(CARGO) build --release --bins
	$(TARGET_DIR)/release/bench

standalone: ## Run the whole system in one process on 127.0.0.1:8080
	$(CARGO) run --release --bin chatsys-api -- standalone

ci: ## Run what CI runs
	bash .ci/run
