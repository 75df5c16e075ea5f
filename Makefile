# podnet: `make demo` builds and shows the example cluster; `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PODNET := $(VENV)/bin/podnet
APT_PACKAGES := iproute2 nftables iptables conntrack tcpdump iperf3 dnsutils curl netcat-openbsd iputils-ping \
	containernetworking-plugins procps podman runc conmon busybox-static graphviz bird2
export PODNET_STATE_DIR ?= /var/lib/podnet

.PHONY: deps venv demo demo-down test test-unit lint bench clean

# System packages podnet and its tests use; installed only when one is missing.
deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

demo: deps venv
	$(PODNET) up examples/quickstart.yaml
	$(PODNET) status -c demo
	@echo
	@echo "# shop/web-2 (node-2) asks shop/web-1 (node-1) who it is, and who is asking:"
	$(PODNET) exec -c demo shop/web-2 -- curl -s http://10.244.0.2/hostname; echo
	$(PODNET) exec -c demo shop/web-2 -- curl -s http://10.244.0.2/clientip; echo
	@echo "# and over UDP:"
	$(PODNET) exec -c demo client -- sh -c 'echo hostname | nc -u -w1 10.244.0.2 53'; echo
	@echo "# the Service web.shop by name, through cluster DNS and the nftables service map:"
	$(PODNET) exec -c demo client -- getent hosts web.shop
	$(PODNET) exec -c demo client -- sh -c 'for i in 1 2 3 4; do curl -s http://web.shop/hostname; echo; done'
	@echo
	@echo "# the life of that packet, hop by hop, sent for real and captured at every hop:"
	$(PODNET) trace -c demo client web.shop --verify
	@echo
	@echo "Tear it down with: make demo-down   (or $(PODNET) down -c demo)"

demo-down: venv
	$(PODNET) down -c demo

test: deps venv
	$(PY) -m pytest -q

test-unit: venv
	$(PY) -m pytest -q -m "not root"

lint: venv
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

bench: deps venv
	$(PY) -m bench

clean:
	rm -rf $(VENV) build *.egg-info
