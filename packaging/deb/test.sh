#!/bin/sh
# The .deb on this machine, as a user meets it: lintian, then install, upgrade (a second
# build of the same binary with a later version: config edits and records kept),
# remove (config and state kept) and purge (all gone). Stops at the first failed check.
#
#   sh packaging/deb/test.sh [FIRST.deb SECOND.deb]      (what `make deb-test` runs)
#
# Without packages given, it builds them (as the user who runs it: not root, that user
# then needs sudo for the rest, which it runs with the packages it built).
#
# It installs and purges the package "ferry" for real: run it on a machine where ferry
# is not installed (it refuses otherwise), such as a CI machine. Without systemd as
# PID 1 the service is not started; the unit's enablement is checked all the same.
set -eu

absolute() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
[ $# -eq 2 ] && set -- "$(absolute "$1")" "$(absolute "$2")"
cd "$(dirname "$0")/../.."
MAKE=${MAKE:-make}

step() { echo "== deb-test: $*"; }
ok() { echo "   ok: $*"; }
fail() {
    echo "deb-test: FAILED: $*" >&2
    if dpkg-query -W -f='${Status}' ferry 2>/dev/null | grep -q installed; then
        echo "deb-test: the package is left as it is for a look; \`dpkg -P ferry\` removes it" >&2
    fi
    exit 1
}
check() { # check "what" command…
    what=$1
    shift
    "$@" >/dev/null 2>&1 || fail "$what (the check was: $*)"
    ok "$what"
}
status() { dpkg-query -W -f='${Status}' ferry 2>/dev/null || true; }

if [ $# -eq 2 ]; then
    first=$1
    second=$2
elif [ $# -eq 0 ]; then
    step "build two packages of one release build: the version, and the version +test2"
    first=$("$MAKE" --no-print-directory deb | tail -n 1)
    second=$(VERSION_SUFFIX=+test2 MAKE="$MAKE" sh packaging/deb/build.sh | tail -n 1)
else
    fail "usage: $0 [FIRST.deb SECOND.deb]"
fi
[ -f "$first" ] && [ -f "$second" ] || fail "no package built ($first, $second)"
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || fail "run as root: it installs and purges the package"
    exec sudo sh packaging/deb/test.sh "$first" "$second"
fi
case "$(status)" in
    "" | "unknown ok not-installed" | "deinstall ok not-installed") ;;
    *) fail "ferry is already installed here ($(status)); this test would purge it and its state" ;;
esac
user_existed=no
getent passwd ferry >/dev/null && user_existed=yes

version=$(dpkg-deb -f "$first" Version)
[ "$(dpkg-deb -f "$second" Version)" = "$version+test2" ] ||
    fail "$second is not version $version+test2 (build it with VERSION_SUFFIX=+test2)"
ok "$first and $second"
dpkg-deb -c "$first"
printf 'conffiles: %s\n' "$(dpkg-deb --ctrl-tarfile "$first" | tar -xOf - ./conffiles)"

step "lintian"
if ! command -v lintian >/dev/null 2>&1; then
    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q lintian >/dev/null ||
        fail "cannot install lintian"
fi
lintian --fail-on error --info "$first" || fail "lintian reports errors"
ok "lintian: no errors"

step "dpkg -i $first"
dpkg -i "$first" </dev/null || fail "dpkg -i $first"
check "installed at $version" sh -c "dpkg-query -W -f='\${Status} \${Version}' ferry | grep -qx 'install ok installed $version'"
for path in /usr/bin/ferry /etc/ferry/ferry.toml /lib/systemd/system/ferry.service \
    /usr/lib/sysusers.d/ferry.conf /usr/share/man/man1/ferry.1.gz \
    /usr/share/doc/ferry/copyright /usr/share/doc/ferry/changelog.gz /usr/share/doc/ferry/README.md; do
    check "$path is there" test -f "$path"
done
check "/etc/ferry/ferry.toml is a conffile" sh -c "dpkg-query -W -f='\${Conffiles}' ferry | grep -q ' /etc/ferry/ferry.toml '"
check "the system user and group ferry" sh -c 'getent passwd ferry && getent group ferry'
check "/var/lib/ferry is ferry:ferry 750" sh -c '[ "$(stat -c "%U:%G %a" /var/lib/ferry)" = "ferry:ferry 750" ]'
check "the unit is enabled (multi-user.target.wants)" test -L /etc/systemd/system/multi-user.target.wants/ferry.service
check "ferry --version says $version" sh -c "ferry --version | grep -qx 'ferry ${version%%+*}'"
check "the man page reads" sh -c 'gzip -t /usr/share/man/man1/ferry.1.gz && zcat /usr/share/man/man1/ferry.1.gz | grep -q "^.SH SUBCOMMANDS"'
note=$(ferry config check) || fail "ferry config check on the installed config: $note"
echo "$note" | grep -q "remote.url is not set" || fail "ferry config check does not say remote.url is not set: $note"
ok "ferry config check: valid, and says remote.url is not set"

step "ferry run as the service would (no systemd here: as user ferry), remote.url unset"
log=$(mktemp)
# setpriv execs ferry itself (runuser would stay in between and eat the SIGTERM).
setpriv --reuid=ferry --regid=ferry --init-groups ferry run 2>"$log" &
pid=$!
for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
    grep -q "not sending: remote.url is not set in /etc/ferry/ferry.toml" "$log" && break
    kill -0 "$pid" 2>/dev/null || fail "ferry run exited without remote.url: $(cat "$log")"
    sleep 0.5
done
grep -q "not sending: remote.url is not set in /etc/ferry/ferry.toml" "$log" ||
    fail "ferry run does not say why it sends nothing: $(cat "$log")"
kill -0 "$pid" 2>/dev/null || fail "ferry run did not keep running: $(cat "$log")"
kill -TERM "$pid"
code=0
wait "$pid" || code=$?
[ "$code" -eq 0 ] || fail "ferry run exited $code on SIGTERM"
ok "ready and waiting, says why, exits 0 on SIGTERM"
rm -f "$log"

step "the user's edits and records"
sed -i 's|^#url = .*|url = "http://127.0.0.1:9"|' /etc/ferry/ferry.toml
grep -qx 'url = "http://127.0.0.1:9"' /etc/ferry/ferry.toml || fail "could not set remote.url"
printf 'secret\n' > /etc/ferry/token
chmod 0600 /etc/ferry/token
echo '{"id_evenement": 7, "date": "2026-11-22T10:00:00Z", "type": "motion"}' |
    runuser -u ferry -- ferry put evenement >/dev/null || fail "ferry put as user ferry"
check "the record is in /var/lib/ferry/ferry.db" runuser -u ferry -- ferry get evenement 7
check "ferry config check no longer notes remote.url" sh -c '! ferry config check | grep -q "remote.url is not set"'

step "dpkg -i $second (upgrade)"
dpkg -i "$second" </dev/null || fail "dpkg -i $second"
check "upgraded to $version+test2" sh -c "dpkg-query -W -f='\${Version}' ferry | grep -qx '$version+test2'"
check "the edited ferry.toml is kept" grep -qx 'url = "http://127.0.0.1:9"' /etc/ferry/ferry.toml
check "no ferry.toml.dpkg-* beside it" sh -c '! ls /etc/ferry/ferry.toml.dpkg-* 2>/dev/null'
check "the record is kept" runuser -u ferry -- ferry get evenement 7
check "/var/lib/ferry is still ferry:ferry 750" sh -c '[ "$(stat -c "%U:%G %a" /var/lib/ferry)" = "ferry:ferry 750" ]'

step "dpkg -r ferry"
dpkg -r ferry </dev/null || fail "dpkg -r ferry"
check "status config-files" sh -c "dpkg-query -W -f='\${Status}' ferry | grep -qx 'deinstall ok config-files'"
check "the unit is masked until reinstall or purge" test -L /etc/systemd/system/ferry.service
check "/usr/bin/ferry is gone" test ! -e /usr/bin/ferry
check "the edited ferry.toml is kept" grep -qx 'url = "http://127.0.0.1:9"' /etc/ferry/ferry.toml
check "the token is kept" test -f /etc/ferry/token
check "the state is kept" test -f /var/lib/ferry/ferry.db

step "dpkg -P ferry"
dpkg -P ferry </dev/null || fail "dpkg -P ferry"
check "not installed" sh -c "! dpkg-query -W -f='\${Status}' ferry 2>/dev/null | grep -q 'ok installed\|config-files'"
check "/etc/ferry is gone" test ! -e /etc/ferry
check "/var/lib/ferry is gone" test ! -e /var/lib/ferry
check "the unit's enablement, mask and deb-systemd-helper state are gone" \
    sh -c '[ -z "$(find /etc/systemd/system /var/lib/systemd -name "ferry.service*" 2>/dev/null)" ]'
check "the user ferry is kept (Debian keeps system users)" getent passwd ferry

if [ "$user_existed" = no ]; then
    # Leave this machine as it was found.
    userdel ferry 2>/dev/null || true
    groupdel ferry 2>/dev/null || true
fi
echo "deb-test: all checks passed"
