//! Request/response registers: a guest request the trace has elsewhere is answered with what the
//! device answered to it there.
//!
//! Drivers talk to PHYs and EEPROMs through one register: write a request (e1000e `MDIC`: opcode,
//! PHY register; `EERD`: word address and START), poll the same register until a ready bit is set,
//! take the data from it. How many such requests a driver makes, and in which order, depends on
//! wall-clock time (watchdog timers), so a replay meets requests at other points than the
//! recording. Answering the poll from the register model would return the request itself (the ready
//! bit never comes), answering from the nearest recorded read would return the data of another
//! request. Instead, when a guest write is answered off the stream, the engine looks for a recorded
//! write of the same value to the same register and serves the reads of that register that followed
//! it, in order (busy, then ready with the data), repeating the last one. The response lasts while
//! the guest keeps reading that register; any other access ends it.

use super::summary::LOOKAROUND_CHUNKS;
use super::*;

/// How many distinct values (runs) of a recorded response are kept; a longer response keeps its
/// first values and its final one.
const MAX_RESPONSE_RUNS: usize = 64;

/// The recorded reads that followed the guest's request, as runs of identical values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    key: RegKey,
    /// (value, how many reads returned it).
    runs: Vec<(u64, u32)>,
    /// Position in `runs` and reads served from it.
    run: usize,
    served_in_run: u32,
}

impl Response {
    /// The next value, staying on the final one.
    fn next_value(&mut self) -> u64 {
        let (value, count) = self.runs[self.run];
        self.served_in_run += 1;
        if self.served_in_run >= count && self.run + 1 < self.runs.len() {
            self.run += 1;
            self.served_in_run = 0;
        }
        value
    }
}

/// Collects the reads of `key` in `ops` (after a request) into `runs`, up to the next guest call
/// that is not a read of `key` (device actions in between are skipped). Returns whether such a
/// call ended the response (`false`: the ops ran out, the response may go on in the next chunk).
fn collect_response(ops: &[Op], key: RegKey, runs: &mut Vec<(u64, u32)>) -> bool {
    for o in ops {
        if !o.kind.is_guest_call() {
            continue;
        }
        if o.kind != OpKind::Read || (o.region, o.offset, o.size) != key || o.failed {
            return true;
        }
        let full = runs.len() >= MAX_RESPONSE_RUNS;
        match runs.last_mut() {
            Some((v, n)) if *v == o.value => *n = n.saturating_add(1),
            Some(last) if full => *last = (o.value, 1),
            _ => runs.push((o.value, 1)),
        }
    }
    false
}

/// Positions of recorded writes of `value` to `key` in `ops[range]`, nearest first in the given
/// direction.
fn requests(
    ops: &[Op],
    range: std::ops::Range<usize>,
    backwards: bool,
    key: RegKey,
    value: u64,
) -> impl Iterator<Item = usize> + '_ {
    let end = range.end.min(ops.len());
    let start = range.start.min(end);
    let forward = (!backwards).then_some(start..end).into_iter().flatten();
    let backward = backwards.then(|| (start..end).rev()).into_iter().flatten();
    forward.chain(backward).filter(move |&i| {
        let o = &ops[i];
        o.kind == OpKind::Write && (o.region, o.offset, o.size) == key && o.value == value
    })
}

impl Replayer {
    /// The guest wrote `value` to `key` off the recorded stream: remember what the device answered
    /// to the same request elsewhere in the trace (the nearest occurrence, earlier ones first),
    /// or forget any response when the trace has none.
    pub(super) fn learn_response(&mut self, key: RegKey, value: u64) {
        self.state.response = self.recorded_response(key, value).map(|runs| {
            Box::new(Response {
                key,
                runs,
                run: 0,
                served_in_run: 0,
            })
        });
    }

    fn recorded_response(&self, key: RegKey, value: u64) -> Option<Vec<(u64, u32)>> {
        if key.2 == 0 {
            return None;
        }
        let current = self.state.cursor.chunk;
        let here = self.state.cursor.op;
        // Nearest first: back from the cursor, forward from it, then the chunks before it, then
        // the chunks after it.
        let in_current = [(0..here, true), (here..usize::MAX, false)];
        for (range, backwards) in in_current {
            for at in requests(&self.cur.ops, range, backwards, key, value) {
                if let Some(runs) = self.response_at(current, &self.cur, at, key) {
                    return Some(runs);
                }
            }
        }
        let around = self
            .shared
            .chunks_before(current)
            .map(|c| (c, true))
            .chain(self.shared.chunks_after(current).map(|c| (c, false)));
        for ((c, summary), backwards) in around {
            if !summary.may_answer(key) {
                continue;
            }
            let Ok(chunk) = self.shared.chunk(c) else {
                continue;
            };
            for at in requests(&chunk.ops, 0..usize::MAX, backwards, key, value) {
                if let Some(runs) = self.response_at(c, &chunk, at, key) {
                    return Some(runs);
                }
            }
        }
        None
    }

    /// The reads of `key` that follow the request at op `at` of chunk `c`, continuing into the next
    /// chunks when the response crosses a chunk end. `None` when no read follows.
    fn response_at(
        &self,
        c: usize,
        chunk: &CompiledChunk,
        at: usize,
        key: RegKey,
    ) -> Option<Vec<(u64, u32)>> {
        let mut runs = Vec::new();
        let mut ended = collect_response(chunk.ops.get(at + 1..)?, key, &mut runs);
        let mut next = c + 1;
        while !ended && next < self.shared.chunk_count && next <= c + LOOKAROUND_CHUNKS {
            let Ok(following) = self.shared.chunk(next) else {
                break;
            };
            ended = collect_response(&following.ops, key, &mut runs);
            next += 1;
        }
        (!runs.is_empty()).then_some(runs)
    }

    /// A guest access while a response is active: a read of the request register is answered from
    /// it (`Some`); anything else ends it (`None`, handle the access normally). A recorded read of
    /// the same register under the cursor is passed, so the stream keeps pace with the guest's
    /// polling.
    pub(super) fn serve_response(&mut self, write: bool, key: RegKey) -> Option<u64> {
        let mut response = self.state.response.take()?;
        if write || response.key != key {
            return None;
        }
        let value = response.next_value();
        self.state.response = Some(response);
        match self.shared.options.policy {
            Policy::Resync { .. } => self.state.counters.inserted += 1,
            Policy::Strict | Policy::Model => self.state.counters.fallbacks += 1,
        }
        if !self.state.stopped {
            if let Some(o) = self.peek() {
                if o.kind == OpKind::Read && (o.region, o.offset, o.size) == key && !o.failed {
                    self.pass(o);
                }
            }
        }
        self.state.last_read = None;
        self.set_model(key, value);
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(kind: OpKind, offset: u64, value: u64) -> Op {
        Op {
            offset,
            value,
            aux: 0,
            region: 0,
            size: 4,
            kind,
            failed: false,
        }
    }

    #[test]
    fn a_response_is_the_reads_of_the_register_until_another_guest_call() {
        let ops = [
            op(OpKind::Write, 0x20, 7),
            op(OpKind::Read, 0x20, 1),
            op(OpKind::Irq, 0, 0),
            op(OpKind::Read, 0x20, 1),
            op(OpKind::Read, 0x20, 9),
            op(OpKind::Read, 0x08, 3),
            op(OpKind::Read, 0x20, 4),
        ];
        let key = (0, 0x20, 4);
        let mut runs = Vec::new();
        assert!(collect_response(&ops[1..], key, &mut runs));
        assert_eq!(runs, vec![(1, 2), (9, 1)]);
        let mut tail = Vec::new();
        assert!(!collect_response(&ops[6..], key, &mut tail), "ran out");
        assert_eq!(tail, vec![(4, 1)]);
        let mut r = Response {
            key,
            runs,
            run: 0,
            served_in_run: 0,
        };
        let served: Vec<u64> = (0..5).map(|_| r.next_value()).collect();
        assert_eq!(served, vec![1, 1, 9, 9, 9]);
    }

    #[test]
    fn requests_are_found_nearest_first_in_either_direction() {
        let ops = [
            op(OpKind::Write, 0x20, 7),
            op(OpKind::Read, 0x20, 70),
            op(OpKind::Write, 0x20, 7),
            op(OpKind::Write, 0x20, 8),
            op(OpKind::Write, 0x24, 7),
            op(OpKind::Write, 0x20, 7),
        ];
        let key = (0, 0x20, 4);
        let back: Vec<usize> = requests(&ops, 0..4, true, key, 7).collect();
        assert_eq!(back, vec![2, 0]);
        let fwd: Vec<usize> = requests(&ops, 1..99, false, key, 7).collect();
        assert_eq!(fwd, vec![2, 5]);
        assert_eq!(requests(&ops, 0..6, false, key, 9).count(), 0);
    }

    #[test]
    fn a_long_response_keeps_its_final_value() {
        let ops: Vec<Op> = (0..200).map(|v| op(OpKind::Read, 0x20, v)).collect();
        let mut runs = Vec::new();
        collect_response(&ops, (0, 0x20, 4), &mut runs);
        assert_eq!(runs.len(), MAX_RESPONSE_RUNS);
        assert_eq!(runs.last(), Some(&(199, 1)));
    }
}
