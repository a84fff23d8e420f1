#!/usr/bin/env bash
# interposer-record.sh - record mode of libhwrr_vfio.so against REAL kernel VFIO, inside the VT-d box:
# a dynamically linked vfio-probe (the harness's VFIO exerciser, built without crt-static) runs in the
# guest under LD_PRELOAD=libhwrr_vfio.so HWRR_MODE=record with the e1000e bound to vfio-pci; ld.so
# and every library the two need (ldd) are copied into the initramfs. The trace lands in $OUT via
# virtio-9p.
#
# Usage: interposer-record.sh      (exit 77 = prerequisites missing: skip)
# Env:   WORK=/tmp/vtdbox OUT=$WORK/interposer-record HWRR=<repo>/target/release/hwrr
#        LIB=<repo>/target/release/libhwrr_vfio.so
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
WORK=${WORK:-/tmp/vtdbox}
OUT=${OUT:-$WORK/interposer-record}
HWRR=${HWRR:-$REPO/target/release/hwrr}
LIB=${LIB:-$REPO/target/release/libhwrr_vfio.so}
skip() { echo "SKIP: $*" >&2; exit 77; }
die() { echo "FAIL: $*" >&2; exit 1; }
[ -s "$WORK/vmlinux" ] || skip "no guest kernel in $WORK (vtdbox.sh setup)"
[ -f "$LIB" ] || skip "no $LIB"
[ -x "$HWRR" ] || skip "no $HWRR"
mkdir -p "$OUT"; rm -f "$OUT"/rec.hwrr "$OUT"/shim.log
# vfio-probe without crt-static: a dynamic executable honours LD_PRELOAD.
(cd "$HERE/vfio-probe" && CARGO_TARGET_DIR="$WORK/target-dyn" cargo build --release --locked 2>&1 | tail -1 >&2)
probe="$WORK/target-dyn/release/vfio-probe"
stage=$(mktemp -d)
cp "$probe" "$stage/vfio-probe-dyn"
cp "$LIB" "$stage/libhwrr_vfio.so"
# Every shared library the probe and the shim need (ld.so, libc, libgcc_s, libm, ...), as ldd
# resolves them on this host; the guest script puts them where the box's ld.so looks.
libs=$({ ldd "$probe"; ldd "$LIB"; } | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\/.*ld-linux/ {print $1}' | sort -u)
[ -n "$libs" ] || die "ldd found no libraries for $probe and $LIB"
: > "$stage/libs.txt"
for l in $libs; do
  cp -L "$l" "$stage/$(basename "$l")"
  basename "$l" >> "$stage/libs.txt"
done
cat > "$stage/record.sh" <<'SH'
#!/bin/sh
mkdir -p /lib64 /lib/x86_64-linux-gnu
for l in $(cat /bin/libs.txt); do
  case "$l" in
    ld-linux*) cp "/bin/$l" /lib64/ ;;
    *) cp "/bin/$l" /lib/x86_64-linux-gnu/ ;;
  esac
done
LD_PRELOAD=/bin/libhwrr_vfio.so HWRR_MODE=record HWRR_TRACE=/host/rec.hwrr HWRR_LOG=/host/shim.log \
  /bin/vfio-probe-dyn "$VTDBOX_SYSFS" all
rc=$?
echo "RECORD probe rc=$rc"
sync
exit $rc
SH
chmod +x "$stage/record.sh"
rc=0
# shellcheck disable=SC2046
VTDBOX_SHARE="$OUT" WORK="$WORK" bash "$HERE/vtdbox.sh" exec "$stage/record.sh" \
  "$stage/vfio-probe-dyn" "$stage/libhwrr_vfio.so" "$stage/libs.txt" $(sed "s|^|$stage/|" "$stage/libs.txt") \
  > "$OUT/console.txt" 2>&1 || rc=$?
rm -rf "$stage"
grep -aE '^(STEP|CHECK|RECORD)' "$OUT/console.txt" >&2 || true
[ -s "$OUT/rec.hwrr" ] || die "no trace written (probe rc=$rc; see $OUT/console.txt, $OUT/shim.log)"
"$HWRR" info "$OUT/rec.hwrr" >&2
info=$("$HWRR" info "$OUT/rec.hwrr")
# dma_write: the watch set reads the probe's DMA buffer in place (the descriptor write-backs and
# the received frame).
for k in config_read mmio_read mmio_write irq irq_setup dma_map dma_write; do
  echo "$info" | grep -qE "^ +$k " || die "the trace has no $k events"
done
grep -aqE '^(STEP|CHECK) [^ ]+ FAIL' "$OUT/console.txt" && die "vfio-probe failed a step under the shim"
[ "$rc" = 0 ] || die "vfio-probe exited $rc under the shim"
echo "PASS: record mode wrote $OUT/rec.hwrr (probe rc=$rc)"

# Round trip: the same program, on this host (no VFIO, no IOMMU), under the shim in replay mode.
# The steps below must pass, the ones that need the device's DMA (descriptor write-backs, the
# received frame) included: the replay writes what the watch set captured.
LD_PRELOAD="$LIB" HWRR_MODE=replay HWRR_TRACE="$OUT/rec.hwrr" HWRR_REPORT="$OUT/replay-report.json" \
  timeout 120 "$probe" /sys/bus/pci/devices/0000:00:02.0 msi > "$OUT/replay.txt" 2>&1 || true
grep -aE '^STEP' "$OUT/replay.txt" >&2 || true
python3 - "$OUT/replay-report.json" <<'PY' >&2 || die "round-trip replay checks failed"
import json, sys
r = json.load(open(sys.argv[1]))
print("round trip:", {k: r[k] for k in ("accesses", "matched", "skipped", "inserted", "irqs_delivered", "diverged")})
assert r["accesses"] > 0 and r["matched"] == r["accesses"], "not every access matched"
assert r["irqs_delivered"] > 0, "no recorded interrupt was delivered"
assert not r["diverged"], r.get("first_divergence")
PY
# (irq_msi_rx is not among them: whether an interrupt is still pending when the probe looks depends
# on how the record run's interrupts fell between its reads; the probe reports it as INFO.)
for step in config_id bar0_mac vfio_dma_map set_irqs_msi tx_descriptor_writeback irq_msi_tx \
  rx_descriptor_writeback; do
  grep -aq "^STEP $step OK" "$OUT/replay.txt" || die "round trip: step $step did not pass under replay"
done
echo "PASS: round trip (record in the VT-d box, replay on the host) matched"
