# gpufleet: the two commands the README starts with, and the pieces they are made of.
VENV ?= .venv
BIN := $(VENV)/bin
INVENTORIES := inventory/homelab.py inventory/lab.py inventory/lab_pi.py inventory/vagrant.py \
	inventory/examples/*.py

.PHONY: demo test test-fast lint docs host-tools lab-up lab-down vagrant-test bench-smoke

# Build and start the local lab, show the dry-run plan, deploy, deploy again (no changes).
demo: $(BIN)/gpufleet host-tools
	$(BIN)/gpufleet validate $(INVENTORIES)
	$(BIN)/gpufleet lab up
	$(BIN)/pyinfra -v inventory/lab.py deploys/gpu_node.py --dry
	$(BIN)/pyinfra -y inventory/lab.py deploys/gpu_node.py
	$(BIN)/pyinfra -y inventory/lab.py deploys/proxmox_host.py
	$(BIN)/gpufleet engines inventory/lab.py
	$(BIN)/pyinfra -y inventory/lab.py deploys/inference.py
	$(BIN)/pyinfra -y inventory/lab.py deploys/vault.py deploys/router.py deploys/gateway.py
	$(BIN)/pyinfra -y inventory/lab.py deploys/monitoring.py
	$(BIN)/pyinfra -y inventory/lab.py deploys/gpu_node.py deploys/edge.py deploys/proxmox_host.py \
		deploys/inference.py deploys/vault.py deploys/router.py deploys/gateway.py deploys/monitoring.py
	$(BIN)/gpufleet preview inventory/homelab.py --summary
	-$(BIN)/gpufleet verify inventory/lab.py --junit-xml verify-results.xml
	@echo "The last run changed nothing. verify's failures are what the lab cannot run (no GPU,"
	@echo "no Ollama or vLLM binary). The lab is still running: 'make lab-down' removes it."

# The whole suite: lint, the documentation site, unit tests, then the lab layer (real hosts
# over SSH).
test: $(BIN)/gpufleet host-tools lint docs
	$(BIN)/pytest

# Day-to-day lane: lint, the documentation site and unit tests, no lab (a few seconds).
test-fast: $(BIN)/gpufleet lint docs
	$(BIN)/pytest tests/unit

lint: $(BIN)/gpufleet
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The documentation site (docs/, mkdocs.yml) into site/; --strict fails on a broken link or
# anchor, and on a nav entry without its page.
docs: $(BIN)/gpufleet
	$(BIN)/mkdocs build --strict --site-dir site

host-tools:
	@bash scripts/host-tools.sh

lab-up: $(BIN)/gpufleet host-tools
	$(BIN)/gpufleet lab up

lab-down: $(BIN)/gpufleet
	$(BIN)/gpufleet lab down

# The benchmarks still run, briefly: gpufleet bench on the lab make demo leaves running (one
# streamed request per endpoint), then bench/converge.py --smoke (gpufleet and its Ansible
# twin on one fresh host each, a bare apt-get on a third; it takes every lab host down first
# and leaves none up). Either fails on a failed run or a re-run that changes something. As root.
bench-smoke: $(BIN)/gpufleet host-tools
	$(BIN)/gpufleet bench inventory/lab.py --runs 1 --concurrency 1 --csv reports/bench-smoke.csv
	$(BIN)/python bench/converge.py --smoke --csv reports/converge-smoke.csv

# One VM of the Vagrantfile (libvirt, QEMU software emulation): deploys/gpu_node.py converged
# twice (the second changes nothing), gpufleet verify, destroyed; docs/vagrant.md. As root.
vagrant-test: $(BIN)/gpufleet
	VENV=$(VENV) bash scripts/vagrant-lab.sh

$(BIN)/gpufleet: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@
