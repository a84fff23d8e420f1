#!/usr/bin/env bash
# vtdbox-record.sh - run the e1000e exercise through hwrr's kernel VFIO backend in the VT-d box.
#
# Builds vfio-backend/examples/e1000e_exercise.rs statically (musl when rustup has or gets the
# target, else glibc +crt-static), boots the box (tests/vm/vtdbox.sh exec: q35 + intel-iommu, the
# e1000e at 00:02.0 bound to vfio-pci), runs the exercise in the guest (once with pread/pwrite
# BAR access, once with --mmap), and keeps everything under $OUT:
#   exercise-<mode>.log   the exercise's OBS/CHECK/WATCH lines from the guest console
#   console.log           the whole guest console
#   timings.txt           build, boot and run times; versions of the kernel and QEMU
#   *.hwrr                traces written by the guest into /host (when the exercise records)
# Exit 0 iff both runs passed every check.
#
# Environment: OUT (default /tmp/vtdbox-record), WORK (vtdbox scratch, default /tmp/vtdbox),
# MODES ("fileio mmap"), TARGET (auto|musl|gnu).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=${OUT:-/tmp/vtdbox-record}
export WORK=${WORK:-/tmp/vtdbox}
MODES=${MODES:-fileio mmap}
VTDBOX="$HERE/vtdbox.sh"

log() { echo "[vtdbox-record $(date +%H:%M:%S)] $*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.2f", b-a}'; }

mkdir -p "$OUT"
rm -f "$OUT"/*.hwrr "$OUT"/exercise-*.log
: > "$OUT/timings.txt"

tgt=x86_64-unknown-linux-gnu rf="-C target-feature=+crt-static"
if [ "${TARGET:-auto}" = musl ] || { [ "${TARGET:-auto}" = auto ] && \
     { rustup target list --installed 2>/dev/null | grep -q x86_64-unknown-linux-musl \
       || rustup target add x86_64-unknown-linux-musl >/dev/null 2>&1; }; }; then
  tgt=x86_64-unknown-linux-musl rf=""
fi
t=$(now)
log "cargo build --example e1000e_exercise --target $tgt"
(cd "$REPO" && RUSTFLAGS="$rf" cargo build -q --release -p hwrr-vfio-backend \
   --example e1000e_exercise --target "$tgt")
bin="$REPO/target/$tgt/release/examples/e1000e_exercise"
echo "build_s=$(since "$t") target=$tgt" >> "$OUT/timings.txt"
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
  flag=""; [ "\$mode" = mmap ] && flag="--mmap"
  echo "VTDBOX-RECORD run mode=\$mode bdf=\$VTDBOX_BDF uptime=\$(cut -d' ' -f1 /proc/uptime)"
  /bin/e1000e_exercise --bdf "\$VTDBOX_BDF" \$flag > /host/exercise-\$mode.log 2>&1 || rc=1
  cat /host/exercise-\$mode.log
  echo "VTDBOX-RECORD done mode=\$mode uptime=\$(cut -d' ' -f1 /proc/uptime)"
done
exit \$rc
GUEST
chmod +x "$script"

t=$(now)
rc=0
VTDBOX_SHARE="$OUT" bash "$VTDBOX" exec "$script" "$bin" > "$OUT/console.log" 2>"$OUT/vtdbox.stderr" || rc=$?
echo "vm_total_s=$(since "$t")" >> "$OUT/timings.txt"
grep -a 'boot-to-init' "$OUT/vtdbox.stderr" | sed 's/^.*guest exit/guest exit/' >> "$OUT/timings.txt" || true
{
  echo "kernel=$(ls "$WORK/kroot/lib/modules" | head -1)"
  echo "qemu=$(qemu-system-x86_64 --version | head -1)"
  grep -a '^VTDBOX-RECORD' "$OUT/console.log" | tr -d '\r'
} >> "$OUT/timings.txt"
grep -aE '^(CHECK|OBS|WATCH|e1000e_exercise|OPEN|IOMMU|MMAPPED)' "$OUT/console.log" | tr -d '\r' || true
cat "$OUT/timings.txt"
for mode in $MODES; do
  grep -q '0 failed' "$OUT/exercise-$mode.log" 2>/dev/null || { log "mode $mode failed"; rc=1; }
done
exit $rc
