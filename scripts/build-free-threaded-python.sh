#!/usr/bin/env bash
# Build a free-threaded CPython (configure --disable-gil) for `make test-ft`, or reuse the one
# already built.
#
# No prebuilt free-threaded interpreter can be downloaded on these machines, so this builds one
# from the upstream source that Debian ships (the pristine `.orig` tarball of trixie's python3.13
# source package, fetched and verified by apt; Debian's own patches are not applied). The result
# lives in a cache OUTSIDE the checkout, so every checkout and every CI run on the machine shares
# it and only the first one pays for the build:
#
#   ${GILFREE_FT_CACHE:-$HOME/.cache/gilfree}/cpython-<version>t/bin/python<major.minor>t
#
# A stamp file in that folder records what was built (version and configure flags); it is written
# last, so an interrupted build leaves no stamp and the next run starts over. When the stamp
# matches and the interpreter runs without the GIL, the script does nothing.
#
# Prints the interpreter's path as the last line of stdout; everything else goes to stderr and the
# build's full log to <cache>/build-<version>t.log.
#
#   scripts/build-free-threaded-python.sh            build or reuse, print the path
#   GILFREE_FT_JOBS=4 scripts/build-...              parallel jobs for make (default: nproc)
set -euo pipefail

VERSION=3.13.5
MINOR=${VERSION%.*}
CONFIGURE_FLAGS=(--disable-gil --with-ensurepip=install)
CACHE=${GILFREE_FT_CACHE:-$HOME/.cache/gilfree}
PREFIX=$CACHE/cpython-${VERSION}t
PYTHON=$PREFIX/bin/python${MINOR}t
STAMP=$PREFIX/.gilfree-build-stamp
STAMP_TEXT="cpython $VERSION configure ${CONFIGURE_FLAGS[*]}"
LOG=$CACHE/build-${VERSION}t.log
BUILD_DEPS=(libssl-dev zlib1g-dev libffi-dev libbz2-dev liblzma-dev libsqlite3-dev libreadline-dev
    uuid-dev xz-utils)
# Debian trixie carries python3.13 $VERSION; its sources are reachable as deb-src on the mirror
# this machine already uses.
SRC_SUITE=trixie
SRC_LIST=/etc/apt/sources.list.d/gilfree-${SRC_SUITE}-src.sources

say() { echo "build-free-threaded-python: $*" >&2; }

usable() {
    [[ -x $PYTHON && -f $STAMP && "$(cat "$STAMP")" == "$STAMP_TEXT" ]] &&
        "$PYTHON" -c 'import sys, ssl, sqlite3, ctypes, lzma, bz2, zlib; sys.exit(sys._is_gil_enabled())'
}

as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

mkdir -p "$CACHE"
# One build at a time per cache: a second caller waits, then finds the stamp.
exec 9>"$CACHE/.build-${VERSION}t.lock"
flock 9

if usable; then
    say "reusing $PYTHON"
    echo "$PYTHON"
    exit 0
fi

start=$SECONDS
say "building CPython $VERSION with --disable-gil into $PREFIX (log: $LOG)"
: >"$LOG"

missing=()
for pkg in "${BUILD_DEPS[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done

# The Debian mirror this machine already uses for its main archive (deb822 .sources files first,
# then one-line sources.list entries): the deb-src entry points there too.
apt_mirror() {
    local f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] || continue
        uri=$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) { print $i; exit } }' "$f")
        [[ -n $uri ]] && { echo "$uri"; return 0; }
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $f ]] || continue
        uri=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) { print $i; exit } }' "$f")
        [[ -n $uri ]] && { echo "$uri"; return 0; }
    done
    return 1
}

if [[ ! -f $SRC_LIST ]]; then
    mirror=$(apt_mirror) || { say "no Debian mirror found in /etc/apt/sources.list*"; exit 1; }
    say "adding deb-src for $SRC_SUITE from $mirror ($SRC_LIST)"
    as_root tee "$SRC_LIST" >/dev/null <<EOF
# Added by gilfree's scripts/build-free-threaded-python.sh: source packages only (no binaries),
# for the upstream CPython $VERSION source of the free-threaded test interpreter.
Types: deb-src
URIs: $mirror
Suites: $SRC_SUITE
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
fi
# Other jobs on the machine may hold apt's locks for a while: wait for them, within limits.
apt_get() {
    local try
    for try in $(seq 1 60); do
        as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=60 "$@" \
            >>"$LOG" 2>&1 && return 0
        grep -q 'Could not get lock' <(tail -n 5 "$LOG") || break
        sleep 10
    done
    tail -n 20 "$LOG" >&2
    return 1
}
say "apt-get update"
apt_get update
if ((${#missing[@]})); then
    say "installing build dependencies: ${missing[*]}"
    apt_get install -y --no-install-recommends "${missing[@]}"
fi

work=$(mktemp -d "$CACHE/build-${VERSION}t.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"
say "fetching the python$MINOR source package from $SRC_SUITE"
# --download-only: apt verifies the files against the signed .dsc; unpacking only the upstream
# tarball keeps the build plain CPython (Debian's patches change install layouts).
apt-get source --download-only "python$MINOR/$SRC_SUITE" >>"$LOG" 2>&1 ||
    { tail -n 20 "$LOG" >&2; exit 1; }
shopt -s nullglob
tarballs=()
for f in python"$MINOR"_"$VERSION".orig.tar.*; do
    [[ $f == *.asc ]] || tarballs+=("$f")
done
if ((${#tarballs[@]} != 1)); then
    say "expected python${MINOR}_$VERSION.orig.tar.* from $SRC_SUITE, found: $(ls)"
    exit 1
fi
tar -xf "${tarballs[0]}"
dirs=(*/configure)
srcdir=${dirs[0]%/configure}
[[ ${#dirs[@]} -eq 1 && -x $srcdir/configure ]] || { say "no configure script in ${tarballs[0]}"; exit 1; }
cd "$srcdir"

rm -rf "$PREFIX"
jobs=${GILFREE_FT_JOBS:-$(nproc)}
run_step() {
    local name=$1
    shift
    local t=$SECONDS
    say "$name"
    "$@" >>"$LOG" 2>&1 || { say "$name failed; the end of $LOG:"; tail -n 30 "$LOG" >&2; exit 1; }
    say "$name: $((SECONDS - t)) s"
}
run_step configure ./configure --prefix="$PREFIX" "${CONFIGURE_FLAGS[@]}"
run_step "make -j$jobs" make -j"$jobs"
run_step "make install" make install

echo "$STAMP_TEXT" >"$STAMP"
if ! usable; then
    rm -f "$STAMP"
    say "the installed interpreter is missing a module or runs with the GIL"
    exit 1
fi
say "done in $((SECONDS - start)) s: $PYTHON"
echo "$PYTHON"
