#!/usr/bin/env bash
# vtdbox-iommufd.sh - the e1000e exercise through hwrr's kernel VFIO backend on the iommufd / VFIO
# cdev path (`hwrr-vfio-backend --features iommufd`, `e1000e_exercise --iommufd`), in the VT-d box
# booted with a newer Debian kernel than the box's default 6.1 (which has neither iommufd nor the
# VFIO device cdev).
#
# 1. Resolves linux-image-amd64 in KERNEL_APT_SOURCES (private apt lists under $WORK/apt; the
#    machine's apt sources are not touched) to the kernel packages (linux-image-*, or the
#    linux-binary-* + linux-modules-* pair newer Debian kernels are split into), and has
#    `vtdbox.sh setup` download and unpack them into a WORK of their own (the default box in
#    /tmp/vtdbox is left alone).
#    No Debian amd64 kernel enables CONFIG_IOMMUFD (checked: bookworm-backports 6.12, trixie 6.12,
#    sid 7.2, trixie-backports 7.3, every flavour). So, unless IOMMUFD_BUILD=0, the script builds
#    iommufd.ko and the VFIO modules with CONFIG_IOMMUFD=m and CONFIG_VFIO_DEVICE_CDEV=y from the
#    same kernel's Debian source (linux-source-X.Y, linux-headers-KVER and its kbuild, same apt
#    source, same gcc), as external modules against the stock kernel, and puts them into the box
#    in place of the stock VFIO modules (they are unsigned: the kernel is tainted, nothing else).
#    Exit 77 when the kernel or its source cannot be had, or the host gcc is not the kernel's.
# 2. Builds e1000e_exercise (with --features iommufd) and check_e1000e_trace statically.
# 3. Boots the box (NIC at 00:02.0 bound to vfio-pci) and runs the exercise:
#      iommufd       cdev + iommufd, pread/pwrite BAR access, through the recorder's tap
#                    (writes e1000e-iommufd.hwrr)
#      iommufd-mmap  cdev + iommufd, mmapped BARs
#      group         the container/group path on the same kernel, for comparison
#      record-cli    (opt-in: MODES="... record-cli") `hwrr record --vfio BDF --iommufd` built with
#                    --features iommufd, driven by the exercise as a vfio-user client
#                    (writes e1000e-record-iommufd.hwrr)
#    and compares the OBS lines (what a replay must reproduce) of the cdev runs with the group run's.
# 4. Checks the trace on the host (check_e1000e_trace: identity, MAC, the RX frame as a dma_write,
#    interrupts).
# Exit 0 iff every run, the OBS comparison and the trace check passed.
#
# Environment: OUT (/tmp/vtdbox-iommufd-out), WORK (/tmp/vtdbox-iommufd: the newer kernel's box),
# KERNEL_APT_SOURCES ("deb http://deb.debian.org/debian bookworm-backports main": 6.12, built with
# bookworm's gcc-12), KERNEL_PKG (skip the resolution: the packages to fetch), IOMMUFD_BUILD (1),
# MODES ("iommufd iommufd-mmap group"), BENCH (2000 STATUS/config reads per run; 0 skips).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=${OUT:-/tmp/vtdbox-iommufd-out}
export WORK=${WORK:-/tmp/vtdbox-iommufd}
export KERNEL_APT_SOURCES=${KERNEL_APT_SOURCES:-deb http://deb.debian.org/debian bookworm-backports main}
MODES=${MODES:-iommufd iommufd-mmap group}
VTDBOX="$HERE/vtdbox.sh"
# shellcheck source=box-exec.sh
. "$HERE/box-exec.sh"

log() { echo "[vtdbox-iommufd $(date +%H:%M:%S)] $*" >&2; }
skip() { log "SKIP: $*"; exit 77; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.2f", b-a}'; }

mkdir -p "$OUT" "$WORK/debs"
rm -f "$OUT"/*.hwrr "$OUT"/exercise-*.log "$OUT"/obs-*.txt
: > "$OUT/timings.txt"

# ---- 1. the kernel
t=$(now)
if [ ! -d "$WORK/kroot/boot" ] && [ -z "${KERNEL_PKG:-}" ]; then
  mkdir -p "$WORK/apt/lists/partial"
  echo "$KERNEL_APT_SOURCES" > "$WORK/apt/sources.list"
  apt_opts=(-o "Dir::Etc::sourcelist=$WORK/apt/sources.list" -o Dir::Etc::sourceparts=/nonexistent
            -o "Dir::State::Lists=$WORK/apt/lists")
  apt-get "${apt_opts[@]}" update -qq >&2 || skip "apt-get update of '$KERNEL_APT_SOURCES' failed"
  image=$(apt-cache "${apt_opts[@]}" depends linux-image-amd64 2>/dev/null \
          | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  [ -n "$image" ] || skip "no linux-image-amd64 in '$KERNEL_APT_SOURCES'"
  # Debian's 7.x kernels: linux-image-V is a small package depending on linux-binary-V (vmlinuz)
  # and linux-modules-V (the modules).
  split=$(apt-cache "${apt_opts[@]}" depends "$image" 2>/dev/null \
          | awk '/Depends: linux-(binary|modules)-[0-9]/{print $2}' | sort -u | tr '\n' ' ')
  KERNEL_PKG=${split:-$image}
fi
export KERNEL_PKG=${KERNEL_PKG:-"(cached in $WORK/kroot)"}
log "kernel packages: $KERNEL_PKG (WORK=$WORK)"
bash "$VTDBOX" setup >/dev/null 2>"$OUT/setup.log" || { cat "$OUT/setup.log" >&2; skip "vtdbox.sh setup could not get the kernel"; }
kv=$(ls "$WORK/kroot/lib/modules" | head -1)
echo "kernel_setup_s=$(since "$t") kernel=$kv packages=$KERNEL_PKG" >> "$OUT/timings.txt"
# The VFIO cdev needs CONFIG_VFIO_DEVICE_CDEV, which needs CONFIG_IOMMUFD: only then does vfio.ko
# call iommufd_device_bind. (`vfio-dev/vfioN` in sysfs and the 'vfio/devices/%s' devnode string
# exist without it, so they prove nothing.)
has_iommufd() {
  local ko dec
  ko=$(find "$WORK/kroot/lib/modules/$kv" -name 'vfio.ko*' | head -1)
  case "$ko" in *.xz) dec=(xz -dc) ;; *.zst) dec=(zstd -dcq) ;; *) dec=(cat) ;; esac
  # grep -c reads it all: grep -q would stop early and SIGPIPE the decompressor under pipefail
  [ -n "$ko" ] && [ "$("${dec[@]}" "$ko" | grep -ac 'iommufd_device_bind')" != 0 ]
}

# Builds iommufd.ko and the VFIO modules with CONFIG_IOMMUFD=m and CONFIG_VFIO_DEVICE_CDEV=y from
# the kernel's own Debian source and headers, and installs them into kroot over the stock ones.
build_iommufd_modules() {
  local kb="$WORK/kbuild" apt_opts image_ver src hdr common kbuild_pkg kh ksrc m f dst
  apt_opts=(-o "Dir::Etc::sourcelist=$WORK/apt/sources.list" -o Dir::Etc::sourceparts=/nonexistent
            -o "Dir::State::Lists=$WORK/apt/lists")
  [ -s "$WORK/apt/sources.list" ] || { mkdir -p "$WORK/apt/lists/partial"; echo "$KERNEL_APT_SOURCES" > "$WORK/apt/sources.list"; }
  apt-get "${apt_opts[@]}" update -qq >&2 || return 1
  image_ver=$(dpkg-deb -f "$(ls "$WORK"/debs/*.deb | head -1)" Version)
  src="linux-source-$(echo "$kv" | cut -d. -f1-2)"
  hdr="linux-headers-$kv"
  common=$(apt-cache "${apt_opts[@]}" depends "$hdr" 2>/dev/null | awk '/Depends: linux-headers-.*-common/{print $2; exit}')
  kbuild_pkg=$(apt-cache "${apt_opts[@]}" depends "$hdr" 2>/dev/null | awk '/Depends: linux-kbuild-/{print $2; exit}')
  [ -n "$common" ] && [ -n "$kbuild_pkg" ] || { log "no $hdr in '$KERNEL_APT_SOURCES'"; return 1; }
  rm -rf "$kb"; mkdir -p "$kb/debs"
  (cd "$kb/debs" && apt-get "${apt_opts[@]}" download "$src=$image_ver" "$hdr=$image_ver" "$common=$image_ver" "$kbuild_pkg=$image_ver" 2>&1 \
     | grep -v '^W: Download is performed unsandboxed' >&2) || true
  [ "$(ls "$kb"/debs/*.deb 2>/dev/null | wc -l)" = 4 ] || { log "could not download $src $hdr $common $kbuild_pkg at $image_ver"; return 1; }
  for f in "$kb"/debs/*.deb; do dpkg -x "$f" "$kb/root"; done
  kh="$kb/root/usr/src/$hdr"
  # The kernel's compiler must build the modules (same gcc as CONFIG_CC_VERSION_TEXT).
  grep -qF "$(gcc --version | head -1 | sed 's/^gcc //')\"" "$kh/.config" \
    || { log "host gcc ($(gcc --version | head -1)) is not the kernel's ($(grep CONFIG_CC_VERSION_TEXT "$kh/.config"))"; return 1; }
  # Debian's headers include their -common half by absolute path: point it into $kb.
  sed -i "s#^include /usr/src/#include $kb/root/usr/src/#" "$kh/Makefile"
  printf '#define CONFIG_IOMMUFD_MODULE 1\n#define CONFIG_VFIO_DEVICE_CDEV 1\n' >> "$kh/include/generated/autoconf.h"
  printf 'CONFIG_IOMMUFD=m\nCONFIG_VFIO_DEVICE_CDEV=y\n' >> "$kh/include/config/auto.conf"
  tar -xJf "$kb/root/usr/src/$src.tar.xz" -C "$kb" --wildcards "$src/drivers/vfio/*" "$src/drivers/iommu/*" "$src/lib/interval_tree.c"
  ksrc="$kb/$src"; m="$kb/m"
  mkdir -p "$m/iommu"
  cp -r "$ksrc/drivers/vfio" "$m/vfio"; cp -r "$ksrc/drivers/iommu/iommufd" "$m/iommu/iommufd"; cp "$ksrc"/drivers/iommu/*.h "$m/iommu/"
  # iommufd needs lib/interval_tree.c's span iterator (CONFIG_INTERVAL_TREE_SPAN_ITER, which only
  # CONFIG_IOMMUFD selects): compile a copy into iommufd.ko.
  { echo '#include <linux/interval_tree.h>'; echo '#define CONFIG_INTERVAL_TREE_SPAN_ITER 1'
    sed -n '/^#ifdef CONFIG_INTERVAL_TREE_SPAN_ITER/,$p' "$ksrc/lib/interval_tree.c" | grep -v EXPORT_SYMBOL; } > "$m/iommu/iommufd/span_iter.c"
  echo 'iommufd-y += span_iter.o' >> "$m/iommu/iommufd/Makefile"
  echo 'obj-m += iommu/iommufd/ vfio/' > "$m/Kbuild"
  # no pahole here: no BTF for these modules
  make -C "$kh" M="$m" -j"$(nproc)" CONFIG_DEBUG_INFO_BTF_MODULES= modules > "$kb/build.log" 2>&1 \
    || { tail -20 "$kb/build.log" >&2; log "module build failed (see $kb/build.log)"; return 1; }
  for f in $(cd "$m" && find . -name '*.ko'); do
    dst=$(find "$WORK/kroot/lib/modules/$kv/kernel" -name "$(basename "$f")*" | head -1)
    [ -n "$dst" ] || dst="$WORK/kroot/lib/modules/$kv/kernel/drivers/${f#./}"
    rm -f "$dst"; mkdir -p "$(dirname "$dst")"; cp "$m/$f" "${dst%.xz}"
  done
  depmod -b "$WORK/kroot" "$kv"
  rm -f "$WORK/initrd.gz" "$WORK/initrd-exec.gz"
  echo "$image_ver" > "$WORK/kroot/.iommufd-modules"
  log "built and installed $(cd "$m" && find . -name '*.ko' | tr '\n' ' ')"
}

if ! has_iommufd; then
  [ "${IOMMUFD_BUILD:-1}" = 1 ] || skip "kernel $kv is built without CONFIG_IOMMUFD (so no VFIO_DEVICE_CDEV) and IOMMUFD_BUILD=0"
  t=$(now)
  log "kernel $kv is built without CONFIG_IOMMUFD: building iommufd.ko and the VFIO modules from its source"
  build_iommufd_modules || skip "could not build iommufd for $kv"
  has_iommufd || skip "the modules built for $kv still do not call iommufd"
  echo "iommufd_modules_build_s=$(since "$t")" >> "$OUT/timings.txt"
fi
[ -e "$WORK/kroot/.iommufd-modules" ] && echo "iommufd_modules=built from linux-source at $(cat "$WORK/kroot/.iommufd-modules")" >> "$OUT/timings.txt"

# ---- 2. the exercise, with the iommufd feature
tgt=x86_64-unknown-linux-gnu rf="-C target-feature=+crt-static"
t=$(now)
log "cargo build --features iommufd --example e1000e_exercise --example check_e1000e_trace --target $tgt"
(cd "$REPO" && RUSTFLAGS="$rf" cargo build -q --release -p hwrr-vfio-backend --features iommufd \
   --example e1000e_exercise --example check_e1000e_trace --target "$tgt")
hwrr_bin=""
case " $MODES " in *" record-cli "*)
  log "cargo build --features iommufd --bin hwrr --target $tgt"
  (cd "$REPO" && RUSTFLAGS="$rf" cargo build -q --release -p hwrr --features iommufd --bin hwrr --target "$tgt")
  hwrr_bin="$WORK/hwrr"
  objcopy --strip-debug "$REPO/target/$tgt/release/hwrr" "$hwrr_bin";;
esac
echo "build_s=$(since "$t") target=$tgt" >> "$OUT/timings.txt"
bin="$WORK/e1000e_exercise"
objcopy --strip-debug "$REPO/target/$tgt/release/examples/e1000e_exercise" "$bin"
if ldd "$bin" 2>&1 | grep -qv 'not a dynamic\|statically linked'; then
  log "error: $bin is not static"; ldd "$bin" >&2 || true; exit 1
fi

# ---- 3. the guest
script="$WORK/iommufd-guest.sh"
cat > "$script" <<GUEST
#!/bin/sh
rc=0
modprobe iommufd 2>/dev/null  # built in on Debian's 7.x kernels
SYS=/sys/bus/pci/devices/\$VTDBOX_BDF
echo "IOMMUFD dev_iommu=\$(ls /dev/iommu 2>&1) vfio_dev=\$(ls \$SYS/vfio-dev 2>&1) cdevs=\$(ls /dev/vfio/devices 2>&1 | tr '\n' ' ')"
for mode in $MODES; do
  if [ "\$mode" = record-cli ]; then
    echo "VTDBOX-IOMMUFD run mode=\$mode bdf=\$VTDBOX_BDF uptime=\$(cut -d' ' -f1 /proc/uptime)"
    /bin/hwrr record --vfio "\$VTDBOX_BDF" --iommufd --listen /tmp/hwrr.sock --once -o /host/e1000e-record-iommufd.hwrr > /host/hwrr-record.log 2>&1 &
    pid=\$!
    i=0; while [ ! -S /tmp/hwrr.sock ] && [ \$i -lt 200 ]; do sleep 0.05; i=\$((i+1)); done
    /bin/e1000e_exercise --vfio-user /tmp/hwrr.sock > /host/exercise-\$mode.log 2>&1 || rc=1
    wait \$pid || { echo "hwrr record failed"; rc=1; }
    cat /host/exercise-\$mode.log /host/hwrr-record.log
    echo "VTDBOX-IOMMUFD done mode=\$mode uptime=\$(cut -d' ' -f1 /proc/uptime)"
    continue
  fi
  flag=""
  case "\$mode" in
    iommufd) flag="--iommufd --trace /host/e1000e-iommufd.hwrr" ;;
    iommufd-mmap) flag="--iommufd --mmap" ;;
    group) flag="" ;;
  esac
  echo "VTDBOX-IOMMUFD run mode=\$mode bdf=\$VTDBOX_BDF uptime=\$(cut -d' ' -f1 /proc/uptime)"
  /bin/e1000e_exercise --bdf "\$VTDBOX_BDF" --bench ${BENCH:-2000} \$flag > /host/exercise-\$mode.log 2>&1 || rc=1
  cat /host/exercise-\$mode.log
  echo "VTDBOX-IOMMUFD done mode=\$mode uptime=\$(cut -d' ' -f1 /proc/uptime)"
done
dmesg | grep -iE 'iommufd|vfio|DMAR.*fault' | tail -20 | sed 's/^/  dmesg: /'
exit \$rc
GUEST
chmod +x "$script"

export KERNEL_APPEND_EXTRA="${KERNEL_APPEND_EXTRA:-no_timer_check}"
rc=0
# shellcheck disable=SC2086
box_exec "$script" "$bin" $hwrr_bin || rc=$?
box_summary "$kv" 'VTDBOX-IOMMUFD\|^IOMMUFD' '^(CHECK|OBS|e1000e_exercise|OPEN|IOMMU|MMAPPED|BENCH)'

# ---- 4. verdicts
# shellcheck disable=SC2086
modes_passed $MODES || rc=1
case " $MODES " in *" iommufd "*)
  grep -q '^OPEN .*(cdev+iommufd)' "$OUT/exercise-iommufd.log" 2>/dev/null \
    || { log "the iommufd run did not open the device through its cdev"; rc=1; };;
esac
# Same device, same driver steps: the observations must not depend on how the device was opened.
# Except one: how many MSI-X messages QEMU's e1000e sends while a cause stays pending varies from
# run to run (tests/vm NOTES: it re-sends), so that count is masked.
for mode in $MODES; do
  tr -d '\r' < "$OUT/exercise-$mode.log" 2>/dev/null | grep '^OBS ' \
    | sed 's/msix_after_rx=[0-9]*/msix_after_rx=N/' > "$OUT/obs-$mode.txt" || true
done
case " $MODES " in *" group "*)
  for mode in $MODES; do
    [ "$mode" = group ] && continue
    if [ -s "$OUT/obs-$mode.txt" ] && cmp -s "$OUT/obs-group.txt" "$OUT/obs-$mode.txt"; then
      echo "OBS $mode = group: identical ($(wc -l < "$OUT/obs-$mode.txt") lines)"
    else
      log "OBS lines of $mode differ from the group run's:"; diff "$OUT/obs-group.txt" "$OUT/obs-$mode.txt" >&2 || true; rc=1
    fi
  done;;
esac
mac=$(sed -n 's/^OBS mac=\([0-9a-f:]*\).*/\1/p' "$OUT"/exercise-*.log 2>/dev/null | head -1)
for mode_trace in iommufd:e1000e-iommufd record-cli:e1000e-record-iommufd; do
  case " $MODES " in *" ${mode_trace%%:*} "*) ;; *) continue;; esac
  name=${mode_trace#*:}
  [ -e "$OUT/$name.hwrr" ] || { log "no trace $name.hwrr came back"; rc=1; continue; }
  t=$(now)
  "$REPO/target/$tgt/release/examples/check_e1000e_trace" "$OUT/$name.hwrr" ${mac:+--mac "$mac"} \
    > "$OUT/check-$name.log" 2>&1 || { log "trace check $name failed"; rc=1; }
  echo "check_${name}_s=$(since "$t")" >> "$OUT/timings.txt"
  cat "$OUT/check-$name.log"
done
exit $rc
