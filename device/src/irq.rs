//! `SET_IRQS` semantics shared by every device that raises interrupts: eventfds per vector, masking,
//! pending bits, INTx auto-masking.

use std::os::fd::OwnedFd;
use std::sync::Mutex;

use hwrr_formats::{IrqAction, IrqData, IrqInfo};

use crate::{eventfd, DeviceError, IrqSetRequest, Result};

/// `VFIO_IRQ_INFO_AUTOMASKED`: the index masks itself when it fires (INTx).
pub const IRQ_INFO_AUTOMASKED: u32 = 1 << 2;

#[derive(Debug, Default)]
struct Vector {
    fd: Option<OwnedFd>,
    masked: bool,
    pending: bool,
}

#[derive(Debug)]
struct Index {
    info: IrqInfo,
    vectors: Vec<Vector>,
}

/// What happened to one raised interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Written to the VMM's eventfd.
    Delivered,
    /// The vector is masked: its pending bit is set and it fires on unmask.
    Pending,
    /// No eventfd is registered for the vector: nobody listens.
    NoListener,
}

/// Routes device interrupts to the eventfds the VMM registered, following VFIO's `SET_IRQS` rules.
///
/// Interior mutability lets an interrupt thread and the request path share one router.
#[derive(Debug)]
pub struct IrqRouter {
    indices: Mutex<Vec<Index>>,
}

impl IrqRouter {
    /// A router for the given IRQ table; every vector starts unwired and unmasked.
    pub fn new(irqs: &[IrqInfo]) -> Self {
        let indices = irqs
            .iter()
            .map(|info| Index {
                info: info.clone(),
                vectors: (0..info.count).map(|_| Vector::default()).collect(),
            })
            .collect();
        IrqRouter {
            indices: Mutex::new(indices),
        }
    }

    fn with_index<T>(&self, index: u32, f: impl FnOnce(&mut Index) -> Result<T>) -> Result<T> {
        let mut guard = self.indices.lock().unwrap_or_else(|p| p.into_inner());
        let idx =
            guard
                .iter_mut()
                .find(|i| i.info.index == index)
                .ok_or(DeviceError::NoSuchIrq {
                    index,
                    start: 0,
                    end: 0,
                })?;
        f(idx)
    }

    /// Applies a `SET_IRQS` request.
    pub fn set_irqs(&self, request: IrqSetRequest) -> Result<()> {
        let setup = request.setup;
        let mut fds = request.fds;
        self.with_index(setup.index, |idx| {
            let start = setup.start as usize;
            let count = setup.count as usize;
            let end = start
                .checked_add(count)
                .filter(|e| *e <= idx.vectors.len())
                .ok_or(DeviceError::NoSuchIrq {
                    index: setup.index,
                    start: setup.start,
                    end: setup.start.saturating_add(setup.count),
                })?;
            let flags_len = match &setup.data {
                IrqData::None => None,
                IrqData::Bool(b) | IrqData::Eventfd(b) => Some(b.len()),
            };
            if let Some(n) = flags_len {
                if n != count {
                    return Err(DeviceError::Invalid(format!(
                        "SET_IRQS carries {n} data entries for {count} vectors"
                    )));
                }
            }
            match (setup.action, &setup.data) {
                (IrqAction::Trigger, IrqData::None) if count == 0 => {
                    for v in idx.vectors.iter_mut() {
                        *v = Vector::default();
                    }
                }
                (IrqAction::Trigger, IrqData::Eventfd(_)) => {
                    if fds.len() != count {
                        return Err(DeviceError::Invalid(format!(
                            "SET_IRQS eventfd request has {} fds for {count} vectors",
                            fds.len()
                        )));
                    }
                    for (v, fd) in idx.vectors[start..end].iter_mut().zip(fds.drain(..)) {
                        v.fd = fd;
                        if v.fd.is_none() {
                            v.pending = false;
                        }
                    }
                }
                (IrqAction::Trigger, data) => {
                    for (i, v) in idx.vectors[start..end].iter_mut().enumerate() {
                        if flag(data, i) {
                            fire(v, idx.info.flags);
                        }
                    }
                }
                (IrqAction::Mask, IrqData::Eventfd(_))
                | (IrqAction::Unmask, IrqData::Eventfd(_)) => {
                    return Err(DeviceError::Unsupported(
                        "mask/unmask eventfds (irqfd resampling)".into(),
                    ));
                }
                (IrqAction::Mask, data) => {
                    for (i, v) in idx.vectors[start..end].iter_mut().enumerate() {
                        if flag(data, i) {
                            v.masked = true;
                        }
                    }
                }
                (IrqAction::Unmask, data) => {
                    for (i, v) in idx.vectors[start..end].iter_mut().enumerate() {
                        if flag(data, i) {
                            v.masked = false;
                            if v.pending {
                                v.pending = false;
                                fire(v, idx.info.flags);
                            }
                        }
                    }
                }
            }
            Ok(())
        })
    }

    /// Raises one interrupt on `index`/`vector`.
    pub fn raise(&self, index: u32, vector: u32) -> Result<Delivery> {
        self.with_index(index, |idx| {
            let flags = idx.info.flags;
            let v = idx
                .vectors
                .get_mut(vector as usize)
                .ok_or(DeviceError::NoSuchIrq {
                    index,
                    start: vector,
                    end: vector.saturating_add(1),
                })?;
            Ok(fire(v, flags))
        })
    }

    /// Whether `index`/`vector` has an eventfd registered.
    pub fn is_wired(&self, index: u32, vector: u32) -> bool {
        self.with_index(index, |idx| {
            Ok(idx
                .vectors
                .get(vector as usize)
                .is_some_and(|v| v.fd.is_some()))
        })
        .unwrap_or(false)
    }

    /// Whether `index`/`vector` has its pending bit set.
    pub fn is_pending(&self, index: u32, vector: u32) -> bool {
        self.with_index(index, |idx| {
            Ok(idx.vectors.get(vector as usize).is_some_and(|v| v.pending))
        })
        .unwrap_or(false)
    }

    /// Forgets every eventfd, mask and pending bit (device reset or a new client).
    pub fn clear(&self) {
        let mut guard = self.indices.lock().unwrap_or_else(|p| p.into_inner());
        for idx in guard.iter_mut() {
            for v in idx.vectors.iter_mut() {
                *v = Vector::default();
            }
        }
    }
}

fn flag(data: &IrqData, i: usize) -> bool {
    match data {
        IrqData::None => true,
        IrqData::Bool(b) | IrqData::Eventfd(b) => b.get(i).copied().unwrap_or(false),
    }
}

fn fire(v: &mut Vector, index_flags: u32) -> Delivery {
    if v.masked {
        v.pending = true;
        return Delivery::Pending;
    }
    match &v.fd {
        Some(fd) => {
            // A failed eventfd write means the VMM closed its end; the interrupt has nowhere to go.
            if eventfd::signal(fd).is_err() {
                return Delivery::NoListener;
            }
            if index_flags & IRQ_INFO_AUTOMASKED != 0 {
                v.masked = true;
            }
            Delivery::Delivered
        }
        None => Delivery::NoListener,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hwrr_formats::IrqSetup;

    fn req(
        index: u32,
        start: u32,
        action: IrqAction,
        data: IrqData,
        fds: Vec<Option<OwnedFd>>,
    ) -> IrqSetRequest {
        let count = match &data {
            IrqData::None => fds.len() as u32,
            IrqData::Bool(b) | IrqData::Eventfd(b) => b.len() as u32,
        };
        IrqSetRequest {
            setup: IrqSetup {
                index,
                start,
                count,
                action,
                data,
            },
            fds,
        }
    }

    #[test]
    fn masked_vector_fires_on_unmask() {
        let router = IrqRouter::new(&[IrqInfo {
            index: 2,
            count: 4,
            flags: 1,
        }]);
        let fd = eventfd::create().unwrap();
        let dup = fd.try_clone().unwrap();
        router
            .set_irqs(req(
                2,
                1,
                IrqAction::Trigger,
                IrqData::Eventfd(vec![true]),
                vec![Some(dup)],
            ))
            .unwrap();
        assert_eq!(router.raise(2, 1).unwrap(), Delivery::Delivered);
        assert_eq!(eventfd::drain(&fd).unwrap(), 1);
        router
            .set_irqs(req(
                2,
                1,
                IrqAction::Mask,
                IrqData::Bool(vec![true]),
                vec![],
            ))
            .unwrap();
        assert_eq!(router.raise(2, 1).unwrap(), Delivery::Pending);
        assert!(router.is_pending(2, 1));
        assert_eq!(eventfd::drain(&fd).unwrap(), 0);
        router
            .set_irqs(req(
                2,
                1,
                IrqAction::Unmask,
                IrqData::Bool(vec![true]),
                vec![],
            ))
            .unwrap();
        assert_eq!(eventfd::drain(&fd).unwrap(), 1);
        assert!(!router.is_pending(2, 1));
        assert_eq!(router.raise(2, 0).unwrap(), Delivery::NoListener);
        assert!(router.raise(2, 4).is_err());
        assert!(router.raise(7, 0).is_err());
    }

    #[test]
    fn intx_automasks() {
        let router = IrqRouter::new(&[IrqInfo {
            index: 0,
            count: 1,
            flags: 1 | 2 | IRQ_INFO_AUTOMASKED,
        }]);
        let fd = eventfd::create().unwrap();
        router
            .set_irqs(req(
                0,
                0,
                IrqAction::Trigger,
                IrqData::Eventfd(vec![true]),
                vec![Some(fd.try_clone().unwrap())],
            ))
            .unwrap();
        assert_eq!(router.raise(0, 0).unwrap(), Delivery::Delivered);
        assert_eq!(router.raise(0, 0).unwrap(), Delivery::Pending);
        assert_eq!(eventfd::drain(&fd).unwrap(), 1);
        router
            .set_irqs(req(0, 0, IrqAction::Unmask, IrqData::None, vec![None]))
            .unwrap();
        assert_eq!(eventfd::drain(&fd).unwrap(), 1);
    }

    #[test]
    fn bad_requests_are_errors() {
        let router = IrqRouter::new(&[IrqInfo {
            index: 2,
            count: 2,
            flags: 1,
        }]);
        assert!(router
            .set_irqs(req(
                2,
                1,
                IrqAction::Trigger,
                IrqData::Bool(vec![true, true]),
                vec![]
            ))
            .is_err());
        assert!(router
            .set_irqs(req(
                2,
                0,
                IrqAction::Trigger,
                IrqData::Eventfd(vec![true]),
                vec![]
            ))
            .is_err());
    }
}
