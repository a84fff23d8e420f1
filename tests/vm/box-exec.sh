# box-exec.sh - sourced by the VT-d box scripts (vtdbox-record.sh, vtdbox-reset.sh,
# vtdbox-iommufd.sh); not run on its own.
#
# box_exec SCRIPT [FILES...] runs SCRIPT in the VT-d box (`vtdbox.sh exec`) with $OUT shared as
# /host, the console in $OUT/console.log and vtdbox.sh's stderr in $OUT/vtdbox.stderr. A loaded
# 2-core host can slow TCG enough for a boot to die before /init (no "VTDBOX init" line): such a
# boot is retried, up to three attempts, and each failed one is logged and kept as
# $OUT/failed-boot-N.log. Appends vm_total_s and the boot-to-init line to $OUT/timings.txt.
# Returns the last attempt's exit code. Expects VTDBOX, OUT and WORK set, and the caller's log,
# now and since functions; extra environment for vtdbox.sh (e.g. VTDBOX_BIND=native) goes before
# the call.
box_exec() {
  local t attempt rc=0
  t=$(now)
  for attempt in 1 2 3; do
    rc=0
    VTDBOX_SHARE="$OUT" bash "$VTDBOX" exec "$@" > "$OUT/console.log" 2> "$OUT/vtdbox.stderr" || rc=$?
    grep -aq '^VTDBOX init' "$WORK/exec-console.log" && break
    log "guest died before /init (attempt $attempt): $(grep -a -m1 'Kernel panic' "$WORK/exec-console.log" || echo 'no panic line')"
    echo "boot_failed_attempt=$attempt" >> "$OUT/timings.txt"
    cp "$WORK/exec-console.log" "$OUT/failed-boot-$attempt.log"
  done
  echo "vm_total_s=$(since "$t")" >> "$OUT/timings.txt"
  grep -a 'boot-to-init' "$OUT/vtdbox.stderr" | sed 's/^.*guest exit/guest exit/' >> "$OUT/timings.txt" || true
  return "$rc"
}

# box_summary KERNEL TAG PATTERN appends the guest kernel, the QEMU version and the console's TAG
# lines to $OUT/timings.txt, prints the console lines matching PATTERN (an extended regex) and the
# timings.
box_summary() {
  {
    echo "kernel=$1"
    echo "qemu=$(qemu-system-x86_64 --version | head -1)"
    grep -a "^$2" "$OUT/console.log" | tr -d '\r'
  } >> "$OUT/timings.txt"
  grep -aE "$3" "$OUT/console.log" | tr -d '\r' || true
  cat "$OUT/timings.txt"
}

# modes_passed MODE... returns 1 (logging each) when an exercise mode's log, $OUT/exercise-MODE.log,
# does not report " 0 failed".
modes_passed() {
  local mode ok=0
  for mode in "$@"; do
    grep -q ' 0 failed' "$OUT/exercise-$mode.log" 2>/dev/null || { log "mode $mode failed"; ok=1; }
  done
  return "$ok"
}
