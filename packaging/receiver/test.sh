#!/bin/sh
# The receiver's .deb on this machine, as a user meets it: lintian, install (the service
# user, the state folder, the unit enabled, `config check`, a record stored on the default
# SQLite database by the binary run as the service user), upgrade (config and records
# kept), remove (kept), purge (gone). Stops at the first failed check.
#
#   sh packaging/receiver/test.sh [FIRST.deb SECOND.deb]    (what `make receiver-deb-test` runs)
#
# It installs and purges the package "ferry-receiver" for real: run it where it is not
# installed (it refuses otherwise), such as a CI machine.
set -eu

absolute() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
[ $# -eq 2 ] && set -- "$(absolute "$1")" "$(absolute "$2")"
cd "$(dirname "$0")/../.."
MAKE=${MAKE:-make}
pkg=ferry-receiver

step() { echo "== receiver-deb-test: $*"; }
ok() { echo "   ok: $*"; }
fail() {
    echo "receiver-deb-test: FAILED: $*" >&2
    exit 1
}
check() {
    what=$1
    shift
    "$@" >/dev/null 2>&1 || fail "$what (the check was: $*)"
    ok "$what"
}
status() { dpkg-query -W -f='${Status}' $pkg 2>/dev/null || true; }

if [ $# -eq 2 ]; then
    first=$1
    second=$2
elif [ $# -eq 0 ]; then
    step "build two packages: the version, and the version +test2"
    first=$("$MAKE" --no-print-directory receiver-deb | tail -n 1)
    second=$(VERSION_SUFFIX=+test2 MAKE="$MAKE" sh packaging/receiver/build.sh | tail -n 1)
else
    fail "usage: $0 [FIRST.deb SECOND.deb]"
fi
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || fail "run as root: it installs and purges the package"
    exec sudo sh packaging/receiver/test.sh "$first" "$second"
fi
case "$(status)" in
    "" | "unknown ok not-installed" | "deinstall ok not-installed") ;;
    *) fail "$pkg is already installed here ($(status)); this test would purge it" ;;
esac
user_existed=no
getent passwd $pkg >/dev/null && user_existed=yes
version=$(dpkg-deb -f "$first" Version)
dpkg-deb -c "$first"

step "lintian"
if ! command -v lintian >/dev/null 2>&1; then
    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q lintian >/dev/null ||
        fail "cannot install lintian"
fi
lintian --fail-on error --info "$first" || fail "lintian reports errors"
ok "lintian: no errors"

step "dpkg -i $first"
dpkg -i "$first" </dev/null || fail "dpkg -i $first"
for path in /usr/bin/ferry-receiver /etc/ferry-receiver/receiver.toml /lib/systemd/system/ferry-receiver.service \
    /usr/lib/sysusers.d/ferry-receiver.conf /usr/share/man/man1/ferry-receiver.1.gz \
    /usr/share/doc/ferry-receiver/copyright /usr/share/doc/ferry-receiver/changelog.gz \
    /usr/share/doc/ferry-receiver/README.md /usr/share/doc/ferry-receiver/PROTOCOL.md; do
    check "$path is there" test -f "$path"
done
check "the system user ferry-receiver" getent passwd $pkg
check "/var/lib/ferry-receiver is ferry-receiver:ferry-receiver 750" \
    sh -c '[ "$(stat -c "%U:%G %a" /var/lib/ferry-receiver)" = "ferry-receiver:ferry-receiver 750" ]'
check "/etc/ferry-receiver/tokens is root:ferry-receiver 640" \
    sh -c '[ "$(stat -c "%U:%G %a" /etc/ferry-receiver/tokens)" = "root:ferry-receiver 640" ]'
check "the unit is enabled" test -L /etc/systemd/system/multi-user.target.wants/ferry-receiver.service
check "ferry-receiver config check" ferry-receiver config check
check "the man page reads" sh -c 'zcat /usr/share/man/man1/ferry-receiver.1.gz | grep -q "^.SH HTTP API"'

step "ferry-receiver run as the service would (as its user, on the default SQLite database)"
sed 's|^listen = .*|listen = "127.0.0.1:0"|' /etc/ferry-receiver/receiver.toml > /tmp/receiver-deb-test.toml
chmod 0644 /tmp/receiver-deb-test.toml
rm -f /tmp/receiver-deb-test.addr
setpriv --reuid=$pkg --regid=$pkg --init-groups ferry-receiver --config /tmp/receiver-deb-test.toml run \
    --addr-file /tmp/receiver-deb-test.addr 2>/tmp/receiver-deb-test.log &
pid=$!
url=
for _ in $(seq 1 50); do
    [ -s /tmp/receiver-deb-test.addr ] && url=$(cat /tmp/receiver-deb-test.addr) && break
    sleep 0.2
done
[ -n "$url" ] || fail "it did not listen: $(cat /tmp/receiver-deb-test.log)"
answer=$(curl -s -X POST "$url/api/evenements" -H 'Idempotency-Key: box1:evenement:1:v1' -d '{"id": 1}')
[ "$answer" = '{"id":1}' ] || fail "POST answered $answer"
check "GET /health" curl -sf "$url/health"
kill -TERM "$pid"
code=0
wait "$pid" || code=$?
[ "$code" -eq 0 ] || fail "it exited $code on SIGTERM"
check "the record is in /var/lib/ferry-receiver/receiver.db" sh -c 'runuser -u ferry-receiver -- ferry-receiver stats | grep -q "evenements *box1 *1"'
ok "stored, answered, stopped"

step "upgrade to $(dpkg-deb -f "$second" Version)"
sed -i 's|^# log_level = "info".*|log_level = "warn"|' /etc/ferry-receiver/receiver.toml
dpkg -i "$second" </dev/null || fail "dpkg -i $second"
check "the edited receiver.toml is kept" grep -qx 'log_level = "warn"' /etc/ferry-receiver/receiver.toml
check "the records are kept" sh -c 'runuser -u ferry-receiver -- ferry-receiver stats | grep -q "evenements *box1 *1"'

step "dpkg -r, then dpkg -P"
dpkg -r $pkg </dev/null || fail "dpkg -r"
check "the config is kept after remove" test -f /etc/ferry-receiver/receiver.toml
check "the database is kept after remove" test -f /var/lib/ferry-receiver/receiver.db
dpkg -P $pkg </dev/null || fail "dpkg -P"
check "/etc/ferry-receiver is gone" test ! -e /etc/ferry-receiver
check "/var/lib/ferry-receiver is gone" test ! -e /var/lib/ferry-receiver
rm -f /tmp/receiver-deb-test.toml /tmp/receiver-deb-test.addr /tmp/receiver-deb-test.log
if [ "$user_existed" = no ]; then
    userdel $pkg 2>/dev/null || true
    groupdel $pkg 2>/dev/null || true
fi
echo "receiver-deb-test: all checks passed ($version)"
