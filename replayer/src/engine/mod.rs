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
use crate::reloc::{Relocation, RelocationMap, PAGE};
use crate::report::{Counters, DivergenceReport, Policy, ReplayReport};
use crate::source::{EventSource, SourceError};

pub use dmalog::DmaLog;
use dmalog::WriteOutcome;

mod device;
mod dmalog;
mod echo;
mod matching;
mod render;
mod response;
mod summary;

/// How many divergences the report lists (the first with context, then the next ones).
const MAX_LISTED_DIVERGENCES: usize = 32;

/// Smallest register value taken for a DMA address without a register map naming the register.
const MIN_REGISTER_ADDRESS: u64 = 1 << 16;

/// Smallest value taken for a pointer the replay guest wrote (below it: counters, lengths, flags).
const MIN_POINTER: u64 = 1 << 20;

/// Reads up to this long are shown in the DMA log with the replay guest's bytes beside them.
const DMA_LOG_BYTES: usize = 128;

/// Unchanged bytes that end a whole-page fill (`fill_extent`).
const FILL_GAP: usize = 512;

/// How much of a recorded whole-page fill (`data` over `before`) is the device's: from the page's
/// start to the last changed 16-byte block before the first run of [`FILL_GAP`] unchanged bytes.
/// A device fills a buffer from its start; a buffer that starts a page may end well before the
/// page does (a 512-byte log page), and the rest of the page holds the recorded kernel's other
/// objects, some of which changed while the device worked.
fn fill_extent(data: &[u8], before: &[u8]) -> usize {
    let mut last_changed = None;
    let mut unchanged = 0usize;
    for (i, (d, b)) in data.iter().zip(before).enumerate() {
        if d != b {
            last_changed = Some(i);
            unchanged = 0;
        } else {
            unchanged += 1;
            if unchanged >= FILL_GAP && last_changed.is_some() {
                break;
            }
        }
    }
    last_changed.map_or(0, |last| ((last + 16) & !15).min(data.len()))
}

/// Device writes up to this long into a page an old command named can be a structure's write-back
/// (`page_named_by_guest_ring`).
const SMALL_WRITE_BACK: usize = 64;

/// Groups of device actions that must write a page an old command named before its small
/// write-backs are trusted (`device_keeps_page`).
const MIN_STRUCTURE_WRITE_GROUPS: u64 = 8;

/// Lowest kernel-half virtual address of a 57-bit address space (48-bit ones start higher).
const KERNEL_HALF: u64 = 0xff00_0000_0000_0000;

/// Bound on the buffer pointers remembered for one group of device actions.
const MAX_GROUP_BUFFERS: usize = 4096;
/// Whether a register write's address value looks like a ring base (16-byte aligned, not a small
/// number): every register value names "a page" in the summary; most are counts, masks and flags.
fn looks_like_ring_base(named: &crate::compile::NamedPage) -> bool {
    named.addr % 16 == 0 && named.addr >= MIN_REGISTER_ADDRESS
}

/// Rings whose first page `page_named_by_guest_ring` reads (the register-named pages around the
/// cursor; a device has a few).
const MAX_NAMED_RINGS: usize = 64;

/// Pages of queues in use that are remembered (`note_live_queue`): 64 queues of 16 pages.
const MAX_LIVE_QUEUE_PAGES: usize = 1024;

/// Pages named by submitted commands that are looked at, per kind (`command_named_pages`).
const MAX_COMMAND_PAGES: usize = 256;

/// The pages the replay guest's commands name, for one group of device actions.
#[derive(Clone, Debug, Default, PartialEq)]
struct CommandPages {
    /// The first page of each ring the guest programmed as the recorded guest did.
    rings: Vec<u64>,
    /// Page-aligned words of the first page of each ring the guest programmed as the recorded
    /// guest did: the queues and data pages of the commands there (an NVMe admin queue's).
    queues: Vec<u64>,
    /// Page-aligned words of the pending commands read from those rings and queues, as the
    /// guest wrote them: the data pages of the commands the device is serving.
    submitted: Vec<u64>,
}

/// Adds the page-aligned 8-byte words of `bytes` (at least 1 MiB, not in `skip`) to `out`.
fn page_words(bytes: &[u8], out: &mut Vec<u64>, skip: &[u64]) {
    for w in bytes.chunks_exact(8) {
        let p = le_value(w);
        if p >= MIN_POINTER
            && p % PAGE == 0
            && !skip.contains(&p)
            && !out.contains(&p)
            && out.len() < MAX_COMMAND_PAGES
        {
            out.push(p);
        }
    }
}

/// Descriptor granularity assumed when reading the descriptor a write-back went to (16 bytes:
/// Intel and Realtek NIC descriptors, virtio descriptors).
const DESCRIPTOR_ALIGN: u64 = 16;

/// Bytes from a buffer pointer in a descriptor the device completes that a recorded device write
/// may land on: the span the recorder's watch set watches from such a pointer
/// (`hwrr_recorder::WatchOptions::pointer_span`), so no device write it attributed goes further.
const BUFFER_SPAN: u64 = 2048;

/// Largest recorded DMA mapping whose addresses count as evidence of a DMA address (256 MiB).
const SMALL_MAPPING: u64 = 256 << 20;

/// Longest recorded DMA read searched for pointers (one page: descriptors, NVMe PRP lists).
const MAX_POINTER_READ: usize = 4096;

/// Command register: INTx Disable.
const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// Status register: Interrupt Status (an INTx is held).
const STATUS_INTERRUPT: u16 = 1 << 3;

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
    /// Write a line per recorded DMA event (what landed, what was withheld and why) here.
    pub dma_log: Option<DmaLog>,
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
            dma_log: None,
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

/// A relocation guessed from one half of a 64-bit address written as two 32-bit registers, before
/// the guest wrote the other half: the other half was taken from the register model, so the guess
/// is replaced (not added to) when the other half arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct HalfAddress {
    region: u8,
    /// The register whose write produced the guess.
    offset: u64,
    /// The other half, still to be written.
    partner: u64,
    /// Whether `offset` holds the low half.
    low: bool,
    /// The recorded and the guest's value of the half written.
    recorded: u64,
    guest: u64,
    /// The range learned from the guess.
    range: Relocation,
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
    /// Whether `shorten_polls` looked for the end of the current run already.
    shorten_tried: bool,
    /// Registers the guest wrote where the trace did not follow (inserted writes) since the last
    /// resync or slow-path match (a fast-path match keeps them: the recorded write may still be
    /// ahead): a recorded write to one of them counts as made when a read resyncs.
    writes_off_stream: Vec<RegKey>,
    /// Reads answered from ahead in a row while the cursor stood still: past a bound the guest
    /// is taken to have left the recorded path, and reads resync by skipping again.
    ahead_streak: u32,
    /// Since the device last raised an interrupt (`None` before the first): the registers whose
    /// first read after it was answered from farther ahead than the resync window (the
    /// interrupt handler's reads, where the capture's handler ran later).
    reads_after_irq: Option<Vec<RegKey>>,
    /// Register values the guest wrote that differ from the recording, and model answers: stamp
    /// (cursor position) and value.
    model: BTreeMap<RegKey, (u64, u64)>,
    config: Vec<u8>,
    msix: Option<MsixModel>,
    relocations: RelocationMap,
    /// The relocation guessed from the first half of an address pair, awaiting the second half.
    pending_half: Option<HalfAddress>,
    recorded_mappings: Vec<(u64, u64)>,
    /// Registers the guest programmed with a relocated address: (key, recorded value, guest
    /// value). A recorded read-back of the recorded value answers the guest's value.
    readback: Vec<(RegKey, u64, u64)>,
    /// Buffers of the descriptors the current group of device actions writes back, as the replay
    /// guest's memory holds them before the group lands: the buffers the device fills now.
    group_buffers: Vec<u64>,
    /// Whether the current group of device actions writes back to a ring the guest programmed
    /// (a completion): only then may it fill pages the guest's submitted commands name.
    group_completes: bool,
    /// The recorded reads since the last group of device actions that completed something:
    /// the commands the device has been handed and not yet answered (a driver may write its
    /// next command before the register write that starts it, so it is read a group early).
    pending_commands: Vec<(u64, Vec<u8>)>,
    /// The guest-access count of a group that completed: the next read after it starts a new
    /// set of pending commands.
    completed_at: Option<u64>,
    /// The access count when the trace last delivered an interrupt: device writes logged after
    /// the interrupt of their group come from a recorder's look after the guest's handler ran,
    /// and may be the handler's own stores.
    irq_at: Option<u64>,
    /// Whether the trace showed a read yet (a recorder that logs what the guest hands the device).
    trace_has_reads: bool,
    /// Pages of the queues a command created that the current group posts completions to (a
    /// write there echoes a command the group read).
    completion_pages: Vec<u64>,
    /// Replay-guest pages of queues in use: where a completion that echoes a pending command
    /// landed in a queue a command created, where the command it echoes was read, and the pages
    /// that continue them (`continue_queue_relocation`). A command's data page is named the
    /// same way as a queue, but no completion lands there and no command is read from it.
    live_queues: Vec<u64>,
    /// Which rule `trusted_dma_range` last trusted a range by (for the DMA log).
    trusted_as: &'static str,
    /// Those of `live_queues` that commands are read from (submission queues), with the pages
    /// that continue them.
    command_queues: Vec<u64>,
    /// The pages the replay guest's commands name (see [`CommandPages`]), for the current group
    /// of device actions.
    command_named: Option<CommandPages>,
    /// Echoing field pairs confirmed around a chunk: (chunk, pairs).
    echo_fields: Option<(usize, Vec<echo::EchoField>)>,
    /// The recorded answer to a request the guest wrote off the stream (request/response
    /// registers), while the guest polls it.
    response: Option<Box<response::Response>>,
    counters: Counters,
    mismatch: Option<Box<Mismatch>>,
    /// The divergences after the first, up to [`MAX_LISTED_DIVERGENCES`] in all.
    later_mismatches: Vec<Mismatch>,
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
    summaries: Mutex<HashMap<usize, Arc<summary::ChunkSummary>>>,
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
            shorten_tried: false,
            writes_off_stream: Vec::new(),
            reads_after_irq: None,
            ahead_streak: 0,
            model: BTreeMap::new(),
            config: self.rules.snapshot.clone(),
            msix: self.rules.msix.map(|m| MsixModel::new(m.entries)),
            relocations: RelocationMap::new(),
            pending_half: None,
            recorded_mappings: self.start_mappings.clone(),
            readback: Vec::new(),
            group_buffers: Vec::new(),
            group_completes: false,
            pending_commands: Vec::new(),
            completed_at: None,
            irq_at: None,
            trace_has_reads: false,
            completion_pages: Vec::new(),
            live_queues: Vec::new(),
            trusted_as: "",
            command_queues: Vec::new(),
            command_named: None,
            echo_fields: None,
            response: None,
            counters: Counters::default(),
            mismatch: None,
            later_mismatches: Vec::new(),
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
    /// The errno of the recorded call just matched when it failed (0 otherwise): the access fails
    /// the same way.
    failed_errno: u32,
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
        let description = device::describe_header(&header, rules.snapshot.len());
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
            summaries: Mutex::new(HashMap::new()),
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
            failed_errno: 0,
            shared,
        })
    }

    /// What this trace cannot give a replayed driver, in words for the user, from its header:
    /// empty for a trace recorded by hwrr. A trace imported from a QEMU trace log has no DMA
    /// payloads (QEMU logs DMA translations, not data), so a driver that waits for the device to
    /// write memory waits in vain.
    pub fn caveats(&self) -> Vec<String> {
        let header = self.shared.source.header();
        let mut caveats = Vec::new();
        if header.capture.source == "qemu-trace" {
            caveats.push(
                "this trace was imported from a QEMU trace log, which holds no DMA data: registers \
                 and interrupts replay, but memory the device wrote does not (descriptor \
                 write-backs, received frames, NVMe completion entries, virtio used rings), so a \
                 driver that waits for it times out"
                    .to_string(),
            );
        }
        caveats
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
            failed_errno: 0,
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
        // Ops before this index in the current chunk have had their DMA-write "before" bytes
        // checked for pointers.
        let mut learned_upto = 0usize;
        loop {
            if let Some(op) = self.cur.ops.get(self.state.cursor.op).copied() {
                if op.kind.is_guest_call() {
                    return;
                }
                if op.kind == OpKind::DmaWrite && self.state.cursor.op >= learned_upto {
                    learned_upto = self.learn_from_dma_write_group(self.state.cursor.op);
                }
                self.state.cursor.op += 1;
                self.execute(op);
            } else {
                let group_goes_on = learned_upto > 0 && learned_upto >= self.cur.ops.len();
                if !self.next_chunk() {
                    return;
                }
                learned_upto = self.group_rest_learned(group_goes_on);
            }
        }
    }

    /// Where the learning of DMA-write groups resumes in a chunk just entered: after the ops
    /// before its first guest call when `group_goes_on` (the group the previous chunk ended in
    /// was learned whole, across the boundary: learning it again from its middle would lose
    /// what its first part showed, such as the completion that lets the rest land), else at 0.
    pub(super) fn group_rest_learned(&self, group_goes_on: bool) -> usize {
        if !group_goes_on {
            return 0;
        }
        self.cur
            .ops
            .iter()
            .position(|o| o.kind.is_guest_call())
            .unwrap_or(self.cur.ops.len())
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
                self.state.irq_at = Some(self.state.counters.accesses);
                match &mut self.state.reads_after_irq {
                    Some(keys) => keys.clear(),
                    None => self.state.reads_after_irq = Some(Vec::new()),
                }
                if self.shared.options.honor_delays {
                    self.wait_recorded_delay();
                }
                self.deliver_irq(op.offset as u32, op.value as u32)
            }
            OpKind::DmaWrite => self.apply_dma_write(op),
            OpKind::DmaRead => self.learn_from_dma_read(op),
            // A mapping the recorded kernel refused never existed.
            OpKind::DmaMap | OpKind::DmaUnmap if op.failed => {}
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
        if index == irq_index::MSI && vector < 32 {
            if let Some(mask_at) = self.shared.rules.msi_mask {
                if self.config_u32(mask_at) & (1 << vector) != 0 {
                    // PCI: a masked MSI vector sets its pending bit; the message is sent when
                    // the guest unmasks it.
                    let pending = self.config_u32(mask_at + 4) | (1 << vector);
                    self.set_config_u32(mask_at + 4, pending);
                    self.state.counters.irqs_pending += 1;
                    return;
                }
            }
        }
        if index == irq_index::INTX && self.config_u16(0x04) & COMMAND_INTX_DISABLE != 0 {
            // PCI: with INTx disabled the device only sets Interrupt Status; the interrupt is
            // asserted when the guest enables INTx again.
            let status = self.config_u16(0x06) | STATUS_INTERRUPT;
            self.set_config_u16(0x06, status);
            self.state.counters.irqs_pending += 1;
            return;
        }
        self.raise(index, vector);
    }

    /// Raises a held INTx once the guest clears INTx Disable.
    fn fire_enabled_intx(&mut self) {
        let status = self.config_u16(0x06);
        if status & STATUS_INTERRUPT != 0 && self.config_u16(0x04) & COMMAND_INTX_DISABLE == 0 {
            self.set_config_u16(0x06, status & !STATUS_INTERRUPT);
            self.raise(irq_index::INTX, 0);
        }
    }

    /// Sends pending MSI vectors the guest has unmasked (per-vector masking).
    fn fire_unmasked_msi(&mut self) {
        let Some(mask_at) = self.shared.rules.msi_mask else {
            return;
        };
        let pending = self.config_u32(mask_at + 4);
        let ready = pending & !self.config_u32(mask_at);
        if ready == 0 {
            return;
        }
        self.set_config_u32(mask_at + 4, pending & !ready);
        for vector in 0..32 {
            if ready & (1 << vector) != 0 {
                self.raise(irq_index::MSI, vector);
            }
        }
    }

    fn config_u32(&self, offset: usize) -> u32 {
        match self.state.config.get(offset..offset + 4) {
            Some(b) => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            None => 0,
        }
    }

    fn set_config_u32(&mut self, offset: usize, value: u32) {
        if let Some(b) = self.state.config.get_mut(offset..offset + 4) {
            b.copy_from_slice(&value.to_le_bytes());
        }
    }

    fn config_u16(&self, offset: usize) -> u16 {
        match self.state.config.get(offset..offset + 2) {
            Some(b) => u16::from_le_bytes([b[0], b[1]]),
            None => 0,
        }
    }

    fn set_config_u16(&mut self, offset: usize, value: u16) {
        if let Some(b) = self.state.config.get_mut(offset..offset + 2) {
            b.copy_from_slice(&value.to_le_bytes());
        }
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
        if let Some(before) = payload.before.as_deref() {
            if self.command_written_as_device_write(op, &payload.data, before) {
                let c = &mut self.state.counters;
                c.dma_writes_unconfirmed += 1;
                c.dma_writes_not_applied += 1;
                let len = payload.data.len();
                self.log_dma_write(
                    op,
                    len,
                    0,
                    WriteOutcome::NotApplied,
                    &["guest_command"],
                    &[],
                );
                return;
            }
        }
        let mut rewrites = Vec::new();
        let echoed = payload
            .before
            .as_deref()
            .and_then(|before| self.echoed(op.value, &payload.data, before, &mut rewrites));
        let written_data = echoed.as_deref().unwrap_or(&payload.data);
        let total = written_data.len();
        if let Some(before) = payload.before.as_deref() {
            if self.hands_out_buffers(op.value, &payload.data, before) {
                // The recorded guest's own write (a driver filling descriptors), which a watch set
                // cannot tell from the device's: it names the recorded guest's buffers, which in
                // the replay guest's memory are anything.
                let c = &mut self.state.counters;
                c.dma_writes_unconfirmed += 1;
                c.dma_writes_not_applied += 1;
                self.log_dma_write(
                    op,
                    total,
                    0,
                    WriteOutcome::NotApplied,
                    &["driver_write"],
                    &rewrites,
                );
                return;
            }
        }
        // The recorded guest's pointers in the "before" bytes (a descriptor's buffer address) are
        // at their relocated values in the replay guest's memory: compare against those.
        let relocated_before = payload
            .before
            .as_deref()
            .map(|b| self.relocate_pointers(op.value, b));
        let mut done = 0usize;
        let mut written = 0usize;
        let mut fault = false;
        let mut untrusted = false;
        let mut whole_page_fill = false;
        let mut trusted_by: Vec<&'static str> = Vec::new();
        let mut stale_before = false;
        while done < total {
            let rec = op.value.wrapping_add(done as u64);
            let (target, span) = self.state.relocations.translate_span(rec);
            // Page by page: trust is decided per page.
            let to_page_end = PAGE - (rec % PAGE);
            let n = (span.min(to_page_end).min((total - done) as u64) as usize)
                .max(1)
                .min(total - done);
            let data = &written_data[done..done + n];
            match &relocated_before {
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
                    } else if n as u64 == PAGE && self.fills_handed_page(target) {
                        // The whole page a command the group completes handed the device (a
                        // recorder logs such a fill whole): the device fills it whatever it
                        // held, and what it held is the replay guest's own history (a
                        // `kmalloc` leftover), not a change made since to spare; how much of the
                        // page is the fill: `fill_extent`.
                        whole_page_fill = true;
                        let filled = fill_extent(data, before);
                        if memory.write(target, &data[..filled]).is_ok() {
                            written += n;
                        } else {
                            fault = true;
                        }
                    } else if !self.trusted_dma_range(rec, target, n) {
                        // (Reported below.)
                        // Guest memory the replay has no evidence the guest gave the device:
                        // the recorded buffer may be anything here (the guest put it elsewhere).
                        untrusted = true;
                    } else {
                        if !trusted_by.contains(&self.state.trusted_as) {
                            trusted_by.push(self.state.trusted_as);
                        }
                        // Apply maximal runs where the guest still holds the recorded "before".
                        let mut i = 0;
                        while i < n {
                            if self.scratch[i] != before[i] {
                                stale_before = true;
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
        if untrusted {
            c.dma_writes_unconfirmed += 1;
        }
        let outcome = if written == total {
            c.dma_writes_applied += 1;
            WriteOutcome::Applied
        } else if written > 0 {
            c.dma_writes_partial += 1;
            WriteOutcome::Partial
        } else {
            c.dma_writes_not_applied += 1;
            WriteOutcome::NotApplied
        };
        if self.shared.options.dma_log.is_some() {
            let mut reasons = Vec::new();
            if fault {
                reasons.push("fault");
            }
            if untrusted {
                reasons.push("untrusted");
            }
            if whole_page_fill {
                reasons.push("whole_page_fill");
            }
            if stale_before && outcome != WriteOutcome::Applied {
                reasons.push("before_differs");
            }
            reasons.extend(trusted_by.iter().map(|t| match *t {
                "ring" => "trusted:ring",
                "descriptor_buffer" => "trusted:descriptor_buffer",
                "completion_queue" => "trusted:completion_queue",
                "command_page" => "trusted:command_page",
                _ => "trusted:device_structure",
            }));
            self.log_dma_write(op, total, written, outcome, &reasons, &rewrites);
        }
    }

    /// One line of the DMA log for a recorded device write (`rewrites`: its echoed fields).
    fn log_dma_write(
        &mut self,
        op: Op,
        len: usize,
        written: usize,
        outcome: WriteOutcome,
        reasons: &[&str],
        rewrites: &[echo::EchoRewrite],
    ) {
        let Some(log) = self.shared.options.dma_log.clone() else {
            return;
        };
        let seq = self.op_seq();
        let target = self.state.relocations.translate(op.value);
        let pending = self.state.pending_commands.len();
        let echoes: Vec<serde_json::Value> = rewrites
            .iter()
            .map(|e| json!({"at": e.at, "recorded": e.recorded, "replay": e.replay, "source": e.source}))
            .collect();
        log.line(&json!({
            "seq": seq,
            "kind": "dma_write",
            "iova": op.value,
            "target": target,
            "len": len,
            "written": written,
            "outcome": outcome.name(),
            "reasons": reasons,
            "echoes": echoes,
            "group_completes": self.state.group_completes,
            "pending_commands": pending,
        }));
    }

    /// Sequence number of the op just executed (the cursor is one past it).
    fn op_seq(&self) -> Option<u64> {
        self.state
            .cursor
            .op
            .checked_sub(1)
            .and_then(|i| self.cur.seqs.get(i).copied())
    }

    /// Whether a device write recorded at `rec` may land on the `len` bytes at `target` in the
    /// replay guest's memory: only memory the replay guest gives the device *now*. That is the
    /// first page of a ring it programmed (an address register the guest wrote with the recorded
    /// value or with the value the relocation map moves it to, or the first page of a relocation
    /// learned from such a register), or the first `BUFFER_SPAN` bytes of a buffer named by a
    /// descriptor the same group of device actions writes back (a received frame and its
    /// completion: a device writes the buffers of the descriptors it completes, not those of
    /// frames it sends, which sit in the guest's heap).
    ///
    /// A watch-set trace holds the recorded guest's own writes to its buffers and to the pages
    /// around its rings as device writes (a diff cannot tell who wrote a byte), and a guest that
    /// boots the same way keeps identical kernel data at identical addresses: matching "before"
    /// bytes are no evidence, and neither is a page that was a buffer once (freed, it holds
    /// anything). Re-applying such writes corrupted replayed kernels (a device list, an skb's
    /// shared info); so trust is decided at each write, from the guest's structures as they are.
    fn trusted_dma_range(&mut self, rec: u64, target: u64, len: usize) -> bool {
        let register_ring_page = self
            .state
            .relocations
            .range_of(rec)
            .is_some_and(|r| r.len > PAGE && rec / PAGE == r.recorded / PAGE);
        if register_ring_page || self.named_ring(rec) {
            // Ring entries hold DMA addresses, ids and statuses; a kernel's objects that share
            // the ring's page (a coherent allocation of 512 bytes, the rest of the page given
            // to others) hold its pointers, and writing the recorded kernel's there hung a
            // replayed kernel.
            self.state.trusted_as = "ring";
            return !self.touches_cpu_pointer(target, len);
        }
        if self.given_to_device(target, len as u64) {
            self.state.trusted_as = "descriptor_buffer";
            return true;
        }
        self.page_named_by_guest_ring(rec, target, len)
    }

    /// Whether the `len` bytes at `target` lie in one page whose address, page-aligned, is a word
    /// of the first page of a ring the replay guest programmed as the recorded guest did, or a
    /// word of a command the current group read from such a ring or from a queue a command in
    /// one created, while the group completes something (writes back to such a ring, or echoes
    /// a command into a queue a command created): a page a submitted command names (an NVMe
    /// command's data pointer: Identify data, a queue, a read buffer), filled in the group that
    /// posts the command's completion. Such commands sit in a submission queue, which the device
    /// reads and never writes back, and their completion goes to another ring, so
    /// `given_to_device` (buffers of the descriptors written back) misses them. A guest's own
    /// writes to a buffer it just handed out come in a group that completes nothing, and a NIC's
    /// packet buffers are not page-aligned.
    fn page_named_by_guest_ring(&mut self, rec: u64, target: u64, len: usize) -> bool {
        let page = target - target % PAGE;
        if !self.state.group_completes
            || page < MIN_POINTER
            || target.saturating_add(len as u64) > page + PAGE
        {
            return false;
        }
        if self.state.completion_pages.contains(&page) {
            self.state.trusted_as = "completion_queue";
            return true;
        }
        // A ring's first page also holds the commands of long ago, whose pages the kernel has
        // since reused: with the commands of each group in the trace, only those count.
        let legacy = !self.state.trace_has_reads;
        let named = self.command_named_pages();
        if named.submitted.contains(&page) || (legacy && named.queues.contains(&page)) {
            self.state.trusted_as = "command_page";
            return true;
        }
        // A device structure that a command set up long ago (an NVMe I/O queue, its doorbell
        // event-index buffer) takes small write-backs of counters and statuses before the
        // group's interrupt. What a kernel keeps in a page it reused after an old command holds
        // its own pointers, which a device never writes: a word of the replay guest's memory
        // there that is a kernel-half address keeps the write out. After the interrupt, a
        // recorder's diff also holds the guest handler's stores (an NVMe shadow doorbell):
        // written ahead of the guest, they would tell it the doorbell needs no register write.
        let old_command_page = named.queues.contains(&page);
        self.state.trusted_as = "device_structure";
        let after_irq = self.state.irq_at == Some(self.state.counters.accesses);
        old_command_page
            && len <= SMALL_WRITE_BACK
            && !after_irq
            && !self.touches_cpu_pointer(target, len)
            && self.device_keeps_page(rec)
    }

    /// Whether the trace around the cursor shows the device writing the recorded page of `rec`
    /// as a structure of its own: in at least [`MIN_STRUCTURE_WRITE_GROUPS`] groups of device
    /// actions (an NVMe event-index page takes a write with every completion), and the guest
    /// handing it over (reads) at most four times as often (NVMe's shadow doorbells, which the
    /// guest writes: 569 reads against 14 writes in one recording). A page a kernel reused
    /// after an old command takes its stores in a few bursts.
    fn device_keeps_page(&mut self, rec: u64) -> bool {
        let page = rec / PAGE;
        let around = self.summaries_around();
        let (mut reads, mut write_groups) = (0u64, 0u64);
        for summary in around {
            if let Some((r, w)) = summary.page_traffic.get(&page) {
                reads += u64::from(*r);
                write_groups += u64::from(*w);
            }
        }
        write_groups >= MIN_STRUCTURE_WRITE_GROUPS && reads <= 4 * write_groups
    }

    /// Whether an 8-byte word of the replay guest's memory that the `len` bytes at `target`
    /// overlap is an address in the upper (kernel) half of a 48-bit or 57-bit virtual address
    /// space, which a CPU stores and a device does not (unreadable memory counts as one).
    fn touches_cpu_pointer(&self, target: u64, len: usize) -> bool {
        let Some(memory) = self.memory.as_ref() else {
            return true;
        };
        let first = target & !7;
        let end = target.saturating_add(len as u64);
        let mut word = first;
        while word < end {
            let mut bytes = [0u8; 8];
            if memory.read(word, &mut bytes).is_err() {
                return true;
            }
            if u64::from_le_bytes(bytes) >= KERNEL_HALF {
                return true;
            }
            let Some(next) = word.checked_add(8) else {
                break;
            };
            word = next;
        }
        false
    }

    /// Whether `target` is a page a command of the current group names (as the replay guest wrote
    /// it) while the group completes: a buffer the command handed the device to fill.
    fn fills_handed_page(&mut self, target: u64) -> bool {
        target % PAGE == 0
            && self.state.group_completes
            && self.command_named_pages().submitted.contains(&target)
    }

    /// The pages the replay guest's commands name, computed once per group of device actions
    /// (see [`CommandPages`]).
    fn command_named_pages(&mut self) -> &CommandPages {
        if self.state.command_named.is_none() {
            let named = self.find_command_named_pages();
            self.state.command_named = Some(named);
        }
        self.state
            .command_named
            .get_or_insert_with(CommandPages::default)
    }

    fn find_command_named_pages(&mut self) -> CommandPages {
        let mut named = CommandPages::default();
        if let Some(memory) = self.memory.clone() {
            let mut rings: Vec<u64> = Vec::new();
            for summary in self.summaries_to_cursor() {
                for named in summary.register_named_pages.values() {
                    if !looks_like_ring_base(named) || !self.guest_named_too(named) {
                        continue;
                    }
                    let ring = self.state.relocations.translate(named.addr);
                    let ring_page = ring - ring % PAGE;
                    if !rings.contains(&ring_page) && rings.len() < MAX_NAMED_RINGS {
                        rings.push(ring_page);
                    }
                }
            }
            let mut buf = std::mem::take(&mut self.scratch2);
            buf.resize(PAGE as usize, 0);
            for &ring in &rings {
                if memory.read(ring, &mut buf).is_ok() {
                    page_words(&buf, &mut named.queues, &rings);
                }
            }
            // The commands the group read, as the replay guest wrote them: from a ring's first
            // page or from a queue a command created (not from pages around them, which hold
            // the kernel's data and, once, its buffers).
            let reads: Vec<(u64, usize)> = self
                .state
                .pending_commands
                .iter()
                .map(|(iova, bytes)| (self.state.relocations.translate(*iova), bytes.len()))
                .collect();
            for (at, n) in reads {
                let page = at - at % PAGE;
                if !(rings.contains(&page)
                    || named.queues.contains(&page)
                    || self.state.live_queues.contains(&page))
                {
                    continue;
                }
                let n = n.min((page + PAGE - at) as usize);
                if memory.read(at, &mut buf[..n]).is_ok() {
                    let skip = (8 - (at % 8) as usize) % 8;
                    page_words(&buf[skip.min(n)..n], &mut named.submitted, &[]);
                }
            }
            self.scratch2 = buf;
            named.rings = rings;
        }
        named
    }

    /// Remembers the buffers named by the replay guest's descriptors at `target` (`len` bytes a
    /// write-back of the current group goes to, widened to whole descriptors).
    fn note_group_buffers(&mut self, target: u64, len: u64) {
        let Some(memory) = self.memory.clone() else {
            return;
        };
        let start = target - target % DESCRIPTOR_ALIGN;
        let end = target
            .saturating_add(len.max(1))
            .div_ceil(DESCRIPTOR_ALIGN)
            .saturating_mul(DESCRIPTOR_ALIGN);
        let mut buf = std::mem::take(&mut self.scratch2);
        buf.resize(end.saturating_sub(start).min(PAGE) as usize, 0);
        if memory.read(start, &mut buf).is_ok() {
            for w in buf.chunks_exact(8) {
                let ptr = le_value(w);
                if ptr >= MIN_POINTER && self.state.group_buffers.len() < MAX_GROUP_BUFFERS {
                    self.state.group_buffers.push(ptr);
                }
            }
        }
        self.scratch2 = buf;
    }

    /// Whether a recorded write of `data` over `before` at `iova` changes an 8-byte aligned word to
    /// a DMA address of the recording: a descriptor given a buffer. Drivers hand out buffers;
    /// devices report completions (status, lengths, ids) and do not. A word the write covers only
    /// in part counts when it covers the low half (a 32-bit address, the high half unchanged and
    /// taken as 0: a diff logs only the bytes that changed).
    fn hands_out_buffers(&self, iova: u64, data: &[u8], before: &[u8]) -> bool {
        let len = data.len().min(before.len()) as u64;
        let end = iova.saturating_add(len);
        let mut word_at = iova - iova % 8;
        while word_at < end {
            let (lo, hi) = (word_at.max(iova), (word_at + 8).min(end));
            let covers_low_half = lo == word_at && hi >= word_at + 4;
            if covers_low_half {
                let mut new = [0u8; 8];
                let mut old = [0u8; 8];
                let (from, to) = ((lo - iova) as usize, (hi - iova) as usize);
                new[..to - from].copy_from_slice(&data[from..to]);
                old[..to - from].copy_from_slice(&before[from..to]);
                let word = u64::from_le_bytes(new);
                if word != u64::from_le_bytes(old)
                    && word >= MIN_POINTER
                    && self.is_recorded_dma_page(word)
                {
                    return true;
                }
            }
            word_at += 8;
        }
        false
    }

    /// Whether the `len` bytes at `target` lie in the first `BUFFER_SPAN` bytes of a buffer the
    /// current group's write-backs complete (see `ReplayState::group_buffers`), or in the page a
    /// page-aligned buffer pointer names (a recorder logs a device's fill of such a page whole).
    fn given_to_device(&self, target: u64, len: u64) -> bool {
        let end = target.saturating_add(len.max(1));
        self.state.group_buffers.iter().any(|&ptr| {
            let span = if ptr % PAGE == 0 { PAGE } else { BUFFER_SPAN };
            ptr <= target && end <= ptr.saturating_add(span)
        })
    }

    /// Whether `rec`'s page is a ring the guest programmed as the recorded guest did: named by a
    /// recorded register write that looks like a ring base (16-byte aligned, not a small number)
    /// and written by the guest with the same value or its relocation. Every register value names
    /// "a page" in the summary; most are counts, masks and flags.
    fn named_ring(&self, rec: u64) -> bool {
        self.ring_naming(rec)
            .is_some_and(|named| self.guest_named_too(&named))
    }

    /// The recorded register write before the cursor that named `rec`'s page with a value that
    /// looks like a ring base.
    fn ring_naming(&self, rec: u64) -> Option<crate::compile::NamedPage> {
        self.register_naming(rec).filter(looks_like_ring_base)
    }

    /// The summaries of the cursor's chunk and of the look-around before it, nearest first.
    /// The summaries of the cursor's chunk and of the look-around before and after it.
    fn summaries_around(&self) -> impl Iterator<Item = Arc<summary::ChunkSummary>> + '_ {
        let chunk = self.state.cursor.chunk;
        self.shared
            .summary(chunk)
            .into_iter()
            .chain(self.shared.chunks_before(chunk).map(|(_, s)| s))
            .chain(self.shared.chunks_after(chunk).map(|(_, s)| s))
    }

    fn summaries_to_cursor(&self) -> impl Iterator<Item = Arc<summary::ChunkSummary>> + '_ {
        let current = self.state.cursor.chunk;
        let here = (current < self.shared.chunk_count)
            .then(|| self.shared.summary(current))
            .flatten();
        here.into_iter().chain(
            self.shared
                .chunks_before(current)
                .map(|(_, summary)| summary),
        )
    }

    /// The last recorded register write before the cursor (this chunk or the look-around before
    /// it) that named `rec`'s page (as a 64-bit value, or a 32-bit one, alone or paired with its
    /// neighbour).
    fn register_naming(&self, rec: u64) -> Option<crate::compile::NamedPage> {
        let page = rec / PAGE;
        self.summaries_to_cursor()
            .find_map(|summary| summary.register_named_pages.get(&page).copied())
    }

    /// Whether the guest's last write of the register that named a page (the register model
    /// holds the guest's value where it differed from the recording) names the same page, or the
    /// page the relocation map moved it to.
    fn guest_named_too(&self, named: &crate::compile::NamedPage) -> bool {
        let Some((_, guest)) = self.state.model.get(&named.key) else {
            return true;
        };
        if *guest == named.value {
            return true;
        }
        let moved = self.state.relocations.translate(named.addr);
        let part = match named.key.2 {
            8 => moved,
            // The half of the address this register holds.
            _ if named.addr & 0xFFFF_FFFF == named.value => moved & 0xFFFF_FFFF,
            _ => moved >> 32,
        };
        moved != named.addr && part == *guest
    }

    /// `bytes` (recorded at IOVA `iova`) with every 8-byte aligned word that the relocation map
    /// moves replaced by its replay value.
    fn relocate_pointers<'a>(&self, iova: u64, bytes: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        let map = &self.state.relocations;
        if map.is_empty() {
            return std::borrow::Cow::Borrowed(bytes);
        }
        let mut out = std::borrow::Cow::Borrowed(bytes);
        let mut k = ((8 - (iova % 8)) % 8) as usize;
        while k + 8 <= bytes.len() {
            let rec = le_value(&bytes[k..k + 8]);
            let now = if rec == 0 { 0 } else { map.translate(rec) };
            if now != rec {
                out.to_mut()[k..k + 8].copy_from_slice(&now.to_le_bytes());
            }
            k += 8;
        }
        out
    }

    /// Pointers in a recorded descriptor read, compared with what the replay guest's memory holds at
    /// the translated address: a recorded DMA address where the guest has another readable address
    /// is a relocation (64-bit little-endian words at 8-byte aligned addresses).
    fn learn_from_dma_read(&mut self, op: Op) {
        let chunk = Arc::clone(&self.cur);
        // Descriptors, queue entries and pointer lists fit in a page; longer reads are payload.
        if let Some(data) = chunk
            .dma_reads
            .get(op.aux as usize)
            .filter(|d| d.len() <= MAX_POINTER_READ)
        {
            self.continue_queue_relocation(op.value, Some(data));
            let learned = self.learn_pointers(op.value, data);
            if learned {
                self.state.counters.dma_reads_checked += 1;
            }
            self.note_group_read(op.value, data);
            if let Some(log) = self.shared.options.dma_log.clone() {
                let target = self.state.relocations.translate(op.value);
                // Short reads (commands, descriptors) side by side with the replay guest's bytes.
                let (recorded, replay) = match self.memory.clone() {
                    Some(memory) if data.len() <= DMA_LOG_BYTES => {
                        let mut now = vec![0u8; data.len()];
                        let replay = memory
                            .read(target, &mut now)
                            .ok()
                            .map(|()| hwrr_formats::hex::encode(&now));
                        (Some(hwrr_formats::hex::encode(data)), replay)
                    }
                    _ => (None, None),
                };
                log.line(&json!({
                    "seq": self.op_seq(),
                    "kind": "dma_read",
                    "iova": op.value,
                    "target": target,
                    "len": data.len(),
                    "pointers": learned,
                    "pending_commands": self.state.pending_commands.len(),
                    "recorded": recorded,
                    "replay": replay,
                }));
            }
        }
    }

    /// The device actions from op `first` to the next guest call are about to happen: the
    /// "before" bytes of their DMA writes are what the recorded guest had written there (a
    /// descriptor's buffer address, before the device wrote its status back over it), so they are
    /// pointer evidence like a descriptor read, and must be looked at before any of the group's
    /// writes lands (a packet is written before its descriptor); so must the rings the group
    /// writes back to. Returns the index after the group.
    pub(super) fn learn_from_dma_write_group(&mut self, first: usize) -> usize {
        let mut chunk = Arc::clone(&self.cur);
        let mut next_chunk = self.state.cursor.chunk + 1;
        let mut i = first;
        let mut end_in_current = None;
        self.state.group_buffers.clear();
        self.state.group_completes = false;
        self.state.completion_pages.clear();
        self.state.command_named = None;
        loop {
            let Some(op) = chunk.ops.get(i).copied() else {
                // The group goes on in the next chunk (a recorder that flushes often).
                end_in_current.get_or_insert(i);
                if next_chunk >= self.shared.chunk_count
                    || next_chunk > self.state.cursor.chunk + summary::LOOKAROUND_CHUNKS
                {
                    break;
                }
                match self.shared.chunk(next_chunk) {
                    Ok(c) => chunk = c,
                    Err(_) => break,
                }
                next_chunk += 1;
                i = 0;
                continue;
            };
            if op.kind.is_guest_call() {
                break;
            }
            if op.kind == OpKind::DmaWrite {
                // A write-back to a ring the guest programmed completes the descriptors it
                // covers: their buffers are the ones the group's other writes may fill, whatever
                // the order of the group's writes. (A write that hands out buffers is the
                // recorded driver's, see `hands_out_buffers`: it completes nothing.)
                let payload = chunk.dma_writes.get(op.aux as usize);
                let len = payload.map_or(0, |p| p.data.len()) as u64;
                let driver_write = payload.is_some_and(|p| {
                    p.before
                        .as_deref()
                        .is_some_and(|b| self.hands_out_buffers(op.value, &p.data, b))
                });
                if !driver_write && self.ring_naming(op.value).is_some() {
                    let target = self.state.relocations.translate(op.value);
                    self.note_group_buffers(target, len);
                    self.state.group_completes = true;
                    self.state.completed_at = Some(self.state.counters.accesses);
                } else if let Some((p, before)) = payload
                    .filter(|_| !driver_write)
                    .and_then(|p| p.before.as_deref().map(|b| (p, b)))
                {
                    // A write-back that echoes an identifier of a command the group read (an
                    // NVMe completion's command id) to a queue a submitted command created (an
                    // I/O completion queue) completes that command.
                    // An echoed id the device wrote (changed, not a flag), or any echo in an
                    // entry that was blank (a fresh queue's first completion may keep id 0): a
                    // field that merely kept a 0 that some command also holds, in a driver's
                    // own structure beside a queue, is no completion.
                    // Only echoes of commands read from a ring or a queue: a driver's own
                    // bookkeeping beside its queues (SeaBIOS keeps its queue heads next to its
                    // I/O completion queue) holds copies of ids too, taken from its stack.
                    let command_pages: Vec<u64> = {
                        let named = self.command_named_pages();
                        let mut pages = named.rings.clone();
                        pages.extend_from_slice(&named.queues);
                        pages
                    };
                    let sources: Vec<(usize, u64)> = self
                        .echo_sources(op.value, &p.data, before)
                        .into_iter()
                        .filter(|&(_, source)| {
                            let at = self.state.relocations.translate(source);
                            let page = at - at % PAGE;
                            command_pages.contains(&page) || self.state.live_queues.contains(&page)
                        })
                        .collect();
                    let wrote_id = |&(at, _): &(usize, u64)| {
                        p.data[at..at + 2] != *before.get(at..at + 2).unwrap_or_default()
                            && u16::from_le_bytes([p.data[at], p.data[at + 1]]) > 1
                    };
                    let strong = sources.iter().any(wrote_id);
                    // One entry (the changes within one 16-byte block) that was blank.
                    let changed = |i: &usize| p.data.get(*i) != before.get(*i);
                    let one_entry = match (
                        (0..p.data.len()).find(changed),
                        (0..p.data.len()).rev().find(changed),
                    ) {
                        (Some(first), Some(last)) => {
                            op.value.wrapping_add(first as u64) / 16
                                == op.value.wrapping_add(last as u64) / 16
                        }
                        _ => false,
                    };
                    let blank_entry = one_entry
                        && echo::write_back_span(op.value, &p.data, before)
                            .and_then(|span| before.get(span))
                            .is_some_and(|b| b.iter().all(|&x| x == 0));
                    let echoes = strong || (!sources.is_empty() && blank_entry);
                    if echoes {
                        self.continue_queue_relocation(op.value, None);
                    }
                    let target = self.state.relocations.translate(op.value);
                    let page = target - target % PAGE;
                    if echoes
                        && (self.command_named_pages().queues.contains(&page)
                            || self.state.live_queues.contains(&page))
                    {
                        self.state.group_completes = true;
                        self.state.completed_at = Some(self.state.counters.accesses);
                        if !self.state.completion_pages.contains(&page) {
                            self.state.completion_pages.push(page);
                        }
                        // A written id makes the queue, and the queue a command created that the
                        // echoed command was read from, ones in use; a source outside a created
                        // queue (a driver's own copy of a doorbell value) does not.
                        if strong {
                            self.note_live_queue(page);
                            for (_, source) in sources.iter().filter(|s| wrote_id(s)) {
                                let at = self.state.relocations.translate(*source);
                                let source_page = at - at % PAGE;
                                if self.command_named_pages().queues.contains(&source_page) {
                                    self.note_live_queue(source_page);
                                    self.note_command_queue(source_page);
                                }
                            }
                        }
                    }
                }
                if let Some(before) = chunk
                    .dma_writes
                    .get(op.aux as usize)
                    .and_then(|p| p.before.as_deref())
                    .filter(|b| b.len() <= MAX_POINTER_READ)
                {
                    self.learn_pointers(op.value, before);
                }
            }
            i += 1;
        }
        end_in_current.unwrap_or(i)
    }

    /// Compares `recorded` (bytes the recorded guest's memory held at IOVA `iova`) with the replay
    /// guest's memory at the translated address; a recorded DMA address where the guest has another
    /// readable address is a relocation. Returns whether the guest memory could be read.
    fn learn_pointers(&mut self, iova: u64, recorded: &[u8]) -> bool {
        let Some(memory) = self.memory.clone() else {
            return false;
        };
        let target = self.state.relocations.translate(iova);
        let mut guest = std::mem::take(&mut self.scratch2);
        guest.resize(recorded.len(), 0);
        let readable = memory.read(target, &mut guest).is_ok();
        if readable {
            let first = ((8 - (iova % 8)) % 8) as usize;
            let mut k = first;
            while k + 8 <= recorded.len() {
                let rec = le_value(&recorded[k..k + 8]);
                let now = le_value(&guest[k..k + 8]);
                k += 8;
                if rec == 0 || now == 0 {
                    continue;
                }
                if rec == now {
                    // The guest points where the recorded guest did: nothing to relocate.
                    continue;
                }
                // A pointer is aligned as the recorded one was (buffers are at least cache-line
                // aligned) and is not a small number that happens to be readable guest memory.
                if now % 64 != rec % 64 || now < MIN_POINTER {
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
        readable
    }

    /// A ring longer than a page (an NVMe queue of 1,024 commands is 16 pages) is relocated as a
    /// whole, but only its first page is named by a pointer: when the trace reaches the page
    /// after a relocated page, and nothing relocates it yet, that page moves with the one before
    /// it, if the replay guest's memory there holds what the recorded read did (`recorded`: at
    /// least three quarters of its bytes, and more than at the untranslated address), or, for a
    /// device write (`None`, a completion that echoes a pending command), if the page before is
    /// a queue in use. A page continuing a queue in use (moved or not) is one too.
    fn continue_queue_relocation(&mut self, iova: u64, recorded: Option<&[u8]>) {
        let page = iova - iova % PAGE;
        if page < PAGE {
            return;
        }
        let prev_replay = self.state.relocations.translate(page - PAGE);
        if prev_replay % PAGE != 0 {
            return;
        }
        // Addresses come from the trace: one at the top of the address space has no page after.
        let Some(replay_page) = prev_replay.checked_add(PAGE) else {
            return;
        };
        let prev_is_queue = self.state.live_queues.contains(&prev_replay)
            || self.command_named_pages().rings.contains(&prev_replay);
        let prev_holds_commands = self.state.command_queues.contains(&prev_replay);
        if self.state.relocations.translate(page) == replay_page {
            // Already where the queue goes on: neither page moved, or one relocation covers both.
            if prev_is_queue {
                self.note_live_queue(replay_page);
            }
            if prev_holds_commands && recorded.is_some() {
                self.note_command_queue(replay_page);
            }
            return;
        }
        if self.state.relocations.range_of(iova).is_some() {
            return;
        }
        let continues = match recorded {
            Some(bytes) => {
                let Some(memory) = self.memory.clone() else {
                    return;
                };
                let agreement = |at: u64| {
                    let mut now = vec![0u8; bytes.len()];
                    memory
                        .read(at, &mut now)
                        .map(|()| now.iter().zip(bytes).filter(|(a, b)| a == b).count())
                        .unwrap_or(0)
                };
                let moved = agreement(replay_page | (iova % PAGE));
                4 * moved >= 3 * bytes.len() && moved > agreement(iova)
            }
            None => prev_is_queue,
        };
        if continues && self.state.relocations.learn(page, replay_page, PAGE) {
            self.state.counters.relocations_learned += 1;
            if prev_is_queue {
                self.note_live_queue(replay_page);
            }
            if prev_holds_commands && recorded.is_some() {
                self.note_command_queue(replay_page);
            }
        }
    }

    /// Remembers `page` (replay guest) as a page commands are read from (bounded).
    fn note_command_queue(&mut self, page: u64) {
        let queues = &mut self.state.command_queues;
        if !queues.contains(&page) && queues.len() < MAX_LIVE_QUEUE_PAGES {
            queues.push(page);
        }
    }

    /// A recorded device write into a submission queue is the guest's command, which a
    /// recorder's observation saw before the doorbell (and, for a queue page it watches as
    /// handed over, logged as the page's fill): it is taken as a pending command, as if read,
    /// and not written. Returns whether it was one.
    fn command_written_as_device_write(&mut self, op: Op, data: &[u8], before: &[u8]) -> bool {
        let target = self.state.relocations.translate(op.value);
        if !self
            .state
            .command_queues
            .contains(&(target - target % PAGE))
        {
            return false;
        }
        let changed = |i: &usize| data.get(*i) != before.get(*i);
        if let (Some(first), Some(last)) = (
            (0..data.len()).find(changed),
            (0..data.len()).rev().find(changed),
        ) {
            // Whole 64-byte commands around the change.
            let block = echo::READ_BLOCK as usize;
            let in_block = |i: usize| (op.value.wrapping_add(i as u64) % block as u64) as usize;
            let start = first.saturating_sub(in_block(first));
            let end = last.saturating_add(block - in_block(last)).min(data.len());
            if end - start <= echo::MAX_ECHO_READ {
                self.note_group_read(op.value + start as u64, &data[start..end]);
            }
        }
        true
    }

    /// Remembers `page` (replay guest) as a page of a queue in use (bounded).
    fn note_live_queue(&mut self, page: u64) {
        let live = &mut self.state.live_queues;
        if !live.contains(&page) && live.len() < MAX_LIVE_QUEUE_PAGES {
            live.push(page);
        }
    }

    /// Whether a written value `rec` (the guest wrote `act` instead) is a DMA address of the
    /// recording: a page the recorded device went on to use by DMA, or an address inside a recorded
    /// DMA mapping of at most [`SMALL_MAPPING`] bytes while `act` is readable guest memory. A VMM
    /// that maps all guest RAM makes every small number "inside a mapping"; such mappings say
    /// nothing, and a changed control value must stay a divergence. `act: None` is a guest address
    /// not known yet (half of it is a guess): only the recording's side is checked.
    fn looks_like_recorded_address(&self, rec: u64, act: Option<u64>) -> bool {
        // Values in the first 64 KiB are counts, thresholds and flags far more often than DMA
        // addresses (an interrupt throttling rate of 279 was once "relocated" to 434), and a
        // watch set that saw such a value name page 0 makes page 0 a "DMA page".
        if rec < MIN_REGISTER_ADDRESS || act.is_some_and(|a| a < MIN_REGISTER_ADDRESS) {
            return false;
        }
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
        let Some(act) = act else {
            return true;
        };
        let mut probe = [0u8; 1];
        self.memory
            .as_ref()
            .is_some_and(|m| m.read(act, &mut probe).is_ok())
    }

    /// Whether the recorded device touched `addr`'s page by DMA in the current chunk or in the
    /// look-around after it.
    fn is_recorded_dma_page(&self, addr: u64) -> bool {
        let page = addr / PAGE;
        if self.cur.dma_pages.binary_search(&page).is_ok() {
            return true;
        }
        self.shared
            .chunks_after(self.state.cursor.chunk)
            .any(|(_, s)| s.dma_pages.binary_search(&page).is_ok())
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
