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
