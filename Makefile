# ringcast — build, run and test entry points.
# CI runs `bash .ci/run`, which installs what a fresh machine lacks and then `make test`.

CARGO    ?= cargo
# Arguments for `make sim`; override on the command line, e.g.
#   make sim SIM_ARGS="--seed 1234"
SIM_ARGS ?= --seeds 1000 --nodes 2-16

.PHONY: all build run test fmt-check clippy unit-test chaos chaos-smoke loom loom-mutants memcheck fuzz-smoke fuzz bench bench-client bench-engine bench-compare sim gs-sim cluster tune-check clean help install install-bin install-c capi

all: build

help:
	@echo "make run         build and start ringcastd with built-in defaults (single node, 127.0.0.1; any user)"
	@echo "make test        rustfmt check, clippy -D warnings, every test (includes a multi-minute simulator run)"
	@echo "make sim         run the deterministic simulator: SIM_ARGS='$(SIM_ARGS)'"
	@echo "make gs-sim      Group Services in the simulator over many seeds (GS_SIM_SEEDS=$(GS_SIM_SEEDS) GS_SIM_NODES=$(GS_SIM_NODES))"
	@echo "make bench       Totem core cost (core_cost) and client throughput/latency (ringcast-bench)"
	@echo "make bench-compare  Corosync and ringcast side by side through cpg.h (root; BENCH_COMPARE_ARGS)"
	@echo "make bench-engine  ordered throughput of 1, 3, 5 ringcastd engines on loopback (load generator)"
	@echo "make cluster     N engines on 127.0.0.1..N until Ctrl-C (CLUSTER_NODES=3)"
	@echo "make install     programs, man pages, systemd unit, tuned profile, example config (PREFIX=$(PREFIX) DESTDIR=)"
	@echo "make tune-check  ringcast-tune check: this host against the engine's config (reports, never fails make)"
	@echo "make install-c   libcpg.so.4, libcfg.so.7, corosync/*.h and .pc files (PREFIX=$(PREFIX) DESTDIR=)"

build:
	$(CARGO) build --workspace --release

# Built-in defaults: as root the engine uses /run/ringcast and /var/lib/ringcast; as any
# other user $XDG_RUNTIME_DIR/ringcast (or /tmp/ringcast-$UID) and
# $XDG_STATE_HOME/ringcast (or ~/.local/state/ringcast), which the ringcast command finds
# by the same rule: no flags needed on either side.
run:
	$(CARGO) build --release -p ringcast-engine --bin ringcastd -p ringcast-cli --bin ringcast
	@./target/release/ringcastd --check-config | sed -n \
		-e 's/^ipc_socket = "\(.*\)"$$/ringcastd: single node on 127.0.0.1:5405, clients connect at \1/p' \
		-e 's/^state_dir = "\(.*\)"$$/  state (ring sequence, stats page): \1/p'
	@echo "  in another shell: ./target/release/ringcast listen demo"
	@echo "               and: ./target/release/ringcast send demo hello"
	@echo "  counters:         ./target/release/ringcast status     (Ctrl-C stops the engine)"
	exec ./target/release/ringcastd

# fuzz-smoke (FUZZ_SMOKE_SECONDS per target) needs cargo-fuzz, which .ci/run installs; on
# a fresh machine its install and the instrumented build add minutes (the README says how
# many).
test: fmt-check clippy unit-test chaos-smoke loom memcheck fuzz-smoke

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit-test:
	$(CARGO) test --workspace -- --skip chaos

# A real-process soak under random faults (engine/tests/chaos.rs): CHAOS_SECONDS
# (default 60), CHAOS_SEED (default: from the clock, printed), CHAOS_NODES (3-5).
# Needs root (network namespaces); skipped, saying so, without.
chaos:
	$(CARGO) build --release -p ringcast-cli --bin ringcast
	$(CARGO) test --release -p ringcast-engine --test chaos -- --nocapture

# The 60-second chaos run of make test (a debug build, like the other tests).
chaos-smoke:
	$(CARGO) build -p ringcast-cli --bin ringcast
	$(CARGO) test -p ringcast-engine --test chaos -- --nocapture

# The shm rings and their sleep protocol under the loom model checker (`--cfg loom`, its
# own target directory target/loom); loom-mutants weakens each ordering in turn and
# expects a model test to fail (minutes: one rebuild per ordering).
loom:
	CARGO=$(CARGO) bash scripts/loom.sh

loom-mutants:
	python3 scripts/loom-mutants.py

# The unsafe code's tests and a real engine with clients under valgrind memcheck.
memcheck:
	CARGO=$(CARGO) bash scripts/memcheck.sh

# cargo-fuzz targets (fuzz/, outside the workspace): fuzz-smoke runs each for
# FUZZ_SMOKE_SECONDS; `make fuzz FUZZ_TARGET=seal FUZZ_ARGS=-max_total_time=600` one for long.
FUZZ_SMOKE_SECONDS ?= 5
FUZZ_TARGET ?= datagram
FUZZ_ARGS   ?= -max_total_time=600
fuzz-smoke:
	CARGO=$(CARGO) bash scripts/fuzz.sh smoke $(FUZZ_SMOKE_SECONDS)

fuzz:
	CARGO=$(CARGO) bash scripts/fuzz.sh run $(FUZZ_TARGET) $(FUZZ_ARGS)

# Arguments for the client benchmark, e.g. CLIENT_BENCH_ARGS="--sizes 64 --receivers 2".
CLIENT_BENCH_ARGS ?=

bench: bench-client
	$(CARGO) run --release -p ringcast-bench --bin core_cost

bench-client:
	$(CARGO) build --release -p ringcast-engine --bin ringcastd -p ringcast-bench --bin ringcast-bench
	./target/release/ringcast-bench $(CLIENT_BENCH_ARGS)

# Arguments for `make bench-engine`, e.g. ENGINE_BENCH_ARGS="--nodes 3 --sizes 64 --seconds 5".
ENGINE_BENCH_ARGS ?=

# The load generator is a test hook: ringcastd built with the feature test-hooks.
bench-engine:
	$(CARGO) build --release -p ringcast-engine --features test-hooks --bin ringcastd
	$(CARGO) run --release -p ringcast-bench --bin engine_throughput -- $(ENGINE_BENCH_ARGS)

# Corosync against ringcast through one C program (docs/bench-compare.md); root, Debian's
# corosync and libcpg-dev. E.g. BENCH_COMPARE_ARGS="--nodes 1 --figures tput --rounds 5".
BENCH_COMPARE_ARGS ?=
BENCH_COMPARE_STAGE = $(TARGET_DIR)/bench-compare/stage

bench-compare:
	$(CARGO) build --release -p ringcast-engine --bin ringcastd -p ringcast-bench --bin bench-compare
	$(MAKE) -s install-c PREFIX=/usr DESTDIR=$(abspath $(BENCH_COMPARE_STAGE))
	./$(TARGET_DIR)/release/bench-compare --ringcastd $(TARGET_DIR)/release/ringcastd \
		--ringcast-lib $(BENCH_COMPARE_STAGE)/usr/lib $(BENCH_COMPARE_ARGS)

sim:
	$(CARGO) run --release -p ringcast-sim --bin ringcast-sim -- $(SIM_ARGS)

# Group Services seeds (engine/sim/src/gs.rs), e.g. `make gs-sim GS_SIM_SEEDS=1000`.
GS_SIM_SEEDS ?= 100000
GS_SIM_START ?= 0
GS_SIM_NODES ?= 2-16
gs-sim:
	GS_SIM_SEEDS=$(GS_SIM_SEEDS) GS_SIM_START=$(GS_SIM_START) GS_SIM_NODES=$(GS_SIM_NODES) \
		$(CARGO) test --release -p ringcast-sim --lib gs::tests::gs_many_seeds -- --ignored --nocapture

# A local multi-engine ring until Ctrl-C, e.g. `make cluster CLUSTER_NODES=5`.
CLUSTER_NODES ?= 3
cluster:
	$(CARGO) build --release -p ringcast-engine --bin ringcastd -p ringcast-cli --bin ringcast
	CLUSTER_NODES=$(CLUSTER_NODES) bash scripts/cluster.sh

# The host against the engine's config (/etc/ringcast/ringcast.toml if present, else the
# built-in defaults). An untuned host (CI, a laptop) has warnings and failures: they are
# printed with their fixes and do not fail make. `ringcast-tune check` itself exits 1 on
# a failure, for scripts that gate on it; TUNE_ARGS passes more, e.g. TUNE_ARGS="--cpu 3".
TUNE_ARGS ?=
tune-check:
	$(CARGO) build -p ringcast-tune
	-./target/debug/ringcast-tune check $(TUNE_ARGS)

# `make install PREFIX=/usr/local DESTDIR=/tmp/stage`: programs, man pages (generated
# from their clap definitions by xtask), the systemd unit, the tuned profile and the
# example config. INSTALL_BUILD=0 INSTALL_PROFILE=debug installs what is already built
# (the install test does that).
PREFIX     ?= /usr/local
DESTDIR    ?=
SYSCONFDIR ?= /etc
BINDIR     ?= $(PREFIX)/bin
MANDIR     ?= $(PREFIX)/share/man
DOCDIR     ?= $(PREFIX)/share/doc/ringcast
UNITDIR    ?= $(PREFIX)/lib/systemd/system
TUNEDDIR   ?= $(SYSCONFDIR)/tuned
INSTALL_PROFILE ?= release
INSTALL_BUILD   ?= 1
TARGET_DIR      ?= $(or $(CARGO_TARGET_DIR),target)
INSTALL_BINS     = ringcastd ringcast ringcast-tune ringcast-sim
# The pieces of `make install`; each adds itself here (the C libraries: install-c).
INSTALL_TARGETS  = install-bin install-c

install: $(INSTALL_TARGETS)

install-bin:
ifeq ($(INSTALL_BUILD),1)
	$(CARGO) build --release -p ringcast-engine --bin ringcastd -p ringcast-sim --bin ringcast-sim \
		-p ringcast-cli -p ringcast-tune -p xtask
endif
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(DOCDIR) \
		$(DESTDIR)$(UNITDIR) $(DESTDIR)$(TUNEDDIR)/ringcast $(DESTDIR)$(SYSCONFDIR)/ringcast
	for bin in $(INSTALL_BINS); do \
		install -m 0755 $(TARGET_DIR)/$(INSTALL_PROFILE)/$$bin $(DESTDIR)$(BINDIR)/$$bin || exit 1; \
	done
	$(TARGET_DIR)/$(INSTALL_PROFILE)/xtask man $(DESTDIR)$(MANDIR)/man1 >/dev/null
	sed -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' \
		tuning/deploy/ringcastd.service.in > $(DESTDIR)$(UNITDIR)/ringcastd.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/ringcastd.service
	install -m 0644 tuning/deploy/tuned/ringcast/tuned.conf $(DESTDIR)$(TUNEDDIR)/ringcast/tuned.conf
	install -m 0644 tuning/deploy/ringcast.toml $(DESTDIR)$(DOCDIR)/ringcast.toml
	# An existing configuration is never overwritten.
	test -e $(DESTDIR)$(SYSCONFDIR)/ringcast/ringcast.toml || \
		install -m 0644 tuning/deploy/ringcast.toml $(DESTDIR)$(SYSCONFDIR)/ringcast/ringcast.toml

# The Corosync-compatible C libraries (docs/c-api.md): `make install-c PREFIX=/usr/local
# DESTDIR=...`. CAPI_PROFILE=debug installs a debug build (the tests do).
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
