//! The state machine both passes run over the log: BAR mappings, config reconstruction, INTx
//! levels, MSI/MSI-X message matching and event production.

use std::collections::HashMap;
use std::path::Path;

use hwrr_formats::{
    irq_index, AccessData, CaptureMeta, ConfigAccess, DeviceIdentity, Event, EventKind, Irq,
    RegionAccess, RegionKind, TraceHeader,
};

use crate::config::{self, ConfigRecon};
use crate::input::{open_log, Lines};
use crate::line::{self, LineError, RawLine};
use crate::{
    ImportError, ImportOptions, ImportReport, QemuImport, SelectedDevice, MAX_MALFORMED_EXAMPLES,
};

/// Which family of trace events describes the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// QEMU's own emulated device: `memory_region_ops_*`, `pci_cfg_*`, device-model events.
    Emulated,
    /// A host device passed through with QEMU's vfio-pci: `vfio_*` events.
    Passthrough,
}

/// Device-model events that name a delivered interrupt: (event-name suffix after the device's
/// prefix, VFIO IRQ index, whether the vector is the last number of the line (else 0)).
const VECTOR_EVENTS: &[(&str, u32, bool)] = &[
    ("irq_msix", irq_index::MSIX, true),
    ("irq_msi", irq_index::MSI, true),
    ("irq_msix_notify_vec", irq_index::MSIX, true),
    ("irq_msix_notify_postponed_vec", irq_index::MSIX, true),
    ("irq_msi_notify", irq_index::MSI, false),
    ("irq_msi_notify_postponed", irq_index::MSI, false),
];

/// Device-model events that are a device reset (suffix after the device's prefix).
const RESET_EVENTS: &[&str] = &["pci_reset"];

#[derive(Clone, Debug)]
struct Dev {
    dialect: Dialect,
    name: String,
    bdf: String,
    sid: Option<u32>,
    prefixes: [String; 2],
    bars: [Option<(u64, u64)>; 7],
    bar_size: [u64; 7],
    bar_mapped: [bool; 7],
    bar_accesses: [u64; 7],
    cfg: ConfigRecon,
    accesses: u64,
    vector_events: u64,
    /// Device-model trace events (`<name>_*`, `pci_<name>_*`) of any kind.
    model_events: u64,
    intx_events: u64,
    max_vector: [Option<u32>; 3],
    vfio_config_size: Option<u64>,
    vfio_msix_entries: Option<u32>,
    vfio_msi_vectors: Option<u32>,
    vfio_irq_mode: u32,
    msix_table: HashMap<u32, [u32; 4]>,
}

impl Dev {
    fn new(dialect: Dialect, name: &str, bdf: &str) -> Self {
        Dev {
            dialect,
            name: name.to_string(),
            bdf: bdf.to_string(),
            sid: line::source_id(bdf),
            prefixes: [format!("{name}_"), format!("pci_{name}_")],
            bars: [None; 7],
            bar_size: [0; 7],
            bar_mapped: [false; 7],
            bar_accesses: [0; 7],
            cfg: ConfigRecon::default(),
            accesses: 0,
            vector_events: 0,
            model_events: 0,
            intx_events: 0,
            max_vector: [None; 3],
            vfio_config_size: None,
            vfio_msix_entries: None,
            vfio_msi_vectors: None,
            vfio_irq_mode: irq_index::MSI,
            msix_table: HashMap::new(),
        }
    }

    fn label(&self) -> String {
        format!("{}@{}", self.name, self.bdf)
    }

    /// Does a memory region of this name belong to this device? Its own name, `<name>-...`
    /// sub-regions, and the generic MSI-X table/PBA regions (whose owner only the address tells).
    fn owns_region_name(&self, region: &str) -> bool {
        self.owns_region_by_own_name(region) || region == "msix-table" || region == "msix-pba"
    }

    /// Is the region named after this device (its name or `<name>-...`)?
    fn owns_region_by_own_name(&self, region: &str) -> bool {
        region == self.name
            || region
                .strip_prefix(self.name.as_str())
                .is_some_and(|r| r.starts_with('-'))
    }

    fn bar_containing(&self, addr: u64) -> Option<(usize, u64)> {
        self.bars.iter().enumerate().find_map(|(i, m)| {
            let (base, size) = (*m)?;
            (addr >= base && addr - base < size).then(|| (i, addr - base))
        })
    }

    fn bar_is_io(&self, bar: usize) -> bool {
        self.cfg.bar_io.get(bar).copied().flatten().unwrap_or(false)
    }

    fn suffix<'n>(&self, event: &'n str) -> Option<&'n str> {
        self.prefixes
            .iter()
            .find_map(|p| event.strip_prefix(p.as_str()))
    }

    fn note_vector(&mut self, index: u32, vector: u32) {
        if let Some(slot) = self.max_vector.get_mut(index as usize) {
            *slot = Some(slot.map_or(vector, |m| m.max(vector)));
        }
    }
}

/// What pass 2 needs to know from pass 1.
#[derive(Clone, Debug)]
pub struct Plan {
    dialect: Dialect,
    name: String,
    bdf: String,
    intx_gsi: Option<u32>,
    /// Match `vtd-ir`/`apic-msi` writes against the device's programmed MSI/MSI-X messages
    /// (only when the device model has no events naming its vectors).
    msi_from_writes: bool,
    /// Snapshot from pass 1, for capability positions.
    snapshot: Vec<u8>,
    /// BAR kinds from pass 1 (I/O or memory).
    bar_io: [bool; 7],
}

/// What a line did.
enum Outcome {
    /// An event for `dev`.
    Event(usize, EventKind),
    /// Nothing for any device (other devices, DMA translations, bookkeeping).
    Nothing,
    /// An access to a region named after `dev` outside its mapped BARs.
    Unmapped(usize),
}

struct Engine<'p> {
    devices: Vec<Dev>,
    /// Pass 2: only this device is tracked.
    plan: Option<&'p Plan>,
    gsi_level: HashMap<u32, bool>,
    /// Pass 1: per QEMU thread, the device the last attributable line was about.
    thread_actor: HashMap<u32, Option<usize>>,
    /// Pass 1: rising edges per (device, GSI) that followed a line of the device on that thread.
    gsi_hits: HashMap<(usize, u32), u64>,
    first_wall: Option<u64>,
    last_wall: Option<u64>,
    last_t: u64,
    seq: u64,
    report: ImportReport,
    /// A vfio event whose sizes QEMU printed on the next line (older `Device %s config:\n  size:
    /// ...` formats): the device and what the size is of.
    awaiting_sizes: Option<(usize, SizeOf)>,
}

/// What the continuation line of a two-line vfio event gives the size of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SizeOf {
    Config,
    Rom,
}

impl<'p> Engine<'p> {
    fn new(plan: Option<&'p Plan>) -> Self {
        let mut devices = Vec::new();
        if let Some(p) = plan {
            devices.push(Dev::new(p.dialect, &p.name, &p.bdf));
        }
        Engine {
            devices,
            plan,
            gsi_level: HashMap::new(),
            thread_actor: HashMap::new(),
            gsi_hits: HashMap::new(),
            first_wall: None,
            last_wall: None,
            last_t: 0,
            awaiting_sizes: None,
            seq: 0,
            report: ImportReport::default(),
        }
    }

    fn malformed(&mut self, line_no: u64, why: &str, text: &[u8]) {
        self.report.malformed += 1;
        if self.report.malformed_examples.len() < MAX_MALFORMED_EXAMPLES {
            let mut t = String::from_utf8_lossy(text).into_owned();
            if t.len() > 160 {
                let mut cut = 160;
                while !t.is_char_boundary(cut) {
                    cut -= 1;
                }
                t.truncate(cut);
                t.push('…');
            }
            self.report
                .malformed_examples
                .push((line_no, format!("{why}: {t}")));
        }
    }

    /// Finds or (pass 1 only) creates a device.
    fn device(&mut self, dialect: Dialect, name: &str, bdf: &str) -> Option<usize> {
        if let Some(i) = self
            .devices
            .iter()
            .position(|d| d.dialect == dialect && d.name == name && d.bdf == bdf)
        {
            return Some(i);
        }
        if self.plan.is_some() {
            return None;
        }
        self.devices.push(Dev::new(dialect, name, bdf));
        Some(self.devices.len() - 1)
    }

    fn vfio_device(&mut self, name: &str) -> Option<usize> {
        let bdf = line::normalize_bdf(name).unwrap_or_else(|| name.to_string());
        self.device(Dialect::Passthrough, name, &bdf)
    }

    fn run(
        &mut self,
        path: &Path,
        mut sink: Option<&mut dyn FnMut(Event) -> Result<(), ImportError>>,
    ) -> Result<(), ImportError> {
        let mut lines = Lines::new(open_log(path)?, path);
        let mut line_no = 0u64;
        while let Some(bytes) = lines.next_line()? {
            line_no += 1;
            self.report.lines += 1;
            let Ok(text) = std::str::from_utf8(bytes) else {
                let owned = bytes.to_vec();
                self.malformed(line_no, "not UTF-8", &owned);
                continue;
            };
            if text.trim().is_empty() {
                self.report.ignored += 1;
                continue;
            }
            // QEMU's log lines start at column 0; a line that starts with blanks is the rest of
            // the previous event's message (formats with an embedded `\n`).
            if text.starts_with([' ', '\t']) {
                match self.continuation(text) {
                    Ok(()) => self.report.ignored += 1,
                    Err(why) => {
                        let owned = bytes.to_vec();
                        self.malformed(line_no, why, &owned);
                    }
                }
                continue;
            }
            self.awaiting_sizes = None;
            let raw = match line::split_line(text) {
                Ok(r) => r,
                Err(why) => {
                    let owned = bytes.to_vec();
                    self.malformed(line_no, why, &owned);
                    continue;
                }
            };
            if let Some(w) = raw.wall_ns {
                self.first_wall.get_or_insert(w);
                self.last_wall = Some(w);
            }
            match self.process(&raw) {
                Err(why) => {
                    let owned = bytes.to_vec();
                    self.malformed(line_no, why, &owned);
                }
                Ok(Outcome::Nothing) => self.report.ignored += 1,
                Ok(Outcome::Unmapped(dev)) => {
                    self.report.ignored += 1;
                    if self.plan.is_some() && dev == 0 {
                        self.report.unmapped += 1;
                    }
                }
                Ok(Outcome::Event(dev, kind)) => {
                    let Some(sink) = sink.as_mut().filter(|_| dev == 0) else {
                        self.report.ignored += 1;
                        continue;
                    };
                    let wall = raw.wall_ns.or(self.last_wall);
                    let t = match (wall, self.first_wall) {
                        (Some(w), Some(f)) => w.checked_sub(f),
                        _ => Some(0),
                    };
                    let t = match t {
                        Some(t) if t >= self.last_t => t,
                        _ => {
                            self.report.timestamps_clamped += 1;
                            self.last_t
                        }
                    };
                    self.last_t = t;
                    let ev = Event::new(self.seq, t, kind);
                    self.seq += 1;
                    self.report.events += 1;
                    self.report.by_kind.add(ev.tag());
                    sink(ev)?;
                }
            }
        }
        Ok(())
    }

    /// The second line of `vfio_populate_device_config` / `vfio_pci_load_rom` in QEMU versions
    /// that print `Device %s config:\n  size: 0x%lx, offset: 0x%lx, flags: 0x%lx`.
    fn continuation(&mut self, text: &str) -> Result<(), LineError> {
        let Some((i, what)) = self.awaiting_sizes.take() else {
            return Ok(());
        };
        let size = line::field_hex(text, "size:").ok_or("vfio event without size")?;
        self.set_size(i, what, size)
    }

    fn set_size(&mut self, i: usize, what: SizeOf, size: u64) -> Result<(), LineError> {
        let d = &mut self.devices[i];
        match what {
            SizeOf::Config => d.vfio_config_size = Some(line::plausible_region_size(7, size)?),
            SizeOf::Rom => {
                d.bar_size[6] = line::plausible_region_size(6, size)?;
                d.bar_mapped[6] = true;
            }
        }
        Ok(())
    }

    fn set_actor(&mut self, raw: &RawLine<'_>, dev: Option<usize>) {
        if self.plan.is_none() {
            self.thread_actor.insert(raw.thread.unwrap_or(0), dev);
        }
    }

    fn process(&mut self, raw: &RawLine<'_>) -> Result<Outcome, LineError> {
        let name = raw.name;
        let args = raw.args;
        match name {
            "memory_region_ops_read" | "memory_region_ops_write" => {
                let write = name.ends_with("write");
                let op = line::region_op(args)?;
                if op.region == "vtd-ir" || op.region == "apic-msi" {
                    let out = if write {
                        self.msi_write(op.addr, op.value)
                    } else {
                        Outcome::Nothing
                    };
                    return Ok(out);
                }
                let mut named = None;
                let mut hit = None;
                for (i, d) in self.devices.iter().enumerate() {
                    if d.dialect != Dialect::Emulated || !d.owns_region_name(op.region) {
                        continue;
                    }
                    if d.owns_region_by_own_name(op.region) {
                        named.get_or_insert(i);
                    }
                    if let Some((bar, off)) = d.bar_containing(op.addr) {
                        hit = Some((i, bar, off));
                        break;
                    }
                }
                if hit.is_none() && named.is_none() {
                    // A region the model named after something else than the device (virtio's
                    // `virtio-pci-common-virtio-net` inside `virtio-net-pci`'s BAR 4, `ahci`
                    // inside `ich9-ahci`): the device whose mapped BAR holds the address owns it,
                    // since mapped BARs never overlap one another.
                    hit = self.devices.iter().enumerate().find_map(|(i, d)| {
                        (d.dialect == Dialect::Emulated)
                            .then(|| d.bar_containing(op.addr))
                            .flatten()
                            .map(|(bar, off)| (i, bar, off))
                    });
                }
                let Some((i, bar, offset)) = hit else {
                    self.set_actor(raw, named);
                    return Ok(named.map_or(Outcome::Nothing, Outcome::Unmapped));
                };
                self.set_actor(raw, Some(i));
                let data = AccessData::value(op.size, op.value).ok_or("bad access size")?;
                let d = &mut self.devices[i];
                d.bar_accesses[bar] += 1;
                d.accesses += 1;
                if write {
                    self.track_msix_table(i, bar, offset, op.size, op.value);
                }
                let io = match self.plan {
                    Some(p) => p.bar_io[bar],
                    None => self.devices[i].bar_is_io(bar),
                };
                let access = RegionAccess {
                    region: bar as u32,
                    offset,
                    data,
                };
                let kind = match (io, write) {
                    (true, false) => EventKind::PioRead(access),
                    (true, true) => EventKind::PioWrite(access),
                    (false, false) => EventKind::MmioRead(access),
                    (false, true) => EventKind::MmioWrite(access),
                };
                Ok(Outcome::Event(i, kind))
            }
            "pci_cfg_read" | "pci_cfg_write" => {
                let write = name.ends_with("write");
                let op = line::cfg_op(args, if write { "<-" } else { "->" })?;
                let Some(i) = self.device(Dialect::Emulated, op.dev, &op.bdf) else {
                    return Ok(Outcome::Nothing);
                };
                self.set_actor(raw, Some(i));
                let width = config::infer_config_width(op.offset, op.value);
                Ok(self.config_access(i, write, op.offset, width, op.value))
            }
            "pci_update_mappings_add" | "pci_update_mappings_del" => {
                let op = line::mapping_op(args)?;
                let Some(i) = self.device(Dialect::Emulated, op.dev, &op.bdf) else {
                    return Ok(Outcome::Nothing);
                };
                self.set_actor(raw, Some(i));
                let d = &mut self.devices[i];
                let bar = op.bar as usize;
                if name.ends_with("add") {
                    d.bars[bar] = Some((op.base, op.size));
                    d.bar_mapped[bar] = true;
                    d.bar_size[bar] = d.bar_size[bar].max(op.size);
                } else {
                    d.bars[bar] = None;
                }
                Ok(Outcome::Nothing)
            }
            "ioapic_set_irq" => {
                let (gsi, level) = line::ioapic_set_irq(args)?;
                let was = self.gsi_level.insert(gsi, level).unwrap_or(false);
                if !level || was {
                    return Ok(Outcome::Nothing);
                }
                match self.plan {
                    Some(p) if p.intx_gsi == Some(gsi) => Ok(Outcome::Event(
                        0,
                        EventKind::Irq(Irq {
                            index: 0,
                            vector: 0,
                        }),
                    )),
                    Some(_) => Ok(Outcome::Nothing),
                    None => {
                        let actor = self.thread_actor.get(&raw.thread.unwrap_or(0));
                        if let Some(Some(dev)) = actor.copied() {
                            *self.gsi_hits.entry((dev, gsi)).or_insert(0) += 1;
                        }
                        Ok(Outcome::Nothing)
                    }
                }
            }
            "ioapic_eoi_broadcast" => Ok(Outcome::Nothing),
            "vtd_dmar_translate" => {
                let dev = args
                    .strip_prefix("dev ")
                    .and_then(|r| r.split_ascii_whitespace().next())
                    .and_then(line::normalize_bdf)
                    .ok_or("vtd_dmar_translate without device")?;
                let actor = self
                    .devices
                    .iter()
                    .position(|d| d.dialect == Dialect::Emulated && d.bdf == dev);
                self.set_actor(raw, actor);
                Ok(Outcome::Nothing)
            }
            "vtd_iotlb_page_hit" | "vtd_iotlb_page_update" => {
                let sid = args
                    .split_once("sid ")
                    .and_then(|(_, r)| r.split_ascii_whitespace().next())
                    .and_then(line::parse_hex)
                    .ok_or("vtd_iotlb without sid")?;
                let actor = self
                    .devices
                    .iter()
                    .position(|d| d.dialect == Dialect::Emulated && d.sid == Some(sid as u32));
                self.set_actor(raw, actor);
                Ok(Outcome::Nothing)
            }
            n if n.starts_with("vfio_") => self.vfio(raw),
            _ => {
                let hit = self
                    .devices
                    .iter()
                    .enumerate()
                    .find_map(|(i, d)| Some((i, d.suffix(name)?)));
                let Some((i, suffix)) = hit else {
                    self.set_actor(raw, None);
                    return Ok(Outcome::Nothing);
                };
                self.set_actor(raw, Some(i));
                self.devices[i].model_events += 1;
                if let Some(&(_, index, numbered)) =
                    VECTOR_EVENTS.iter().find(|(s, _, _)| *s == suffix)
                {
                    let vector = if numbered {
                        let v = line::last_number(args).ok_or("vector event without vector")?;
                        u32::try_from(v).map_err(|_| "vector out of range")?
                    } else {
                        0
                    };
                    let d = &mut self.devices[i];
                    d.vector_events += 1;
                    d.note_vector(index, vector);
                    return Ok(Outcome::Event(i, EventKind::Irq(Irq { index, vector })));
                }
                if RESET_EVENTS.contains(&suffix) {
                    return Ok(Outcome::Event(i, EventKind::Reset));
                }
                Ok(Outcome::Nothing)
            }
        }
    }

    fn config_access(
        &mut self,
        i: usize,
        write: bool,
        offset: u32,
        width: u8,
        value: u32,
    ) -> Outcome {
        let d = &mut self.devices[i];
        if write {
            d.cfg.write(offset, width, value);
        } else {
            d.cfg.read(offset, width, value);
        }
        d.accesses += 1;
        let Some(data) = AccessData::value(width, value as u64) else {
            return Outcome::Nothing;
        };
        let access = ConfigAccess { offset, data };
        Outcome::Event(
            i,
            if write {
                EventKind::ConfigWrite(access)
            } else {
                EventKind::ConfigRead(access)
            },
        )
    }

    fn vfio(&mut self, raw: &RawLine<'_>) -> Result<Outcome, LineError> {
        let args = raw.args;
        let out = match raw.name {
            "vfio_region_read" | "vfio_region_write" => {
                let write = raw.name.ends_with("write");
                let (name, region, offset, size, value) = line::vfio_region(args, write)?;
                let Some(i) = self.vfio_device(name) else {
                    return Ok(Outcome::Nothing);
                };
                self.set_actor(raw, Some(i));
                if region == 7 {
                    if size > 4 || offset >= 4096 {
                        return Err("config region access out of range");
                    }
                    return Ok(self.config_access(i, write, offset as u32, size, value as u32));
                }
                let data = AccessData::value(size, value).ok_or("bad access size")?;
                let d = &mut self.devices[i];
                d.accesses += 1;
                let bar = region as usize;
                if let Some(c) = d.bar_accesses.get_mut(bar) {
                    *c += 1;
                }
                let io = match self.plan {
                    Some(p) => p.bar_io.get(bar).copied().unwrap_or(false),
                    None => bar < 6 && d.bar_is_io(bar),
                };
                let access = RegionAccess {
                    region,
                    offset,
                    data,
                };
                let kind = match (io, write) {
                    (true, false) => EventKind::PioRead(access),
                    (true, true) => EventKind::PioWrite(access),
                    (false, false) => EventKind::MmioRead(access),
                    (false, true) => EventKind::MmioWrite(access),
                };
                Outcome::Event(i, kind)
            }
            "vfio_pci_read_config" | "vfio_pci_write_config" => {
                let write = raw.name.ends_with("write_config");
                let (name, offset, len, value) = line::vfio_config(args, write)?;
                let Some(i) = self.vfio_device(name) else {
                    return Ok(Outcome::Nothing);
                };
                self.set_actor(raw, Some(i));
                self.config_access(i, write, offset, len, value)
            }
            "vfio_rom_read" => {
                let (name, offset, size, value) = line::vfio_rom_read(args)?;
                let Some(i) = self.vfio_device(name) else {
                    return Ok(Outcome::Nothing);
                };
                let data = AccessData::value(size, value).ok_or("bad access size")?;
                let d = &mut self.devices[i];
                d.accesses += 1;
                d.bar_accesses[6] += 1;
                Outcome::Event(
                    i,
                    EventKind::MmioRead(RegionAccess {
                        region: 6,
                        offset,
                        data,
                    }),
                )
            }
            "vfio_intx_interrupt" => {
                let (name, _) = line::vfio_name(args)?;
                let Some(i) = self.vfio_device(name) else {
                    return Ok(Outcome::Nothing);
                };
                self.devices[i].intx_events += 1;
                Outcome::Event(
                    i,
                    EventKind::Irq(Irq {
                        index: 0,
                        vector: 0,
                    }),
                )
            }
            "vfio_msi_interrupt" => {
                let (name, vector) = line::vfio_msi_interrupt(args)?;
                let Some(i) = self.vfio_device(name) else {
                    return Ok(Outcome::Nothing);
                };
                let d = &mut self.devices[i];
                let index = d.vfio_irq_mode;
                d.vector_events += 1;
                d.note_vector(index, vector);
                Outcome::Event(i, EventKind::Irq(Irq { index, vector }))
            }
            "vfio_msix_enable" | "vfio_msi_enable" => {
                let (name, rest) = line::vfio_name(args)?;
                let Some(i) = self.vfio_device(name) else {
                    return Ok(Outcome::Nothing);
                };
                let d = &mut self.devices[i];
                if raw.name == "vfio_msix_enable" {
                    d.vfio_irq_mode = irq_index::MSIX;
                } else {
                    d.vfio_irq_mode = irq_index::MSI;
                    let n = rest
                        .split_ascii_whitespace()
                        .nth(1)
                        .and_then(line::parse_dec)
                        .ok_or("vfio_msi_enable without count")?;
                    let n = u32::try_from(n).map_err(|_| "bad MSI count")?;
                    d.vfio_msi_vectors = Some(d.vfio_msi_vectors.unwrap_or(0).max(n));
                }
                Outcome::Nothing
            }
            "vfio_pci_reset" => {
                let (name, _) = line::vfio_name(args)?;
                match self.vfio_device(name) {
                    Some(i) => Outcome::Event(i, EventKind::Reset),
                    None => Outcome::Nothing,
                }
            }
            "vfio_region_setup" => {
                let (name, region, size) = line::vfio_region_setup(args)?;
                if let Some(i) = self.vfio_device(name) {
                    let d = &mut self.devices[i];
                    if (region as usize) < 7 {
                        d.bar_size[region as usize] = size;
                        d.bar_mapped[region as usize] = true;
                    } else if region == 7 {
                        d.vfio_config_size = Some(size);
                    }
                }
                Outcome::Nothing
            }
            "vfio_pci_load_rom"
            | "vfio_populate_device_config"
            | "vfio_pci_populate_device_config" => {
                let name = line::described_device(args).ok_or("vfio event without device")?;
                let what = if raw.name == "vfio_pci_load_rom" {
                    SizeOf::Rom
                } else {
                    SizeOf::Config
                };
                if let Some(i) = self.vfio_device(name) {
                    match line::field_hex(args, "size:") {
                        Some(size) => self.set_size(i, what, size)?,
                        // Older QEMUs print the sizes on the next line.
                        None => self.awaiting_sizes = Some((i, what)),
                    }
                }
                Outcome::Nothing
            }
            "vfio_msix_early_setup" => {
                let name = args
                    .split_ascii_whitespace()
                    .next()
                    .ok_or("vfio_msix_early_setup truncated")?;
                let entries = args
                    .split_once("entries ")
                    .and_then(|(_, r)| r.split([',', ' ']).next())
                    .and_then(line::parse_dec)
                    .ok_or("vfio_msix_early_setup without entries")?;
                if let Some(i) = self.vfio_device(name) {
                    self.devices[i].vfio_msix_entries =
                        Some(u32::try_from(entries).map_err(|_| "bad MSI-X entries")?);
                }
                Outcome::Nothing
            }
            _ => Outcome::Nothing,
        };
        Ok(out)
    }

    /// Keeps the model of the MSI-X table of the tracked device (pass 2) up to date.
    fn track_msix_table(&mut self, i: usize, bar: usize, offset: u64, size: u8, value: u64) {
        let Some(plan) = self.plan.filter(|p| p.msi_from_writes) else {
            return;
        };
        let Some((tbar, toff, entries)) = config::msix_table(&plan.snapshot) else {
            return;
        };
        if tbar != bar || offset < toff || offset >= toff + 16 * entries as u64 {
            return;
        }
        let rel = offset - toff;
        let entry = (rel / 16) as u32;
        let words = self.devices[i]
            .msix_table
            .entry(entry)
            .or_insert([0, 0, 0, 1]);
        let mut bytes = [0u8; 16];
        for (k, w) in words.iter().enumerate() {
            bytes[4 * k..4 * k + 4].copy_from_slice(&w.to_le_bytes());
        }
        let at = (rel % 16) as usize;
        let v = value.to_le_bytes();
        for k in 0..size as usize {
            if at + k < 16 {
                bytes[at + k] = v[k];
            }
        }
        for (k, w) in words.iter_mut().enumerate() {
            *w = u32::from_le_bytes([
                bytes[4 * k],
                bytes[4 * k + 1],
                bytes[4 * k + 2],
                bytes[4 * k + 3],
            ]);
        }
    }

    /// A write to the interrupt-remapping or APIC MSI window: an interrupt of the tracked device
    /// when it matches a message the device has been programmed to send.
    fn msi_write(&mut self, addr: u64, data: u64) -> Outcome {
        let Some(plan) = self.plan.filter(|p| p.msi_from_writes) else {
            return Outcome::Nothing;
        };
        let d = &self.devices[0];
        if let Some(cap) = config::find_capability(&plan.snapshot, 0x11) {
            let ctrl = d.cfg.live_u16(cap + 2);
            if ctrl & 0x8000 != 0 && ctrl & 0x4000 == 0 {
                let hit = d.msix_table.iter().find(|(_, w)| {
                    (w[0] as u64 | (w[1] as u64) << 32) == addr
                        && w[2] as u64 == data
                        && w[3] & 1 == 0
                });
                if let Some((&vector, _)) = hit {
                    return Outcome::Event(
                        0,
                        EventKind::Irq(Irq {
                            index: irq_index::MSIX,
                            vector,
                        }),
                    );
                }
                return Outcome::Nothing;
            }
        }
        if let Some(cap) = config::find_capability(&plan.snapshot, 0x05) {
            let ctrl = d.cfg.live_u16(cap + 2);
            if ctrl & 1 != 0 {
                let wide = ctrl & 0x80 != 0;
                let mut msg_addr = d.cfg.live_u32(cap + 4) as u64;
                let msg_data = if wide {
                    msg_addr |= (d.cfg.live_u32(cap + 8) as u64) << 32;
                    d.cfg.live_u16(cap + 0xc)
                } else {
                    d.cfg.live_u16(cap + 8)
                } as u64;
                let n = 1u64 << ((ctrl >> 4) & 7).min(5);
                if msg_addr == addr && (data & !(n - 1)) == (msg_data & !(n - 1)) {
                    return Outcome::Event(
                        0,
                        EventKind::Irq(Irq {
                            index: irq_index::MSI,
                            vector: (data & (n - 1)) as u32,
                        }),
                    );
                }
            }
        }
        Outcome::Nothing
    }
}

fn select(engine: &Engine<'_>, opts: &ImportOptions) -> Result<usize, ImportError> {
    let weight = |d: &Dev| d.accesses + d.vector_events + d.intx_events;
    let best = |cands: &mut dyn Iterator<Item = usize>| -> Option<usize> {
        cands.max_by_key(|&i| {
            let d = &engine.devices[i];
            (
                d.dialect == Dialect::Passthrough,
                // A capture that enabled a device model's own trace events was made to study
                // that device, however busy the disk or console beside it was.
                d.model_events > 0,
                d.bar_accesses.iter().sum::<u64>(),
                weight(d),
            )
        })
    };
    match &opts.device {
        Some(want) => {
            let bdf = line::normalize_bdf(want);
            let found = best(&mut (0..engine.devices.len()).filter(|&i| {
                let d = &engine.devices[i];
                d.name == *want || bdf.as_deref() == Some(d.bdf.as_str())
            }));
            found.ok_or_else(|| ImportError::NoSuchDevice {
                wanted: want.clone(),
                seen: seen_list(engine),
            })
        }
        None => best(&mut (0..engine.devices.len()).filter(|&i| weight(&engine.devices[i]) > 0))
            .ok_or_else(|| ImportError::NoDevice {
                lines: engine.report.lines,
                malformed: engine.report.malformed,
                example: engine
                    .report
                    .malformed_examples
                    .first()
                    .map(|(n, t)| format!("; line {n}: {t}"))
                    .unwrap_or_default(),
            }),
    }
}

fn seen_list(engine: &Engine<'_>) -> String {
    if engine.devices.is_empty() {
        return "none".to_string();
    }
    let mut v: Vec<String> = engine.devices.iter().map(Dev::label).collect();
    v.sort();
    v.dedup();
    v.join(", ")
}

/// Pass 1.
pub fn scan(path: &Path, opts: &ImportOptions) -> Result<QemuImport, ImportError> {
    let mut engine = Engine::new(None);
    engine.run(path, None)?;
    let idx = select(&engine, opts)?;
    let d = &engine.devices[idx];

    // QEMU's PC machines raise a PCI INTx on its IOAPIC pin (GSI 16-23) and mirror it onto the
    // legacy ISA line the PIRQ router picked (< 16): prefer the IOAPIC pin when both follow the
    // device's activity.
    let intx_gsi = match d.dialect {
        Dialect::Passthrough => None,
        Dialect::Emulated => opts.intx_gsi.or_else(|| {
            engine
                .gsi_hits
                .iter()
                .filter(|((dev, _), _)| *dev == idx)
                .max_by_key(|((_, gsi), n)| (*gsi >= 16, **n, std::cmp::Reverse(*gsi)))
                .map(|((_, gsi), _)| *gsi)
        }),
    };

    let mut snapshot = d.cfg.snapshot();
    if d.vfio_config_size.is_some_and(|s| s >= 4096) && d.cfg.extended() {
        snapshot.resize(config::EXTENDED_CONFIG, 0);
    }
    let mut bar_io = [false; 7];
    let mut sizes = [0u64; 7];
    for bar in 0..7 {
        bar_io[bar] = bar < 6 && d.bar_is_io(bar);
        sizes[bar] = d.bar_size[bar].max(d.cfg.sized[bar].unwrap_or(0));
        if bar < 6 && d.cfg.upper_half[bar] {
            sizes[bar] = 0;
        }
    }
    let mut regions = Vec::new();
    for bar in 0..6 {
        if sizes[bar] == 0 {
            continue;
        }
        let kind = if bar_io[bar] {
            RegionKind::Pio
        } else {
            RegionKind::Mmio
        };
        let alias_of =
            if d.dialect == Dialect::Emulated && d.bar_mapped[bar] && d.bar_accesses[bar] == 0 {
                // Only across kinds: QEMU aliases a memory BAR onto an I/O BAR (rtl8139), while
                // an unused memory BAR beside a used one of the same size is a BAR of its own
                // (e1000e's flash), whose reads the register stream must not answer.
                (0..6)
                    .filter(|&o| {
                        o != bar
                            && d.bar_accesses[o] > 0
                            && sizes[o] == sizes[bar]
                            && bar_io[o] != bar_io[bar]
                    })
                    .min()
                    .map(|o| o as u32)
            } else {
                None
            };
        regions.push(config::region(bar as u32, kind, sizes[bar], alias_of));
    }
    if sizes[6] > 0 {
        regions.push(config::region(6, RegionKind::Rom, sizes[6], None));
    }
    regions.push(config::region(
        7,
        RegionKind::Config,
        snapshot.len() as u64,
        None,
    ));

    let intx =
        snapshot.get(0x3d).is_some_and(|p| *p != 0) || intx_gsi.is_some() || d.intx_events > 0;
    let seen = |index: usize| d.max_vector[index].map(|v| v + 1);
    let msi = config::msi_vectors(&snapshot)
        .or(d.vfio_msi_vectors)
        .or_else(|| seen(1));
    let msix = config::msix_table(&snapshot)
        .map(|t| t.2)
        .or(d.vfio_msix_entries)
        .or_else(|| seen(2));
    let irqs = config::irq_table(intx, msi, msix);

    let bdf_full = match line::normalize_bdf(&d.bdf) {
        Some(b) => format!("0000:{b}"),
        None => d.bdf.clone(),
    };
    let identity = DeviceIdentity::from_config_space(&snapshot, Some(bdf_full)).unwrap_or_default();
    let header = TraceHeader {
        device: identity,
        config_space: snapshot.clone(),
        regions,
        irqs,
        rom: None,
        capture: CaptureMeta {
            tool: format!("hwrr-import {}", env!("CARGO_PKG_VERSION")),
            source: "qemu-trace".to_string(),
            kernel: None,
            host: None,
            start_unix_ns: engine.first_wall.unwrap_or(0),
        },
        labels: [
            ("qemu.device".to_string(), d.name.clone()),
            ("qemu.bdf".to_string(), d.bdf.clone()),
            (
                "qemu.dialect".to_string(),
                match d.dialect {
                    Dialect::Emulated => "emulated",
                    Dialect::Passthrough => "passthrough",
                }
                .to_string(),
            ),
        ]
        .into_iter()
        .chain(intx_gsi.map(|g| ("qemu.intx_gsi".to_string(), g.to_string())))
        .collect(),
        start_state: None,
    };
    let plan = Plan {
        dialect: d.dialect,
        name: d.name.clone(),
        bdf: d.bdf.clone(),
        intx_gsi,
        msi_from_writes: d.dialect == Dialect::Emulated && d.vector_events == 0,
        snapshot,
        bar_io,
    };
    Ok(QemuImport {
        path: path.to_path_buf(),
        header,
        device: SelectedDevice {
            dialect: d.dialect,
            name: d.name.clone(),
            bdf: d.bdf.clone(),
            intx_gsi,
        },
        plan,
        scan_report: ImportReport {
            lines: engine.report.lines,
            malformed: engine.report.malformed,
            malformed_examples: engine.report.malformed_examples.clone(),
            ..ImportReport::default()
        },
    })
}

/// Pass 2.
pub fn emit(
    path: &Path,
    plan: &Plan,
    sink: &mut dyn FnMut(Event) -> Result<(), ImportError>,
) -> Result<ImportReport, ImportError> {
    let mut engine = Engine::new(Some(plan));
    engine.run(path, Some(sink))?;
    Ok(engine.report)
}
