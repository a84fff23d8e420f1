//! The trace header: what device was captured, how it looked, and how the capture was made.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::event::{AccessData, DmaMapping, IrqSetup};

/// Standard VFIO PCI region indices.
pub mod region_index {
    /// First BAR.
    pub const BAR0: u32 = 0;
    /// Last BAR.
    pub const BAR5: u32 = 5;
    /// Expansion ROM.
    pub const ROM: u32 = 6;
    /// Configuration space.
    pub const CONFIG: u32 = 7;
    /// VGA ranges.
    pub const VGA: u32 = 8;
}

/// VFIO region flag bits (`VFIO_REGION_INFO_FLAG_*`).
pub mod region_flags {
    /// The region can be read.
    pub const READ: u32 = 1 << 0;
    /// The region can be written.
    pub const WRITE: u32 = 1 << 1;
    /// The region can be mmapped.
    pub const MMAP: u32 = 1 << 2;
    /// The region has a capability chain.
    pub const CAPS: u32 = 1 << 3;
}

/// What a region is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegionKind {
    /// A memory BAR.
    Mmio,
    /// An I/O-port BAR.
    Pio,
    /// PCI configuration space.
    Config,
    /// The expansion ROM.
    Rom,
}

impl RegionKind {
    /// What VFIO region `index` of a PCI device is. VFIO's region info does not tell I/O BARs from
    /// memory BARs; bit 0 of the BAR in `config` (configuration space) does. VGA and
    /// device-specific regions are memory-like windows.
    pub fn of_vfio_region(index: u32, config: &[u8]) -> Self {
        match index {
            region_index::ROM => RegionKind::Rom,
            region_index::CONFIG => RegionKind::Config,
            i if i <= region_index::BAR5 => match config.get(0x10 + 4 * i as usize) {
                Some(low) if low & 1 == 1 => RegionKind::Pio,
                _ => RegionKind::Mmio,
            },
            _ => RegionKind::Mmio,
        }
    }

    /// The name used in CLI and JSON output.
    pub fn name(self) -> &'static str {
        match self {
            RegionKind::Mmio => "mmio",
            RegionKind::Pio => "pio",
            RegionKind::Config => "config",
            RegionKind::Rom => "rom",
        }
    }
}

/// One device region as the capture saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionInfo {
    /// The VFIO region index.
    pub index: u32,
    /// What the region is.
    pub kind: RegionKind,
    /// Size in bytes.
    pub size: u64,
    /// VFIO region flags (see [`region_flags`]).
    pub flags: u32,
    /// For a BAR that the capture saw only as an alias of another region (QEMU's rtl8139 maps its
    /// MMIO BAR1 onto I/O BAR0), the index of the region whose accesses it mirrors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias_of: Option<u32>,
}

/// One VFIO IRQ index as the capture saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IrqInfo {
    /// The VFIO IRQ index (0 INTx, 1 MSI, 2 MSI-X, 3 ERR, 4 REQ).
    pub index: u32,
    /// Number of vectors.
    pub count: u32,
    /// VFIO IRQ info flags (`VFIO_IRQ_INFO_*`: 1 eventfd, 2 maskable, 4 automasked, 8 noresize).
    pub flags: u32,
}

/// Who the device is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceIdentity {
    /// PCI vendor id.
    pub vendor_id: u16,
    /// PCI device id.
    pub device_id: u16,
    /// PCI subsystem vendor id.
    pub subsystem_vendor_id: u16,
    /// PCI subsystem id.
    pub subsystem_id: u16,
    /// 24-bit class code (base class, sub-class, programming interface).
    pub class_code: u32,
    /// Revision id.
    pub revision: u8,
    /// The device's address at capture, e.g. `0000:00:19.0`, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bdf: Option<String>,
}

impl DeviceIdentity {
    /// Reads the identity fields out of a configuration-space snapshot (at least 0x30 bytes).
    pub fn from_config_space(config: &[u8], bdf: Option<String>) -> Option<Self> {
        if config.len() < 0x30 {
            return None;
        }
        let u16_at = |o: usize| u16::from_le_bytes([config[o], config[o + 1]]);
        Some(DeviceIdentity {
            vendor_id: u16_at(0),
            device_id: u16_at(2),
            revision: config[8],
            class_code: u32::from_le_bytes([config[9], config[10], config[11], 0]),
            subsystem_vendor_id: u16_at(0x2c),
            subsystem_id: u16_at(0x2e),
            bdf,
        })
    }
}

/// How and when the trace was made.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureMeta {
    /// The tool and version that wrote the trace, e.g. `hwrr 0.1.0`.
    pub tool: String,
    /// Where the events came from: `vfio`, `vfio-user`, `interposer`, `qemu-trace`, `synthetic`...
    pub source: String,
    /// Kernel of the capturing host (`uname -r`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// Host name of the capturing host, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Wall-clock time of `t_ns == 0`, in nanoseconds since the Unix epoch (0 when unknown).
    pub start_unix_ns: u64,
}

/// The device state a trace starts from when it does not start at capture start (a slice).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartState {
    /// Sequence number of the first event in the trace.
    pub first_seq: u64,
    /// Timestamp of the first event in the trace.
    pub first_t_ns: u64,
    /// The last value seen (read or written) at each register before the slice, keyed by region,
    /// offset and width.
    pub registers: Vec<RegisterValue>,
    /// DMA mappings in force at the slice start.
    pub dma_mappings: Vec<DmaMapping>,
    /// IRQ wiring requests in force at the slice start, oldest first.
    pub irq_setups: Vec<IrqSetup>,
}

/// A register's last known value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterValue {
    /// VFIO region index.
    pub region: u32,
    /// Offset in the region.
    pub offset: u64,
    /// The value.
    pub data: AccessData,
}

/// Everything a trace says about its device and capture before the first event.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceHeader {
    /// Device identity.
    pub device: DeviceIdentity,
    /// Configuration-space snapshot (up to 4096 bytes) at capture start (or, for a slice, at the
    /// slice start).
    #[serde(with = "hex_bytes")]
    pub config_space: Vec<u8>,
    /// Region table.
    pub regions: Vec<RegionInfo>,
    /// IRQ table.
    pub irqs: Vec<IrqInfo>,
    /// The expansion ROM image, captured once at start, when the device has one. Stored as a blob in
    /// the file.
    #[serde(skip)]
    pub rom: Option<Vec<u8>>,
    /// Capture metadata.
    pub capture: CaptureMeta,
    /// Free-form labels (`--label KEY=VALUE`).
    pub labels: BTreeMap<String, String>,
    /// For a trace that does not start at capture start: the state it starts from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_state: Option<StartState>,
}

impl TraceHeader {
    /// The region with this VFIO index, if the table has it.
    pub fn region(&self, index: u32) -> Option<&RegionInfo> {
        self.regions.iter().find(|r| r.index == index)
    }

    /// The IRQ index entry with this VFIO index, if the table has it.
    pub fn irq(&self, index: u32) -> Option<&IrqInfo> {
        self.irqs.iter().find(|i| i.index == index)
    }
}

/// Serde helper: bytes as a lowercase hex string.
pub mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes bytes as a hex string.
    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::hex::encode(bytes))
    }

    /// Deserializes a hex string into bytes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        crate::hex::decode(&s).map_err(serde::de::Error::custom)
    }
}
