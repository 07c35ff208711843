#!/bin/sh
# Builds target/deb/ferry_<version>_<arch>.deb with dpkg-deb (no other tool needed).
# The package's files are what `make install DESTDIR=…` puts into a staging tree, so the
# .deb and `make install` have one layout by construction; this adds the Debian parts:
# copyright, changelog, DEBIAN/ (control, conffiles, md5sums, maintainer scripts).
#
#   sh packaging/deb/build.sh                  (what `make deb` runs)
#   TARGET=aarch64-unknown-linux-gnu …         a package for another board (arm64, armhf)
#   VERSION_SUFFIX=+test2 …                    a later version of the same build, for the
#                                              upgrade test (packaging/deb/test.sh)
# Prints the path of the package on its last line.
set -eu

cd "$(dirname "$0")/../.."
umask 022

TARGET=${TARGET:-}
MAKE=${MAKE:-make}
VERSION_SUFFIX=${VERSION_SUFFIX:-}
here=packaging/deb

die() {
    echo "build.sh: $*" >&2
    exit 1
}

# The [package] version of Cargo.toml; ferry is a native package (no Debian revision).
version=$(awk -F'"' '/^\[/ { in_package = ($0 == "[package]") }
    in_package && /^version *=/ { print $2; exit }' Cargo.toml)
[ -n "$version" ] || die "no version in Cargo.toml's [package]"
version=$version$VERSION_SUFFIX

case "$TARGET" in
    "") arch=$(dpkg --print-architecture) ;;
    x86_64-unknown-linux-gnu) arch=amd64 ;;
    aarch64-unknown-linux-gnu) arch=arm64 ;;
    armv7-unknown-linux-gnueabihf) arch=armhf ;;
    arm-unknown-linux-gnueabihf) arch=armhf ;;
    i686-unknown-linux-gnu) arch=i386 ;;
    *) die "no Debian architecture known for the target $TARGET" ;;
esac

out=target/deb
root=$out/root
deb=$out/ferry_${version}_${arch}.deb
rm -rf "$root"
mkdir -p "$out"

"$MAKE" --no-print-directory install DESTDIR="$PWD/$root" TARGET="$TARGET"
# The state folder is made by postinst (owned by the ferry user, which does not exist
# when dpkg unpacks): shipped, dpkg would warn "not empty so not removed" on every
# `apt remove`, and reset its owner on every upgrade.
rmdir "$root/var/lib/ferry" "$root/var/lib" "$root/var"

doc=$root/usr/share/doc/ferry
install -m 0644 "$here/copyright" "$doc/copyright"
# A native package's changelog is changelog.gz (Debian policy 12.7). Its top entry
# carries this build's version.
sed "1s/([^)]*)/($version)/" "$here/changelog" | gzip -9n > "$doc/changelog.gz"
chmod 0644 "$doc/changelog.gz"
# Overrides of lintian tags, each with its reason (packaging/deb/lintian-overrides).
if [ -s "$here/lintian-overrides" ]; then
    install -D -m 0644 "$here/lintian-overrides" "$root/usr/share/lintian/overrides/ferry"
fi

# Depends: what the binary links, at the versions of the symbols it uses.
bin=$root/usr/bin/ferry
depends=
if [ -z "$TARGET" ] && command -v dpkg-shlibdeps >/dev/null 2>&1; then
    # dpkg-shlibdeps works in a debhelper-style tree (debian/control, debian/<package>/);
    # give it one in a scratch folder.
    scratch=$(mktemp -d)
    mkdir -p "$scratch/debian/ferry/DEBIAN" "$scratch/debian/ferry/usr/bin"
    printf 'Source: ferry\n\nPackage: ferry\nArchitecture: any\n' > "$scratch/debian/control"
    cp "$bin" "$scratch/debian/ferry/usr/bin/ferry"
    depends=$(cd "$scratch" && dpkg-shlibdeps -O debian/ferry/usr/bin/ferry | sed -n 's/^shlibs:Depends=//p')
    rm -rf "$scratch"
fi
if [ -z "$depends" ]; then
    # Cross builds: read the ELF (readelf knows every architecture). ferry links only
    # glibc and libgcc_s; anything else is an error here, not a silent omission.
    command -v readelf >/dev/null 2>&1 || die "readelf (binutils) is needed to compute Depends"
    # The highest symbol version used of a library: GLIBC_2.34 → 2.34, GCC_4.3.0 → 4.3.
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
cat > "$root/DEBIAN/control" <<EOF
Package: ferry
Version: $version
Architecture: $arch
Maintainer: ferry maintainers <maintainers@users.noreply.b-seed-a626d614.example>
Installed-Size: $installed_size
Depends: $depends, systemd-sysusers | adduser
Recommends: ca-certificates
Section: net
Priority: optional
Description: store-and-forward record daemon for single-board computers
 ferry keeps records (download jobs, sensor events, camera clips, ...) written
 by local programs in a SQLite database or a folder of JSON files, and pushes
 every one of them to a remote HTTP server exactly once in effect: each
 delivery is tracked, retried with backoff while the server or the network is
 away, and never repeated once acknowledged.
 .
 It runs as a systemd service (Type=notify, watchdog, hardened unit) as the
 system user "ferry", with its state in /var/lib/ferry and its configuration in
 /etc/ferry/ferry.toml. Until remote.url is set there, the service keeps the
 records and sends none; "systemctl status ferry" says so.
EOF
echo /etc/ferry/ferry.toml > "$root/DEBIAN/conffiles"
for script in postinst prerm postrm; do
    install -m 0755 "$here/$script" "$root/DEBIAN/$script"
done
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -print | sed 's|^\./||' | LC_ALL=C sort |
    xargs md5sum) > "$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/conffiles" "$root/DEBIAN/md5sums"

dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
