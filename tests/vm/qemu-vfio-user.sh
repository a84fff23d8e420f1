#!/usr/bin/env bash
# qemu-vfio-user.sh - a QEMU >= 10.1 with vfio-user on both sides, built once per version and cached.
#
# Prints, on stdout, the PREFIX of a finished build (PREFIX/bin/qemu-system-x86_64,
# PREFIX/bin/libvfio-user-samples/{gpio-pci-idio-16,server,client}, PREFIX/BUILD-INFO.txt);
# everything else goes to stderr. The build itself is build-qemu-vfio-user.sh (beside this file,
# a copy of the shared harness script): QEMU from Debian's source package, ~2.5 min on an idle
# 2-core machine, ~9 min on a loaded one.
#
# Cache: $HWRR_QEMU_CACHE/<debian-version> (default /var/cache/hwrr/qemu-vfio-user), e.g.
# /var/cache/hwrr/qemu-vfio-user/10.2.2+ds-1. A build goes to <dir>.partial and is renamed when it
# passed its smoke test, so an interrupted build is never mistaken for a cached one. A cache hit
# needs no network.
#
# Environment:
#   QEMU_DEB_VERSION   Debian source version to build (default 1:10.2.2+ds-1, pinned so the cache
#                      key is known before any download; when the mirror no longer serves the
#                      default, the newest version >= 10.1 it serves is built instead). "auto": reuse
#                      the newest cached build if any, else build the newest version >= 10.1 served.
#   HWRR_QEMU_CACHE    cache root (default /var/cache/hwrr/qemu-vfio-user)
#   HWRR_QEMU_NO_BUILD=1  never build: exit 3 when the cache has no build
#   JOBS, NICE, WORK   passed to build-qemu-vfio-user.sh (WORK default: <cache root>/.work)
#
# Exit: 0 with the PREFIX on stdout; 3 when no QEMU >= 10.1 is available (the mirror serves none,
# or HWRR_QEMU_NO_BUILD=1 and nothing is cached): callers report that as SKIPPED; 1 on other errors.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${HWRR_QEMU_CACHE:-/var/cache/hwrr/qemu-vfio-user}
DEFAULT_VERSION=${HWRR_QEMU_DEFAULT_VERSION:-1:10.2.2+ds-1}   # overridable to test the fallback
VERSION=${QEMU_DEB_VERSION:-$DEFAULT_VERSION}

log() { echo "[qemu-vfio-user $(date +%H:%M:%S)] $*" >&2; }

# a cached build is usable when it finished (marker) and its binary still runs
usable() {
  [ -f "$1/.complete" ] && [ -x "$1/bin/qemu-system-x86_64" ] \
    && "$1/bin/qemu-system-x86_64" --version >/dev/null 2>&1
}

report() {  # report PREFIX HOW
  log "$2: $1"
  log "  $(head -1 "$1/BUILD-INFO.txt")"
  log "  $("$1/bin/qemu-system-x86_64" --version | head -1)"
  log "  $(grep '^timings' "$1/BUILD-INFO.txt" || echo 'timings: unknown')"
  echo "$1"
}

if [ "$VERSION" = auto ]; then
  newest=$(find "$CACHE" -mindepth 1 -maxdepth 1 -type d ! -name '.*' ! -name '*.partial' 2>/dev/null \
           | sort -V | tail -1)
  if [ -n "$newest" ] && usable "$newest"; then report "$newest" "cached (newest)"; exit 0; fi
  KEY=auto
else
  KEY=${VERSION#*:}                      # 1:10.2.2+ds-1 -> 10.2.2+ds-1
  PREFIX="$CACHE/$KEY"
  if usable "$PREFIX"; then report "$PREFIX" cached; exit 0; fi
fi

if [ "${HWRR_QEMU_NO_BUILD:-0}" = 1 ]; then
  log "no cached QEMU $KEY in $CACHE and HWRR_QEMU_NO_BUILD=1"
  exit 3
fi

mkdir -p "$CACHE"
PARTIAL="$CACHE/$KEY.partial"
rm -rf "$PARTIAL"
BUILD_LOG="$CACHE/build-$KEY.log"
log "building QEMU $VERSION into $PARTIAL (log: $BUILD_LOG)"
env_version=()
[ "$VERSION" != auto ] && env_version=(QEMU_DEB_VERSION="$VERSION")
set +e
env "${env_version[@]}" WORK="${WORK:-$CACHE/.work}" bash "$HERE/build-qemu-vfio-user.sh" "$PARTIAL" \
  > >(tee "$BUILD_LOG" >&2) 2>&1
rc=$?
set -e
if [ $rc -ne 0 ]; then
  rm -rf "$PARTIAL"
  if [ -z "${QEMU_DEB_VERSION:-}" ] && grep -q 'could be downloaded' "$BUILD_LOG"; then
    # the mirror moved on from the default version: take the newest >= 10.1 it serves
    log "the mirror no longer serves $DEFAULT_VERSION: building the newest QEMU >= 10.1 instead"
    QEMU_DEB_VERSION=auto exec "$0" "$@"
  fi
  if grep -qE 'no qemu source package >= 10.1 is listed|could be downloaded' "$BUILD_LOG"; then
    log "SKIPPED: Debian's mirror serves no QEMU >= 10.1 source ($VERSION)"
    exit 3
  fi
  log "build failed (rc=$rc), see $BUILD_LOG"
  exit 1
fi
if [ "$VERSION" = auto ]; then
  KEY=$(sed -n 's/.*from Debian source package qemu \([^ ]*\).*/\1/p' "$PARTIAL/BUILD-INFO.txt" | head -1)
  KEY=${KEY#*:}
  [ -n "$KEY" ] || { log "cannot read the version from $PARTIAL/BUILD-INFO.txt"; exit 1; }
fi
PREFIX="$CACHE/$KEY"
rm -rf "$PREFIX"
mv "$PARTIAL" "$PREFIX"
cp "$BUILD_LOG" "$PREFIX/build.log" 2>/dev/null || true
touch "$PREFIX/.complete"
rm -rf "${WORK:-$CACHE/.work}"
report "$PREFIX" built
