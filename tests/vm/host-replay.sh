#!/usr/bin/env bash
# host-replay.sh - replay the VT-d box's e1000e trace on the host, with no device (issue 6, item 3).
#
#   tests/vm/host-replay.sh [TRACE]      # TRACE defaults to /tmp/vtdbox-record/e1000e.hwrr
#
# TRACE is the trace tests/vm/vtdbox-record.sh writes in the box's fileio run (`e1000e.hwrr`: the
# exercise through hwrr-recorder's Tap, with the received frame logged as dma_write). BOX_LOG is that
# run's exercise log (default: exercise-fileio.log next to TRACE).
#
# 1. `hwrr replay TRACE --listen S --once --check --report R.json` serves the trace; the exercise
#    (vfio-backend/examples/e1000e_exercise.rs) runs as its vfio-user client with `--iova` another
#    base than the capture's (its RX ring and buffers zeroed). Its OBS lines (identity, MAC, STATUS
#    and link, TX and RX write-backs, the received frame's bytes, interrupts after RX), its WATCH
#    lines (what the device wrote, as offsets from the DMA base) and its driver CHECKs (interrupt
#    counts included) must equal the box run's; `--check` must pass, the report must show the DMA
#    writes applied (or withheld as unconfirmed: a sweep can log the guest's own frame) and the
#    relocation learned.
# 2. The same with `--change-write` (one register write differs from the capture): `--check` must
#    exit 1 and the report's first_divergence must name that access: the trace's seq of it (checked
#    with `hwrr dump`), the recorded value as expected, the changed value as actual.
#
# CHECK dma_map_into_msi_window_refused is compared like every other check: the kernel refused
# that mapping at capture (the trace holds the failed dma_map, errno 22) and the replay refuses the
# same mapping with the same errno.
#
# Artefacts in $OUT (default /tmp/host-replay): replay-<run>.log, exercise-<run>.log,
# report-<run>.json, box.obs, host-same.obs, obs.diff, timings.txt (build and run times, versions).
# Environment: OUT, BOX_LOG, IOVA (replay DMA base; default: capture base + 0x30000000), HWRR_BIN
# and EXERCISE_BIN (prebuilt binaries; otherwise both are built with cargo in PROFILE, default
# release, as `cargo test --workspace --release` in .ci/run builds them).
# Exit 0 on a pass, 1 on a failure, 77 when the trace (or the box log) is missing.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
TRACE=${1:-${HWRR_E1000E_TRACE:-/tmp/vtdbox-record/e1000e.hwrr}}
BOX_LOG=${BOX_LOG:-$(dirname "$TRACE")/exercise-fileio.log}
OUT=${OUT:-/tmp/host-replay}

log() { echo "[host-replay $(date +%H:%M:%S)] $*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.2f", b-a}'; }
fail=0
verdict() {  # verdict NAME OK|FAIL DETAIL
  echo "HOSTREPLAY $1 $2 $3"
  [ "$2" = OK ] || fail=1
}

for f in "$TRACE" "$BOX_LOG"; do
  [ -f "$f" ] || { log "missing $f (run tests/vm/vtdbox-record.sh first)"; exit 77; }
done
command -v jq >/dev/null || { log "jq is needed to read the replay report"; exit 77; }
mkdir -p "$OUT"
rm -f "$OUT"/*.log "$OUT"/*.json "$OUT"/*.obs "$OUT"/obs.diff "$OUT"/s-*
: > "$OUT/timings.txt"

t=$(now)
PROFILE=${PROFILE:-release}
if [ -z "${HWRR_BIN:-}" ] || [ -z "${EXERCISE_BIN:-}" ]; then
  cargo_profile=$([ "$PROFILE" = debug ] && echo dev || echo "$PROFILE")
  log "cargo build --profile $cargo_profile -p hwrr --bin hwrr; -p hwrr-vfio-backend --example e1000e_exercise"
  (cd "$REPO" && cargo build -q --profile "$cargo_profile" -p hwrr --bin hwrr && \
     cargo build -q --profile "$cargo_profile" -p hwrr-vfio-backend --example e1000e_exercise)
fi
HWRR_BIN=${HWRR_BIN:-$REPO/target/$PROFILE/hwrr}
EXERCISE_BIN=${EXERCISE_BIN:-$REPO/target/$PROFILE/examples/e1000e_exercise}
echo "build_s=$(since "$t")" >> "$OUT/timings.txt"
{
  echo "trace=$TRACE"
  echo "box_log=$BOX_LOG"
  echo "hwrr=$("$HWRR_BIN" --version 2>/dev/null || echo "$HWRR_BIN")"
  echo "host_kernel=$(uname -r)"
  grep -a '^HEADER' "$(dirname "$TRACE")/check-$(basename "$TRACE" .hwrr).log" 2>/dev/null || true
} >> "$OUT/timings.txt"

capture_base=$(sed -n 's/^DMA map iova=\(0x[0-9a-f]*\).*/\1/p' "$BOX_LOG" | head -1)
[ -n "$capture_base" ] || { log "no 'DMA map iova=' line in $BOX_LOG (an older exercise?)"; exit 1; }
IOVA=${IOVA:-$(printf '%#x' $((capture_base + 0x30000000)))}
if [ $((IOVA)) = $((capture_base)) ]; then
  log "IOVA $IOVA is the capture's base: the test would not prove relocation"; exit 1
fi

# One replay session and one exercise run against it: run NAME [exercise flags].
run() {
  local name=$1; shift
  local sock="$OUT/s-$name" t rc_replay=0 rc_ex=0
  t=$(now)
  timeout 300 "$HWRR_BIN" replay "$TRACE" --listen "$sock" --once --check \
    --report "$OUT/report-$name.json" > "$OUT/replay-$name.log" 2>&1 &
  local pid=$!
  local i=0
  while [ ! -S "$sock" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
  timeout 300 "$EXERCISE_BIN" --vfio-user "$sock" --iova "$IOVA" "$@" \
    > "$OUT/exercise-$name.log" 2>&1 || rc_ex=$?
  wait "$pid" || rc_replay=$?
  echo "run_${name}_s=$(since "$t") replay_rc=$rc_replay exercise_rc=$rc_ex" >> "$OUT/timings.txt"
  echo "$rc_replay"
}

# What a replay must reproduce: OBS and WATCH lines as printed, CHECK lines as name and verdict
# (their details hold timings), except the refused map (see above).
observations() {
  tr -d '\r' < "$1" | awk '
    /^(OBS|WATCH) / { print; next }
    /^CHECK / { print $1, $2, $3 }'
  # Interrupt counts are observations too: "eventfd count=N".
  tr -d '\r' < "$1" | sed -n 's/^CHECK \(msix_irq\|intx_irq_[0-9]\) \(OK\|FAIL\) \(eventfd count=[0-9]*\).*/IRQ \1 \3/p'
}

log "replay $TRACE at IOVA $IOVA (capture: $capture_base)"
rc=$(run same)
observations "$BOX_LOG" > "$OUT/box.obs"
observations "$OUT/exercise-same.log" > "$OUT/host-same.obs"
if diff -u "$OUT/box.obs" "$OUT/host-same.obs" > "$OUT/obs.diff"; then
  verdict observations-identical OK "$(wc -l < "$OUT/box.obs") lines (OBS, WATCH, CHECK, IRQ)"
else
  verdict observations-identical FAIL "see $OUT/obs.diff"; cat "$OUT/obs.diff"
fi
for key in mac= status= rx_frame= ; do
  grep -q "^OBS $key" "$OUT/box.obs" || verdict "box-has-$key" FAIL "the box log has no OBS $key"
done
grep -q '^OBS rx_frame=.\{84\}' "$OUT/box.obs" || verdict box-has-frame FAIL "no received frame in the box log"
grep -q '^IRQ msix_irq eventfd count=[1-9]' "$OUT/box.obs" || verdict box-has-msix FAIL "no MSI-X interrupt in the box log"
verdict check-passes "$([ "$rc" = 0 ] && echo OK || echo FAIL)" "hwrr replay --check exit $rc"
r="$OUT/report-same.json"
if [ -s "$r" ]; then
  verdict report-no-divergence "$(jq -e '.diverged == false and .first_divergence == null' "$r" >/dev/null && echo OK || echo FAIL)" \
    "diverged=$(jq -c .diverged "$r")"
  # Every recorded write lands, except one the replayer withholds as unconfirmed: a watch-set
  # sweep that runs between the exercise writing the frame it is about to send and its next
  # register write logs that guest write as the device's (docs/RECORDING.md, limits), and the
  # replayer must keep it out of memory the guest never gave the device.
  verdict report-dma-writes-applied "$(jq -e '.dma_writes_applied >= 1 and .dma_writes_not_applied == .dma_writes_unconfirmed and .dma_writes_partial == 0 and .dma_write_faults == 0' "$r" >/dev/null && echo OK || echo FAIL)" \
    "applied=$(jq -c .dma_writes_applied "$r") not_applied=$(jq -c .dma_writes_not_applied "$r") unconfirmed=$(jq -c .dma_writes_unconfirmed "$r") partial=$(jq -c .dma_writes_partial "$r")"
  verdict report-relocated "$(jq -e --argjson c "$((capture_base))" --argjson h "$((IOVA))" \
    '[.relocations[] | select(.recorded == $c and .replay == $h)] | length == 1' "$r" >/dev/null && echo OK || echo FAIL)" \
    "relocations=$(jq -c .relocations "$r")"
else
  verdict report-written FAIL "no $r"
fi

log "replay with --change-write"
rc=$(run changed --change-write)
verdict changed-check-fails "$([ "$rc" = 1 ] && echo OK || echo FAIL)" "hwrr replay --check exit $rc (want 1)"
changed=$(sed -n 's/^CHANGED write \([A-Z0-9]*\) offset=\(0x[0-9a-f]*\) value=\(0x[0-9a-f]*\) instead of \(0x[0-9a-f]*\)$/\2 \3 \4/p' "$OUT/exercise-changed.log")
r="$OUT/report-changed.json"
if [ -n "$changed" ] && [ -s "$r" ]; then
  read -r off val was <<< "$changed"
  seq=$(jq -r '.first_divergence.seq' "$r")
  verdict changed-divergence-names-the-access "$(jq -e --argjson o "$((off))" --argjson v "$((val))" --argjson w "$((was))" '
      .first_divergence as $d
      | $d.expected.kind == "mmio_write" and $d.expected.offset == $o and $d.expected.value == $w
        and $d.actual.kind == "mmio_write" and $d.actual.offset == $o and $d.actual.value == $v
        and $d.expected.seq == $d.seq' "$r" >/dev/null && echo OK || echo FAIL)" \
    "seq=$seq expected=$(jq -c .first_divergence.expected "$r") actual=$(jq -c .first_divergence.actual "$r")"
  # The seq is the trace's: `hwrr dump` shows the recorded write there.
  dumped=$("$HWRR_BIN" dump "$TRACE" --from "$seq" --count 1 --json 2>/dev/null | head -1)
  verdict changed-seq-is-the-traces "$(jq -e --argjson o "$((off))" --argjson w "$((was))" \
      '.kind == "mmio_write" and .offset == $o and .value == $w' <<< "${dumped:-null}" >/dev/null && echo OK || echo FAIL)" \
    "hwrr dump --from $seq: $dumped"
else
  verdict changed-report FAIL "no CHANGED line in exercise-changed.log or no $r"
fi

cat "$OUT/timings.txt"
echo "HOSTREPLAY done fail=$fail artefacts=$OUT"
exit $fail
