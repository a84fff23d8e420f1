#!/usr/bin/env bash
# harness-trace-replay.sh - a trace hwrr did not make: capture one with the shared harness
# (`../shared/harness/vtdbox.sh trace e1000e`: Linux's e1000e driving QEMU 7.2's emulated e1000e
# behind VT-d, DHCP + pings + TCP, QEMU trace events), import it, check the import against counts
# made with grep, and replay it to the guest's unmodified e1000e through the LD_PRELOAD interposer.
#
# Checks:
#   - import of the harness's whole log, without --device, picks e1000e@00:02.0 and reads every line
#     (0 malformed); the device-filtered log gives the same events (timestamps shifted by one
#     constant: the two logs start at different lines);
#   - MSI-X `irq` events = the log's e1000e_irq_msix_notify_vec + e1000e_irq_msix_notify_postponed_vec
#     lines, register writes = e1000e_core_write lines + MSI-X table writes, counted with grep/awk;
#   - `hwrr verify` passes;
#   - replay (resync, link up): the guest's e1000e prints the recorded MAC and sees carrier;
#   - the replay QEMU's own vfio-pci trace log (QEMU's passthrough dialect) imports with 0 malformed
#     lines, holds exactly the BAR accesses the replay served, and replays the same way.
#
# Usage: harness-trace-replay.sh        (exit 77 = prerequisites missing: skip)
# Env:   WORK=/tmp/vtdbox (as for vtdbox.sh), OUT=$WORK/harness-trace, HARNESS=<repo>/../shared/harness,
#        HWRR=<repo>/target/release/hwrr, MB=2 PINGS=100 (capture workload),
#        QEMU_NEW=<a newer qemu-system-x86_64> (also replay under its vfio-pci through the interposer,
#        and with `hwrr replay` over vfio-user to its vfio-user-pci: QEMU >= 10.1, e.g. CI's 10.2 build)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
WORK=${WORK:-/tmp/vtdbox}
OUT=${OUT:-$WORK/harness-trace}
HARNESS=${HARNESS:-$REPO/../shared/harness}
HWRR=${HWRR:-$REPO/target/release/hwrr}
log() { echo "[harness-trace $(date +%H:%M:%S)] $*" >&2; }
skip() { echo "SKIP: $*" >&2; exit 77; }
die() { echo "FAIL: $*" >&2; exit 1; }

[ -x "$HARNESS/vtdbox.sh" ] || [ -f "$HARNESS/vtdbox.sh" ] || skip "no shared harness at $HARNESS"
[ -x "$HWRR" ] || skip "no hwrr binary at $HWRR (cargo build --release)"
command -v qemu-system-x86_64 >/dev/null || skip "qemu-system-x86_64 not installed"
mkdir -p "$OUT"
corpus=$OUT/corpus
name=e1000e-linux
dir=$corpus/$name
rm -rf "$dir"

log "capture: $HARNESS/vtdbox.sh trace e1000e (MB=${MB:-2} PINGS=${PINGS:-100})"
WORK="$WORK" CORPUS="$corpus" TRACE_NAME=$name MB=${MB:-2} PINGS=${PINGS:-100} ZSTD_LEVEL=3 KEEP_FULL=1 \
  bash "$HARNESS/vtdbox.sh" trace e1000e > "$OUT/capture.log" 2>&1 || {
  tail -20 "$OUT/capture.log" >&2
  die "the harness capture failed (log: $OUT/capture.log)"
}
# The raw log is hundreds of MB; the compressed copies in $dir are what the checks read.
rm -f "$WORK/trace-e1000e.log"

log "import: whole log without --device, and the device-filtered log"
"$HWRR" import qemu-trace "$dir/trace.full.log.zst" -o "$OUT/full.hwrr" > "$OUT/import-full.txt" 2>&1
"$HWRR" import qemu-trace "$dir/trace.device.log.zst" --device e1000e -o "$OUT/device.hwrr" > "$OUT/import-device.txt" 2>&1
cat "$OUT/import-full.txt" "$OUT/import-device.txt" >&2
grep -q '(emulated e1000e@00:02.0' "$OUT/import-full.txt" || die "import without --device did not pick e1000e@00:02.0"
for f in "$OUT/import-full.txt" "$OUT/import-device.txt"; do
  grep -q ' 0 malformed' "$f" || die "the import counted malformed lines: $f"
done
"$HWRR" verify "$OUT/full.hwrr" >&2 || die "hwrr verify failed"

# Independent counts, from the log text with grep/awk (docs/FORMAT.md section 9's mapping).
zstd -dc "$dir/trace.device.log.zst" > "$OUT/device.log"
msix_lines=$(grep -cE ':e1000e_irq_msix_notify(_postponed)?_vec ' "$OUT/device.log" || true)
core_writes=$(grep -c ':e1000e_core_write ' "$OUT/device.log" || true)
bar3=$(awk '/pci_update_mappings_add e1000e 00:02.0 3,/ { split($NF, a, ","); split(a[2], b, "+"); print b[1]; exit }' "$OUT/device.log")
[ -n "$bar3" ] || die "no BAR3 (MSI-X) mapping in the log"
table_writes=$(awk -v base="$bar3" '/memory_region_ops_write/ && /name .msix-table./ {
    for (i = 1; i <= NF; i++) if ($i == "addr") a = strtonum($(i + 1));
    if (a >= strtonum(base) && a < strtonum(base) + 0x4000) n++ } END { print n + 0 }' "$OUT/device.log")
rm -f "$OUT/device.log"
"$HWRR" dump --json "$OUT/full.hwrr" > "$OUT/full.jsonl"
"$HWRR" dump --json "$OUT/device.hwrr" > "$OUT/device.jsonl"
python3 - "$OUT/full.jsonl" "$OUT/device.jsonl" "$msix_lines" "$((core_writes + table_writes))" <<'PY' >&2 || die "count checks failed"
import json, sys
full = [json.loads(l) for l in open(sys.argv[1])]
dev = [json.loads(l) for l in open(sys.argv[2])]
msix, writes = int(sys.argv[3]), int(sys.argv[4])
got_msix = sum(1 for e in full if e["kind"] == "irq" and e["index"] == 2)
got_writes = sum(1 for e in full if e["kind"] == "mmio_write")
print(f"msix irq events {got_msix} (log lines {msix}), mmio writes {got_writes} (core writes + table writes {writes})")
assert got_msix == msix and msix > 0, "MSI-X interrupts differ from the log"
assert got_writes == writes, "register writes differ from the log"
assert len(full) == len(dev), f"whole log {len(full)} events, device log {len(dev)}"
shift = {f["t_ns"] - d["t_ns"] for f, d in zip(full, dev)}
assert len(shift) == 1, f"timestamps shift by more than one constant: {sorted(shift)[:4]}"
strip = lambda e: {k: v for k, v in e.items() if k != "t_ns"}
bad = next((i for i, (f, d) in enumerate(zip(full, dev)) if strip(f) != strip(d)), None)
assert bad is None, f"event {bad} differs: {full[bad]} vs {dev[bad]}"
print(f"whole and device logs agree on {len(full)} events")
PY
rm -f "$OUT/full.jsonl" "$OUT/device.jsonl"

log "replay to the guest's e1000e (resync, link up)"
trace=$OUT/full.hwrr
WORK="$WORK" OUT="$OUT/replay" TRACE="$trace" DRIVER=e1000e NIC_MAC=52:54:00:12:34:56 UP=1 \
  POLICY=resync MAX_SKIPS=1000000 REPLAY_TRACE=1 "$HERE/interposer-replay.sh" replay

# The replay QEMU's own vfio-pci trace log is QEMU's passthrough dialect, from real QEMU code: it
# must import whole, hold exactly the BAR accesses the replay served, and replay again.
log "import the replay QEMU's vfio-pci log (passthrough dialect) and replay it"
"$HWRR" import qemu-trace "$OUT/replay/replay-vfio-trace.log" -o "$OUT/passthrough.hwrr" \
  > "$OUT/import-passthrough.txt" 2>&1
cat "$OUT/import-passthrough.txt" >&2
grep -q '(passthrough 0000:00:19.0@00:19.0' "$OUT/import-passthrough.txt" || die "the vfio log's device is not 0000:00:19.0"
grep -q ' 0 malformed' "$OUT/import-passthrough.txt" || die "the vfio log import counted malformed lines"
"$HWRR" info --json "$OUT/passthrough.hwrr" > "$OUT/passthrough-info.json"
python3 - "$OUT/passthrough-info.json" "$OUT/replay/replay-report.json" <<'PY' >&2 || die "the vfio log disagrees with the replay report"
import json, sys
info, rep = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
k = info["by_kind"]
bar = k["mmio_read"] + k["mmio_write"] + k["pio_read"] + k["pio_write"]
served = rep["accesses"] + rep["msix_accesses"] + rep["rom_reads"]
print(f"vfio log BAR accesses {bar}; replay served {served} (accesses {rep['accesses']} + MSI-X table "
      f"{rep['msix_accesses']} + ROM {rep['rom_reads']}); resets {k['reset']}")
assert bar == served, "QEMU's vfio log and the replay engine count different BAR accesses"
assert k["reset"] >= 1, "QEMU's machine-reset VFIO_DEVICE_RESET is not in its log"
PY
trace=$OUT/passthrough.hwrr
WORK="$WORK" OUT="$OUT/replay-passthrough" TRACE="$trace" DRIVER=e1000e NIC_MAC=52:54:00:12:34:56 \
  UP=1 POLICY=resync MAX_SKIPS=1000000 "$HERE/interposer-replay.sh" replay
if [ -n "${QEMU_NEW:-}" ]; then
  # The same replay under a newer QEMU's vfio-pci (another real VFIO client of the interposer).
  log "replay under $("$QEMU_NEW" --version | head -1)"
  trace=$OUT/full.hwrr
  WORK="$WORK" OUT="$OUT/replay-newer-qemu" TRACE="$trace" DRIVER=e1000e NIC_MAC=52:54:00:12:34:56 \
    UP=1 POLICY=resync MAX_SKIPS=1000000 QEMU="$QEMU_NEW" "$HERE/interposer-replay.sh" replay
  # And served by `hwrr replay` over vfio-user to that QEMU's vfio-user-pci client.
  log "replay over vfio-user to $("$QEMU_NEW" --version | head -1)"
  WORK="$WORK" OUT="$OUT/replay-vfio-user" TRACE="$trace" DRIVER=e1000e NIC_MAC=52:54:00:12:34:56 \
    UP=1 POLICY=resync MAX_SKIPS=1000000 QEMU="$QEMU_NEW" TRANSPORT=vfio-user "$HERE/interposer-replay.sh" replay
fi
echo "PASS: a harness-captured e1000e trace imports exactly and replays to the guest's e1000e;" \
  "the replay's own QEMU vfio log imports and replays too"
