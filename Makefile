# ferry — build, test and install. `make help` lists the targets.

CARGO   ?= cargo
PREFIX  ?= /usr
DESTDIR ?=
# A toolchain that packaging/bootstrap.sh installed with rustup lives here.
export PATH := $(HOME)/.cargo/bin:$(PATH)

BIN        := target/release/ferry
EXAMPLE    := target/example
UNITDIR    ?= /lib/systemd/system
SYSUSERSDIR ?= /usr/lib/sysusers.d

.PHONY: help build release test lint fmt run-example bench torture install clean

help:
	@echo "make build        debug build"
	@echo "make release      optimised build ($(BIN))"
	@echo "make test         every test (cargo nextest when installed, else cargo test)"
	@echo "make lint         cargo fmt --check and clippy -D warnings"
	@echo "make run-example  run ferry on the bundled example config (SQLite, state in $(EXAMPLE))"
	@echo "make bench        benchmarks that print their figures against the targets"
	@echo "make torture      kill -9, faults, crash copies, a full disk, bad input: lost/duplicated table"
	@echo "make install      install into DESTDIR (default /): binary, config, unit, sysusers"

build:
	$(CARGO) build --locked

release:
	$(CARGO) build --release --locked

test:
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --locked --no-fail-fast; \
	else \
		$(CARGO) test --locked --no-fail-fast; \
	fi

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

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
# one table; it exits non-zero if anything was lost, duplicated or mishandled. The
# full-disk case mounts a small tmpfs, so it needs root.
torture:
	$(CARGO) build --release --locked --bins --examples
	target/release/examples/torture

install: release
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/ferry
	install -D -m 0644 config/ferry.example.toml $(DESTDIR)/etc/ferry/ferry.toml
	install -D -m 0644 systemd/ferry.service $(DESTDIR)$(UNITDIR)/ferry.service
	install -D -m 0644 systemd/ferry.sysusers $(DESTDIR)$(SYSUSERSDIR)/ferry.conf
	install -D -m 0644 README.md $(DESTDIR)$(PREFIX)/share/doc/ferry/README.md
	install -d -m 0750 $(DESTDIR)/var/lib/ferry

clean:
	$(CARGO) clean
	rm -rf $(EXAMPLE)
