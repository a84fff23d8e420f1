//! The event model: one [`Event`] per interaction between a VMM and a device.
//!
//! Every event carries a sequence number (dense, starting at the trace's first sequence number), a
//! timestamp in nanoseconds since capture start (non-decreasing along the stream), and what the
//! recorder learned about the call: its status (0 on success, else a positive errno) and its duration
//! (0 when not measured).

use serde::{Deserialize, Serialize};

/// The data of a register access.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AccessData {
    /// An access of 1, 2, 4 or 8 bytes. `value` holds the little-endian bytes zero-extended to 64 bits;
    /// bits above `size * 8` are always zero.
    Value {
        /// Access width in bytes: 1, 2, 4 or 8.
        size: u8,
        /// The value read or written.
        value: u64,
    },
    /// An access of any other length (3 bytes, or longer than 8), as raw bytes in device order.
    Bytes(Vec<u8>),
}

impl AccessData {
    /// Builds a sized value, masking `value` to `size` bytes. Returns `None` when `size` is not 1, 2,
    /// 4 or 8.
    pub fn value(size: u8, value: u64) -> Option<Self> {
        if !matches!(size, 1 | 2 | 4 | 8) {
            return None;
        }
        Some(AccessData::Value {
            size,
            value: value & size_mask(size),
        })
    }

    /// Builds the access data for `bytes` as a device region sees them: widths 1, 2, 4 and 8 become
    /// little-endian values, every other length stays bytes.
    pub fn from_le_bytes(bytes: &[u8]) -> Self {
        match bytes.len() {
            1 | 2 | 4 | 8 => {
                let mut buf = [0u8; 8];
                buf[..bytes.len()].copy_from_slice(bytes);
                AccessData::Value {
                    size: bytes.len() as u8,
                    value: u64::from_le_bytes(buf),
                }
            }
            _ => AccessData::Bytes(bytes.to_vec()),
        }
    }

    /// The access length in bytes.
    pub fn len(&self) -> usize {
        match self {
            AccessData::Value { size, .. } => *size as usize,
            AccessData::Bytes(b) => b.len(),
        }
    }

    /// True for a zero-length byte access (never produced by a well-formed recorder).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The access as little-endian bytes.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match self {
            AccessData::Value { size, value } => value.to_le_bytes()[..*size as usize].to_vec(),
            AccessData::Bytes(b) => b.clone(),
        }
    }
}

/// The mask of the low `size` bytes of a u64 (`size` in 0..=8).
pub fn size_mask(size: u8) -> u64 {
    match size {
        0 => 0,
        s if s >= 8 => u64::MAX,
        s => (1u64 << (s as u32 * 8)) - 1,
    }
}

/// An access to a device region (a BAR, or the expansion ROM).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RegionAccess {
    /// The VFIO region index (0..=5 for BARs, 6 for the ROM).
    pub region: u32,
    /// Byte offset inside the region.
    pub offset: u64,
    /// The value read or written.
    pub data: AccessData,
}

/// An access to PCI configuration space.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConfigAccess {
    /// Byte offset in configuration space (0..4096).
    pub offset: u32,
    /// The value read or written.
    pub data: AccessData,
}

/// What a `SET_IRQS` call asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IrqAction {
    /// `VFIO_IRQ_SET_ACTION_MASK`.
    Mask,
    /// `VFIO_IRQ_SET_ACTION_UNMASK`.
    Unmask,
    /// `VFIO_IRQ_SET_ACTION_TRIGGER`.
    Trigger,
}

impl IrqAction {
    /// The name used in JSON output.
    pub fn name(self) -> &'static str {
        match self {
            IrqAction::Mask => "mask",
            IrqAction::Unmask => "unmask",
            IrqAction::Trigger => "trigger",
        }
    }
}

/// The data a `SET_IRQS` call carried.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IrqData {
    /// `VFIO_IRQ_SET_DATA_NONE`.
    None,
    /// `VFIO_IRQ_SET_DATA_BOOL`: one flag per vector in `start..start+count`.
    Bool(Vec<bool>),
    /// `VFIO_IRQ_SET_DATA_EVENTFD`: per vector, whether an eventfd was given (`true`) or the vector was
    /// disconnected (fd -1, `false`). File descriptors themselves are meaningless outside the process.
    Eventfd(Vec<bool>),
}

/// A change of interrupt wiring requested by the VMM (`VFIO_DEVICE_SET_IRQS`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IrqSetup {
    /// VFIO IRQ index: 0 INTx, 1 MSI, 2 MSI-X, 3 ERR, 4 REQ.
    pub index: u32,
    /// First vector affected.
    pub start: u32,
    /// Number of vectors affected (0 with `IrqData::None` and `Trigger` disables the index).
    pub count: u32,
    /// Mask, unmask or trigger.
    pub action: IrqAction,
    /// The accompanying data.
    pub data: IrqData,
}

/// Standard VFIO IRQ indices.
pub mod irq_index {
    /// Legacy INTx.
    pub const INTX: u32 = 0;
    /// MSI.
    pub const MSI: u32 = 1;
    /// MSI-X.
    pub const MSIX: u32 = 2;
    /// AER error notification.
    pub const ERR: u32 = 3;
    /// Device request notification.
    pub const REQ: u32 = 4;
}

/// One interrupt delivered by the device: an MSI/MSI-X message or an INTx assertion. INTx
/// de-assertions and EOIs are not interrupts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Irq {
    /// VFIO IRQ index (see [`irq_index`]).
    pub index: u32,
    /// Vector within the index (always 0 for INTx).
    pub vector: u32,
}

/// A DMA mapping added or removed by the VMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DmaMapping {
    /// I/O virtual address as the device sees it.
    pub iova: u64,
    /// Length in bytes.
    pub len: u64,
    /// Flag bits as in vfio-user `DMA_MAP`/`DMA_UNMAP` (map: 1 readable, 2 writable; unmap: 2
    /// unmap-all). VFIO's type1 `MAP_DMA` read/write bits have the same values.
    pub flags: u32,
}

/// Bytes the device read from guest memory.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DmaRead {
    /// Device-visible address of the first byte.
    pub iova: u64,
    /// The bytes read.
    pub data: Vec<u8>,
}

/// Bytes the device wrote to guest memory.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DmaWrite {
    /// Device-visible address of the first byte.
    pub iova: u64,
    /// The bytes written.
    pub data: Vec<u8>,
    /// What guest memory held there before the write, when the recorder knows it. The replayer
    /// re-applies the write only where guest memory still holds these bytes.
    pub before: Option<Vec<u8>>,
}

/// A free-form marker (a label and optional bytes) placed in the stream by a tool or a user.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Marker {
    /// The label.
    pub label: String,
    /// Optional payload.
    pub data: Option<Vec<u8>>,
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    /// A read from a memory BAR or the ROM.
    MmioRead(RegionAccess),
    /// A write to a memory BAR.
    MmioWrite(RegionAccess),
    /// A read from an I/O-port BAR.
    PioRead(RegionAccess),
    /// A write to an I/O-port BAR.
    PioWrite(RegionAccess),
    /// A read of configuration space.
    ConfigRead(ConfigAccess),
    /// A write to configuration space.
    ConfigWrite(ConfigAccess),
    /// An interrupt delivered by the device.
    Irq(Irq),
    /// A change of interrupt wiring requested by the VMM.
    IrqSetup(IrqSetup),
    /// A DMA mapping added.
    DmaMap(DmaMapping),
    /// A DMA mapping removed.
    DmaUnmap(DmaMapping),
    /// The device read guest memory.
    DmaRead(DmaRead),
    /// The device wrote guest memory.
    DmaWrite(DmaWrite),
    /// A device reset.
    Reset,
    /// A free-form marker.
    Marker(Marker),
}

/// The kind of an event without its data: the keys of `hwrr info`'s `by_kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[repr(u8)]
pub enum KindTag {
    /// `mmio_read`
    MmioRead = 0,
    /// `mmio_write`
    MmioWrite = 1,
    /// `pio_read`
    PioRead = 2,
    /// `pio_write`
    PioWrite = 3,
    /// `config_read`
    ConfigRead = 4,
    /// `config_write`
    ConfigWrite = 5,
    /// `irq`
    Irq = 6,
    /// `irq_setup`
    IrqSetup = 7,
    /// `dma_map`
    DmaMap = 8,
    /// `dma_unmap`
    DmaUnmap = 9,
    /// `dma_read`
    DmaRead = 10,
    /// `dma_write`
    DmaWrite = 11,
    /// `reset`
    Reset = 12,
    /// `marker`
    Marker = 13,
}

impl KindTag {
    /// Number of kinds.
    pub const COUNT: usize = 14;

    /// All kinds in tag order.
    pub const ALL: [KindTag; KindTag::COUNT] = [
        KindTag::MmioRead,
        KindTag::MmioWrite,
        KindTag::PioRead,
        KindTag::PioWrite,
        KindTag::ConfigRead,
        KindTag::ConfigWrite,
        KindTag::Irq,
        KindTag::IrqSetup,
        KindTag::DmaMap,
        KindTag::DmaUnmap,
        KindTag::DmaRead,
        KindTag::DmaWrite,
        KindTag::Reset,
        KindTag::Marker,
    ];

    /// The stable name used in CLI and JSON output.
    pub fn name(self) -> &'static str {
        match self {
            KindTag::MmioRead => "mmio_read",
            KindTag::MmioWrite => "mmio_write",
            KindTag::PioRead => "pio_read",
            KindTag::PioWrite => "pio_write",
            KindTag::ConfigRead => "config_read",
            KindTag::ConfigWrite => "config_write",
            KindTag::Irq => "irq",
            KindTag::IrqSetup => "irq_setup",
            KindTag::DmaMap => "dma_map",
            KindTag::DmaUnmap => "dma_unmap",
            KindTag::DmaRead => "dma_read",
            KindTag::DmaWrite => "dma_write",
            KindTag::Reset => "reset",
            KindTag::Marker => "marker",
        }
    }

    /// The kind with this tag byte, if any.
    pub fn from_u8(tag: u8) -> Option<Self> {
        KindTag::ALL.get(tag as usize).copied()
    }

    /// The kind with this name, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        KindTag::ALL.iter().copied().find(|k| k.name() == name)
    }

    /// True for register and config-space accesses (the events the replayer sequences).
    pub fn is_access(self) -> bool {
        (self as u8) <= KindTag::ConfigWrite as u8
    }
}

impl EventKind {
    /// The kind tag.
    pub fn tag(&self) -> KindTag {
        match self {
            EventKind::MmioRead(_) => KindTag::MmioRead,
            EventKind::MmioWrite(_) => KindTag::MmioWrite,
            EventKind::PioRead(_) => KindTag::PioRead,
            EventKind::PioWrite(_) => KindTag::PioWrite,
            EventKind::ConfigRead(_) => KindTag::ConfigRead,
            EventKind::ConfigWrite(_) => KindTag::ConfigWrite,
            EventKind::Irq(_) => KindTag::Irq,
            EventKind::IrqSetup(_) => KindTag::IrqSetup,
            EventKind::DmaMap(_) => KindTag::DmaMap,
            EventKind::DmaUnmap(_) => KindTag::DmaUnmap,
            EventKind::DmaRead(_) => KindTag::DmaRead,
            EventKind::DmaWrite(_) => KindTag::DmaWrite,
            EventKind::Reset => KindTag::Reset,
            EventKind::Marker(_) => KindTag::Marker,
        }
    }
}

/// One recorded interaction.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Event {
    /// Sequence number; dense and increasing along the stream.
    pub seq: u64,
    /// Nanoseconds since capture start; non-decreasing along the stream.
    pub t_ns: u64,
    /// 0 when the call succeeded, else the positive errno it failed with.
    pub status: u32,
    /// How long the call took in nanoseconds; 0 when not measured.
    pub duration_ns: u64,
    /// What happened.
    pub kind: EventKind,
}

impl Event {
    /// An event with status 0 and no measured duration.
    pub fn new(seq: u64, t_ns: u64, kind: EventKind) -> Self {
        Event {
            seq,
            t_ns,
            status: 0,
            duration_ns: 0,
            kind,
        }
    }

    /// The kind tag.
    pub fn tag(&self) -> KindTag {
        self.kind.tag()
    }
}

/// Event counts by kind, indexed by [`KindTag`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindCounts(pub [u64; KindTag::COUNT]);

impl KindCounts {
    /// Counts one more event of `tag`.
    pub fn add(&mut self, tag: KindTag) {
        self.0[tag as usize] += 1;
    }

    /// The count for `tag`.
    pub fn get(&self, tag: KindTag) -> u64 {
        self.0[tag as usize]
    }

    /// Total of all kinds.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &KindCounts) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a += *b;
        }
    }

    /// Register and config-space accesses (the denominator of the bytes-per-access size metric).
    pub fn accesses(&self) -> u64 {
        KindTag::ALL
            .iter()
            .filter(|k| k.is_access())
            .map(|k| self.get(*k))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_round_trip() {
        for k in KindTag::ALL {
            assert_eq!(KindTag::from_name(k.name()), Some(k));
            assert_eq!(KindTag::from_u8(k as u8), Some(k));
        }
        assert_eq!(KindTag::from_u8(14), None);
    }

    #[test]
    fn access_data_masks_and_converts() {
        assert_eq!(
            AccessData::value(2, 0x1234_5678),
            Some(AccessData::Value {
                size: 2,
                value: 0x5678
            })
        );
        assert_eq!(AccessData::value(3, 1), None);
        let d = AccessData::from_le_bytes(&[1, 2, 3, 4]);
        assert_eq!(
            d,
            AccessData::Value {
                size: 4,
                value: 0x0403_0201
            }
        );
        assert_eq!(d.to_le_bytes(), vec![1, 2, 3, 4]);
        assert_eq!(
            AccessData::from_le_bytes(&[1, 2, 3]),
            AccessData::Bytes(vec![1, 2, 3])
        );
    }
}
