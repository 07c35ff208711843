# ferry — build, test and install. `make help` lists the targets.

CARGO   ?= cargo
PREFIX  ?= /usr
DESTDIR ?=
# A toolchain that packaging/bootstrap.sh installed with rustup lives here.
export PATH := $(HOME)/.cargo/bin:$(PATH)

# TARGET=<rust target triple> builds for another board (see `make cross`).
TARGET  ?=
ifeq ($(TARGET),)
BIN        := target/release/ferry
RECEIVER_BIN := target/release/ferry-receiver
TARGET_FLAG :=
else
BIN        := target/$(TARGET)/release/ferry
RECEIVER_BIN := target/$(TARGET)/release/ferry-receiver
TARGET_FLAG := --target $(TARGET)
endif
MANDIR     := target/man
EXAMPLE    := target/example
UNITDIR    ?= /lib/systemd/system
SYSUSERSDIR ?= /usr/lib/sysusers.d

# Cross-building for the boards (Debian: gcc-aarch64-linux-gnu, gcc-arm-linux-gnueabihf):
# the linker for cargo, and the C compiler for the C inside (bundled SQLite, ring).
# They name only their own targets: native builds are not affected.
CROSS_TARGETS := aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER ?= aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu ?= aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_gnu ?= aarch64-linux-gnu-ar
export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER ?= arm-linux-gnueabihf-gcc
export CC_armv7_unknown_linux_gnueabihf ?= arm-linux-gnueabihf-gcc
export AR_armv7_unknown_linux_gnueabihf ?= arm-linux-gnueabihf-ar

.PHONY: help build release man test lint fmt run-example bench torture modelcheck install deb deb-test cross clean \
	receiver receiver-test receiver-install receiver-deb receiver-deb-test receiver-e2e fleet

help:
	@echo "make build        debug build"
	@echo "make release      optimised build ($(BIN))"
	@echo "make test         every test (cargo nextest when installed, else cargo test)"
	@echo "make lint         cargo fmt --check and clippy -D warnings"
	@echo "make run-example  run ferry on the bundled example config (SQLite, state in $(EXAMPLE))"
	@echo "make bench        benchmarks that print their figures against the targets"
	@echo "make torture      kill -9, faults, crash copies, a full disk, bad input, then the model check (20 min)"
	@echo "make modelcheck   seeded scenarios of writes, faults and crashes, checked against a model (10 min)"
	@echo "make install      install into DESTDIR (default /): binary, config, unit, sysusers, man page"
	@echo "make deb          build target/deb/ferry_<version>_<arch>.deb (TARGET=<triple> for another board)"
	@echo "make deb-test     build two .debs, lintian, install/upgrade/remove/purge here (root or sudo)"
	@echo "make cross        release builds for $(CROSS_TARGETS)"
	@echo "make receiver     release build of ferry-receiver ($(RECEIVER_BIN))"
	@echo "make receiver-test  ferry-receiver's tests, on SQLite and on a throwaway PostgreSQL (pg_virtualenv)"
	@echo "make receiver-install / receiver-deb / receiver-deb-test   as install, deb, deb-test, for ferry-receiver"
	@echo "make receiver-e2e ferry delivering to ferry-receiver with kill -9 of both, SQLite and PostgreSQL"
	@echo "make fleet        hundreds of simulated boxes into two receivers on one PostgreSQL: records/s, p50/p99"

build:
	$(CARGO) build --locked

release:
	$(CARGO) build --release --locked $(TARGET_FLAG)

# ferry(1) and ferry-<command>(1), generated from the command-line definition
# (examples/manpage.rs). It runs on this machine, whatever TARGET is.
man:
	@rm -rf $(MANDIR) && mkdir -p $(MANDIR)
	$(CARGO) run --release --locked --quiet --example manpage -- $(MANDIR)

test:
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --locked --no-fail-fast; \
	else \
		$(CARGO) test --locked --no-fail-fast; \
	fi
	$(MAKE) --no-print-directory receiver-test

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

# The bundled example, end to end: config/ferry.example.toml with its state under
# $(EXAMPLE) (STATE_DIRECTORY, as systemd sets it), the records of
# config/example-records/ put into it, then delivered by `ferry sync --once` to a
# receiver on loopback (examples/receiver.rs) standing in for the server.
FERRY_EXAMPLE = STATE_DIRECTORY=$(CURDIR)/$(EXAMPLE) $(BIN) --config config/ferry.example.toml

run-example: release
	@rm -rf $(EXAMPLE) && mkdir -p $(EXAMPLE)
	$(CARGO) build --release --locked --example receiver
	@echo "== ferry config check"
	$(FERRY_EXAMPLE) config check
	@echo "== ferry put: the records of config/example-records/"
	$(FERRY_EXAMPLE) put evenement < config/example-records/evenement.ndjson
	$(FERRY_EXAMPLE) put downloads < config/example-records/downloads.ndjson
	@echo "== ferry sync --dry-run"
	BACKEND_URL=http://127.0.0.1:9 $(FERRY_EXAMPLE) sync --once --dry-run
	@echo "== ferry sync --once, to a receiver on loopback"
	@target/release/examples/receiver --addr-file $(EXAMPLE)/receiver.url --idle-exit 20 & receiver=$$!; \
	  for i in 1 2 3 4 5 6 7 8 9 10; do [ -s $(EXAMPLE)/receiver.url ] && break; sleep 0.2; done; \
	  BACKEND_URL=$$(cat $(EXAMPLE)/receiver.url) $(FERRY_EXAMPLE) sync --once; status=$$?; \
	  kill $$receiver 2>/dev/null; exit $$status
	@echo "== a second pass sends nothing: every record is tracked as delivered"
	BACKEND_URL=http://127.0.0.1:9 $(FERRY_EXAMPLE) sync --once
	@echo "== the store: $(EXAMPLE)/ferry.db (sqlite3 $(EXAMPLE)/ferry.db 'SELECT * FROM sync_tracking')"

# Benchmarks print figures (a table; BENCHMARKS.md records the latest), they are not
# pass/fail tests. examples/bench/ drives the release binary as whole processes.
bench:
	$(CARGO) build --release --locked --bins --examples
	target/release/examples/bench

# The soak test: 200 kills per backend and the other cases (examples/torture/), then
# one table; then the model check (examples/modelcheck/) for longer than CI runs it:
# the fixed seeds and fresh ones for TORTURE_MODELCHECK_SECS, with its own table
# (the seed range covered included). It exits non-zero if anything was lost,
# duplicated or mishandled in either. The full-disk case mounts a small tmpfs, so it
# needs root.
TORTURE_MODELCHECK_SECS ?= 1200
torture:
	$(CARGO) build --release --locked --bins --examples
	@status=0; \
	target/release/examples/torture || status=1; \
	echo "== the model check: the fixed seeds, then fresh ones for $(TORTURE_MODELCHECK_SECS) s"; \
	target/release/examples/modelcheck --fixed examples/modelcheck/seeds.txt --time $(TORTURE_MODELCHECK_SECS) || status=1; \
	exit $$status

# The layout of the .deb too: packaging/deb/build.sh stages the package with this.
install: release man
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/ferry
	install -D -m 0644 config/ferry.example.toml $(DESTDIR)/etc/ferry/ferry.toml
	install -D -m 0644 systemd/ferry.service $(DESTDIR)$(UNITDIR)/ferry.service
	install -D -m 0644 systemd/ferry.sysusers $(DESTDIR)$(SYSUSERSDIR)/ferry.conf
	install -D -m 0644 README.md $(DESTDIR)$(PREFIX)/share/doc/ferry/README.md
	install -d -m 0755 $(DESTDIR)$(PREFIX)/share/man/man1
	for page in $(MANDIR)/*.1; do \
		gzip -9n < $$page > $(DESTDIR)$(PREFIX)/share/man/man1/$${page##*/}.gz && \
		chmod 0644 $(DESTDIR)$(PREFIX)/share/man/man1/$${page##*/}.gz || exit 1; \
	done
	install -d -m 0750 $(DESTDIR)/var/lib/ferry

# The model check (examples/modelcheck/): the fixed seeds of seeds.txt, then fresh
# random seeds for ten minutes, against the release binary; one table at the end, and
# a non-zero exit on any failure. MODELCHECK_ARGS="--seed N" replays one scenario.
# CI runs `target/debug/examples/modelcheck --ci` (the fixed seeds, then fresh ones,
# about three minutes in all).
MODELCHECK_ARGS ?= --fixed examples/modelcheck/seeds.txt --time 600
modelcheck:
	$(CARGO) build --release --locked --bins --examples
	target/release/examples/modelcheck $(MODELCHECK_ARGS)

# The Debian package: make install into a staging tree, plus DEBIAN/ (packaging/deb/).
deb:
	TARGET=$(TARGET) CARGO=$(CARGO) MAKE=$(MAKE) sh packaging/deb/build.sh

# Lints the package and installs, upgrades, removes and purges it on this machine, for
# real (as root, with sudo if need be): for CI and disposable machines.
deb-test:
	CARGO=$(CARGO) MAKE=$(MAKE) sh packaging/deb/test.sh

cross:
	@for t in $(CROSS_TARGETS); do \
		rustup target list --installed 2>/dev/null | grep -qx "$$t" || \
			{ echo "make cross: the Rust target $$t is missing: rustup target add $$t" >&2; exit 1; }; \
	done
	@command -v aarch64-linux-gnu-gcc >/dev/null && command -v arm-linux-gnueabihf-gcc >/dev/null || \
		{ echo "make cross: a cross C compiler is missing: sudo apt-get install gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf" >&2; exit 1; }
	for t in $(CROSS_TARGETS); do $(CARGO) build --release --locked --target $$t || exit 1; done
	@for t in $(CROSS_TARGETS); do \
		if command -v file >/dev/null; then file target/$$t/release/ferry; else ls -l target/$$t/release/ferry; fi; \
	done

# ferry-receiver (receiver/, a workspace member): the server side.
receiver:
	$(CARGO) build --release --locked -p ferry-receiver $(TARGET_FLAG)

# Its PostgreSQL tests need a server: the one PGHOST or FERRY_TEST_POSTGRES names, else
# a throwaway cluster made by pg_virtualenv (Debian: apt-get install postgresql) for the
# run. Without either they fail, saying so: an untested storage is not a pass.
RECEIVER_TESTS = if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --locked --no-fail-fast -p ferry-receiver; \
	else \
		$(CARGO) test --locked --no-fail-fast -p ferry-receiver; \
	fi
receiver-test:
	@if [ -n "$$PGHOST$$FERRY_TEST_POSTGRES" ] || ! command -v pg_virtualenv >/dev/null 2>&1; then \
		$(RECEIVER_TESTS); \
	else \
		pg_virtualenv -t sh -c '$(RECEIVER_TESTS)'; \
	fi

receiver-install: receiver
	install -D -m 0755 $(RECEIVER_BIN) $(DESTDIR)$(PREFIX)/bin/ferry-receiver
	install -D -m 0644 receiver/receiver.example.toml $(DESTDIR)/etc/ferry-receiver/receiver.toml
	install -D -m 0644 systemd/ferry-receiver.service $(DESTDIR)$(UNITDIR)/ferry-receiver.service
	install -D -m 0644 systemd/ferry-receiver.sysusers $(DESTDIR)$(SYSUSERSDIR)/ferry-receiver.conf
	install -D -m 0644 receiver/README.md $(DESTDIR)$(PREFIX)/share/doc/ferry-receiver/README.md
	install -D -m 0644 docs/PROTOCOL.md $(DESTDIR)$(PREFIX)/share/doc/ferry-receiver/PROTOCOL.md
	install -d -m 0755 $(DESTDIR)$(PREFIX)/share/man/man1
	gzip -9n < receiver/ferry-receiver.1 > $(DESTDIR)$(PREFIX)/share/man/man1/ferry-receiver.1.gz
	chmod 0644 $(DESTDIR)$(PREFIX)/share/man/man1/ferry-receiver.1.gz
	install -d -m 0750 $(DESTDIR)/var/lib/ferry-receiver

receiver-deb:
	TARGET=$(TARGET) CARGO=$(CARGO) MAKE=$(MAKE) sh packaging/receiver/build.sh

receiver-deb-test:
	CARGO=$(CARGO) MAKE=$(MAKE) sh packaging/receiver/test.sh

# End to end (receiver/examples/e2e.rs): the real ferry delivering to the real receiver,
# kill -9 of both while records are written and updated; the receiver must end with
# ferry's store, once each. Debug builds (it is a check, not a benchmark).
receiver-e2e:
	$(CARGO) build --locked --bin ferry
	$(CARGO) build --locked -p ferry-receiver --bins --examples
	@if [ -n "$$PGHOST$$FERRY_TEST_POSTGRES" ]; then \
		target/debug/examples/e2e; \
	else \
		pg_virtualenv -t target/debug/examples/e2e; \
	fi

# The fleet benchmark (receiver/examples/fleet.rs): figures, not a pass/fail test (it
# fails only if a record is duplicated, lost or left stale). PostgreSQL as for
# receiver-test; FLEET_ARGS="--seconds 20 --boxes 300" to change the load.
FLEET_ARGS ?=
fleet:
	$(CARGO) build --release --locked -p ferry-receiver --bins --examples
	@if [ -n "$$PGHOST$$FERRY_TEST_POSTGRES" ]; then \
		target/release/examples/fleet $(FLEET_ARGS); \
	else \
		command -v pg_virtualenv >/dev/null 2>&1 || \
			{ echo "make fleet: no PostgreSQL: apt-get install postgresql (for pg_virtualenv), or set PGHOST" >&2; exit 1; }; \
		pg_virtualenv -t target/release/examples/fleet $(FLEET_ARGS); \
	fi

clean:
	$(CARGO) clean
	rm -rf $(EXAMPLE)
