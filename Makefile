# podnet: `make demo` builds and shows the example cluster; `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PODNET := $(VENV)/bin/podnet
# What podnet itself runs (and the demo uses): the virtualenv, the kernel tools, BIRD for the bgp
# backend, Graphviz for `podnet diagram`, and the clients the demo and `podnet exec` examples type.
DEMO_PACKAGES := python3 python3-venv iproute2 nftables conntrack procps kmod curl netcat-openbsd dnsutils \
	iputils-ping bird2 graphviz
# What only the tests and benchmarks use: a real container runtime for the CNI plugin, the
# reference CNI plugins and iptables as baselines, iperf3 and tcpdump, etcd for the store of the
# distributed mode (members run in namespaces; see no_host_etcd).
TEST_PACKAGES := iptables tcpdump iperf3 containernetworking-plugins podman runc conmon busybox-static \
	etcd-server etcd-client
export PODNET_STATE_DIR ?= /var/lib/podnet
LINK := /usr/local/bin/podnet

.PHONY: deps deps-test venv demo demo-down test test-unit lint bench clean

# Installs the Debian packages of $(1) that are missing (apt-get update only when one is), then
# loads br_netfilter: Kubernetes needs it for Services between pods of one node, and so does podnet.
define apt_install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		case " $$missing " in *" etcd-server "*) $(no_host_etcd);; esac; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] || modprobe br_netfilter
endef

# Debian's etcd-server enables and starts etcd.service, a member listening on the host's
# localhost:2379. podnet runs its own members inside namespaces only, so before the package is
# installed its unit is masked (neither the install nor a boot starts it; `systemctl unmask
# etcd` undoes it), and where no policy-rc.d exists one refuses etcd's start for the duration of
# the install (hosts without systemd).
no_host_etcd = mkdir -p /etc/systemd/system; \
	[ -e /etc/systemd/system/etcd.service ] || ln -s /dev/null /etc/systemd/system/etcd.service; \
	if [ ! -e /usr/sbin/policy-rc.d ]; then \
		printf '\043!/bin/sh\nfor a; do case "$$a" in etcd|etcd.service) exit 101;; esac; done\nexit 0\n' >/usr/sbin/policy-rc.d; \
		chmod 755 /usr/sbin/policy-rc.d; trap 'rm -f /usr/sbin/policy-rc.d' EXIT; \
	fi

deps:
	$(call apt_install,$(DEMO_PACKAGES))

deps-test: deps
	$(call apt_install,$(TEST_PACKAGES))

$(VENV)/.installed: pyproject.toml | deps
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

# `podnet` on PATH, as the README's tour types it: a link to the virtualenv's (an existing
# /usr/local/bin/podnet that is not such a link is left alone).
$(LINK): | venv
	@if [ ! -e $(LINK) ] || [ -L $(LINK) ]; then ln -sfn $(CURDIR)/$(PODNET) $(LINK) && echo "linked $(LINK) -> $(CURDIR)/$(PODNET)"; \
	else echo "$(LINK) exists and is not podnet's link: use $(CURDIR)/$(PODNET)"; fi

# Every step stops the demo on failure (make stops at the first command that fails).
demo: deps venv $(LINK)
	$(PODNET) up examples/quickstart.yaml
	$(PODNET) status -c demo
	@echo
	@echo "# shop/web-2 (node-2) asks shop/web-1 (node-1) who it is, and who is asking:"
	$(PODNET) exec -c demo shop/web-2 -- curl -fsS --max-time 5 http://10.244.0.2/hostname && echo
	$(PODNET) exec -c demo shop/web-2 -- curl -fsS --max-time 5 http://10.244.0.2/clientip && echo
	@echo "# and over UDP:"
	$(PODNET) exec -c demo client -- sh -c 'a=$$(echo hostname | nc -u -w1 10.244.0.2 53) && [ -n "$$a" ] && echo "$$a"'
	@echo "# the Service web.shop by name, through cluster DNS and the nftables service map:"
	$(PODNET) exec -c demo client -- getent hosts web.shop
	$(PODNET) exec -c demo client -- sh -c 'for i in 1 2 3 4; do curl -fsS --max-time 5 http://web.shop/hostname && echo || exit 1; done'
	@echo
	@echo "# the life of that packet, hop by hop, sent for real and captured at every hop:"
	$(PODNET) trace -c demo client web.shop --verify
	@echo
	@echo "Tear it down with: make demo-down   (or $(PODNET) down -c demo)"

demo-down: venv
	$(PODNET) down -c demo

test: deps-test venv
	$(PY) -m pytest -q

test-unit: venv
	$(PY) -m pytest -q -m "not root"

lint: venv
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

bench: deps-test venv
	$(PY) -m bench

clean:
	rm -rf $(VENV) build *.egg-info
