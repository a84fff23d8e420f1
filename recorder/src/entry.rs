//! An event as it travels through the queue: 56 bytes with no heap data for what the access path
//! logs (register and config accesses of 1, 2, 4 or 8 bytes, interrupts, DMA map/unmap, resets), so
//! that a queue slot (with its state word) is exactly one cache line. Events that carry bytes (DMA
//! data, markers, IRQ setup, odd-sized accesses) already own heap memory: they travel boxed.
//!
//! An entry has no sequence number: the writer numbers entries in queue order. A call that must
//! hold its place while it runs (a register write, whose DMA and interrupts come after it) queues a
//! [`Role::Placeholder`] when it starts and a [`Role::Completes`] entry naming the placeholder's
//! queue position when it ends; the writer holds what follows the placeholder until then.

use hwrr_formats::{AccessData, ConfigAccess, DmaMapping, Event, EventKind, Irq, RegionAccess};

/// What `Entry::tag` holds.
mod tag {
    pub const MMIO_READ: u8 = 0;
    pub const MMIO_WRITE: u8 = 1;
    pub const PIO_READ: u8 = 2;
    pub const PIO_WRITE: u8 = 3;
    pub const CONFIG_READ: u8 = 4;
    pub const CONFIG_WRITE: u8 = 5;
    pub const IRQ: u8 = 6;
    pub const DMA_MAP: u8 = 7;
    pub const DMA_UNMAP: u8 = 8;
    pub const RESET: u8 = 9;
    /// `wide` is a `Box<EventKind>` turned into a raw pointer.
    pub const BOXED: u8 = 10;
}

/// What an entry is to the writer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// An event, numbered where it is in the queue.
    Event,
    /// A place reserved in the stream (stamped, no content yet).
    Placeholder,
    /// The content of the placeholder at this queue position.
    Completes(u64),
}

const ROLE_EVENT: u8 = 0;
const ROLE_PLACEHOLDER: u8 = 1;
const ROLE_COMPLETES: u8 = 2;

/// One event, packed. Field use by tag: accesses put the region (or the config offset) in
/// `narrow`, the offset in `offset`, the width in `size` and the value in `wide`; interrupts the
/// index and vector in `narrow` and `offset`; DMA map/unmap the flags, IOVA and length in `narrow`,
/// `offset` and `wide`.
pub(crate) struct Entry {
    /// The placeholder's queue position, for [`Role::Completes`].
    placeholder: u64,
    t_ns: u64,
    role: u8,
    duration_ns: u64,
    status: u32,
    tag: u8,
    size: u8,
    narrow: u32,
    offset: u64,
    wide: u64,
}

// SAFETY: the only non-`Send` thing an entry can hold is the raw pointer of its own boxed
// `EventKind` (which is `Send`); the entry owns that box exclusively.
unsafe impl Send for Entry {}

impl Entry {
    /// An event stamped `t_ns`.
    #[inline(always)]
    pub(crate) fn event(t_ns: u64, status: u32, duration_ns: u64, kind: EventKind) -> Self {
        Self::pack(ROLE_EVENT, 0, t_ns, status, duration_ns, kind)
    }

    /// A place in the stream, stamped `t_ns`.
    #[inline(always)]
    pub(crate) fn placeholder(t_ns: u64) -> Self {
        Self::pack(ROLE_PLACEHOLDER, 0, t_ns, 0, 0, EventKind::Reset)
    }

    /// The content of the placeholder queued at `position` (its stamp is the placeholder's).
    #[inline(always)]
    pub(crate) fn completion(
        position: u64,
        status: u32,
        duration_ns: u64,
        kind: EventKind,
    ) -> Self {
        Self::pack(ROLE_COMPLETES, position, 0, status, duration_ns, kind)
    }

    /// What the entry is to the writer.
    #[inline]
    pub(crate) fn role(&self) -> Role {
        match self.role {
            ROLE_PLACEHOLDER => Role::Placeholder,
            ROLE_COMPLETES => Role::Completes(self.placeholder),
            _ => Role::Event,
        }
    }

    /// The stamp (0 for a completion: it takes its placeholder's).
    pub(crate) fn t_ns(&self) -> u64 {
        self.t_ns
    }

    // Inlined into every producer, so the compiler folds the `EventKind` the caller just built
    // and this match into direct stores.
    #[inline(always)]
    fn pack(
        role: u8,
        placeholder: u64,
        t_ns: u64,
        status: u32,
        duration_ns: u64,
        kind: EventKind,
    ) -> Self {
        let mut e = Entry {
            placeholder,
            t_ns,
            role,
            duration_ns,
            status,
            tag: tag::RESET,
            size: 0,
            narrow: 0,
            offset: 0,
            wide: 0,
        };
        let access = |e: &mut Entry, t: u8, narrow: u32, offset: u64, size: u8, value: u64| {
            e.tag = t;
            e.narrow = narrow;
            e.offset = offset;
            e.size = size;
            e.wide = value;
        };
        match kind {
            EventKind::MmioRead(RegionAccess {
                region,
                offset,
                data: AccessData::Value { size, value },
            }) => access(&mut e, tag::MMIO_READ, region, offset, size, value),
            EventKind::MmioWrite(RegionAccess {
                region,
                offset,
                data: AccessData::Value { size, value },
            }) => access(&mut e, tag::MMIO_WRITE, region, offset, size, value),
            EventKind::PioRead(RegionAccess {
                region,
                offset,
                data: AccessData::Value { size, value },
            }) => access(&mut e, tag::PIO_READ, region, offset, size, value),
            EventKind::PioWrite(RegionAccess {
                region,
                offset,
                data: AccessData::Value { size, value },
            }) => access(&mut e, tag::PIO_WRITE, region, offset, size, value),
            EventKind::ConfigRead(ConfigAccess {
                offset,
                data: AccessData::Value { size, value },
            }) => access(&mut e, tag::CONFIG_READ, offset, 0, size, value),
            EventKind::ConfigWrite(ConfigAccess {
                offset,
                data: AccessData::Value { size, value },
            }) => access(&mut e, tag::CONFIG_WRITE, offset, 0, size, value),
            EventKind::Irq(Irq { index, vector }) => {
                access(&mut e, tag::IRQ, index, vector as u64, 0, 0)
            }
            EventKind::DmaMap(DmaMapping { iova, len, flags }) => {
                access(&mut e, tag::DMA_MAP, flags, iova, 0, len)
            }
            EventKind::DmaUnmap(DmaMapping { iova, len, flags }) => {
                access(&mut e, tag::DMA_UNMAP, flags, iova, 0, len)
            }
            EventKind::Reset => e.tag = tag::RESET,
            other => {
                e.tag = tag::BOXED;
                e.wide = Box::into_raw(Box::new(other)) as usize as u64;
            }
        }
        e
    }

    /// Unpacks the event, numbered `seq` and stamped `t_ns`.
    #[inline(always)]
    pub(crate) fn into_event(mut self, seq: u64, t_ns: u64) -> Event {
        let value = |e: &Entry| AccessData::Value {
            size: e.size,
            value: e.wide,
        };
        let region = |e: &Entry| RegionAccess {
            region: e.narrow,
            offset: e.offset,
            data: value(e),
        };
        let config = |e: &Entry| ConfigAccess {
            offset: e.narrow,
            data: value(e),
        };
        let mapping = |e: &Entry| DmaMapping {
            iova: e.offset,
            len: e.wide,
            flags: e.narrow,
        };
        let kind = match self.tag {
            tag::MMIO_READ => EventKind::MmioRead(region(&self)),
            tag::MMIO_WRITE => EventKind::MmioWrite(region(&self)),
            tag::PIO_READ => EventKind::PioRead(region(&self)),
            tag::PIO_WRITE => EventKind::PioWrite(region(&self)),
            tag::CONFIG_READ => EventKind::ConfigRead(config(&self)),
            tag::CONFIG_WRITE => EventKind::ConfigWrite(config(&self)),
            tag::IRQ => EventKind::Irq(Irq {
                index: self.narrow,
                vector: self.offset as u32,
            }),
            tag::DMA_MAP => EventKind::DmaMap(mapping(&self)),
            tag::DMA_UNMAP => EventKind::DmaUnmap(mapping(&self)),
            tag::BOXED => {
                // The box now belongs to the event: the entry must not free it again.
                self.tag = tag::RESET;
                // SAFETY: `wide` holds the pointer `Box::into_raw` returned in `Entry::new` (the
                // tag says so), and this is the only place that takes it back.
                *unsafe { Box::from_raw(self.wide as usize as *mut EventKind) }
            }
            _ => EventKind::Reset,
        };
        Event {
            seq,
            t_ns,
            status: self.status,
            duration_ns: self.duration_ns,
            kind,
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        if self.tag == tag::BOXED {
            // SAFETY: as in `into_event`: the tag says `wide` is our box's pointer, not taken back.
            drop(unsafe { Box::from_raw(self.wide as usize as *mut EventKind) });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hwrr_formats::{DmaWrite, IrqAction, IrqData, IrqSetup, Marker};

    #[test]
    fn an_entry_is_56_bytes_so_a_slot_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<Entry>(), 56);
    }

    #[test]
    fn a_placeholder_is_stamped_and_empty() {
        let p = Entry::placeholder(42);
        assert_eq!(p.role(), Role::Placeholder);
        assert_eq!(p.t_ns(), 42);
    }

    #[test]
    fn every_kind_comes_back_as_it_went_in() {
        let value = |size, value| AccessData::Value { size, value };
        let region = |region, offset, data| RegionAccess {
            region,
            offset,
            data,
        };
        let kinds = vec![
            EventKind::MmioRead(region(0, 0x10, value(4, 0xdead_beef))),
            EventKind::MmioWrite(region(5, u64::MAX, value(8, u64::MAX))),
            EventKind::PioRead(region(u32::MAX, 3, value(1, 0xff))),
            EventKind::PioWrite(region(2, 4, value(2, 0xabcd))),
            EventKind::MmioWrite(region(0, 0, AccessData::Bytes(vec![1, 2, 3]))),
            EventKind::ConfigRead(ConfigAccess {
                offset: 0x40,
                data: value(4, 7),
            }),
            EventKind::ConfigWrite(ConfigAccess {
                offset: u32::MAX,
                data: AccessData::Bytes(vec![9; 16]),
            }),
            EventKind::Irq(Irq {
                index: 2,
                vector: u32::MAX,
            }),
            EventKind::DmaMap(DmaMapping {
                iova: 1 << 40,
                len: 4096,
                flags: 3,
            }),
            EventKind::DmaUnmap(DmaMapping {
                iova: 0,
                len: u64::MAX,
                flags: u32::MAX,
            }),
            EventKind::Reset,
            EventKind::IrqSetup(IrqSetup {
                index: 2,
                start: 0,
                count: 2,
                action: IrqAction::Trigger,
                data: IrqData::Eventfd(vec![true, false]),
            }),
            EventKind::DmaWrite(DmaWrite {
                iova: 0x1000,
                data: vec![1; 64],
                before: Some(vec![0; 64]),
            }),
            EventKind::Marker(Marker {
                label: "x".into(),
                data: Some(vec![1]),
            }),
        ];
        for (i, kind) in kinds.into_iter().enumerate() {
            let want = Event {
                seq: i as u64,
                t_ns: 1000 + i as u64,
                status: i as u32,
                duration_ns: u64::MAX - i as u64,
                kind: kind.clone(),
            };
            let got = Entry::event(want.t_ns, want.status, want.duration_ns, kind.clone());
            assert_eq!(got.role(), Role::Event);
            assert_eq!(got.t_ns(), want.t_ns);
            assert_eq!(got.into_event(want.seq, want.t_ns), want);
            let got = Entry::completion(77, want.status, want.duration_ns, kind);
            assert_eq!(got.role(), Role::Completes(77));
            assert_eq!(got.into_event(want.seq, want.t_ns), want);
        }
    }

    #[test]
    fn a_boxed_entry_dropped_unread_frees_its_box_once() {
        let leaked = crate::alloc_count::live_bytes_change(|| {
            let kind = EventKind::Marker(Marker {
                label: "dropped unread".into(),
                data: Some(vec![0; 100]),
            });
            drop(Entry::event(0, 0, 0, kind));
        });
        assert_eq!(leaked, 0);
        let leaked = crate::alloc_count::live_bytes_change(|| {
            let kind = EventKind::Marker(Marker {
                label: "read".into(),
                data: None,
            });
            drop(Entry::completion(3, 0, 0, kind).into_event(0, 0));
        });
        assert_eq!(leaked, 0);
    }
}
