# masque-relay — the two commands a newcomer runs are `make demo` and `make test`.
# Both start from nothing on Debian 12 as root: `deps` installs what is missing.

SHELL       := /bin/bash
PYTHON      ?= python3
VENV        := .venv
PY          := $(VENV)/bin/python
PYTEST_ARGS ?=

# Debian packages: the BPF toolchain, the network tools the tests and demo drive,
# and what the venv needs to build the extension.
APT_PACKAGES := clang llvm libbpf-dev libxdp-dev xdp-tools bpftool libssl-dev \
                iproute2 ethtool nftables iperf3 iputils-ping tcpdump procps \
                gcc make python3 python3-venv python3-dev

.PHONY: all deps apt venv build bpf test demo bench bench-smoke bench-micro lint asan clean distclean

all: build bpf

deps: apt venv build bpf

# Idempotent: asks apt only for packages that are not installed yet.
apt:
	@missing=""; \
	for pkg in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$pkg 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "apt: installing$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "apt: all packages present"; fi

$(VENV)/.installed: pyproject.toml setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel 'Cython>=3.1,<3.4'
	$(PY) -m pip install -q --no-build-isolation -e '.[test,dev]'
	@touch $@

venv: apt $(VENV)/.installed

build: venv
	$(PY) setup.py -q build_ext --inplace

bpf: apt
	$(MAKE) -C bpf

test: deps
	$(PY) -m pytest $(PYTEST_ARGS)

demo: deps
	$(PY) -m tests.demo

bench: deps
	$(PY) -m bench $(BENCH_ARGS)

bench-smoke: deps
	$(PY) -m bench --smoke

bench-micro: deps
	$(PY) -m bench.micro

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy masque relay client netio _fastpath bench tests

# The C unit tests of _fastpath under AddressSanitizer and UBSan, built in a copy
# of the tree so the normal extension is left alone.
ASAN_DIR := build/asan
asan: venv
	rm -rf $(ASAN_DIR) && mkdir -p $(ASAN_DIR)
	cp -r setup.py pyproject.toml README.md _fastpath masque tests bpf $(ASAN_DIR)/
	rm -f $(ASAN_DIR)/_fastpath/*.so $(ASAN_DIR)/_fastpath/_core.c
	cd $(ASAN_DIR) && CFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -g" \
	  LDFLAGS="-fsanitize=address,undefined" $(CURDIR)/$(PY) setup.py -q build_ext --inplace
	cd $(ASAN_DIR) && LD_PRELOAD=$$(gcc -print-file-name=libasan.so):$$(gcc -print-file-name=libubsan.so) \
	  ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  PYTHONPATH=$(CURDIR)/$(ASAN_DIR) $(CURDIR)/$(PY) -c \
	  "import _fastpath._core as c, sys; sys.exit(0 if '$(ASAN_DIR)' in c.__file__ else 'not the ASan build: ' + c.__file__)"
	cd $(ASAN_DIR) && LD_PRELOAD=$$(gcc -print-file-name=libasan.so):$$(gcc -print-file-name=libubsan.so) \
	  ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  PYTHONPATH=$(CURDIR)/$(ASAN_DIR) $(CURDIR)/$(PY) -m pytest -q -p no:cacheprovider \
	  tests/test_fastpath_checksum.py tests/test_fastpath_batch.py tests/test_fastpath_lpm.py \
	  tests/test_fastpath_pktcheck.py tests/test_fastpath_udp.py tests/test_fastpath_tun.py \
	  tests/test_fastpath_gro.py tests/test_fastpath_quic.py tests/test_lane.py \
	  tests/test_fastpath_xsk.py

clean:
	rm -rf build *.egg-info _fastpath/_core.c _fastpath/*.so bench/results
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
	-$(MAKE) -C bpf clean

distclean: clean
	rm -rf $(VENV)
