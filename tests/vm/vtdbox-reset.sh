#!/usr/bin/env bash
# vtdbox-reset.sh - a healthy device after recording (issue 6, item 4), in the VT-d box.
#
# In the guest (tests/vm/vtdbox.sh exec with VTDBOX_BIND=native: the kernel's e1000e owns the NIC at
# boot), with the static hwrr and the static e1000e exercise:
#   1. `hwrr bind BDF` (vfio-pci, state file), then a recording: `hwrr record --vfio BDF --listen S
#      --once` with vfio-backend/examples/e1000e_exercise.rs as its vfio-user client (reset, MAC,
#      link, DMA rings, ARP, MSI-X and INTx: it leaves the NIC programmed by user space);
#   2. `hwrr reset BDF`: the seed's recovery (unbind from vfio-pci, clear driver_override, reprobe);
#   3. the kernel's e1000e must own the NIC again, its netdev must carry the MAC the recording read,
#      and with 10.0.2.15/24 it must ping slirp's gateway 10.0.2.2.
# Every step prints `RESETCHECK name OK|FAIL detail`; a missing netdev is a FAIL, never a skip.
#
# Artefacts in $OUT (default /tmp/vtdbox-reset): console.log, guest.log (the guest script's output),
# reset-record.hwrr (the recording), hwrr-record.log, timings.txt (build and VM times, versions).
# Environment: OUT, WORK (vtdbox scratch, default /tmp/vtdbox; tests/vm/vtdbox-record.sh's static
# binaries there are rebuilt by the same cargo command, so after it the build is a no-op),
# TARGET (auto|musl|gnu). Exit 0 iff every RESETCHECK is OK.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=${OUT:-/tmp/vtdbox-reset}
export WORK=${WORK:-/tmp/vtdbox}
VTDBOX="$HERE/vtdbox.sh"
# shellcheck source=box-exec.sh
. "$HERE/box-exec.sh"

log() { echo "[vtdbox-reset $(date +%H:%M:%S)] $*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.2f", b-a}'; }

mkdir -p "$OUT" "$WORK"
rm -f "$OUT"/*.hwrr "$OUT"/*.log
: > "$OUT/timings.txt"

# The same target choice and flags as vtdbox-record.sh, so both share every compiled artefact.
tgt=x86_64-unknown-linux-gnu rf="-C target-feature=+crt-static"
if [ "${TARGET:-auto}" = musl ] || { [ "${TARGET:-auto}" = auto ] && \
     { command -v musl-gcc >/dev/null || command -v x86_64-linux-musl-gcc >/dev/null; } && \
     { rustup target list --installed 2>/dev/null | grep -q x86_64-unknown-linux-musl \
       || rustup target add x86_64-unknown-linux-musl >/dev/null 2>&1; }; }; then
  tgt=x86_64-unknown-linux-musl rf=""
fi
t=$(now)
log "cargo build --bin hwrr --example e1000e_exercise --target $tgt"
(cd "$REPO" && RUSTFLAGS="$rf" cargo build -q --release -p hwrr-vfio-backend \
   --example e1000e_exercise --example check_e1000e_trace --target "$tgt" && \
 RUSTFLAGS="$rf" cargo build -q --release -p hwrr --bin hwrr --target "$tgt")
echo "build_s=$(since "$t") target=$tgt" >> "$OUT/timings.txt"
bins=()
for b in "target/$tgt/release/hwrr" "target/$tgt/release/examples/e1000e_exercise"; do
  dst="$WORK/$(basename "$b")"
  objcopy --strip-debug "$REPO/$b" "$dst"
  if ldd "$dst" 2>&1 | grep -qv 'not a dynamic\|statically linked'; then
    log "error: $dst is not static"; ldd "$dst" >&2 || true; exit 1
  fi
  bins+=("$dst")
done
# A static hwrr that aborts before main (the interposer's exported open/mmap/ioctl replace libc's in
# a static link, and cannot find the real ones there) would fail every step below for a reason that
# has nothing to do with the device: then hwrr goes in dynamically linked, with its libraries, and
# the guest runs it through the dynamic loader. LINK=static forbids that fallback.
link=static
if ! "$WORK/hwrr" --version >/dev/null 2>"$OUT/static-hwrr.err"; then
  log "the static hwrr does not start: $(grep -m1 -a 'failed\|error' "$OUT/static-hwrr.err" || true)"
  if [ "${LINK:-auto}" = static ]; then exit 1; fi
  link=dynamic
  prof=${DYN_PROFILE:-release}
  log "falling back to a dynamically linked hwrr ($prof) and its libraries"
  (cd "$REPO" && cargo build -q --profile "$([ "$prof" = debug ] && echo dev || echo "$prof")" -p hwrr --bin hwrr)
  mkdir -p "$WORK/dyn"
  objcopy --strip-debug "$REPO/target/$prof/hwrr" "$WORK/dyn/hwrr-dyn"
  bins=("$WORK/e1000e_exercise" "$WORK/dyn/hwrr-dyn")
  for lib in $(ldd "$WORK/dyn/hwrr-dyn" | awk '$2 == "=>" { print $3 } $1 ~ /^\// { print $1 }'); do
    cp -L "$lib" "$WORK/dyn/$(basename "$lib")"
    bins+=("$WORK/dyn/$(basename "$lib")")
  done
fi
echo "hwrr_link=$link" >> "$OUT/timings.txt"

t=$(now)
bash "$VTDBOX" setup >/dev/null
echo "setup_s=$(since "$t")" >> "$OUT/timings.txt"

script="$WORK/reset-guest.sh"
cat > "$script" <<'GUEST'
#!/bin/sh
B=$VTDBOX_BDF
fail=0
drv() { l=$(readlink /sys/bus/pci/devices/$B/driver 2>/dev/null); [ -n "$l" ] && basename "$l" || echo none; }
check() {  # check NAME WANT GOT
  if [ "$2" = "$3" ]; then echo "RESETCHECK $1 OK ($3)"; else echo "RESETCHECK $1 FAIL want=$2 got=$3"; fail=1; fi
}
up() { cut -d' ' -f1 /proc/uptime; }
# A dynamically linked hwrr (see the host side) runs through its own loader and libraries in /bin.
hwrr() {
  if [ -x /bin/hwrr-dyn ]; then /bin/ld-linux-x86-64.so.2 --library-path /bin /bin/hwrr-dyn "$@"; else /bin/hwrr "$@"; fi
}
echo "RESETCHECK start bdf=$B driver=$(drv) uptime=$(up)"
check boot-driver e1000e "$(drv)"
modprobe vfio-pci; modprobe vfio_iommu_type1
hwrr bind "$B"; check bind-rc 0 $?
check bind-driver vfio-pci "$(drv)"

# The recording: the exercise drives the NIC through hwrr record's vfio-user socket.
hwrr record --vfio "$B" --listen /tmp/hwrr.sock --once -o /host/reset-record.hwrr > /host/hwrr-record.log 2>&1 &
pid=$!
i=0; while [ ! -S /tmp/hwrr.sock ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
e1000e_exercise --vfio-user /tmp/hwrr.sock > /host/exercise.log 2>&1; check exercise-rc 0 $?
wait $pid; check record-rc 0 $?
cat /host/exercise.log /host/hwrr-record.log
mac=$(sed -n 's/^OBS mac=\([0-9a-f:]*\).*/\1/p' /host/exercise.log | head -1)
echo "RESETCHECK recorded uptime=$(up) mac=$mac"

# The seed's recovery: the NIC goes back to the kernel's driver.
hwrr reset "$B"; check reset-rc 0 $?
check reset-driver e1000e "$(drv)"
NET=""
i=0; while [ -z "$NET" ] && [ $i -lt 100 ]; do NET=$(ls /sys/bus/pci/devices/$B/net 2>/dev/null | head -1); [ -n "$NET" ] || sleep 0.1; i=$((i+1)); done
check netdev-after-reset yes "$([ -n "$NET" ] && echo yes || echo no)"
if [ -n "$NET" ]; then
  check netdev-mac "${mac:-recorded-mac}" "$(cat /sys/class/net/$NET/address)"
  ip link set "$NET" up; ip addr add 10.0.2.15/24 dev "$NET"
  # Link autonegotiation after the reprobe takes a moment on TCG: wait for carrier.
  i=0; while [ "$(cat /sys/class/net/$NET/carrier 2>/dev/null)" != 1 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
  check carrier-after-reset 1 "$(cat /sys/class/net/$NET/carrier 2>/dev/null)"
  ping -c 3 -W 3 10.0.2.2; check ping-10.0.2.2-after-reset 0 $?
fi
dmesg | grep -i -E 'e1000e|vfio|DMAR' | tail -20
echo "RESETCHECK done fail=$fail uptime=$(up)"
exit $fail
GUEST
chmod +x "$script"

export KERNEL_APPEND_EXTRA="${KERNEL_APPEND_EXTRA:-no_timer_check}"
rc=0
VTDBOX_BIND=native box_exec "$script" "${bins[@]}" || rc=$?
{
  echo "kernel=$(ls "$WORK/kroot/lib/modules" | head -1)"
  echo "qemu=$(qemu-system-x86_64 --version | head -1)"
} >> "$OUT/timings.txt"
tr -d '\r' < "$OUT/console.log" | grep -a -E '^(RESETCHECK|CHECK|e1000e_exercise|PING|[0-9]+ packets)' > "$OUT/guest.log" || true
cat "$OUT/guest.log" "$OUT/timings.txt"
grep -q '^RESETCHECK done fail=0' "$OUT/guest.log" || { log "FAIL (rc=$rc): see $OUT/console.log"; exit 1; }
grep -q '^RESETCHECK ping-10.0.2.2-after-reset OK' "$OUT/guest.log" || { log "FAIL: no ping verdict"; exit 1; }
exit "$rc"
