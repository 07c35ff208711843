#!/bin/sh
# Builds target/deb/ferry-receiver_<version>_<arch>.deb with dpkg-deb, as
# packaging/deb/build.sh builds ferry's: `make receiver-install DESTDIR=…` stages the
# files, this adds copyright, changelog and DEBIAN/.
#
#   sh packaging/receiver/build.sh             (what `make receiver-deb` runs)
#   TARGET=aarch64-unknown-linux-gnu …         for another board (arm64, armhf)
#   VERSION_SUFFIX=+test2 …                    a later version, for the upgrade test
# Prints the path of the package on its last line.
set -eu

cd "$(dirname "$0")/../.."
umask 022

TARGET=${TARGET:-}
MAKE=${MAKE:-make}
VERSION_SUFFIX=${VERSION_SUFFIX:-}
here=packaging/receiver

die() {
    echo "build.sh: $*" >&2
    exit 1
}

version=$(awk -F'"' '/^\[/ { in_package = ($0 == "[package]") }
    in_package && /^version *=/ { print $2; exit }' receiver/Cargo.toml)
[ -n "$version" ] || die "no version in receiver/Cargo.toml's [package]"
version=$version$VERSION_SUFFIX

case "$TARGET" in
    "") arch=$(dpkg --print-architecture) ;;
    x86_64-unknown-linux-gnu) arch=amd64 ;;
    aarch64-unknown-linux-gnu) arch=arm64 ;;
    armv7-unknown-linux-gnueabihf | arm-unknown-linux-gnueabihf) arch=armhf ;;
    *) die "no Debian architecture known for the target $TARGET" ;;
esac

out=target/deb
root=$out/receiver-root
deb=$out/ferry-receiver_${version}_${arch}.deb
rm -rf "$root"
mkdir -p "$out"

"$MAKE" --no-print-directory receiver-install DESTDIR="$PWD/$root" TARGET="$TARGET"
# The state folder is made by postinst (owned by the service's user, which does not
# exist when dpkg unpacks), as ferry's package does.
rmdir "$root/var/lib/ferry-receiver" "$root/var/lib" "$root/var"

doc=$root/usr/share/doc/ferry-receiver
install -m 0644 "$here/copyright" "$doc/copyright"
sed "1s/([^)]*)/($version)/" "$here/changelog" | gzip -9n > "$doc/changelog.gz"
chmod 0644 "$doc/changelog.gz"
install -D -m 0644 "$here/lintian-overrides" "$root/usr/share/lintian/overrides/ferry-receiver"

bin=$root/usr/bin/ferry-receiver
depends=
if [ -z "$TARGET" ] && command -v dpkg-shlibdeps >/dev/null 2>&1; then
    scratch=$(mktemp -d)
    mkdir -p "$scratch/debian/ferry-receiver/usr/bin"
    printf 'Source: ferry\n\nPackage: ferry-receiver\nArchitecture: any\n' > "$scratch/debian/control"
    cp "$bin" "$scratch/debian/ferry-receiver/usr/bin/ferry-receiver"
    depends=$(cd "$scratch" && dpkg-shlibdeps -O debian/ferry-receiver/usr/bin/ferry-receiver | sed -n 's/^shlibs:Depends=//p')
    rm -rf "$scratch"
fi
if [ -z "$depends" ]; then
    command -v readelf >/dev/null 2>&1 || die "readelf (binutils) is needed to compute Depends"
    highest() {
        readelf -W --dyn-syms "$bin" | grep -o "@$1_[0-9.]*" | sed "s/^@$1_//" |
            sort -t. -k1,1n -k2,2n -k3,3n | tail -n 1 | cut -d. -f1,2
    }
    depends="libc6 (>= $(highest GLIBC))"
    for lib in $(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
        case "$lib" in
            libc.so.6 | libm.so.6 | libpthread.so.0 | libdl.so.2 | librt.so.1 | ld-linux*) ;;
            libgcc_s.so.1) depends="$depends, libgcc-s1 (>= $(highest GCC))" ;;
            *) die "the binary links $lib: add its package to Depends in $0" ;;
        esac
    done
fi

mkdir -p "$root/DEBIAN"
installed_size=$(du -sk "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<CONTROL
Package: ferry-receiver
Version: $version
Architecture: $arch
Maintainer: ferry maintainers <maintainers@users.noreply.b-seed-a626d614.example>
Installed-Size: $installed_size
Depends: $depends, systemd-sysusers | adduser
Suggests: postgresql
Section: net
Priority: optional
Description: idempotent HTTP server for ferry boxes (SQLite or PostgreSQL)
 ferry-receiver is the server side of ferry: it stores the records that ferry
 boxes send, one row per device and record key, keeping Idempotency-Keys as
 the IETF draft says, so retries and lost answers never make duplicates, and
 never writing an older version of a record over a newer one. Per collection
 it checks required fields, types and bounds, ignores updates after a
 terminal state and coalesces high-rate updates.
 .
 Records go to one SQLite file (the default) or to a PostgreSQL database,
 which several receivers may share. It runs as a systemd service
 (Type=notify, hardened unit) as the system user "ferry-receiver", with
 /etc/ferry-receiver/receiver.toml as its configuration.
CONTROL
echo /etc/ferry-receiver/receiver.toml > "$root/DEBIAN/conffiles"
for script in postinst prerm postrm; do
    install -m 0755 "$here/$script" "$root/DEBIAN/$script"
done
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -print | sed 's|^\./||' | LC_ALL=C sort |
    xargs md5sum) > "$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/conffiles" "$root/DEBIAN/md5sums"

dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
