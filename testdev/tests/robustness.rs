//! Whatever a VMM sends, the test device answers with data or an error, never a panic, and its
//! invariants hold afterwards.

use std::sync::Arc;

use hwrr_device::{Device, DmaMapping, DmaRegion, IrqSetRequest};
use hwrr_formats::{IrqAction, IrqData, IrqSetup};
use hwrr_testdev::regs::{self, bar0, status};
use hwrr_testdev::{driver, TestDevice};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Read(u32, u64, usize),
    Write(u32, u64, Vec<u8>),
    Reg(u64, u32),
    ConfigRead(u32, usize),
    ConfigWrite(u32, Vec<u8>),
    Irqs(u32, u32, u32, u8),
    Map(u64, u64),
    Unmap(u64, u64, u32),
    Reset,
}

fn op() -> impl Strategy<Value = Op> {
    let region = prop_oneof![Just(0u32), Just(2), Just(4), Just(6), 0u32..10];
    let offset = prop_oneof![0u64..0x1010, any::<u64>()];
    let reg = prop_oneof![(0u64..0x100).prop_map(|o| o & !3), 0u64..0x1000];
    let value = prop_oneof![any::<u32>(), 0u32..8, Just(0x1000_0000u32)];
    prop_oneof![
        (region.clone(), offset.clone(), 0usize..20).prop_map(|(r, o, l)| Op::Read(r, o, l)),
        (region, offset, prop::collection::vec(any::<u8>(), 0..20))
            .prop_map(|(r, o, d)| Op::Write(r, o, d)),
        (reg, value).prop_map(|(o, v)| Op::Reg(o, v)),
        (0u32..300, 0usize..9).prop_map(|(o, l)| Op::ConfigRead(o, l)),
        (0u32..300, prop::collection::vec(any::<u8>(), 0..9))
            .prop_map(|(o, d)| Op::ConfigWrite(o, d)),
        (0u32..6, 0u32..6, 0u32..6, 0u8..4).prop_map(|(i, s, c, a)| Op::Irqs(i, s, c, a)),
        (any::<u64>(), any::<u64>()).prop_map(|(i, l)| Op::Map(i, l)),
        (any::<u64>(), any::<u64>(), 0u32..4).prop_map(|(i, l, f)| Op::Unmap(i, l, f)),
        Just(Op::Reset),
    ]
}

fn apply(dev: &mut TestDevice, op: Op) {
    // Results are ignored on purpose: errors are fine, panics are not.
    match op {
        Op::Read(r, o, l) => {
            let _ = dev.region_read(r, o, &mut vec![0; l]);
        }
        Op::Write(r, o, d) => {
            let _ = dev.region_write(r, o, &d);
        }
        Op::Reg(o, v) => {
            let _ = dev.region_write(0, o, &v.to_le_bytes());
        }
        Op::ConfigRead(o, l) => {
            let _ = dev.config_read(o, &mut vec![0; l]);
        }
        Op::ConfigWrite(o, d) => {
            let _ = dev.config_write(o, &d);
        }
        Op::Irqs(index, start, count, a) => {
            let (action, data) = match a {
                0 => (IrqAction::Trigger, IrqData::None),
                1 => (IrqAction::Mask, IrqData::None),
                2 => (IrqAction::Unmask, IrqData::None),
                _ => (
                    IrqAction::Trigger,
                    IrqData::Bool(vec![true; count as usize]),
                ),
            };
            let _ = dev.set_irqs(IrqSetRequest {
                setup: IrqSetup {
                    index,
                    start,
                    count,
                    action,
                    data,
                },
                fds: vec![],
            });
        }
        Op::Map(iova, len) => {
            let _ = dev.dma_map(DmaRegion {
                mapping: DmaMapping {
                    iova,
                    len,
                    flags: 3,
                },
                memory: None,
            });
        }
        Op::Unmap(iova, len, flags) => {
            let _ = dev.dma_unmap(DmaMapping { iova, len, flags });
        }
        Op::Reset => {
            let _ = dev.reset();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_vmm_traffic_never_panics(ops in prop::collection::vec(op(), 1..80)) {
        let mut dev = TestDevice::new();
        let _mem: Arc<_> = driver::setup_guest_memory(&mut dev, 0x1000_0000, 0x10000).unwrap();
        dev.config_write(4, &7u16.to_le_bytes()).unwrap();
        for op in ops {
            apply(&mut dev, op);
        }
        // Identity registers survive anything a VMM can do short of disabling decoding.
        dev.config_write(4, &7u16.to_le_bytes()).unwrap();
        let mut b = [0u8; 4];
        dev.region_read(0, bar0::ID, &mut b).unwrap();
        prop_assert_eq!(u32::from_le_bytes(b), regs::ID_MAGIC);
        // STATUS is never BUSY for more than BUSY_READS reads.
        let mut busy = 0;
        for _ in 0..=regs::BUSY_READS {
            dev.region_read(0, bar0::STATUS, &mut b).unwrap();
            busy += u32::from_le_bytes(b) & status::BUSY;
        }
        prop_assert!(busy < regs::BUSY_READS);
    }
}
