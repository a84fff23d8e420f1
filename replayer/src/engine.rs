//! The replay engine: a trace served as a [`Device`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use hwrr_device::irq::Delivery;
use hwrr_device::{
    Device, DeviceDescription, DeviceError, DmaMapping, DmaRegion, GuestMemory, IrqRouter,
    IrqSetRequest,
};
use hwrr_formats::json::{event_to_json, JsonOptions};
use hwrr_formats::regmap::{AddressPart, RegisterMap};
use hwrr_formats::{irq_index, region_flags, region_index, AccessData, Event, RegionInfo};
use hwrr_formats::{RegionKind, TraceHeader};
use serde_json::json;

use crate::compile::{canonical_regions, CompileContext, CompiledChunk, Op, OpKind, RegKey};
use crate::config::{ConfigRules, MsixLayout, MsixModel, MSIX_FUNCTION_MASK};
use crate::reloc::{RelocationMap, PAGE};
use crate::report::{Counters, DivergenceReport, Policy, ReplayReport};
use crate::source::{EventSource, SourceError};

/// Largest recorded DMA mapping whose addresses count as evidence of a DMA address (256 MiB).
const SMALL_MAPPING: u64 = 256 << 20;

/// Errors creating a replayer.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The trace could not be read.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The trace header cannot describe a device.
    #[error("invalid trace header: {0}")]
    Header(String),
}

/// How to replay.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    /// Mismatch policy.
    pub policy: Policy,
    /// Register names for the report, and which registers hold DMA addresses.
    pub regmap: Option<RegisterMap>,
    /// Serve a polling run's post-transition value after this many reads of the run (never
    /// lengthens a run). `None` (the default) keeps recorded run lengths.
    pub shorten_polls: Option<u32>,
    /// Events of context in the divergence report (default 16).
    pub context_events: usize,
    /// Compiled chunks kept in memory (default 4).
    pub chunk_cache: usize,
    /// Honour recorded delays: before delivering an interrupt, wait as long as the recording
    /// waited after the access that preceded it (at most `max_delay_ns`). The wait happens in the
    /// access that triggers delivery, so it also delays that access's reply. Off by default.
    pub honor_delays: bool,
    /// Longest single wait with `honor_delays` (default 100 ms).
    pub max_delay_ns: u64,
    /// Bytes a relocation learned from a register write covers (default 64 KiB: a descriptor ring
    /// and its neighbours). Pointers learned from descriptors cover one page and take precedence.
    pub relocation_span: u64,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            policy: Policy::Strict,
            regmap: None,
            shorten_polls: None,
            context_events: 16,
            chunk_cache: 4,
            relocation_span: 64 * 1024,
            honor_delays: false,
            max_delay_ns: 100_000_000,
        }
    }
}

/// The guest call that did not match (kept in the state; rendered in the report).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Mismatch {
    /// Sequence number of the expected recorded event, `None` at the end of the trace.
    seq: Option<u64>,
    /// The guest's call.
    actual: GuestCall,
    reason: &'static str,
}

/// A guest call as the engine saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum GuestCall {
    Access {
        write: bool,
        region: u32,
        offset: u64,
        data: AccessData,
    },
    Reset,
}

/// Where the cursor is: an op in a chunk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Cursor {
    chunk: usize,
    op: usize,
}

impl Cursor {
    fn stamp(self) -> u64 {
        ((self.chunk as u64) << 32) | self.op as u64
    }
}

/// The engine's complete mutable state: cursor, register/config/MSI-X models, relocation map,
/// counters and divergence. A small `Clone` value: save it with [`Replayer::state`] and go back to
/// it with [`Replayer::restore`] (S2E forks states, fuzzers reset).
#[derive(Clone, Debug, PartialEq)]
pub struct ReplayState {
    cursor: Cursor,
    /// The last consumed guest call when it was a read (polling runs), how many reads of the run the
    /// guest made, and whether the guest has read past the run's end.
    last_read: Option<Op>,
    run_pos: u32,
    run_extended: bool,
    /// Register values the guest wrote that differ from the recording, and model answers: stamp
    /// (cursor position) and value.
    model: BTreeMap<RegKey, (u64, u64)>,
    config: Vec<u8>,
    msix: Option<MsixModel>,
    relocations: RelocationMap,
    recorded_mappings: Vec<(u64, u64)>,
    counters: Counters,
    mismatch: Option<Box<Mismatch>>,
    stopped: bool,
    source_error: Option<String>,
}

impl ReplayState {
    /// Counters so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The learned relocation map.
    pub fn relocations(&self) -> &RelocationMap {
        &self.relocations
    }

    /// Whether a guest call has failed to match the stream.
    pub fn diverged(&self) -> bool {
        self.mismatch.is_some()
    }

    /// The configuration space as the guest sees it now.
    pub fn config_space(&self) -> &[u8] {
        &self.config
    }
}

/// Which half of a DMA address a register holds, and where its other half is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AddrRole {
    Full,
    Lo { partner: u64 },
    Hi { partner: u64 },
}

/// Immutable facts shared by every engine replaying the same trace.
struct Shared {
    source: Arc<dyn EventSource>,
    ctx: CompileContext,
    rules: ConfigRules,
    description: DeviceDescription,
    /// Size of each region index 0..=8 (0 = absent).
    region_sizes: [u64; 9],
    options: ReplayOptions,
    address_regs: HashMap<(u8, u64), AddrRole>,
    start_registers: HashMap<RegKey, u64>,
    start_mappings: Vec<(u64, u64)>,
    cache: Mutex<Vec<(usize, Arc<CompiledChunk>)>>,
    chunk_count: usize,
}

impl Shared {
    fn chunk(&self, index: usize) -> Result<Arc<CompiledChunk>, SourceError> {
        {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(pos) = cache.iter().position(|(i, _)| *i == index) {
                let entry = cache.remove(pos);
                let chunk = Arc::clone(&entry.1);
                cache.push(entry);
                return Ok(chunk);
            }
        }
        let events = self.source.load_chunk(index)?;
        let compiled = Arc::new(self.ctx.compile(&events));
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= self.options.chunk_cache.max(2) {
            cache.remove(0);
        }
        cache.push((index, Arc::clone(&compiled)));
        Ok(compiled)
    }

    fn fresh_state(&self) -> ReplayState {
        ReplayState {
            cursor: Cursor::default(),
            last_read: None,
            run_pos: 0,
            run_extended: false,
            model: BTreeMap::new(),
            config: self.rules.snapshot.clone(),
            msix: self.rules.msix.map(|m| MsixModel::new(m.entries)),
            relocations: RelocationMap::new(),
            recorded_mappings: self.start_mappings.clone(),
            counters: Counters::default(),
            mismatch: None,
            stopped: false,
            source_error: None,
        }
    }
}

/// A trace served as a PCI device. Drive it through [`Device`]; read the outcome with
/// [`Replayer::report`].
pub struct Replayer {
    shared: Arc<Shared>,
    state: ReplayState,
    /// The compiled chunk under the cursor.
    cur: Arc<CompiledChunk>,
    memory: Option<Arc<dyn GuestMemory>>,
    irqs: IrqRouter,
    needs_restart: bool,
    past_sessions: Vec<ReplayReport>,
    scratch: Vec<u8>,
    scratch2: Vec<u8>,
    /// `shorten_polls` K, or `u32::MAX` (never).
    shorten_after: u32,
    /// Copies of the shared per-region tables, kept next to the state for the access path.
    region_sizes: [u64; 9],
    canonical: [Option<u8>; 9],
    msix_layout: Option<MsixLayout>,
    /// A fork waiting for its frontend's first `attach_memory`, which must not restart the trace.
    fork_pending: bool,
}

fn access_size_ok(len: usize) -> bool {
    matches!(len, 1 | 2 | 4 | 8)
}

fn le_value(data: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    buf[..data.len()].copy_from_slice(data);
    u64::from_le_bytes(buf)
}

impl Replayer {
    /// A replayer for `source`, positioned at the start of the trace.
    pub fn new(source: Arc<dyn EventSource>, options: ReplayOptions) -> Result<Self, ReplayError> {
        let header = source.header().clone();
        if header.config_space.len() < 0x40 {
            return Err(ReplayError::Header(format!(
                "config-space snapshot has {} bytes, a PCI header needs 64",
                header.config_space.len()
            )));
        }
        let rules = ConfigRules::new(&header);
        let ctx = CompileContext {
            canonical: canonical_regions(&header),
            msix: rules.msix,
        };
        let description = describe_header(&header, rules.snapshot.len());
        let mut region_sizes = [0u64; 9];
        for r in &description.regions {
            if let Some(s) = region_sizes.get_mut(r.index as usize) {
                *s = r.size;
            }
        }
        let address_regs = options
            .regmap
            .as_ref()
            .map(address_roles)
            .unwrap_or_default();
        let mut start_registers = HashMap::new();
        let mut start_mappings = Vec::new();
        if let Some(s) = &header.start_state {
            for r in &s.registers {
                if let (AccessData::Value { size, value }, Some(region)) =
                    (&r.data, ctx.canonical(r.region))
                {
                    start_registers.insert((region, r.offset, *size), *value);
                }
            }
            start_mappings = s.dma_mappings.iter().map(|m| (m.iova, m.len)).collect();
        }
        let chunk_count = source.chunk_count();
        let irqs = IrqRouter::new(&header.irqs);
        let shared = Arc::new(Shared {
            source,
            ctx,
            rules,
            description,
            region_sizes,
            options,
            address_regs,
            start_registers,
            start_mappings,
            cache: Mutex::new(Vec::new()),
            chunk_count,
        });
        let cur = if chunk_count > 0 {
            shared.chunk(0)?
        } else {
            Arc::new(CompiledChunk::default())
        };
        let state = shared.fresh_state();
        Ok(Replayer {
            state,
            cur,
            memory: None,
            irqs,
            needs_restart: false,
            past_sessions: Vec::new(),
            scratch: Vec::new(),
            scratch2: Vec::new(),
            shorten_after: shared.options.shorten_polls.unwrap_or(u32::MAX),
            region_sizes: shared.region_sizes,
            canonical: shared.ctx.canonical,
            msix_layout: shared.rules.msix,
            fork_pending: false,
            shared,
        })
    }

    /// A copy of the engine state (cursor, models, relocation map, counters, divergence).
    pub fn state(&self) -> ReplayState {
        self.state.clone()
    }

    /// The engine state, borrowed.
    pub fn state_ref(&self) -> &ReplayState {
        &self.state
    }

    /// Goes back to a state taken from this trace with [`Replayer::state`]. Interrupt wiring and
    /// attached memory are the frontend's and stay as they are.
    pub fn restore(&mut self, state: ReplayState) -> Result<(), ReplayError> {
        let chunk = state.cursor.chunk;
        self.cur = if chunk < self.shared.chunk_count {
            self.shared.chunk(chunk)?
        } else {
            Arc::new(CompiledChunk::default())
        };
        self.state = state;
        Ok(())
    }

    /// A second engine over the same compiled trace (shared, not copied) starting from this one's
    /// state, with no interrupt wiring and no memory attached: the frontend of the fork attaches
    /// its own. Its first `attach_memory` does not restart the trace.
    pub fn fork(&self) -> Replayer {
        Replayer {
            shared: Arc::clone(&self.shared),
            state: self.state.clone(),
            cur: Arc::clone(&self.cur),
            memory: None,
            irqs: IrqRouter::new(&self.shared.description.irqs),
            needs_restart: false,
            past_sessions: Vec::new(),
            scratch: Vec::new(),
            scratch2: Vec::new(),
            shorten_after: self.shorten_after,
            region_sizes: self.region_sizes,
            canonical: self.canonical,
            msix_layout: self.msix_layout,
            fork_pending: true,
        }
    }

    /// The options this replayer runs with.
    pub fn options(&self) -> &ReplayOptions {
        &self.shared.options
    }

    /// Reports of earlier client sessions (each new connection restarts the trace).
    pub fn past_sessions(&self) -> &[ReplayReport] {
        &self.past_sessions
    }

    /// The interrupt router (which eventfds the VMM registered).
    pub fn irq_router(&self) -> &IrqRouter {
        &self.irqs
    }

    // ---------------------------------------------------------------- cursor and device actions

    /// Moves the cursor to the next recorded guest call, performing the device's own actions
    /// (interrupts, DMA) on the way.
    fn settle(&mut self) {
        loop {
            if let Some(op) = self.cur.ops.get(self.state.cursor.op).copied() {
                if op.kind.is_guest_call() {
                    return;
                }
                self.state.cursor.op += 1;
                self.execute(op);
            } else if !self.next_chunk() {
                return;
            }
        }
    }

    fn next_chunk(&mut self) -> bool {
        let next = self.state.cursor.chunk + 1;
        if self.state.cursor.chunk >= self.shared.chunk_count {
            return false;
        }
        if next >= self.shared.chunk_count {
            self.state.cursor = Cursor { chunk: next, op: 0 };
            self.cur = Arc::new(CompiledChunk::default());
            return false;
        }
        match self.shared.chunk(next) {
            Ok(c) => {
                self.cur = c;
                self.state.cursor = Cursor { chunk: next, op: 0 };
                true
            }
            Err(e) => {
                self.state.source_error = Some(e.to_string());
                self.state.cursor = Cursor {
                    chunk: self.shared.chunk_count,
                    op: 0,
                };
                self.cur = Arc::new(CompiledChunk::default());
                false
            }
        }
    }

    /// The recorded guest call at the cursor (after settling), or `None` at the end of the trace.
    #[inline]
    fn peek(&mut self) -> Option<Op> {
        match self.cur.ops.get(self.state.cursor.op) {
            Some(op) if op.kind.is_guest_call() => Some(*op),
            _ => {
                self.settle();
                self.cur.ops.get(self.state.cursor.op).copied()
            }
        }
    }

    fn current_seq(&self) -> Option<u64> {
        self.cur.seqs.get(self.state.cursor.op).copied()
    }

    fn execute(&mut self, op: Op) {
        match op.kind {
            OpKind::Irq => {
                if self.shared.options.honor_delays {
                    self.wait_recorded_delay();
                }
                self.deliver_irq(op.offset as u32, op.value as u32)
            }
            OpKind::DmaWrite => self.apply_dma_write(op),
            OpKind::DmaRead => self.learn_from_dma_read(op),
            OpKind::DmaMap => self.state.recorded_mappings.push((op.value, op.offset)),
            OpKind::DmaUnmap => {
                if op.aux & hwrr_device::dma_flags::UNMAP_ALL != 0 {
                    self.state.recorded_mappings.clear();
                } else {
                    let (start, end) = (op.value, op.value.saturating_add(op.offset));
                    self.state
                        .recorded_mappings
                        .retain(|(s, l)| *s >= end || s.saturating_add(*l) <= start);
                }
            }
            OpKind::Read | OpKind::Write | OpKind::Reset => {}
        }
    }

    /// Sleeps for the recorded gap between the op just passed (the cursor is one past it) and the
    /// guest call before it in the same chunk.
    fn wait_recorded_delay(&mut self) {
        let Some(j) = self.state.cursor.op.checked_sub(1) else {
            return;
        };
        let ops = &self.cur.ops;
        let lo = j.saturating_sub(256);
        let Some(g) = (lo..j).rev().find(|&i| ops[i].kind.is_guest_call()) else {
            return;
        };
        let (Some(&t_op), Some(&t_call)) = (self.cur.t_ns.get(j), self.cur.t_ns.get(g)) else {
            return;
        };
        let wait = t_op
            .saturating_sub(t_call)
            .min(self.shared.options.max_delay_ns);
        if wait > 0 {
            std::thread::sleep(std::time::Duration::from_nanos(wait));
            self.state.counters.delay_ns_waited += wait;
        }
    }

    fn deliver_irq(&mut self, index: u32, vector: u32) {
        if index == irq_index::MSIX {
            let control = self.msix_control();
            if let Some(msix) = self.state.msix.as_mut() {
                if control & MSIX_FUNCTION_MASK != 0 || msix.vector_masked(vector) {
                    msix.set_pending(vector, true);
                    self.state.counters.irqs_pending += 1;
                    return;
                }
            }
        }
        self.raise(index, vector);
    }

    fn raise(&mut self, index: u32, vector: u32) {
        match self.irqs.raise(index, vector) {
            Ok(Delivery::Delivered) => self.state.counters.irqs_delivered += 1,
            Ok(Delivery::Pending) => self.state.counters.irqs_pending += 1,
            Ok(Delivery::NoListener) | Err(_) => self.state.counters.irqs_no_listener += 1,
        }
    }

    /// The MSI-X message control word as the guest set it (0 without MSI-X).
    fn msix_control(&self) -> u16 {
        let Some(layout) = self.shared.rules.msix else {
            return 0;
        };
        match self.state.config.get(layout.cap + 2..layout.cap + 4) {
            Some(b) => u16::from_le_bytes([b[0], b[1]]),
            None => 0,
        }
    }

    /// Fires MSI-X vectors that are pending and no longer masked.
    fn fire_unmasked_msix(&mut self) {
        let Some(layout) = self.shared.rules.msix else {
            return;
        };
        if self.msix_control() & MSIX_FUNCTION_MASK != 0 {
            return;
        }
        let mut ready = Vec::new();
        if let Some(msix) = self.state.msix.as_mut() {
            for v in 0..layout.entries {
                if msix.is_pending(v) && !msix.vector_masked(v) {
                    msix.set_pending(v, false);
                    ready.push(v);
                }
            }
        }
        for v in ready {
            self.raise(irq_index::MSIX, v);
        }
    }

    fn apply_dma_write(&mut self, op: Op) {
        let chunk = Arc::clone(&self.cur);
        let Some(payload) = chunk.dma_writes.get(op.aux as usize) else {
            return;
        };
        let Some(memory) = self.memory.clone() else {
            self.state.counters.dma_writes_not_applied += 1;
            return;
        };
        let total = payload.data.len();
        let mut done = 0usize;
        let mut written = 0usize;
        let mut fault = false;
        while done < total {
            let rec = op.value.wrapping_add(done as u64);
            let (target, span) = self.state.relocations.translate_span(rec);
            let n = (span.min((total - done) as u64) as usize)
                .max(1)
                .min(total - done);
            let data = &payload.data[done..done + n];
            match &payload.before {
                None => {
                    if memory.write(target, data).is_ok() {
                        written += n;
                    } else {
                        fault = true;
                    }
                }
                Some(before) => {
                    let before = &before[done..done + n];
                    self.scratch.resize(n, 0);
                    if memory.read(target, &mut self.scratch).is_err() {
                        fault = true;
                    } else {
                        // Apply maximal runs where the guest still holds the recorded "before".
                        let mut i = 0;
                        while i < n {
                            if self.scratch[i] != before[i] {
                                i += 1;
                                continue;
                            }
                            let start = i;
                            while i < n && self.scratch[i] == before[i] {
                                i += 1;
                            }
                            if memory
                                .write(target.wrapping_add(start as u64), &data[start..i])
                                .is_ok()
                            {
                                written += i - start;
                            } else {
                                fault = true;
                            }
                        }
                    }
                }
            }
            done += n;
        }
        let c = &mut self.state.counters;
        if fault {
            c.dma_write_faults += 1;
        }
        if written == total {
            c.dma_writes_applied += 1;
        } else if written > 0 {
            c.dma_writes_partial += 1;
        } else {
            c.dma_writes_not_applied += 1;
        }
    }

    /// Pointers in a recorded descriptor read, compared with what the replay guest's memory holds at
    /// the translated address: a recorded DMA address where the guest has another readable address
    /// is a relocation (64-bit little-endian words at 8-byte aligned addresses).
    fn learn_from_dma_read(&mut self, op: Op) {
        let chunk = Arc::clone(&self.cur);
        let Some(data) = chunk.dma_reads.get(op.aux as usize) else {
            return;
        };
        let Some(memory) = self.memory.clone() else {
            return;
        };
        let target = self.state.relocations.translate(op.value);
        let mut guest = std::mem::take(&mut self.scratch2);
        guest.resize(data.len(), 0);
        if memory.read(target, &mut guest).is_ok() {
            self.state.counters.dma_reads_checked += 1;
            let first = ((8 - (op.value % 8)) % 8) as usize;
            let mut k = first;
            while k + 8 <= data.len() {
                let rec = le_value(&data[k..k + 8]);
                let now = le_value(&guest[k..k + 8]);
                k += 8;
                if rec == now || rec == 0 || now == 0 {
                    continue;
                }
                // Only pointers to pages the recorded device went on to use by DMA: a descriptor's
                // buffer is, a payload word that merely looks like an address rarely is.
                if self.state.relocations.translate(rec) == now || !self.is_recorded_dma_page(rec) {
                    continue;
                }
                let mut probe = [0u8; 1];
                if memory.read(now, &mut probe).is_ok()
                    && self.state.relocations.learn(rec, now, PAGE)
                {
                    self.state.counters.relocations_learned += 1;
                }
            }
        }
        self.scratch2 = guest;
    }

    /// Whether a written value `rec` (the guest wrote `act` instead) is a DMA address of the
    /// recording: a page the recorded device went on to use by DMA, or an address inside a recorded
    /// DMA mapping of at most [`SMALL_MAPPING`] bytes while `act` is readable guest memory. A VMM
    /// that maps all guest RAM makes every small number "inside a mapping"; such mappings say
    /// nothing, and a changed control value must stay a divergence.
    fn looks_like_recorded_address(&self, rec: u64, act: u64) -> bool {
        if self.is_recorded_dma_page(rec) {
            return true;
        }
        let in_small_mapping = self
            .state
            .recorded_mappings
            .iter()
            .any(|(s, l)| *l <= SMALL_MAPPING && rec >= *s && rec - *s < *l);
        if !in_small_mapping {
            return false;
        }
        let mut probe = [0u8; 1];
        self.memory
            .as_ref()
            .is_some_and(|m| m.read(act, &mut probe).is_ok())
    }

    /// Whether the recorded device touched `addr`'s page by DMA in the current or the next chunk.
    fn is_recorded_dma_page(&self, addr: u64) -> bool {
        let page = addr / PAGE;
        if self.cur.dma_pages.binary_search(&page).is_ok() {
            return true;
        }
        let next = self.state.cursor.chunk + 1;
        next < self.shared.chunk_count
            && self
                .shared
                .chunk(next)
                .is_ok_and(|c| c.dma_pages.binary_search(&page).is_ok())
    }

    // ---------------------------------------------------------------- matching

    /// Consumes the op at the cursor as matched and settles (interrupts and DMA recorded after it
    /// happen now). Returns the value a read answers.
    #[inline]
    fn consume(&mut self, op: Op) -> u64 {
        if op.kind == OpKind::Read {
            match self.state.last_read {
                Some(lr) if lr.same_key(&op) && lr.value == op.value => {
                    self.state.run_pos += 1;
                }
                _ => {
                    self.state.run_pos = 1;
                }
            }
            self.state.last_read = Some(op);
            self.state.run_extended = false;
            if self.state.run_pos > self.shorten_after && op.aux > 1 {
                if let Some(v) = self.shorten_run(op) {
                    return v;
                }
            }
        } else {
            self.state.last_read = None;
        }
        self.state.counters.matched += 1;
        self.state.cursor.op += 1;
        match self.cur.ops.get(self.state.cursor.op) {
            Some(next) if next.kind.is_guest_call() => {}
            _ => self.settle(),
        }
        op.value
    }

    /// The first recorded guest call after the polling run of `lr` that the cursor is in (identical
    /// reads, possibly across chunks, with device actions between them), without moving the cursor.
    fn after_run(&self, lr: Op) -> Option<(Cursor, Op)> {
        let mut chunk_idx = self.state.cursor.chunk;
        let mut chunk = Arc::clone(&self.cur);
        let mut i = self.state.cursor.op;
        loop {
            while let Some(o) = chunk.ops.get(i) {
                if o.kind.is_guest_call()
                    && !(o.kind == OpKind::Read && o.same_key(&lr) && o.value == lr.value)
                {
                    return Some((
                        Cursor {
                            chunk: chunk_idx,
                            op: i,
                        },
                        *o,
                    ));
                }
                i += 1;
            }
            chunk_idx += 1;
            if chunk_idx >= self.shared.chunk_count {
                return None;
            }
            chunk = self.shared.chunk(chunk_idx).ok()?;
            i = 0;
        }
    }

    /// `shorten_polls`: the guest has read this run more than K times; when the run is followed (in
    /// this chunk) by a read of the same register with another value, jump there and serve it.
    fn shorten_run(&mut self, op: Op) -> Option<u64> {
        let run_end = self.state.cursor.op + op.aux as usize;
        let ops = &self.cur.ops;
        let mut i = run_end;
        while i < ops.len() && !ops[i].kind.is_guest_call() {
            i += 1;
        }
        let next = ops.get(i)?;
        if next.kind != OpKind::Read || !next.same_key(&op) || next.value == op.value {
            return None;
        }
        self.state.counters.poll_shortened += 1;
        self.state.cursor.op = run_end;
        self.settle();
        let transition = self.peek()?;
        self.state.last_read = None;
        Some(self.consume(transition))
    }

    /// Whether `op` (a write at the guest's register) accepts the guest's value: equal, equal after
    /// relocation, or an address the engine can learn a relocation from.
    fn write_accepts(&mut self, op: Op, value: u64) -> bool {
        if op.value == value {
            return true;
        }
        let role = self.address_role(op);
        let (rec, act, named) = match role {
            AddrRole::Full => (op.value, value, false),
            AddrRole::Lo { partner } => {
                let rec_hi = self.recorded_partner(op, partner);
                let act_hi = self
                    .model_value((op.region, partner, op.size))
                    .unwrap_or(rec_hi);
                (rec_hi << 32 | op.value, act_hi << 32 | value, false)
            }
            AddrRole::Hi { partner } => {
                let rec_lo = self.recorded_partner(op, partner);
                let act_lo = self
                    .model_value((op.region, partner, op.size))
                    .unwrap_or(rec_lo);
                (op.value << 32 | rec_lo, value << 32 | act_lo, false)
            }
        };
        let named = named
            || self
                .shared
                .address_regs
                .contains_key(&(op.region, op.offset));
        let translated = self.state.relocations.translate(rec);
        let half_ok = |t: u64| match role {
            AddrRole::Full => t & hwrr_formats::size_mask(op.size) == value,
            AddrRole::Lo { .. } => t & 0xFFFF_FFFF == value,
            AddrRole::Hi { .. } => t >> 32 == value,
        };
        if half_ok(translated) {
            return true;
        }
        if rec == 0 || !(named || self.looks_like_recorded_address(rec, act)) {
            return false;
        }
        if self
            .state
            .relocations
            .learn(rec, act, self.shared.options.relocation_span)
        {
            self.state.counters.relocations_learned += 1;
        }
        half_ok(self.state.relocations.translate(rec))
    }

    fn address_role(&self, op: Op) -> AddrRole {
        if let Some(role) = self.shared.address_regs.get(&(op.region, op.offset)) {
            return *role;
        }
        if op.size == 8 {
            return AddrRole::Full;
        }
        if op.size == 4 {
            let partner = op.offset ^ 4;
            if self.nearby_write(op.region, partner).is_some() {
                return if op.offset % 8 == 0 {
                    AddrRole::Lo { partner }
                } else {
                    AddrRole::Hi { partner }
                };
            }
        }
        AddrRole::Full
    }

    /// A recorded 32-bit write to `offset` within 8 ops of the cursor (address halves are written
    /// back to back).
    fn nearby_write(&self, region: u8, offset: u64) -> Option<u64> {
        let at = self.state.cursor.op;
        let lo = at.saturating_sub(8);
        let hi = (at + 9).min(self.cur.ops.len());
        self.cur.ops[lo..hi]
            .iter()
            .find(|o| {
                o.kind == OpKind::Write && o.region == region && o.offset == offset && o.size == 4
            })
            .map(|o| o.value)
    }

    fn recorded_partner(&self, op: Op, partner: u64) -> u64 {
        self.nearby_write(op.region, partner)
            .or_else(|| {
                self.shared
                    .start_registers
                    .get(&(op.region, partner, op.size))
                    .copied()
            })
            .unwrap_or(0)
    }

    /// The register model's value for `key`: the most recent of what the guest wrote (when it
    /// differed from the recording), what the recording read or wrote there before the cursor, and
    /// the trace's start state.
    fn model_value(&self, key: RegKey) -> Option<u64> {
        let entry = self.state.model.get(&key).copied();
        let entry_stamp = entry.map(|e| e.0);
        let cursor = self.state.cursor;
        // Back through the current chunk.
        let chunk_start_stamp = Cursor {
            chunk: cursor.chunk,
            op: 0,
        }
        .stamp();
        if entry_stamp.map_or(true, |s| s < cursor.stamp()) {
            let stop = match entry_stamp {
                Some(s) if s >= chunk_start_stamp => (s - chunk_start_stamp) as usize,
                _ => 0,
            };
            let end = cursor.op.min(self.cur.ops.len());
            for i in (stop..end).rev() {
                let o = &self.cur.ops[i];
                if matches!(o.kind, OpKind::Read | OpKind::Write)
                    && o.region == key.0
                    && o.offset == key.1
                    && o.size == key.2
                {
                    let stamp = Cursor {
                        chunk: cursor.chunk,
                        op: i,
                    }
                    .stamp();
                    if entry_stamp.is_some_and(|s| s >= stamp) {
                        break;
                    }
                    return Some(o.value);
                }
            }
        }
        if let Some((_, v)) = entry {
            if entry_stamp.is_some_and(|s| s >= chunk_start_stamp) {
                return Some(v);
            }
        }
        // Earlier chunks, newest first, through their end-of-chunk summaries.
        let oldest = cursor.chunk.saturating_sub(8);
        for c in (oldest..cursor.chunk.min(self.shared.chunk_count)).rev() {
            let chunk_end = Cursor {
                chunk: c,
                op: u32::MAX as usize,
            }
            .stamp();
            if entry_stamp.is_some_and(|s| s >= chunk_end) {
                break;
            }
            if let Ok(chunk) = self.shared.chunk(c) {
                if let Some((i, v)) = chunk.last_values().get(&key) {
                    let stamp = Cursor {
                        chunk: c,
                        op: *i as usize,
                    }
                    .stamp();
                    if entry_stamp.is_some_and(|s| s >= stamp) {
                        break;
                    }
                    return Some(*v);
                }
            }
        }
        entry
            .map(|e| e.1)
            .or_else(|| self.shared.start_registers.get(&key).copied())
    }

    fn set_model(&mut self, key: RegKey, value: u64) {
        let stamp = self.state.cursor.stamp();
        self.state.model.insert(key, (stamp, value));
    }

    /// A register access of 1, 2, 4 or 8 bytes. Returns the value a read answers.
    ///
    /// The hot path: compare against the op under the cursor by reference, update the run tracking
    /// only when a new run starts, advance; no allocation, no lock, no `Op` copy unless needed.
    #[inline(always)]
    fn access(&mut self, write: bool, region: u8, offset: u64, size: u8, value: u64) -> u64 {
        self.state.counters.accesses += 1;
        if !self.state.stopped {
            let i = self.state.cursor.op;
            let kind = if write { OpKind::Write } else { OpKind::Read };
            if let Some(op) = self.cur.ops.get(i) {
                if op.kind == kind && op.offset == offset && op.region == region && op.size == size
                {
                    if write {
                        if op.value == value {
                            self.state.last_read = None;
                            return self.advance_matched(i, value);
                        }
                    } else {
                        let v = op.value;
                        let in_run = match &self.state.last_read {
                            Some(lr) => {
                                lr.offset == offset
                                    && lr.value == v
                                    && lr.region == region
                                    && lr.size == size
                            }
                            None => false,
                        };
                        if in_run {
                            self.state.run_pos += 1;
                            if self.state.run_pos > self.shorten_after && op.aux > 1 {
                                return self.access_slow(write, region, offset, size, value);
                            }
                        } else {
                            self.state.run_pos = 1;
                            self.state.last_read = Some(*op);
                        }
                        self.state.run_extended = false;
                        return self.advance_matched(i, v);
                    }
                }
            }
        }
        self.access_slow(write, region, offset, size, value)
    }

    /// Counts a match of the op at `i` and moves past it, settling when the next op is a device
    /// action.
    #[inline(always)]
    fn advance_matched(&mut self, i: usize, answer: u64) -> u64 {
        self.state.counters.matched += 1;
        self.state.cursor.op = i + 1;
        match self.cur.ops.get(i + 1) {
            Some(next) if next.kind.is_guest_call() => {}
            _ => self.settle(),
        }
        answer
    }

    #[cold]
    fn access_slow(&mut self, write: bool, region: u8, offset: u64, size: u8, value: u64) -> u64 {
        let key = (region, offset, size);
        let kind = if write { OpKind::Write } else { OpKind::Read };
        if self.state.stopped {
            return self.answer_from_model(write, key, value, false);
        }
        let op = self.peek();
        // The fast path found a polling run to shorten (`shorten_polls`).
        if let Some(o) = op {
            if !write
                && o.kind == OpKind::Read
                && o.region == region
                && o.offset == offset
                && o.size == size
                && self.state.run_pos > self.shorten_after
                && self
                    .state
                    .last_read
                    .is_some_and(|lr| lr.same_key(&o) && lr.value == o.value)
            {
                if let Some(v) = self.shorten_run(o) {
                    return v;
                }
                self.state.run_extended = false;
                return self.advance_matched(self.state.cursor.op, o.value);
            }
        }
        // Same register, written with another value: relocation?
        if let Some(o) = op {
            if o.kind == kind && o.region == region && o.offset == offset && o.size == size {
                if !write {
                    return self.consume(o);
                }
                if self.write_accepts(o, value) {
                    if o.value != value {
                        self.set_model(key, value);
                    }
                    return self.consume(o);
                }
            }
        }
        // The guest left a polling run early: when its access matches what follows the run, skip
        // the rest of the run (device actions in between still happen). An access that does not
        // match there either leaves the cursor in the run.
        if let (Some(lr), Some(o)) = (self.state.last_read, op) {
            if o.kind == OpKind::Read && lr.same_key(&o) && lr.value == o.value {
                if let Some((target, after)) = self.after_run(lr) {
                    let same_register = after.kind == kind
                        && after.region == region
                        && after.offset == offset
                        && after.size == size;
                    let accepted = same_register
                        && (!write
                            || after.value == value
                            || self.state.relocations.translate(after.value) == value);
                    if accepted {
                        self.skip_to(target);
                        self.state.counters.poll_shortened += 1;
                        if write && after.value != value {
                            self.set_model(key, value);
                        }
                        return self.consume(after);
                    }
                }
            }
        }
        // The guest polls longer than recorded: the run's value again.
        if !write {
            if let Some(lr) = self.state.last_read {
                if lr.region == region && lr.offset == offset && lr.size == size {
                    if !self.state.run_extended {
                        self.state.run_extended = true;
                        self.state.counters.poll_extended += 1;
                    }
                    self.state.counters.matched += 1;
                    return lr.value;
                }
            }
        }
        // A real mismatch.
        let actual = GuestCall::Access {
            write,
            region: region as u32,
            offset,
            data: AccessData::Value {
                size,
                value: if write { value } else { 0 },
            },
        };
        let reason = match op {
            None => "the trace has no more guest accesses",
            Some(o) if o.kind == OpKind::Reset => "the trace expects a device reset",
            Some(o) if o.kind != kind => "the trace expects the other access direction",
            Some(o) if o.region != region || o.offset != offset || o.size != size => {
                "the trace expects another register"
            }
            Some(_) => "the trace expects another written value",
        };
        self.note_mismatch(actual, reason);
        match self.shared.options.policy {
            Policy::Strict => {
                self.state.stopped = true;
                self.answer_from_model(write, key, value, false)
            }
            Policy::Resync { window } => {
                if let Some(target) = self.lookahead(kind, region, offset, size, value, window) {
                    let skipped = self.skip_to(target);
                    self.state.counters.skipped += skipped;
                    if let Some(o) = self.peek() {
                        if write && o.value != value {
                            self.set_model(key, value);
                        }
                        return self.consume(o);
                    }
                }
                self.state.counters.inserted += 1;
                self.state.last_read = None;
                self.answer_from_model(write, key, value, true)
            }
            Policy::Model => {
                if let Some(o) = op {
                    if write
                        && o.kind == OpKind::Write
                        && o.same_key(&Op {
                            region,
                            offset,
                            size,
                            ..o
                        })
                    {
                        // The same register written with another value: follow the stream.
                        self.state.counters.fallbacks += 1;
                        self.set_model(key, value);
                        self.consume(o);
                        self.state.counters.matched -= 1;
                        return value;
                    }
                }
                self.state.last_read = None;
                self.answer_from_model(write, key, value, false)
            }
        }
    }

    fn answer_from_model(&mut self, write: bool, key: RegKey, value: u64, inserted: bool) -> u64 {
        if !inserted {
            self.state.counters.fallbacks += 1;
        }
        if write {
            self.set_model(key, value);
            value
        } else {
            let v = self.model_value(key).unwrap_or(0);
            // Remember the answer so repeated reads do not rescan the chunk.
            self.set_model(key, v);
            v
        }
    }

    fn note_mismatch(&mut self, actual: GuestCall, reason: &'static str) {
        if self.state.mismatch.is_none() {
            self.state.mismatch = Some(Box::new(Mismatch {
                seq: self.current_seq(),
                actual,
                reason,
            }));
        }
    }

    /// Finds the guest's access within `window` recorded guest calls after the cursor.
    fn lookahead(
        &mut self,
        kind: OpKind,
        region: u8,
        offset: u64,
        size: u8,
        value: u64,
        window: u32,
    ) -> Option<Cursor> {
        let mut chunk_idx = self.state.cursor.chunk;
        let mut chunk = Arc::clone(&self.cur);
        let mut i = self.state.cursor.op;
        let mut seen = 0u32;
        loop {
            while i < chunk.ops.len() {
                let o = chunk.ops[i];
                if o.kind.is_guest_call() {
                    if seen > window {
                        return None;
                    }
                    if seen > 0
                        && o.kind == kind
                        && o.region == region
                        && o.offset == offset
                        && o.size == size
                        && (kind != OpKind::Write
                            || o.value == value
                            || self.state.relocations.translate(o.value) == value)
                    {
                        return Some(Cursor {
                            chunk: chunk_idx,
                            op: i,
                        });
                    }
                    seen += 1;
                }
                i += 1;
            }
            chunk_idx += 1;
            if chunk_idx >= self.shared.chunk_count {
                return None;
            }
            chunk = self.shared.chunk(chunk_idx).ok()?;
            i = 0;
        }
    }

    /// Moves the cursor to `target`, performing device actions on the way; returns how many
    /// recorded guest calls were skipped.
    fn skip_to(&mut self, target: Cursor) -> u64 {
        let mut skipped = 0;
        while self.state.cursor != target {
            match self.cur.ops.get(self.state.cursor.op).copied() {
                Some(op) => {
                    self.state.cursor.op += 1;
                    if op.kind.is_guest_call() {
                        skipped += 1;
                    } else {
                        self.execute(op);
                    }
                }
                None => {
                    if !self.next_chunk() {
                        break;
                    }
                }
            }
        }
        self.state.last_read = None;
        skipped
    }

    /// A byte access (length other than 1, 2, 4, 8): matched only exactly at the cursor.
    fn access_bytes(&mut self, write: bool, region: u8, offset: u64, data: &mut [u8]) {
        self.state.counters.accesses += 1;
        if !self.state.stopped {
            if let Some(op) = self.peek() {
                let kind = if write { OpKind::Write } else { OpKind::Read };
                let payload = self.cur.bytes.get(op.aux as usize);
                if op.kind == kind
                    && op.region == region
                    && op.offset == offset
                    && op.size == 0
                    && payload.is_some_and(|p| p.len() == data.len() && (!write || p == data))
                {
                    if let (false, Some(p)) = (write, payload) {
                        data.copy_from_slice(p);
                    }
                    self.consume(op);
                    return;
                }
            }
        }
        if !self.state.stopped {
            let actual = GuestCall::Access {
                write,
                region: region as u32,
                offset,
                data: AccessData::Bytes(if write {
                    data.to_vec()
                } else {
                    vec![0; data.len()]
                }),
            };
            self.note_mismatch(actual, "a byte access that does not match the trace");
            match self.shared.options.policy {
                Policy::Strict => self.state.stopped = true,
                Policy::Resync { .. } => self.state.counters.inserted += 1,
                Policy::Model => {}
            }
        }
        if !matches!(self.shared.options.policy, Policy::Resync { .. }) || self.state.stopped {
            self.state.counters.fallbacks += 1;
        }
        if !write {
            data.fill(0);
        }
    }

    // ---------------------------------------------------------------- report

    /// What the session did so far.
    pub fn report(&self) -> ReplayReport {
        let s = &self.state;
        let first_divergence = s.mismatch.as_ref().map(|m| self.render_mismatch(m));
        let finished = s.cursor.chunk >= self.shared.chunk_count
            || (s.cursor.chunk + 1 == self.shared.chunk_count
                && !self.cur.ops[s.cursor.op.min(self.cur.ops.len())..]
                    .iter()
                    .any(|o| o.kind.is_guest_call()));
        let position_seq = self.cur.seqs.get(s.cursor.op).copied().unwrap_or_else(|| {
            self.shared
                .source
                .chunk_first_seq((s.cursor.chunk + 1).min(self.shared.chunk_count))
        });
        ReplayReport {
            policy: self.shared.options.policy.name(),
            window: match self.shared.options.policy {
                Policy::Resync { window } => window,
                _ => 0,
            },
            counters: s.counters.clone(),
            diverged: s.mismatch.is_some(),
            stopped_following: s.stopped,
            first_divergence,
            relocations: s.relocations.ranges().to_vec(),
            trace_events: self.shared.source.event_count(),
            position_seq,
            trace_finished: finished,
            source_error: s.source_error.clone(),
        }
    }

    fn find_chunk(&self, seq: u64) -> usize {
        let n = self.shared.chunk_count;
        let (mut lo, mut hi) = (0usize, n);
        while lo + 1 < hi {
            let mid = (lo + hi) / 2;
            if self.shared.source.chunk_first_seq(mid) <= seq {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo
    }

    fn events_before(&self, seq: u64, count: usize) -> (Option<Event>, Vec<Event>) {
        let n = self.shared.chunk_count;
        if n == 0 {
            return (None, Vec::new());
        }
        let mut c = self.find_chunk(seq);
        let mut found = None;
        let mut before: Vec<Event> = Vec::new();
        while let Ok(events) = self.shared.source.load_chunk(c) {
            let mut earlier: Vec<Event> = Vec::new();
            for e in events {
                if e.seq == seq {
                    found = Some(e);
                } else if e.seq < seq {
                    earlier.push(e);
                }
            }
            earlier.append(&mut before);
            before = earlier;
            if before.len() >= count || c == 0 {
                break;
            }
            c -= 1;
        }
        let skip = before.len().saturating_sub(count);
        (found, before.split_off(skip))
    }

    fn render_mismatch(&self, m: &Mismatch) -> DivergenceReport {
        let regmap = self.shared.options.regmap.as_ref();
        let count = self.shared.options.context_events;
        let end_seq = self.shared.source.chunk_first_seq(self.shared.chunk_count);
        let seq = m.seq.unwrap_or(end_seq);
        let (expected, context) = self.events_before(seq, count);
        let t_ns = expected
            .as_ref()
            .or(context.last())
            .map(|e| e.t_ns)
            .unwrap_or(0);
        DivergenceReport {
            seq,
            t_ns,
            expected: expected
                .as_ref()
                .map(|e| event_to_json(e, regmap, JsonOptions::default()))
                .unwrap_or(serde_json::Value::Null),
            actual: self.render_call(&m.actual),
            reason: m.reason.to_string(),
            context: context
                .iter()
                .map(|e| event_to_json(e, regmap, JsonOptions::default()))
                .collect(),
        }
    }

    fn render_call(&self, call: &GuestCall) -> serde_json::Value {
        match call {
            GuestCall::Reset => json!({"kind": "reset"}),
            GuestCall::Access {
                write,
                region,
                offset,
                data,
            } => {
                let pio = self
                    .shared
                    .description
                    .region(*region)
                    .is_some_and(|r| r.kind == RegionKind::Pio);
                let kind = match (pio, write) {
                    (false, false) => "mmio_read",
                    (false, true) => "mmio_write",
                    (true, false) => "pio_read",
                    (true, true) => "pio_write",
                };
                let mut obj = serde_json::Map::new();
                obj.insert("kind".into(), json!(kind));
                obj.insert("region".into(), json!(region));
                obj.insert("offset".into(), json!(offset));
                if *write {
                    insert_access_data(&mut obj, data);
                } else {
                    obj.insert("size".into(), json!(data.len()));
                }
                if let Some(name) = self
                    .shared
                    .options
                    .regmap
                    .as_ref()
                    .and_then(|m| m.name_for(*region, *offset))
                {
                    obj.insert("name".into(), json!(name));
                }
                serde_json::Value::Object(obj)
            }
        }
    }

    fn restart(&mut self) {
        if self.state.counters.accesses > 0 || self.state.cursor != Cursor::default() {
            self.past_sessions.push(self.report());
        }
        self.state = self.shared.fresh_state();
        self.cur = match self.shared.chunk(0) {
            Ok(c) if self.shared.chunk_count > 0 => c,
            _ => Arc::new(CompiledChunk::default()),
        };
        self.irqs.clear();
        self.needs_restart = false;
    }

    fn check_region(&self, region: u32, offset: u64, len: usize) -> hwrr_device::Result<()> {
        let size = *self
            .region_sizes
            .get(region as usize)
            .filter(|s| **s > 0 && region != region_index::CONFIG)
            .ok_or(DeviceError::NoSuchRegion(region))?;
        match offset.checked_add(len as u64) {
            Some(end) if end <= size && len > 0 => Ok(()),
            _ => Err(DeviceError::OutOfRange {
                region,
                offset,
                len: len as u64,
                size,
            }),
        }
    }

    /// Whether a region access goes to a model (ROM, MSI-X table or PBA) rather than the sequencer.
    #[inline(always)]
    fn is_modelled(&self, region: u32, offset: u64, len: usize) -> bool {
        if region == region_index::ROM {
            return true;
        }
        match (&self.msix_layout, self.canonical.get(region as usize)) {
            (Some(m), Some(Some(c))) => {
                m.in_table(*c as u32, offset, len as u64) || m.in_pba(*c as u32, offset, len as u64)
            }
            _ => false,
        }
    }

    /// Serves a modelled region access (ROM, MSI-X table, PBA). Returns false when the access is
    /// sequenced instead.
    fn modelled_access(&mut self, write: bool, region: u32, offset: u64, data: &mut [u8]) -> bool {
        if region == region_index::ROM {
            if !write {
                self.state.counters.rom_reads += 1;
                let rom = self.shared.description.rom.as_deref().unwrap_or(&[]);
                for (i, b) in data.iter_mut().enumerate() {
                    *b = usize::try_from(offset + i as u64)
                        .ok()
                        .and_then(|o| rom.get(o))
                        .copied()
                        .unwrap_or(0xff);
                }
            }
            return true;
        }
        let Some(layout) = self.shared.rules.msix else {
            return false;
        };
        let Some(canonical) = self.shared.ctx.canonical(region) else {
            return false;
        };
        let len = data.len() as u64;
        if layout.in_table(canonical as u32, offset, len) {
            self.state.counters.msix_accesses += 1;
            let rel = offset.saturating_sub(layout.table_offset);
            if let Some(msix) = self.state.msix.as_mut() {
                if write {
                    msix.write_table(rel, data);
                } else {
                    msix.read_table(rel, data);
                }
            }
            if write {
                self.fire_unmasked_msix();
            }
            return true;
        }
        if layout.in_pba(canonical as u32, offset, len) {
            self.state.counters.msix_accesses += 1;
            if !write {
                let rel = offset.saturating_sub(layout.pba_offset);
                if let Some(msix) = self.state.msix.as_ref() {
                    msix.read_pba(rel, data);
                }
            }
            return true;
        }
        false
    }
}

/// Adds `size` and `value` (widths 1, 2, 4, 8) or `size` and hex `data`, as `hwrr dump --json`.
fn insert_access_data(obj: &mut serde_json::Map<String, serde_json::Value>, data: &AccessData) {
    match data {
        AccessData::Value { size, value } => {
            obj.insert("size".into(), json!(size));
            obj.insert("value".into(), json!(value));
        }
        AccessData::Bytes(b) => {
            obj.insert("size".into(), json!(b.len()));
            obj.insert("data".into(), json!(hwrr_formats::hex::encode(b)));
        }
    }
}

/// The regmap's address registers by (region, offset).
fn address_roles(map: &RegisterMap) -> HashMap<(u8, u64), AddrRole> {
    let mut roles = HashMap::new();
    for r in map.registers() {
        let Some(part) = r.address else { continue };
        let Ok(region) = u8::try_from(r.region) else {
            continue;
        };
        let partner = r
            .pair
            .as_deref()
            .and_then(|p| map.by_name(p))
            .map(|p| p.offset);
        let role = match (part, partner) {
            (AddressPart::Lo, Some(p)) => AddrRole::Lo { partner: p },
            (AddressPart::Lo, None) => AddrRole::Lo {
                partner: r.offset + 4,
            },
            (AddressPart::Hi, Some(p)) => AddrRole::Hi { partner: p },
            (AddressPart::Hi, None) => AddrRole::Hi {
                partner: r.offset.wrapping_sub(4),
            },
            (AddressPart::Full, _) => AddrRole::Full,
        };
        roles.insert((region, r.offset), role);
    }
    roles
}

/// The device as the header describes it: aliases become ordinary regions, nothing is mmappable
/// (the engine must see every access), config space and the ROM are listed.
fn describe_header(header: &TraceHeader, config_len: usize) -> DeviceDescription {
    let mut regions: Vec<RegionInfo> = header
        .regions
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.alias_of = None;
            r.flags &= !(region_flags::MMAP | region_flags::CAPS);
            r
        })
        .collect();
    if header.region(region_index::CONFIG).is_none() {
        regions.push(RegionInfo {
            index: region_index::CONFIG,
            kind: RegionKind::Config,
            size: config_len as u64,
            flags: region_flags::READ | region_flags::WRITE,
            alias_of: None,
        });
    }
    if let Some(rom) = &header.rom {
        if header.region(region_index::ROM).is_none() && !rom.is_empty() {
            regions.push(RegionInfo {
                index: region_index::ROM,
                kind: RegionKind::Rom,
                size: (rom.len() as u64).next_power_of_two(),
                flags: region_flags::READ,
                alias_of: None,
            });
        }
    }
    regions.sort_by_key(|r| r.index);
    DeviceDescription {
        identity: header.device.clone(),
        config_space: header.config_space.clone(),
        regions,
        irqs: header.irqs.clone(),
        rom: header.rom.clone(),
    }
}

impl Device for Replayer {
    fn describe(&self) -> DeviceDescription {
        let mut d = self.shared.description.clone();
        d.config_space = self.state.config.clone();
        d
    }

    fn region_read(
        &mut self,
        region: u32,
        offset: u64,
        data: &mut [u8],
    ) -> hwrr_device::Result<()> {
        self.check_region(region, offset, data.len())?;
        if self.is_modelled(region, offset, data.len())
            && self.modelled_access(false, region, offset, data)
        {
            return Ok(());
        }
        let Some(canonical) = self.canonical.get(region as usize).copied().flatten() else {
            return Err(DeviceError::NoSuchRegion(region));
        };
        if access_size_ok(data.len()) {
            let v = self.access(false, canonical, offset, data.len() as u8, 0);
            match data.len() {
                1 => data[0] = v as u8,
                2 => data.copy_from_slice(&(v as u16).to_le_bytes()),
                4 => data.copy_from_slice(&(v as u32).to_le_bytes()),
                _ => data.copy_from_slice(&v.to_le_bytes()),
            }
        } else {
            self.access_bytes(false, canonical, offset, data);
        }
        Ok(())
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> hwrr_device::Result<()> {
        self.check_region(region, offset, data.len())?;
        if self.is_modelled(region, offset, data.len()) {
            let mut buf = [0u8; 8];
            let modelled = if data.len() <= 8 {
                buf[..data.len()].copy_from_slice(data);
                self.modelled_access(true, region, offset, &mut buf[..data.len()])
            } else {
                let mut copy = data.to_vec();
                self.modelled_access(true, region, offset, &mut copy)
            };
            if modelled {
                return Ok(());
            }
        }
        let Some(canonical) = self.canonical.get(region as usize).copied().flatten() else {
            return Err(DeviceError::NoSuchRegion(region));
        };
        if access_size_ok(data.len()) {
            self.access(true, canonical, offset, data.len() as u8, le_value(data));
        } else {
            let mut copy = data.to_vec();
            self.access_bytes(true, canonical, offset, &mut copy);
        }
        Ok(())
    }

    fn config_read(&mut self, offset: u32, data: &mut [u8]) -> hwrr_device::Result<()> {
        let len = self.state.config.len();
        let start = offset as usize;
        let end = start
            .checked_add(data.len())
            .filter(|e| *e <= len && !data.is_empty());
        let Some(end) = end else {
            return Err(DeviceError::OutOfRange {
                region: region_index::CONFIG,
                offset: offset as u64,
                len: data.len() as u64,
                size: len as u64,
            });
        };
        self.state.counters.config_reads += 1;
        data.copy_from_slice(&self.state.config[start..end]);
        Ok(())
    }

    fn config_write(&mut self, offset: u32, data: &[u8]) -> hwrr_device::Result<()> {
        let len = self.state.config.len();
        if data.is_empty()
            || !self
                .shared
                .rules
                .write(&mut self.state.config, offset as usize, data)
        {
            return Err(DeviceError::OutOfRange {
                region: region_index::CONFIG,
                offset: offset as u64,
                len: data.len() as u64,
                size: len as u64,
            });
        }
        self.state.counters.config_writes += 1;
        self.fire_unmasked_msix();
        Ok(())
    }

    fn set_irqs(&mut self, request: IrqSetRequest) -> hwrr_device::Result<()> {
        self.irqs.set_irqs(request)
    }

    fn dma_map(&mut self, _region: DmaRegion) -> hwrr_device::Result<()> {
        // The frontend owns the memory behind mappings and reaches it through `attach_memory`.
        Ok(())
    }

    fn dma_unmap(&mut self, _mapping: DmaMapping) -> hwrr_device::Result<()> {
        Ok(())
    }

    fn reset(&mut self) -> hwrr_device::Result<()> {
        self.state.config = self.shared.rules.snapshot.clone();
        self.state.msix = self.shared.rules.msix.map(|m| MsixModel::new(m.entries));
        self.state.last_read = None;
        if self.state.stopped {
            return Ok(());
        }
        if let Some(op) = self.peek() {
            if op.kind == OpKind::Reset {
                self.state.counters.resets_matched += 1;
                self.consume(op);
                self.state.counters.matched -= 1;
                return Ok(());
            }
        }
        let window = match self.shared.options.policy {
            Policy::Resync { window } => window,
            _ => 16,
        };
        if let Some(target) = self.lookahead(OpKind::Reset, 0, 0, 0, 0, window) {
            let skipped = self.skip_to(target);
            self.state.counters.skipped += skipped;
            if let Some(op) = self.peek() {
                self.state.counters.resets_matched += 1;
                self.consume(op);
                self.state.counters.matched -= 1;
                return Ok(());
            }
        }
        self.note_mismatch(GuestCall::Reset, "the trace has no device reset here");
        self.state.counters.resets_unmatched += 1;
        match self.shared.options.policy {
            Policy::Strict => self.state.stopped = true,
            Policy::Resync { .. } => self.state.counters.inserted += 1,
            Policy::Model => self.state.counters.fallbacks += 1,
        }
        Ok(())
    }

    fn attach_memory(&mut self, memory: Arc<dyn GuestMemory>) {
        // Each client connection attaches its memory once: a second attach is a new client.
        let first_attach_of_fork = std::mem::take(&mut self.fork_pending);
        if !first_attach_of_fork
            && (self.needs_restart || self.memory.is_some() || self.state.counters.accesses > 0)
        {
            self.restart();
        }
        self.memory = Some(memory);
    }

    fn disconnect(&mut self) {
        self.needs_restart = true;
        self.memory = None;
    }
}
