#!/bin/sh
# Provokes real DMA remapping faults in the VT-d box and checks that `hwrr doctor` attributes them:
# the e1000e is left without a driver (so its IOMMU domain maps nothing), its TX ring is pointed at
# an unmapped IOVA through /dev/mem, and the tail is bumped 39 times.
#
#   VTDBOX_BIND=none ../shared/harness/vtdbox.sh exec host-setup/vtdbox/dmarflood.sh /tmp/hwrr
#
# QEMU's VT-d model compresses faults (it records a new one only after the guest cleared the
# last), so the guest kernel logs a handful, not a flood: the check is that they are attributed.
B=$VTDBOX_BDF; S=/sys/bus/pci/devices/$B
modprobe vfio-pci; modprobe vfio_iommu_type1
BAR0=$(head -1 $S/resource | cut -d' ' -f1)
echo "HOSTCHECK bar0=$BAR0 driver=$(readlink $S/driver)"
printf '\006' | dd of=$S/config bs=1 seek=4 count=1 conv=notrunc 2>/dev/null   # memory + bus master
r() { printf '0x%x' $((BAR0 + $1)); }
devmem $(r 0x3800) 32 0x10000000   # TDBAL: an IOVA nothing maps
devmem $(r 0x3804) 32 0
devmem $(r 0x3808) 32 4096         # TDLEN
devmem $(r 0x3810) 32 0            # TDH
devmem $(r 0x3818) 32 0            # TDT
devmem $(r 0x0400) 32 0x2          # TCTL.EN
i=1; while [ $i -lt 40 ]; do devmem $(r 0x3818) 32 $((i % 256)); i=$((i+1)); done
sleep 1
echo "TDH now $(devmem $(r 0x3810) 32)"
dmesg | grep -E 'DMAR|DMA Read|DMA Write|fault' | tail -8
hwrr doctor $B; rc=$?
hwrr doctor $B | grep -q 'dma-faults.*faults from 0000:00:02.0' && echo "HOSTCHECK dmar-flood OK" || { echo "HOSTCHECK dmar-flood FAIL"; exit 1; }
exit 0
