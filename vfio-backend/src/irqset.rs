//! Packing a `SET_IRQS` request into the kernel's `struct vfio_irq_set`.

use std::os::fd::{AsRawFd, OwnedFd};

use hwrr_device::{DeviceError, IrqAction, IrqData, IrqInfo, IrqSetRequest};

/// `VFIO_IRQ_SET_DATA_NONE`.
pub const DATA_NONE: u32 = 1 << 0;
/// `VFIO_IRQ_SET_DATA_BOOL`.
pub const DATA_BOOL: u32 = 1 << 1;
/// `VFIO_IRQ_SET_DATA_EVENTFD`.
pub const DATA_EVENTFD: u32 = 1 << 2;
/// `VFIO_IRQ_SET_ACTION_MASK`.
pub const ACTION_MASK: u32 = 1 << 3;
/// `VFIO_IRQ_SET_ACTION_UNMASK`.
pub const ACTION_UNMASK: u32 = 1 << 4;
/// `VFIO_IRQ_SET_ACTION_TRIGGER`.
pub const ACTION_TRIGGER: u32 = 1 << 5;

/// Size of `struct vfio_irq_set` without its data.
pub const HEADER_LEN: usize = 20;

/// A `struct vfio_irq_set` ready for the ioctl, holding the eventfds it names until the call is done
/// (the kernel takes its own references; ours may close afterwards).
#[derive(Debug)]
pub struct PackedIrqSet {
    /// The bytes passed to `VFIO_DEVICE_SET_IRQS`.
    pub bytes: Vec<u8>,
    /// The eventfds whose numbers are in `bytes`.
    pub fds: Vec<Option<OwnedFd>>,
}

/// Checks `request` against the device's IRQ table and packs it.
///
/// `count == 0` is passed through only as the kernel's "disable this index" form (`DATA_NONE` with
/// `ACTION_TRIGGER`); every other request must name vectors that exist and carry one data element per
/// vector.
pub fn pack(request: IrqSetRequest, irqs: &[IrqInfo]) -> Result<PackedIrqSet, DeviceError> {
    let setup = &request.setup;
    let no_such = || DeviceError::NoSuchIrq {
        index: setup.index,
        start: setup.start,
        end: setup.start.saturating_add(setup.count),
    };
    let info = irqs
        .iter()
        .find(|i| i.index == setup.index)
        .ok_or_else(no_such)?;
    let disable = setup.count == 0;
    if disable {
        if !(setup.action == IrqAction::Trigger && setup.data == IrqData::None) {
            return Err(DeviceError::Invalid(format!(
                "SET_IRQS with count 0 on index {} must be a DATA_NONE trigger (disable)",
                setup.index
            )));
        }
    } else {
        match setup.start.checked_add(setup.count) {
            Some(end) if end <= info.count => {}
            _ => return Err(no_such()),
        }
    }
    let action = match setup.action {
        IrqAction::Mask => ACTION_MASK,
        IrqAction::Unmask => ACTION_UNMASK,
        IrqAction::Trigger => ACTION_TRIGGER,
    };
    let count = setup.count as usize;
    let wrong_len = |what: &str, n: usize| {
        DeviceError::Invalid(format!(
            "SET_IRQS index {} carries {n} {what} for {count} vectors",
            setup.index
        ))
    };
    let (data_flag, data) = match &setup.data {
        IrqData::None => {
            if !request.fds.is_empty() {
                return Err(wrong_len("eventfds", request.fds.len()));
            }
            (DATA_NONE, Vec::new())
        }
        IrqData::Bool(flags) => {
            if flags.len() != count {
                return Err(wrong_len("flags", flags.len()));
            }
            (DATA_BOOL, flags.iter().map(|&b| u8::from(b)).collect())
        }
        IrqData::Eventfd(present) => {
            if request.fds.len() != count {
                return Err(wrong_len("eventfds", request.fds.len()));
            }
            if present.len() != count {
                return Err(wrong_len("eventfd flags", present.len()));
            }
            if setup.action != IrqAction::Trigger && request.fds.iter().any(Option::is_none) {
                // Only TRIGGER defines fd -1 (disconnect); a mask/unmask eventfd of -1 is rejected
                // by the kernel with an unhelpful EINVAL, so say why here.
                return Err(DeviceError::Invalid(
                    "a mask/unmask eventfd cannot be -1".into(),
                ));
            }
            let mut bytes = Vec::with_capacity(count * 4);
            for fd in &request.fds {
                let raw = fd.as_ref().map_or(-1, |f| f.as_raw_fd());
                bytes.extend_from_slice(&raw.to_ne_bytes());
            }
            (DATA_EVENTFD, bytes)
        }
    };
    let argsz = u32::try_from(HEADER_LEN + data.len())
        .map_err(|_| DeviceError::Invalid("SET_IRQS request too large".into()))?;
    let mut bytes = Vec::with_capacity(HEADER_LEN + data.len());
    for word in [
        argsz,
        data_flag | action,
        setup.index,
        setup.start,
        setup.count,
    ] {
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    bytes.extend_from_slice(&data);
    Ok(PackedIrqSet {
        bytes,
        fds: request.fds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hwrr_device::IrqSetup;

    fn table() -> Vec<IrqInfo> {
        vec![
            IrqInfo {
                index: 0,
                count: 1,
                flags: 0x7,
            },
            IrqInfo {
                index: 2,
                count: 5,
                flags: 0x9,
            },
        ]
    }

    fn words(b: &[u8]) -> Vec<u32> {
        b.chunks(4)
            .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    fn req(index: u32, start: u32, count: u32, action: IrqAction, data: IrqData) -> IrqSetRequest {
        IrqSetRequest {
            setup: IrqSetup {
                index,
                start,
                count,
                action,
                data,
            },
            fds: Vec::new(),
        }
    }

    #[test]
    fn eventfds_are_packed_in_vector_order_with_minus_one_for_disconnect() {
        let a = hwrr_device::eventfd::create().unwrap();
        let b = hwrr_device::eventfd::create().unwrap();
        let (ra, rb) = (a.as_raw_fd(), b.as_raw_fd());
        let mut r = req(
            2,
            1,
            3,
            IrqAction::Trigger,
            IrqData::Eventfd(vec![true, false, true]),
        );
        r.fds = vec![Some(a), None, Some(b)];
        let p = pack(r, &table()).unwrap();
        let w = words(&p.bytes);
        assert_eq!(w[..5], [32, DATA_EVENTFD | ACTION_TRIGGER, 2, 1, 3]);
        assert_eq!(w[5..], [ra as u32, u32::MAX, rb as u32]);
        assert_eq!(p.fds.len(), 3);
    }

    #[test]
    fn bools_are_one_byte_each() {
        let r = req(2, 0, 2, IrqAction::Mask, IrqData::Bool(vec![true, false]));
        let p = pack(r, &table()).unwrap();
        assert_eq!(p.bytes.len(), HEADER_LEN + 2);
        assert_eq!(words(&p.bytes[..20])[..2], [22, DATA_BOOL | ACTION_MASK]);
        assert_eq!(p.bytes[20..], [1, 0]);
    }

    #[test]
    fn unmask_none_and_disable() {
        let p = pack(req(0, 0, 1, IrqAction::Unmask, IrqData::None), &table()).unwrap();
        assert_eq!(words(&p.bytes), [20, DATA_NONE | ACTION_UNMASK, 0, 0, 1]);
        let p = pack(req(2, 0, 0, IrqAction::Trigger, IrqData::None), &table()).unwrap();
        assert_eq!(words(&p.bytes), [20, DATA_NONE | ACTION_TRIGGER, 2, 0, 0]);
    }

    #[test]
    fn bad_requests_are_refused_before_the_kernel_sees_them() {
        let t = table();
        assert!(matches!(
            pack(req(1, 0, 1, IrqAction::Trigger, IrqData::None), &t),
            Err(DeviceError::NoSuchIrq { index: 1, .. })
        ));
        assert!(matches!(
            pack(req(2, 4, 2, IrqAction::Trigger, IrqData::None), &t),
            Err(DeviceError::NoSuchIrq {
                index: 2,
                start: 4,
                end: 6
            })
        ));
        assert!(matches!(
            pack(req(2, u32::MAX, 2, IrqAction::Trigger, IrqData::None), &t),
            Err(DeviceError::NoSuchIrq { .. })
        ));
        assert!(matches!(
            pack(req(2, 0, 0, IrqAction::Mask, IrqData::None), &t),
            Err(DeviceError::Invalid(_))
        ));
        assert!(matches!(
            pack(req(2, 0, 2, IrqAction::Mask, IrqData::Bool(vec![true])), &t),
            Err(DeviceError::Invalid(_))
        ));
        // eventfd data without the fds
        assert!(matches!(
            pack(
                req(2, 0, 1, IrqAction::Trigger, IrqData::Eventfd(vec![true])),
                &t
            ),
            Err(DeviceError::Invalid(_))
        ));
        let mut r = req(0, 0, 1, IrqAction::Unmask, IrqData::Eventfd(vec![false]));
        r.fds = vec![None];
        assert!(matches!(pack(r, &t), Err(DeviceError::Invalid(_))));
    }
}
