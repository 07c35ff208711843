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

.PHONY: help build release test lint fmt run-example install clean

help:
	@echo "make build        debug build"
	@echo "make release      optimised build ($(BIN))"
	@echo "make test         every test (cargo nextest when installed, else cargo test)"
	@echo "make lint         cargo fmt --check and clippy -D warnings"
	@echo "make run-example  run ferry on the bundled example config (SQLite, state in $(EXAMPLE))"
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

# The bundled example: config/ferry.example.toml with its state under $(EXAMPLE)
# (STATE_DIRECTORY, as systemd would set it), a few seed-shaped records put into it,
# then read back.
run-example: release
	@rm -rf $(EXAMPLE) && mkdir -p $(EXAMPLE)
	@echo "== ferry config check"
	STATE_DIRECTORY=$(CURDIR)/$(EXAMPLE) $(BIN) --config config/ferry.example.toml config check
	@echo "== ferry put: records from config/example-records/"
	STATE_DIRECTORY=$(CURDIR)/$(EXAMPLE) $(BIN) --config config/ferry.example.toml put evenement < config/example-records/evenement.ndjson
	STATE_DIRECTORY=$(CURDIR)/$(EXAMPLE) $(BIN) --config config/ferry.example.toml put downloads < config/example-records/downloads.ndjson
	@echo "== ferry list evenement"
	STATE_DIRECTORY=$(CURDIR)/$(EXAMPLE) $(BIN) --config config/ferry.example.toml list evenement
	@echo "== ferry get downloads dl-1"
	STATE_DIRECTORY=$(CURDIR)/$(EXAMPLE) $(BIN) --config config/ferry.example.toml get downloads dl-1
	@echo "== the store: $(EXAMPLE)/ferry.db"

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
