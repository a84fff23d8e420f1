//! Echoed identifiers: fields a device copies from what it read into what it writes back.
//!
//! An NVMe controller answers a command with a completion that carries the command's id, read from
//! the submission queue entry. A driver that numbers its commands differently in the replay (Linux
//! takes ids from blk-mq tags, whose allocator starts at a random hint every boot) gets the
//! recorded id back and rejects the completion. A trace whose recorder logged what the guest
//! handed the device (`dma_read` events) shows the echo: a 2-byte field of a device write-back
//! equal to a 2-byte field of a pending command (a read since the last group of device actions
//! that completed something: a driver may write its next command a group early). The replay
//! writes the replay guest's own value there instead.
//!
//! A single equality can be chance (a received frame's length equal to a sent one's), so a field
//! pair counts only when the trace around the cursor shows it echoing at least [`MIN_DISTINCT`]
//! different values, in at least half of the write-back fields at its position, each time as the
//! only field of the pending reads holding the value (values 0 and 1, flags and counts, are no
//! evidence). Fields inside pointers are never sources: those are relocated, not echoed. A
//! confirmed pair then rewrites every write-back field at its position whose recorded value its
//! source held, when exactly one pending read has it there.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use super::*;

/// A write-back field (its offset in a 16-byte block: a completion entry, a descriptor) that
/// echoes a read field (its offset in a 64-byte block: a command, a descriptor).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct EchoField {
    write_at: u8,
    read_at: u8,
}

const WRITE_BLOCK: u64 = 16;
pub(super) const READ_BLOCK: u64 = 64;
/// Device writes longer than this are payload, not write-backs.
const MAX_ECHO_WRITE: usize = 64;
/// Reads longer than this are payload, not commands or descriptors.
pub(super) const MAX_ECHO_READ: usize = 512;
/// Pending reads that are kept (a driver's other writes to watched pages come as reads too: a
/// kernel clearing a page beside a queue gives a hundred reads before the command's).
pub(super) const MAX_GROUP_READS: usize = 512;
/// Bytes of a group's reads searched for evidence of an echo (every 2-byte position of them).
const MAX_EVIDENCE_BYTES: usize = 16 * 1024;
/// Different echoed values that make a field pair an echo.
const MIN_DISTINCT: usize = 3;
/// Echoes that make a pair an echo without holding for half of its write position's write-backs,
/// when it holds for a quarter, for at least half of the position's echoes, and
/// [`DOMINANCE`] times as often as any other pair of the position.
const MIN_DOMINANT_COUNT: u32 = 16;
const DOMINANCE: u32 = 4;

/// An echoed field of a write-back as the replay wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct EchoRewrite {
    /// Byte offset in the write-back.
    pub at: usize,
    /// The value the trace holds there.
    pub recorded: u16,
    /// The replay guest's value at the source (what the replay wrote).
    pub replay: u16,
    /// Where the source is in the replay guest's memory.
    pub source: u64,
}

/// One echo found in a recorded group, with the value echoed.
struct Echo {
    field: EchoField,
    value: u16,
}

/// The echoes in a write-back of `data` over `before` at `iova` whose value is found at exactly
/// one non-pointer position of `reads` ((iova, bytes) of the group's reads).
fn echoes(
    iova: u64,
    data: &[u8],
    before: &[u8],
    reads: &[(u64, &[u8])],
    is_pointer: &dyn Fn(u64) -> bool,
) -> Vec<Echo> {
    let mut found = Vec::new();
    if data.len() > MAX_ECHO_WRITE || reads.is_empty() {
        return found;
    }
    let mut at = (iova % 2) as usize;
    while at + 2 <= data.len().min(before.len()) {
        let value = u16::from_le_bytes([data[at], data[at + 1]]);
        let changed = data[at..at + 2] != before[at..at + 2];
        if changed && value > 1 {
            let mut source = None;
            let mut count = 0;
            let field_page = (iova + at as u64) / PAGE;
            for (r, (r_iova, bytes)) in reads.iter().enumerate() {
                let mut from = (r_iova % 2) as usize;
                while from + 2 <= bytes.len() {
                    if u16::from_le_bytes([bytes[from], bytes[from + 1]]) == value
                        && (r_iova + from as u64) / PAGE != field_page
                        && !in_pointer(*r_iova, bytes, from, is_pointer)
                    {
                        count += 1;
                        source = Some((r, from));
                    }
                    from += 2;
                }
            }
            if let (1, Some((read, from))) = (count, source) {
                let r_iova = reads[read].0;
                found.push(Echo {
                    field: EchoField {
                        write_at: ((iova + at as u64) % WRITE_BLOCK) as u8,
                        read_at: ((r_iova + from as u64) % READ_BLOCK) as u8,
                    },
                    value,
                });
            }
        }
        at += 2;
    }
    found
}

/// The part of a device write that can be a write-back: all of a short write, or the 16-byte
/// blocks a long write changes when they span at most [`MAX_ECHO_WRITE`] bytes (a recorder logs
/// the first change to a page a command handed over as the whole page: a fresh completion
/// queue's first entry comes as a 4 KiB write). Offsets are into `data`, written at `iova`.
pub(super) fn write_back_span(iova: u64, data: &[u8], before: &[u8]) -> Option<Range<usize>> {
    if data.len() <= MAX_ECHO_WRITE {
        return Some(0..data.len());
    }
    let first = data.iter().zip(before).position(|(a, b)| a != b)?;
    let last = data.iter().zip(before).rposition(|(a, b)| a != b)?;
    // Offsets within the write, rounded out to the 16-byte blocks of the addresses (in the
    // offset domain, so an address at the top of the space cannot overflow).
    let shift = (iova % WRITE_BLOCK) as usize;
    let block = WRITE_BLOCK as usize;
    let start = ((first + shift) / block * block).saturating_sub(shift);
    let end = ((last + shift) / block * block + block - shift).min(data.len());
    (end - start <= MAX_ECHO_WRITE).then_some(start..end)
}

/// Whether a word can be a DMA address: at least 1 MiB and 4-byte aligned (NVMe data pointers
/// are dword aligned, buffers more). A command's first word (opcode, flags, id, namespace) is a
/// number in the low megabytes that a small opcode keeps unaligned.
fn looks_like_pointer(w: u64) -> bool {
    w >= MIN_POINTER && w % 4 == 0
}

/// Whether byte `at` of `bytes` (read at `iova`) lies in an 8-byte aligned word that is a DMA
/// address.
fn in_pointer(iova: u64, bytes: &[u8], at: usize, is_pointer: &dyn Fn(u64) -> bool) -> bool {
    let word = (iova + at as u64) & !7;
    let Some(start) = word.checked_sub(iova) else {
        return false;
    };
    bytes
        .get(start as usize..start as usize + 8)
        .is_some_and(|w| is_pointer(le_value(w)))
}

/// What a compiled chunk shows of echoes within its groups of device actions.
#[derive(Debug, Default)]
pub(crate) struct ChunkEchoes {
    /// Per field pair seen echoing: how often, and its first [`MIN_DISTINCT`] different values
    /// (a summary stays small however many completions its chunk holds).
    found: Vec<(EchoField, u32, Vec<u16>)>,
    /// Per write position (offset in a 16-byte block): write-back fields that could have been
    /// echoes (changed, above 1, in a group with reads).
    chances: [u32; WRITE_BLOCK as usize],
}

/// Field pairs kept per chunk summary.
const MAX_CHUNK_PAIRS: usize = 256;

/// The echoes a compiled chunk shows within its groups of device actions (pointers: words
/// that name a page the chunk's DMA touches).
pub(crate) fn chunk_echoes(chunk: &CompiledChunk) -> ChunkEchoes {
    let is_pointer =
        |w: u64| looks_like_pointer(w) && chunk.dma_pages.binary_search(&(w / PAGE)).is_ok();
    let mut out = ChunkEchoes::default();
    // The reads since the last group that wrote back: a driver may write its next command
    // before the register write that starts it, so a command can be read a group early.
    let mut reads: Vec<(u64, &[u8])> = Vec::new();
    let mut read_bytes = 0;
    let mut wrote_back = false;
    for op in &chunk.ops {
        match op.kind {
            k if k.is_guest_call() && wrote_back => {
                wrote_back = false;
                reads.clear();
                read_bytes = 0;
            }
            OpKind::DmaRead => {
                if let Some(bytes) = chunk.dma_reads.get(op.aux as usize) {
                    // Zeros are a kernel clearing memory, not a command.
                    let blank = bytes.iter().all(|&b| b == 0);
                    if bytes.len() <= MAX_ECHO_READ
                        && !blank
                        && read_bytes + bytes.len() <= MAX_EVIDENCE_BYTES
                    {
                        read_bytes += bytes.len();
                        reads.push((op.value, bytes));
                    }
                }
            }
            OpKind::DmaWrite => {
                let Some(w) = chunk.dma_writes.get(op.aux as usize) else {
                    continue;
                };
                let Some(before) = w.before.as_deref() else {
                    continue;
                };
                if reads.is_empty() {
                    continue;
                }
                let Some(span) = write_back_span(op.value, &w.data, before) else {
                    continue;
                };
                let (iova, data) = (op.value + span.start as u64, &w.data[span.clone()]);
                let before = before.get(span).unwrap_or_default();
                wrote_back = true;
                let mut at = (iova % 2) as usize;
                while at + 2 <= data.len().min(before.len()) {
                    let value = u16::from_le_bytes([data[at], data[at + 1]]);
                    if value > 1 && data[at..at + 2] != before[at..at + 2] {
                        out.chances[((iova + at as u64) % WRITE_BLOCK) as usize] += 1;
                    }
                    at += 2;
                }
                for e in echoes(iova, data, before, &reads, &is_pointer) {
                    let room = out.found.len() < MAX_CHUNK_PAIRS;
                    match out.found.iter_mut().find(|(f, _, _)| *f == e.field) {
                        Some((_, count, values)) => {
                            *count += 1;
                            if values.len() < MIN_DISTINCT && !values.contains(&e.value) {
                                values.push(e.value);
                            }
                        }
                        None if room => out.found.push((e.field, 1, vec![e.value])),
                        None => {}
                    }
                }
            }
            _ => {}
        }
    }
    out
}

impl Replayer {
    /// A recorded read, kept as a pending command for [`Replayer::echoed`] and the pages
    /// commands name.
    pub(super) fn note_group_read(&mut self, iova: u64, bytes: &[u8]) {
        self.state.trace_has_reads = true;
        let epoch = self.state.counters.accesses;
        // Zeros are a kernel clearing memory, not a command.
        let blank = bytes.iter().all(|&b| b == 0);
        if bytes.len() > MAX_ECHO_READ || blank {
            return;
        }
        // The commands answered by a completing group are done with once a new group reads.
        if self.state.completed_at.is_some_and(|at| at != epoch) {
            self.state.completed_at = None;
            self.state.pending_commands.clear();
        }
        if self.state.pending_commands.len() < MAX_GROUP_READS {
            self.state.pending_commands.push((iova, bytes.to_vec()));
        }
    }

    /// `data` (a recorded write-back at `iova`) with each echoed field replaced by the replay
    /// guest's value at the field's source, or `None` when nothing changes. Every echoed field
    /// found is noted in `found`, rewritten or not.
    pub(super) fn echoed(
        &mut self,
        iova: u64,
        data: &[u8],
        before: &[u8],
        found: &mut Vec<EchoRewrite>,
    ) -> Option<Vec<u8>> {
        let memory = self.memory.clone()?;
        let mut out: Option<Vec<u8>> = None;
        for (at, source) in self.echo_sources(iova, data, before) {
            let value = [data[at], data[at + 1]];
            let mut now = [0u8; 2];
            let source = self.state.relocations.translate(source);
            if memory.read(source, &mut now).is_err() {
                continue;
            }
            if now != value {
                out.get_or_insert_with(|| data.to_vec())[at..at + 2].copy_from_slice(&now);
                self.state.counters.dma_echoes_rewritten += 1;
            }
            found.push(EchoRewrite {
                at,
                recorded: u16::from_le_bytes(value),
                replay: u16::from_le_bytes(now),
                source,
            });
        }
        out
    }

    /// The echoed fields of a recorded write-back of `data` at `iova`: (byte offset in `data`,
    /// recorded address of the field it echoes in one of the current group's reads).
    pub(super) fn echo_sources(
        &mut self,
        iova: u64,
        data: &[u8],
        before: &[u8],
    ) -> Vec<(usize, u64)> {
        let mut found = Vec::new();
        if self.state.pending_commands.is_empty() {
            return found;
        }
        let Some(span) = write_back_span(iova, data, before) else {
            return found;
        };
        let pairs = self.confirmed_echoes();
        if pairs.is_empty() {
            return found;
        }
        // Commands sit in rings and queues; a watch set's inferred reads of the pages around
        // them (kernel data) can hold the same value at the same offset.
        let command_pages: Vec<u64> = {
            let named = self.command_named_pages();
            let mut pages = named.rings.clone();
            pages.extend_from_slice(&named.queues);
            pages.extend_from_slice(&self.state.live_queues);
            pages
        };
        // Fields between the first and the last byte the device changed: unchanged ones too (a
        // completion slot that held the same id before, a fresh queue's id 0 between a changed
        // head and a changed phase bit), but not past the change (a zero after the two counters
        // a doorbell buffer's first fill sets).
        let changed = |i: &usize| data.get(*i) != before.get(*i);
        let (Some(first), Some(last)) = (
            (span.start..span.end).find(changed),
            (span.start..span.end).rev().find(changed),
        ) else {
            return found;
        };
        let reads = std::mem::take(&mut self.state.pending_commands);
        // From the 2-byte aligned field holding the first change.
        let mut at = match (iova.wrapping_add(first as u64) % 2, first) {
            (0, _) => first,
            (_, 0) => 1,
            _ => first - 1,
        };
        while at + 2 <= (last + 2).min(span.end) {
            let value = u16::from_le_bytes([data[at], data[at + 1]]);
            let write_at = ((iova + at as u64) % WRITE_BLOCK) as u8;
            let field_page = (iova + at as u64) / PAGE;
            let source = pairs
                .iter()
                .filter(|p| p.write_at == write_at)
                .find_map(|p| {
                    self.unique_source(&reads, p.read_at, value, field_page, &command_pages)
                });
            if let Some(source) = source {
                found.push((at, source));
            }
            at += 2;
        }
        self.state.pending_commands = reads;
        found
    }

    /// The recorded address of the field of `reads` at `read_at` (in its 64-byte block) that
    /// holds `value` outside a pointer and outside `field_page` (the write-back's own page: a
    /// device reads a command from one queue and answers in another), looked for first among
    /// the reads from `command_pages` (replay-guest pages of rings and queues), then among all.
    /// Of several, see [`Replayer::most_resembling`].
    fn unique_source(
        &self,
        reads: &[(u64, Vec<u8>)],
        read_at: u8,
        value: u16,
        field_page: u64,
        command_pages: &[u64],
    ) -> Option<u64> {
        let in_commands = |iova: u64| {
            let at = self.state.relocations.translate(iova);
            command_pages.contains(&(at - at % PAGE))
        };
        let mut found = self.sources(reads, read_at, value, field_page, &in_commands);
        if found.is_empty() {
            found = self.sources(reads, read_at, value, field_page, &|_| true);
        }
        // One command can be pending twice (seen written early, then read): one source.
        found.sort_by_key(|&(_, at)| at);
        found.dedup_by_key(|&mut (_, at)| at);
        match found[..] {
            [] => None,
            [(_, at)] => Some(at),
            _ => self.most_resembling(reads, &found, value),
        }
    }

    /// Of several candidate sources ((index into `reads`, address)) of a recorded `value`: among
    /// those whose read the replay guest's memory still resembles (three quarters of its bytes:
    /// the same structure, written again by the replay guest), the only one where the replay
    /// guest holds another value (its own command's id, to be echoed), or, when each holds the
    /// recorded value (nothing to rewrite), the first of them.
    fn most_resembling(
        &self,
        reads: &[(u64, Vec<u8>)],
        found: &[(usize, u64)],
        value: u16,
    ) -> Option<u64> {
        let memory = self.memory.as_ref()?;
        let resembles = |r: usize| {
            let (iova, bytes) = &reads[r];
            let mut now = vec![0u8; bytes.len()];
            let target = self.state.relocations.translate(*iova);
            memory.read(target, &mut now).is_ok()
                && 4 * now.iter().zip(bytes).filter(|(a, b)| a == b).count() >= 3 * bytes.len()
        };
        let replay_value = |at: u64| {
            let mut now = [0u8; 2];
            memory
                .read(self.state.relocations.translate(at), &mut now)
                .ok()
                .map(|()| u16::from_le_bytes(now))
        };
        let alike: Vec<(u64, Option<u16>)> = found
            .iter()
            .filter(|&&(r, _)| resembles(r))
            .map(|&(_, at)| (at, replay_value(at)))
            .collect();
        let changed: Vec<u64> = alike
            .iter()
            .filter(|(_, now)| *now != Some(value))
            .map(|(at, _)| *at)
            .collect();
        match changed[..] {
            [at] => Some(at),
            [] => alike.first().map(|(at, _)| *at),
            _ => None,
        }
    }

    /// The fields of the `reads` that `keep` keeps holding `value` at `read_at` (as for
    /// [`Replayer::unique_source`]): (index into `reads`, recorded address).
    fn sources(
        &self,
        reads: &[(u64, Vec<u8>)],
        read_at: u8,
        value: u16,
        field_page: u64,
        keep: &dyn Fn(u64) -> bool,
    ) -> Vec<(usize, u64)> {
        let is_pointer = |w: u64| looks_like_pointer(w) && self.is_recorded_dma_page(w);
        let mut found = Vec::new();
        for (r, (r_iova, bytes)) in reads.iter().enumerate() {
            if !keep(*r_iova) {
                continue;
            }
            let first = (READ_BLOCK + read_at as u64 - r_iova % READ_BLOCK) % READ_BLOCK;
            let mut from = first as usize;
            while from + 2 <= bytes.len() {
                if u16::from_le_bytes([bytes[from], bytes[from + 1]]) == value
                    && (r_iova + from as u64) / PAGE != field_page
                    && !in_pointer(*r_iova, bytes, from, &is_pointer)
                {
                    found.push((r, r_iova + from as u64));
                }
                from += READ_BLOCK as usize;
            }
        }
        found
    }

    /// The field pairs the trace around the cursor shows echoing at least [`MIN_DISTINCT`]
    /// different values.
    fn confirmed_echoes(&mut self) -> Vec<EchoField> {
        let chunk = self.state.cursor.chunk;
        if self.state.echo_fields.as_ref().map(|(c, _)| *c) != Some(chunk) {
            let mut values: HashMap<EchoField, (u32, HashSet<u16>)> = HashMap::new();
            let mut chances = [0u32; WRITE_BLOCK as usize];
            let around = self.summaries_around();
            for summary in around {
                for (f, count, distinct) in &summary.echoes.found {
                    let entry = values.entry(*f).or_default();
                    entry.0 += count;
                    entry.1.extend(distinct.iter().copied());
                }
                for (c, n) in chances.iter_mut().zip(summary.echoes.chances) {
                    *c += n;
                }
            }
            let candidates: Vec<serde_json::Value> = if self.shared.options.dma_log.is_some() {
                let mut c: Vec<_> = values
                    .iter()
                    .map(|(f, (count, distinct))| {
                        serde_json::json!([f.write_at, f.read_at, count, distinct.len()])
                    })
                    .collect();
                c.sort_by_key(|v| v.to_string());
                c
            } else {
                Vec::new()
            };
            // An echo holds for most of the write-backs that carry its field (every completion
            // carries its command's id); a coincidence (a count equal to a length now and then)
            // holds for a few. A recorder's inferred writes (a kernel's own stores beside the
            // queues) add write-backs that echo nothing: a pair seen often enough, and far more
            // often than every other pair of its write position together, is an echo too.
            let mut position_total = [0u32; WRITE_BLOCK as usize];
            for (f, (count, _)) in &values {
                position_total[f.write_at as usize % WRITE_BLOCK as usize] += count;
            }
            let strongest_rival = |field: &EchoField| {
                values
                    .iter()
                    .filter(|(f, _)| f.write_at == field.write_at && *f != field)
                    .map(|(_, (count, _))| *count)
                    .max()
                    .unwrap_or(0)
            };
            let mut confirmed: Vec<(u32, EchoField)> = values
                .iter()
                .filter(|(f, (count, distinct))| {
                    let at = f.write_at as usize % WRITE_BLOCK as usize;
                    let most = 2 * *count >= chances[at];
                    let dominant = *count >= MIN_DOMINANT_COUNT
                        && 4 * *count >= chances[at]
                        && 2 * *count >= position_total[at]
                        && *count >= DOMINANCE * strongest_rival(f);
                    distinct.len() >= MIN_DISTINCT && (most || dominant)
                })
                .map(|(f, (count, _))| (*count, *f))
                .collect();
            // The best supported pair of a write position is tried first.
            confirmed.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            let confirmed: Vec<EchoField> = confirmed.into_iter().map(|(_, f)| f).collect();
            if let Some(log) = self.shared.options.dma_log.clone() {
                let pairs: Vec<[u8; 2]> =
                    confirmed.iter().map(|f| [f.write_at, f.read_at]).collect();
                log.line(&serde_json::json!({
                    "kind": "echo_fields",
                    "chunk": chunk,
                    "fields": pairs,
                    "candidates": candidates,
                    "chances": chances,
                }));
            }
            self.state.echo_fields = Some((chunk, confirmed));
        }
        self.state
            .echo_fields
            .as_ref()
            .map(|(_, f)| f.clone())
            .unwrap_or_default()
    }
}
