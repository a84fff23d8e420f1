#!/bin/sh
# Runs hwrr's host-setup commands for real inside the VT-d box (../shared/harness/vtdbox.sh), against
# the box's e1000e: doctor before and after loading vfio, bind, bind again, unbind, bind, reset
# (state file), bind, reset (modalias resolution), then a ping through the recovered NIC.
#
#   RUSTFLAGS="-C target-feature=+crt-static" cargo build --bin hwrr --target x86_64-unknown-linux-gnu
#   cp target/x86_64-unknown-linux-gnu/debug/hwrr /tmp/hwrr && strip /tmp/hwrr
#   VTDBOX_BIND=native ../shared/harness/vtdbox.sh exec host-setup/vtdbox/hostcheck.sh /tmp/hwrr
#
# Exit 0 iff every HOSTCHECK line says OK.
B=$VTDBOX_BDF
fail=0
drv() { l=$(readlink /sys/bus/pci/devices/$B/driver 2>/dev/null); [ -n "$l" ] && basename "$l" || echo none; }
expect() {  # expect NAME WANT GOT
  if [ "$2" = "$3" ]; then echo "HOSTCHECK $1 OK ($3)"; else echo "HOSTCHECK $1 FAIL want=$2 got=$3"; fail=1; fi
}
sleep 1
echo "HOSTCHECK start bdf=$B driver=$(drv)"
hwrr doctor $B; expect doctor-modules-missing 1 $?
modprobe vfio-pci; modprobe vfio_iommu_type1
hwrr doctor $B; expect doctor-before-bind-rc 0 $?
hwrr bind $B; expect bind-rc 0 $?
expect bind-driver vfio-pci $(drv)
cat /run/hwrr/$B.json
expect override vfio-pci "$(cat /sys/bus/pci/devices/$B/driver_override)"
hwrr doctor $B; expect doctor-after-bind-rc 0 $?
hwrr doctor --json $B | grep -c '"status": "ok"'
hwrr bind $B; expect bind-again-rc 0 $?
hwrr unbind $B; expect unbind-rc 0 $?
expect unbind-driver e1000e $(drv)
expect unbind-override "(null)" "$(cat /sys/bus/pci/devices/$B/driver_override)"
hwrr bind $B; expect bind2-rc 0 $?
hwrr reset $B; expect reset-rc 0 $?
expect reset-driver e1000e $(drv)
hwrr bind $B; expect bind3-rc 0 $?
rm -f /run/hwrr/$B.json
hwrr reset $B; expect reset-modalias-rc 0 $?
expect reset-modalias-driver e1000e $(drv)
NET=$(ls /sys/bus/pci/devices/$B/net 2>/dev/null | head -1)
if [ -n "$NET" ]; then
  ip link set $NET up; ip addr add 10.0.2.15/24 dev $NET; sleep 2
  ping -c 2 -W 2 10.0.2.2 >/dev/null 2>&1; expect ping-after-reset 0 $?
fi
hwrr doctor --dmesg $B; echo "doctor (dmesg) rc=$?"
echo "HOSTCHECK done fail=$fail"
exit $fail
