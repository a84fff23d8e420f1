#!/usr/bin/env bash
# interposer-replay.sh - replay an e1000e trace inside Debian's unmodified QEMU 7.2 through the
# LD_PRELOAD VFIO interposer (libhwrr_vfio.so), with no /dev/vfio, no IOMMU and no root.
#
#   1. capture: boot the Debian kernel with QEMU's EMULATED e1000e (non-default MAC, emulated VT-d
#      as in vtdbox.sh) and a tiny initramfs whose /init loads e1000e and prints the MAC; QEMU
#      trace events log every device access; `hwrr import qemu-trace` turns the log into a trace.
#   2. replay: boot the same kernel and initramfs with `-device vfio-pci,host=0000:00:19.0,x-no-mmap=on`
#      under the shim in replay mode (no intel-iommu): the guest's e1000e driver probes the
#      replayed device. Checks: the console shows the recorded MAC; the JSON report's counts.
#
# Usage: interposer-replay.sh [all|capture|replay]      (exit 77 = prerequisites missing: skip)
# Env:   WORK=/tmp/vtdbox (kernel: vmlinux + kroot from `vtdbox.sh setup`), OUT=$WORK/interposer,
#        HWRR=<repo>/target/release/hwrr, LIB=<repo>/target/release/libhwrr_vfio.so,
#        NIC_MAC=52:54:00:ab:cd:ef, POLICY=resync, MAX_SKIPS=64, QEMU_TIMEOUT=120, TRACE=<use this trace>,
#        UP=1 (also bring the link up: rings, MSI-X, link interrupt; capture and replay must agree),
#        REPLAY_TRACE=1 (the replay QEMU logs its vfio_* trace events to $OUT/replay-vfio-trace.log),
#        TRANSPORT=vfio-user (serve the trace with `hwrr replay` over vfio-user to QEMU's vfio-user-pci
#        client instead of the interposer; QEMU must be >= 10.1),
#        DRIVER=e1000e (the guest module that probes the replay; `capture` records e1000e only, so
#        another driver needs TRACE, e.g. DRIVER=8139cp with the imported rtl8139 corpus log)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
WORK=${WORK:-/tmp/vtdbox}
OUT=${OUT:-$WORK/interposer}
HWRR=${HWRR:-$REPO/target/release/hwrr}
LIB=${LIB:-$REPO/target/release/libhwrr_vfio.so}
QEMU=${QEMU:-qemu-system-x86_64}
NIC_MAC=${NIC_MAC:-52:54:00:ab:cd:ef}
DRIVER=${DRIVER:-e1000e}
POLICY=${POLICY:-resync}
MAX_SKIPS=${MAX_SKIPS:-64}
QEMU_TIMEOUT=${QEMU_TIMEOUT:-120}
# The host address QEMU is told to open: the seed's NIC address, not the capture's 00:02.0, so the
# shim's BDF mapping is exercised (the guest-side address stays addr=0x2).
HOST_BDF=${HOST_BDF:-0000:00:19.0}
GUEST_ARGS="console=ttyS0 panic=-1 probe_up=${UP:-0}"
log() { echo "[interposer $(date +%H:%M:%S)] $*" >&2; }
skip() { echo "SKIP: $*" >&2; exit 77; }
die() { echo "FAIL: $*" >&2; exit 1; }

prereqs() {
  command -v "$QEMU" >/dev/null || skip "$QEMU not installed (vtdbox.sh setup installs Debian's 7.2)"
  # QEMU 7.2 (Debian's) is the reference; newer ones (10.2 is tested) work too. Older ones lack
  # vfio-pci's x-no-mmap or trace formats the checks read.
  local v
  v=$("$QEMU" --version | head -1 | sed -n 's/.*version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
  # shellcheck disable=SC2086
  [ -n "$v" ] && [ "$(printf '%d%03d' $v)" -ge 7002 ] || skip "$QEMU is older than QEMU 7.2: $("$QEMU" --version | head -1)"
  [ -s "$WORK/vmlinux" ] || skip "no guest kernel at $WORK/vmlinux (run WORK=$WORK tests/vm/vtdbox.sh setup)"
  ls -d "$WORK"/kroot/lib/modules/* >/dev/null 2>&1 || skip "no kernel modules under $WORK/kroot (vtdbox.sh setup)"
  [ -x /bin/busybox ] || skip "busybox-static not installed"
  [ -x "$HWRR" ] || skip "no hwrr binary at $HWRR (cargo build --release)"
  [ -f "$LIB" ] || skip "no interposer at $LIB (cargo build --release -p hwrr-interposer)"
  mkdir -p "$OUT"
}

# A busybox initramfs with $DRIVER whose /init probes the NIC, prints its MAC and powers off.
build_initrd() {
  local out=$OUT/probe-initrd.gz r kv M m p f
  kv=$(basename "$(ls -d "$WORK"/kroot/lib/modules/* | head -1)")
  M="$WORK/kroot/lib/modules/$kv"
  r=$(mktemp -d)
  mkdir -p "$r"/{bin,sbin,proc,sys,dev,tmp,lib/modules/$kv}
  cp /bin/busybox "$r/bin/busybox"
  for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$r/bin/$a"; done
  for m in $DRIVER; do
    p=$(grep -E "/${m}\.ko(\.xz|\.zst)?:" "$M/modules.dep") || die "module $m not in $M/modules.dep"
    for f in $(echo "$p" | tr -d ':'); do
      mkdir -p "$r/lib/modules/$kv/$(dirname "$f")"; cp -n "$M/$f" "$r/lib/modules/$kv/$f"
    done
  done
  cp "$M"/modules.order "$M"/modules.builtin "$M"/modules.builtin.modinfo "$r/lib/modules/$kv/" 2>/dev/null || true
  depmod -b "$r" "$kv"
  cat > "$r/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
echo "PROBE init"
modprobe @DRIVER@
i=0
while [ $i -lt 100 ] && ! ls /sys/class/net/ 2>/dev/null | grep -q '^eth'; do sleep 0.1; i=$((i+1)); done
for n in /sys/class/net/eth*; do
  [ -e "$n/address" ] && echo "PROBE-MAC $(basename $n) $(cat $n/address)"
done
ls /sys/class/net/ | grep -q '^eth' || echo "PROBE-MAC none"
if grep -q probe_up=1 /proc/cmdline && [ -e /sys/class/net/eth0 ]; then
  # Bring the link up: ring setup (DMA addresses), MSI-X vectors, the link-status interrupt.
  ip link set eth0 up
  i=0
  while [ $i -lt 50 ] && [ "$(cat /sys/class/net/eth0/carrier 2>/dev/null)" != 1 ]; do sleep 0.1; i=$((i+1)); done
  echo "PROBE-CARRIER $(cat /sys/class/net/eth0/carrier 2>/dev/null) operstate $(cat /sys/class/net/eth0/operstate)"
  grep -E 'eth0' /proc/interrupts | sed 's/^/PROBE-IRQ /'
  ip link set eth0 down
fi
echo "PROBE end"
poweroff -f
INIT
  sed -i "s/@DRIVER@/$DRIVER/" "$r/init"
  chmod 755 "$r/init"
  (cd "$r" && find . | cpio -o -H newc --quiet | gzip -1) > "$out"
  rm -rf "$r"
  echo "$out"
}

# -nodefaults: QEMU 10.2's default q35 devices (the AHCI CD-ROM) cost a TCG guest ~30 s of boot.
qemu_common() {
  echo -accel tcg -M q35 -cpu max -m 512 -smp 1 -kernel "$WORK/vmlinux" -initrd "$OUT/probe-initrd.gz" \
    -nodefaults -display none -vga none -monitor none -no-reboot -nic none
}

# REPLAY_TRACE=1: the replay QEMU logs its vfio-pci trace events (QEMU's passthrough dialect, what
# a user tracing a real passthrough device gets) to $OUT/replay-vfio-trace.log.
replay_trace_args() {
  [ "${REPLAY_TRACE:-0}" = 1 ] || return 0
  printf '%s\n' 'vfio_region_read' 'vfio_region_write' 'vfio_pci_read_config' 'vfio_pci_write_config' \
    'vfio_intx_interrupt' 'vfio_msi_interrupt' 'vfio_msix_vector_do_use' 'vfio_msix_enable' 'vfio_msi_enable' \
    'vfio_intx_enable' 'vfio_pci_reset' 'vfio_populate_device_config' 'vfio_region_setup' 'vfio_msix_early_setup' \
    'vfio_rom_read' 'vfio_pci_size_rom' > "$OUT/replay-vfio-events.txt"
  echo -msg timestamp=on -trace "events=$OUT/replay-vfio-events.txt" -D "$OUT/replay-vfio-trace.log"
}

capture() {
  [ "$DRIVER" = e1000e ] || die "capture records QEMU's e1000e only; give DRIVER=$DRIVER a TRACE"
  local ev=$OUT/events.txt raw=$OUT/capture-trace.log con=$OUT/capture-console.log
  printf '%s\n' 'e1000e_*' 'e1000x_*' pci_cfg_read pci_cfg_write msix_write_config pci_update_mappings_add \
    pci_update_mappings_del memory_region_ops_read memory_region_ops_write vtd_dmar_translate \
    vtd_ir_remap_msi ioapic_set_irq ioapic_eoi_broadcast > "$ev"
  log "capture: emulated e1000e mac=$NIC_MAC"
  # shellcheck disable=SC2046
  timeout "$QEMU_TIMEOUT" "$QEMU" $(qemu_common) -M q35,kernel-irqchip=split -device intel-iommu,intremap=on \
    -append "$GUEST_ARGS intel_iommu=on" -serial "file:$con" \
    -device "e1000e,netdev=n0,bus=pcie.0,addr=0x2,mac=$NIC_MAC" -netdev user,id=n0,restrict=on \
    -msg timestamp=on -trace "events=$ev" -D "$raw" || die "capture QEMU failed"
  grep -a "PROBE-MAC" "$con" >&2 || die "capture guest printed no MAC (see $con)"
  grep -aq "PROBE-MAC eth0 $NIC_MAC" "$con" || die "capture guest did not see $NIC_MAC"
  "$HWRR" import qemu-trace "$raw" --device e1000e -o "$OUT/e1000e-probe.hwrr" 2>&1 | grep -v 'malformed line' >&2 || true
  [ -s "$OUT/e1000e-probe.hwrr" ] || die "import failed"
  "$HWRR" info "$OUT/e1000e-probe.hwrr" >&2 || true
}

replay() {
  local trace=${TRACE:-$OUT/e1000e-probe.hwrr} con=$OUT/replay-console.log report=$OUT/replay-report.json shimlog=$OUT/shim.log
  [ -s "$trace" ] || die "no trace at $trace (run capture first)"
  rm -f "$con" "$report" "$shimlog"
  local rc=0
  if [ "${TRANSPORT:-interposer}" = vfio-user ]; then
    # The same guest and checks, the trace served by `hwrr replay` over vfio-user to QEMU's
    # vfio-user-pci client (QEMU >= 10.1; guest RAM in a shared memfd for the server's DMA).
    local sock=$OUT/replay.sock rp
    rm -f "$sock"
    log "replay: $trace via hwrr replay over vfio-user (policy $POLICY) to $("$QEMU" --version | head -1)"
    "$HWRR" replay "$trace" --listen "$sock" --once --policy "$POLICY" --report "$report" > "$shimlog" 2>&1 &
    rp=$!
    for _ in $(seq 1 100); do [ -S "$sock" ] && break; sleep 0.1; done
    [ -S "$sock" ] || { cat "$shimlog" >&2; die "hwrr replay did not listen on $sock"; }
    # shellcheck disable=SC2046
    timeout "$QEMU_TIMEOUT" "$QEMU" $(qemu_common) -append "$GUEST_ARGS" -serial "file:$con" \
      -object memory-backend-memfd,id=mem,size=512M,share=on -machine memory-backend=mem \
      -device "{\"driver\":\"vfio-user-pci\",\"id\":\"vu0\",\"socket\":{\"type\":\"unix\",\"path\":\"$sock\"}}" || rc=$?
    for _ in $(seq 1 100); do kill -0 "$rp" 2>/dev/null || break; sleep 0.1; done
    kill "$rp" 2>/dev/null || true
    wait "$rp" 2>/dev/null || true
    tail -1 "$shimlog" >&2
  else
    log "replay: $trace under $LIB (policy $POLICY), vfio-pci host=$HOST_BDF, no IOMMU"
    # shellcheck disable=SC2046
    LD_PRELOAD="$LIB" HWRR_MODE=replay HWRR_TRACE="$trace" HWRR_POLICY="$POLICY" HWRR_REPORT="$report" HWRR_LOG="$shimlog" \
      timeout "$QEMU_TIMEOUT" "$QEMU" $(qemu_common) -append "$GUEST_ARGS" -serial "file:$con" \
      -device "vfio-pci,host=$HOST_BDF,x-no-mmap=on,bus=pcie.0,addr=0x2" $(replay_trace_args) || rc=$?
  fi
  log "replay QEMU exit $rc"
  tr -d '\r' < "$con" | grep -aE "$DRIVER|PROBE|vfio" >&2 || true
  [ -s "$report" ] || die "no JSON report at $report (shim log: $shimlog)"
  python3 - "$report" "$MAX_SKIPS" "${UP:-0}" <<'PY' >&2 || die "report checks failed"
import json, sys
r = json.load(open(sys.argv[1])); c = r; max_skips = int(sys.argv[2])
print("report:", json.dumps({k: c[k] for k in ("accesses", "matched", "skipped", "inserted", "fallbacks", "config_reads", "config_writes", "irqs_delivered", "dma_writes_applied")}))
d = r.get("first_divergence")
if d: print("first divergence: seq", d.get("seq"), d.get("reason"), "guest:", json.dumps(d.get("actual")))
assert c["accesses"] > 100, "the guest driver made almost no register accesses"
assert c["matched"] > 100, "almost nothing matched the trace"
assert c["skipped"] <= max_skips, f"skipped {c['skipped']} > {max_skips}"
assert c["config_reads"] > 0, "QEMU never read config space through the shim"
# QEMU's vfio-pci resets the device (VFIO_DEVICE_RESET) at machine reset, before the guest runs;
# an emulated capture saw no such reset and the shim absorbs it as a power-on reset, while a
# passthrough capture (QEMU's vfio_pci_reset) has it in the trace to match.
assert r.get("power_on_resets", 0) + r.get("resets_matched", 0) >= 1, \
    "QEMU's machine-reset VFIO_DEVICE_RESET was not seen"
if r["policy"] == "strict": assert not d, "strict replay diverged"
if len(sys.argv) > 3 and sys.argv[3] == "1":
    assert c["irqs_delivered"] > 0, "link up: no recorded interrupt was delivered"
print("matched %.1f%% of %d accesses" % (100.0 * c["matched"] / c["accesses"], c["accesses"]))
PY
  grep -aq "PROBE-MAC eth0 $NIC_MAC" "$con" || die "the guest did not report the recorded MAC $NIC_MAC"
  if [ "${UP:-0}" = 1 ]; then grep -aq "PROBE-CARRIER 1" "$con" || die "link up: the guest saw no carrier"; fi
  echo "PASS: guest $DRIVER driver probed the replayed device and reports $NIC_MAC"
}

prereqs
build_initrd >/dev/null
case "${1:-all}" in
  capture) capture ;;
  replay) replay ;;
  all) [ -n "${TRACE:-}" ] || capture; replay ;;
  *) die "usage: $0 [all|capture|replay]" ;;
esac
