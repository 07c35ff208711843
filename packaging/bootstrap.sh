#!/bin/sh
# Gets a fresh Debian / Raspberry Pi OS machine ready to build and test ferry, then runs
# `make <target>`:  sh packaging/bootstrap.sh run-example   |   sh packaging/bootstrap.sh test
#
# Installs only what is missing: a C compiler and make (Debian packages: bundled SQLite
# and ring are C), PostgreSQL for `test` (ferry-receiver's tests), and a Rust toolchain
# new enough for ferry (rustup, into ~/.cargo).
set -eu

MIN_RUST_MINOR=89   # rust-version in Cargo.toml: 1.89

cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else echo "bootstrap: need root to run: $*" >&2; exit 1
    fi
}

missing=""
command -v cc >/dev/null 2>&1 || missing="$missing gcc libc6-dev"
command -v make >/dev/null 2>&1 || missing="$missing make"
# ferry-receiver's tests run on a throwaway PostgreSQL cluster (pg_virtualenv).
if [ "${1:-}" = test ] && ! command -v pg_virtualenv >/dev/null 2>&1; then
    missing="$missing postgresql"
fi
[ -d "$HOME/.cargo/bin" ] && PATH="$HOME/.cargo/bin:$PATH" && export PATH

rust_ok() {
    command -v cargo >/dev/null 2>&1 || return 1
    minor=$(rustc --version 2>/dev/null | sed -n 's/^rustc 1\.\([0-9]*\).*/\1/p')
    [ -n "$minor" ] && [ "$minor" -ge "$MIN_RUST_MINOR" ]
}

if ! rust_ok && ! command -v rustup >/dev/null 2>&1; then
    command -v curl >/dev/null 2>&1 || missing="$missing curl ca-certificates"
fi
if [ -n "$missing" ]; then
    echo "bootstrap: installing Debian packages:$missing"
    as_root apt-get update -q
    # shellcheck disable=SC2086
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing
fi

if ! rust_ok; then
    if command -v rustup >/dev/null 2>&1; then
        echo "bootstrap: updating the Rust toolchain with rustup"
        rustup toolchain install stable --profile minimal --component rustfmt,clippy
        rustup default stable
    else
        echo "bootstrap: installing Rust with rustup into $HOME/.cargo"
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
            sh -s -- -y --profile minimal --component rustfmt,clippy
        PATH="$HOME/.cargo/bin:$PATH"
        export PATH
    fi
fi

exec make "$@"
