# ringcast — build, run and test entry points.
# CI runs `bash .ci/run`, which installs what a fresh machine lacks and then `make test`.

CARGO    ?= cargo
# Arguments for `make sim`; override on the command line, e.g.
#   make sim SIM_ARGS="--seed 1234"
SIM_ARGS ?= --seeds 1000 --nodes 2-16

.PHONY: install-c capi
.PHONY: all build run test fmt-check clippy unit-test bench bench-client bench-engine sim cluster tune-check clean help

all: build

help:
	@echo "make run         build and start ringcastd with built-in defaults (single node, 127.0.0.1)"
	@echo "make test        rustfmt check, clippy -D warnings, every test (includes a multi-minute simulator run)"
	@echo "make sim         run the deterministic simulator: SIM_ARGS='$(SIM_ARGS)'"
	@echo "make bench       Totem core cost (core_cost) and client throughput/latency (ringcast-bench)"
	@echo "make bench-engine  ordered throughput of 1, 3, 5 ringcastd engines on loopback (load generator)"
	@echo "make cluster     N engines on 127.0.0.1..N until Ctrl-C (CLUSTER_NODES=3)"
	@echo "make tune-check  not yet implemented"
	@echo "make install-c   libcpg.so.4, libcfg.so.7, corosync/*.h and .pc files (PREFIX=$(PREFIX) DESTDIR=)"

build:
	$(CARGO) build --workspace --release

run:
	$(CARGO) build --release -p ringcast-engine --bin ringcastd --bin ringcast
	@echo "ringcastd: single node on 127.0.0.1:5405, clients connect at /run/ringcast/ringcast.sock"
	@echo "  in another shell: ./target/release/ringcast listen demo"
	@echo "               and: ./target/release/ringcast send demo hello"
	@echo "  counters:         ./target/release/ringcast status     (Ctrl-C stops the engine)"
	exec ./target/release/ringcastd

test: fmt-check clippy unit-test

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit-test:
	$(CARGO) test --workspace

# Arguments for the client benchmark, e.g. CLIENT_BENCH_ARGS="--sizes 64 --receivers 2".
CLIENT_BENCH_ARGS ?=

bench: bench-client
	$(CARGO) run --release -p ringcast-bench --bin core_cost

bench-client:
	$(CARGO) build --release -p ringcast-engine --bin ringcastd -p ringcast-bench --bin ringcast-bench
	./target/release/ringcast-bench $(CLIENT_BENCH_ARGS)

# Arguments for `make bench-engine`, e.g. ENGINE_BENCH_ARGS="--nodes 3 --sizes 64 --seconds 5".
ENGINE_BENCH_ARGS ?=

bench-engine:
	$(CARGO) build --release -p ringcast-engine --bin ringcastd
	$(CARGO) run --release -p ringcast-bench --bin engine_throughput -- $(ENGINE_BENCH_ARGS)

sim:
	$(CARGO) run --release -p ringcast-engine --bin ringcast-sim -- $(SIM_ARGS)

# A local multi-engine ring until Ctrl-C, e.g. `make cluster CLUSTER_NODES=5`.
CLUSTER_NODES ?= 3
cluster:
	$(CARGO) build --release -p ringcast-engine --bin ringcastd --bin ringcast
	CLUSTER_NODES=$(CLUSTER_NODES) bash scripts/cluster.sh

tune-check:
	@echo "make tune-check: not yet implemented (no issue yet: ringcast-tune host checks)" >&2
	@exit 1

# The Corosync-compatible C libraries (docs/c-api.md): `make install-c PREFIX=/usr/local
# DESTDIR=...`. CAPI_PROFILE=debug installs a debug build (the tests do).
PREFIX      ?= /usr/local
DESTDIR     ?=
LIBDIR      ?= $(PREFIX)/lib
INCLUDEDIR  ?= $(PREFIX)/include
CAPI_PROFILE ?= release
CAPI_OUT     = $(or $(CARGO_TARGET_DIR),target)/$(CAPI_PROFILE)

capi:
	$(CARGO) build --profile $(if $(filter debug,$(CAPI_PROFILE)),dev,$(CAPI_PROFILE)) -p ringcast-capi-cpg -p ringcast-capi-cfg

install-c: capi
	install -d $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(INCLUDEDIR)/corosync
	install -m 644 client/include/corosync/corotypes.h client/include/corosync/cpg.h \
		client/include/corosync/cfg.h $(DESTDIR)$(INCLUDEDIR)/corosync/
	install -m 755 $(CAPI_OUT)/libcpg.so $(DESTDIR)$(LIBDIR)/libcpg.so.4.1.0
	install -m 755 $(CAPI_OUT)/libcfg.so $(DESTDIR)$(LIBDIR)/libcfg.so.7.3.0
	ln -sf libcpg.so.4.1.0 $(DESTDIR)$(LIBDIR)/libcpg.so.4
	ln -sf libcpg.so.4 $(DESTDIR)$(LIBDIR)/libcpg.so
	ln -sf libcfg.so.7.3.0 $(DESTDIR)$(LIBDIR)/libcfg.so.7
	ln -sf libcfg.so.7 $(DESTDIR)$(LIBDIR)/libcfg.so
	for pc in libcpg libcfg; do \
		sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' \
			client/capi-cpg/pkgconfig/$$pc.pc.in > $(DESTDIR)$(LIBDIR)/pkgconfig/$$pc.pc; \
	done

clean:
	$(CARGO) clean
