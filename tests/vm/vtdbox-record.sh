#!/usr/bin/env bash
# vtdbox-record.sh - run the e1000e exercise through hwrr's kernel VFIO backend in the VT-d box.
#
# Builds vfio-backend/examples/e1000e_exercise.rs statically (musl when rustup has or gets the
# target, else glibc +crt-static), boots the box (tests/vm/vtdbox.sh exec: q35 + intel-iommu, the
# e1000e at 00:02.0 bound to vfio-pci), runs the exercise in the guest (once with pread/pwrite
# BAR access, once with --mmap, both in-process with the recorder's tap; once as a vfio-user client
# of `hwrr record --vfio`, built statically too), and keeps everything under $OUT:
#   exercise-<mode>.log   the exercise's OBS/CHECK/WATCH lines from the guest console
#   console.log           the whole guest console
#   timings.txt           build, boot and run times; versions of the kernel and QEMU
#   e1000e.hwrr           (fileio run) the trace recorded through hwrr-recorder's Tap; its watch set
#                         must capture the RX frame the device writes straight into memory
#   e1000e-mmap.hwrr      (mmap run) the same with mmapped BARs
#   e1000e-record.hwrr    (record-cli run) written by `hwrr record --vfio BDF --listen SOCK --once`
#                         while the exercise drives the NIC through the socket; hwrr-record.log
#   check-*.log           the host-side check of each trace (check_e1000e_trace)
# Exit 0 iff every run and every trace check passed.
#
# Environment: OUT (default /tmp/vtdbox-record), WORK (vtdbox scratch, default /tmp/vtdbox),
# MODES ("fileio mmap record-cli"), TARGET (auto|musl|gnu), RECORD (1; 0 runs the exercise without the tap),
# BENCH (2000: STATUS and config reads timed on the bare backend per mode; 0 skips).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=${OUT:-/tmp/vtdbox-record}
export WORK=${WORK:-/tmp/vtdbox}
MODES=${MODES:-fileio mmap record-cli}
VTDBOX="$HERE/vtdbox.sh"
# shellcheck source=box-exec.sh
. "$HERE/box-exec.sh"

log() { echo "[vtdbox-record $(date +%H:%M:%S)] $*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.2f", b-a}'; }

mkdir -p "$OUT" "$WORK"
rm -f "$OUT"/*.hwrr "$OUT"/exercise-*.log
: > "$OUT/timings.txt"

# musl needs a musl C compiler too (zstd-sys, under the recorder's trace writer, is C); without one,
# glibc with +crt-static (static-pie) works as well in the guest.
tgt=x86_64-unknown-linux-gnu rf="-C target-feature=+crt-static"
if [ "${TARGET:-auto}" = musl ] || { [ "${TARGET:-auto}" = auto ] && \
     { command -v musl-gcc >/dev/null || command -v x86_64-linux-musl-gcc >/dev/null; } && \
     { rustup target list --installed 2>/dev/null | grep -q x86_64-unknown-linux-musl \
       || rustup target add x86_64-unknown-linux-musl >/dev/null 2>&1; }; }; then
  tgt=x86_64-unknown-linux-musl rf=""
fi
t=$(now)
record=${RECORD:-1}
# The host-side trace checker is built in the same run (same target and flags share every compiled
# dependency); a static binary runs on the host as well.
log "cargo build --example e1000e_exercise --example check_e1000e_trace --target $tgt"
(cd "$REPO" && RUSTFLAGS="$rf" cargo build -q --release -p hwrr-vfio-backend \
   --example e1000e_exercise --example check_e1000e_trace --target "$tgt")
hwrr_bin=""
case " $MODES " in *" record-cli "*)
  log "cargo build --bin hwrr --target $tgt"
  (cd "$REPO" && RUSTFLAGS="$rf" cargo build -q --release -p hwrr --bin hwrr --target "$tgt")
  hwrr_bin="$WORK/hwrr"
  objcopy --strip-debug "$REPO/target/$tgt/release/hwrr" "$hwrr_bin";;
esac
echo "build_s=$(since "$t") target=$tgt record=$record" >> "$OUT/timings.txt"
# Without debug info (the release profile keeps some): a smaller initramfs boots faster.
bin="$WORK/e1000e_exercise"
objcopy --strip-debug "$REPO/target/$tgt/release/examples/e1000e_exercise" "$bin"
if ldd "$bin" 2>&1 | grep -qv 'not a dynamic\|statically linked'; then
  log "error: $bin is not static"; ldd "$bin" >&2 || true; exit 1
fi

t=$(now)
bash "$VTDBOX" setup >/dev/null
echo "setup_s=$(since "$t")" >> "$OUT/timings.txt"

# The guest script: one run per mode, each logged to /host so the host keeps it.
script="$WORK/record-guest.sh"
cat > "$script" <<GUEST
#!/bin/sh
rc=0
for mode in $MODES; do
  if [ "\$mode" = record-cli ]; then
    echo "VTDBOX-RECORD run mode=\$mode bdf=\$VTDBOX_BDF uptime=\$(cut -d' ' -f1 /proc/uptime)"
    /bin/hwrr record --vfio "\$VTDBOX_BDF" --listen /tmp/hwrr.sock --once -o /host/e1000e-record.hwrr > /host/hwrr-record.log 2>&1 &
    pid=\$!
    i=0; while [ ! -S /tmp/hwrr.sock ] && [ \$i -lt 200 ]; do sleep 0.05; i=\$((i+1)); done
    /bin/e1000e_exercise --vfio-user /tmp/hwrr.sock > /host/exercise-\$mode.log 2>&1 || rc=1
    wait \$pid || { echo "hwrr record failed"; rc=1; }
    cat /host/exercise-\$mode.log /host/hwrr-record.log
    echo "VTDBOX-RECORD done mode=\$mode uptime=\$(cut -d' ' -f1 /proc/uptime)"
    continue
  fi
  flag=""; trace=/host/e1000e.hwrr
  [ "\$mode" = mmap ] && { flag="--mmap"; trace=/host/e1000e-mmap.hwrr; }
  [ $record = 1 ] && flag="\$flag --trace \$trace"
  echo "VTDBOX-RECORD run mode=\$mode bdf=\$VTDBOX_BDF uptime=\$(cut -d' ' -f1 /proc/uptime)"
  /bin/e1000e_exercise --bdf "\$VTDBOX_BDF" --bench ${BENCH:-2000} \$flag > /host/exercise-\$mode.log 2>&1 || rc=1
  cat /host/exercise-\$mode.log
  echo "VTDBOX-RECORD done mode=\$mode uptime=\$(cut -d' ' -f1 /proc/uptime)"
done
exit \$rc
GUEST
chmod +x "$script"

# no_timer_check: a loaded 2-core host can slow TCG enough for the kernel's IO-APIC timer check to
# panic at boot. A boot that still dies before /init (no "VTDBOX init" line) is retried, and said so.
export KERNEL_APPEND_EXTRA="${KERNEL_APPEND_EXTRA:-no_timer_check}"
rc=0
# shellcheck disable=SC2086
box_exec "$script" "$bin" $hwrr_bin || rc=$?
box_summary "$(ls "$WORK/kroot/lib/modules" | head -1)" VTDBOX-RECORD \
  '^(CHECK|OBS|WATCH|e1000e_exercise|OPEN|IOMMU|MMAPPED|BENCH)'
# shellcheck disable=SC2086
modes_passed $MODES || rc=1
if [ $record = 1 ]; then
  mac=$(sed -n 's/^OBS mac=\([0-9a-f:]*\).*/\1/p' "$OUT/exercise-fileio.log" 2>/dev/null | head -1)
  for f in "$OUT"/*.hwrr; do
    [ -e "$f" ] || { log "no trace came back"; rc=1; break; }
    name=$(basename "$f" .hwrr)
    t=$(now)
    "$REPO/target/$tgt/release/examples/check_e1000e_trace" "$f" ${mac:+--mac "$mac"} > "$OUT/check-$name.log" 2>&1 || { log "trace check $name failed"; rc=1; }
    echo "check_${name}_s=$(since "$t")" >> "$OUT/timings.txt"
    cat "$OUT/check-$name.log"
  done
fi
exit $rc
