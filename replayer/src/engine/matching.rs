//! Matching guest accesses against the recorded stream: the access path, polling runs, relocation checks, policies.

use super::*;

/// How far (in recorded ops) the two halves of an address pair may be apart.
const PAIR_DISTANCE: usize = 8;

/// How many registers written off the stream a read's resync remembers (a bound, not a tuning:
/// a guest that far off the trace resyncs on its writes).
const MAX_WRITES_OFF_STREAM: usize = 16;

/// How many reads in a row are answered from ahead while the cursor stands still.
const MAX_AHEAD_STREAK: u32 = 8;

/// How many registers an interrupt handler's reads are looked for after one interrupt.
const MAX_READS_AFTER_IRQ: usize = 8;

/// How much farther than the resync window an interrupt handler's read is looked for: a
/// capture's handler can run a few dozen driver accesses after its interrupt.
const READ_AHEAD_WINDOWS: u32 = 4;

impl Replayer {
    /// Consumes the op at the cursor as matched and settles (interrupts and DMA recorded after it
    /// happen now). Returns the value a read answers.
    #[inline]
    pub(super) fn consume(&mut self, op: Op) -> u64 {
        self.state.counters.matched += 1;
        self.state.ahead_streak = 0;
        if !self.state.writes_off_stream.is_empty() {
            self.state.writes_off_stream.clear();
        }
        self.pass(op)
    }

    /// Moves the cursor past the guest call `op` without counting a match (resets, and writes the
    /// model policy follows), settling afterwards. Returns the value a read answers.
    pub(super) fn pass(&mut self, op: Op) -> u64 {
        if op.failed {
            self.failed_errno = self.cur.status_of(self.state.cursor.op);
        }
        if op.kind == OpKind::Read {
            match self.state.last_read {
                Some(lr) if lr.same_key(&op) && lr.value == op.value => {
                    self.state.run_pos += 1;
                }
                _ => {
                    self.state.run_pos = 1;
                    self.state.shorten_tried = false;
                }
            }
            self.state.last_read = Some(op);
            self.state.run_extended = false;
            if self.state.run_pos > self.shorten_after && !self.state.shorten_tried {
                if let Some(v) = self.shorten_run(op) {
                    return v;
                }
            }
        } else {
            self.state.last_read = None;
        }
        self.state.cursor.op += 1;
        match self.cur.ops.get(self.state.cursor.op) {
            Some(next) if next.kind.is_guest_call() => {}
            _ => self.settle(),
        }
        if op.kind == OpKind::Read {
            self.read_answer(&op)
        } else {
            op.value
        }
    }

    /// What the recorded read `op` answers the guest: its value, or what the guest wrote to a
    /// relocated address register that the recording wrote the value to ([`Self::read_back`]).
    #[inline(always)]
    fn read_answer(&self, op: &Op) -> u64 {
        if self.state.readback.is_empty() {
            op.value
        } else {
            self.read_back(op.region, op.offset, op.size, op.value)
        }
    }

    /// The first recorded guest call after the polling run of `lr` that the cursor is in (identical
    /// reads, possibly across chunks, with device actions between them), without moving the cursor.
    pub(super) fn after_run(&self, lr: Op) -> Option<(Cursor, Op)> {
        self.find_call(0, u32::MAX, |_, o| {
            !(o.kind == OpKind::Read && o.same_key(&lr) && o.value == lr.value)
        })
    }

    /// `shorten_polls`: the guest has read this run (the read at the cursor) more than K times;
    /// when the run is followed by a read of the same register with another value, possibly in a
    /// later chunk, jump there (device actions on the way still happen) and serve it. Looked for
    /// once per run: a run not ending in a transition is served as recorded.
    pub(super) fn shorten_run(&mut self, op: Op) -> Option<u64> {
        if self.state.shorten_tried {
            return None;
        }
        self.state.shorten_tried = true;
        let (target, transition) = self.after_run(op).filter(|(_, next)| {
            next.kind == OpKind::Read && next.same_key(&op) && next.value != op.value
        })?;
        self.state.counters.poll_shortened += 1;
        self.skip_to(target);
        self.state.last_read = None;
        Some(self.pass(transition))
    }

    /// Whether `op` (a write at the guest's register) accepts the guest's value: equal, equal after
    /// relocation, or an address the engine can learn a relocation from.
    pub(super) fn write_accepts(&mut self, op: Op, value: u64) -> bool {
        if let Some(accepted) = self.complete_pair(op, value) {
            return accepted;
        }
        if op.value == value {
            return true;
        }
        if let Some(role) = self
            .shared
            .address_regs
            .get(&(op.region, op.offset))
            .copied()
        {
            return self.accepts_as(op, value, role, true);
        }
        // Without a register map, a 32-bit register next to another one written nearby may hold
        // half of an address, or a whole 32-bit address: try the pairs first, then the whole.
        if op.size == 4 {
            for half in self.half_roles(op).into_iter().flatten() {
                if self.accepts_as(op, value, half, false) {
                    return true;
                }
            }
        }
        self.accepts_as(op, value, AddrRole::Full, false)
    }

    /// The ways a 32-bit register may be half of a 64-bit address: the low half with the register
    /// above as its partner, or the high half with the one below, when the recording wrote that
    /// neighbour nearby. Pairs are usually 8-aligned (an 8-aligned register is first tried as the
    /// low half), but devices also put them at 4-aligned offsets (lo at 8k+4, hi at 8k+8); the
    /// evidence check in [`Replayer::accepts_as`] tells the two apart.
    pub(super) fn half_roles(&self, op: Op) -> [Option<AddrRole>; 2] {
        let lo = op
            .offset
            .checked_add(4)
            .filter(|&p| self.partner_write(op.region, p, true).is_some())
            .map(|partner| AddrRole::Lo { partner });
        let hi = op
            .offset
            .checked_sub(4)
            .filter(|&p| self.partner_write(op.region, p, false).is_some())
            .map(|partner| AddrRole::Hi { partner });
        if op.offset % 8 == 0 {
            [lo, hi]
        } else {
            [hi, lo]
        }
    }

    /// The second half of an address pair whose first half produced a guessed relocation: the
    /// guess is replaced by the relocation of the whole recorded address to the guest's whole
    /// address. `None` when `op` is not that second half; also when the recording did not write
    /// the two halves together, or the whole is no address after all (then the guess is dropped
    /// and the write is judged on its own).
    #[cold]
    pub(super) fn complete_pair(&mut self, op: Op, value: u64) -> Option<bool> {
        let half = self.state.pending_half?;
        if half.region != op.region || half.partner != op.offset || op.size != 4 {
            return None;
        }
        self.state.pending_half = None;
        // The recording must have written the guessed half just before this one (a guess whose
        // partner was skipped must not pair with a later, unrelated write of the partner).
        let recorded_first = self
            .partner_write(op.region, half.offset, false)
            .is_some_and(|(v, pending)| v == half.recorded && !pending);
        if !recorded_first {
            return None;
        }
        let (rec, act) = if half.low {
            (op.value << 32 | half.recorded, value << 32 | half.guest)
        } else {
            (half.recorded << 32 | op.value, half.guest << 32 | value)
        };
        let named = self
            .shared
            .address_regs
            .contains_key(&(op.region, op.offset));
        // The guess was accepted on the recording's side alone; the whole guest address is
        // known now. When it is no address after all, the guess goes and the write is judged
        // on its own.
        self.state.relocations.forget(&half.range);
        if rec == 0 || !(named || self.looks_like_recorded_address(rec, Some(act))) {
            return None;
        }
        self.state
            .relocations
            .learn(rec, act, self.shared.options.relocation_span);
        Some(self.state.relocations.translate(rec) == act)
    }

    /// Whether the guest's `value` for the recorded write `op` is the recorded address relocated,
    /// reading the register as `role`; learns the relocation when the recorded value is an address
    /// (`named` by the register map, or evidently a DMA address of the recording).
    pub(super) fn accepts_as(&mut self, op: Op, value: u64, role: AddrRole, named: bool) -> bool {
        // Whether the recording writes the partner half after this one: then the guest has not
        // written it yet, its value here is the model's guess, and the relocation is tentative.
        let mut partner_pending = None;
        let (rec, act) = match role {
            AddrRole::Full => (op.value, value),
            AddrRole::Lo { partner } => {
                let (rec_hi, pending) = self.recorded_partner(op, partner, true);
                let act_hi = self
                    .model_value((op.region, partner, op.size))
                    .unwrap_or(rec_hi);
                partner_pending = pending.then_some(partner);
                (rec_hi << 32 | op.value, act_hi << 32 | value)
            }
            AddrRole::Hi { partner } => {
                let (rec_lo, pending) = self.recorded_partner(op, partner, false);
                let act_lo = self
                    .model_value((op.region, partner, op.size))
                    .unwrap_or(rec_lo);
                partner_pending = pending.then_some(partner);
                (op.value << 32 | rec_lo, value << 32 | act_lo)
            }
        };
        let half_ok = |t: u64| match role {
            AddrRole::Full => t & hwrr_formats::size_mask(op.size) == value,
            AddrRole::Lo { .. } => t & 0xFFFF_FFFF == value,
            AddrRole::Hi { .. } => t >> 32 == value,
        };
        if half_ok(self.state.relocations.translate(rec)) {
            return true;
        }
        // With the partner still to come, the guest's address is half a guess: judge the
        // recorded address alone now, the whole when the partner arrives (`complete_pair`).
        let guest_known = partner_pending.is_none().then_some(act);
        if rec == 0 || !(named || self.looks_like_recorded_address(rec, guest_known)) {
            return false;
        }
        if let Some(range) =
            self.state
                .relocations
                .learn_range(rec, act, self.shared.options.relocation_span)
        {
            self.state.counters.relocations_learned += 1;
            if let Some(partner) = partner_pending {
                self.state.pending_half = Some(HalfAddress {
                    region: op.region,
                    offset: op.offset,
                    partner,
                    low: matches!(role, AddrRole::Lo { .. }),
                    recorded: op.value,
                    guest: value,
                    range,
                });
            }
        }
        half_ok(self.state.relocations.translate(rec))
    }

    /// The recorded 32-bit write to `offset` closest to the cursor, within
    /// [`PAIR_DISTANCE`] ops either side (address halves are written back to back; the pair may
    /// straddle a chunk boundary), and whether it comes after the cursor. At equal distance, the
    /// one after wins when `prefer_after` (a low half's partner usually follows it).
    pub(super) fn partner_write(
        &self,
        region: u8,
        offset: u64,
        prefer_after: bool,
    ) -> Option<(u64, bool)> {
        let is_partner = |o: &Op| {
            o.kind == OpKind::Write && o.region == region && o.offset == offset && o.size == 4
        };
        let before = self.ops_around(false);
        let after = self.ops_around(true);
        for d in 0..PAIR_DISTANCE {
            let a = after
                .get(d)
                .filter(|o| is_partner(o))
                .map(|o| (o.value, true));
            let b = before
                .get(d)
                .filter(|o| is_partner(o))
                .map(|o| (o.value, false));
            let found = if prefer_after { a.or(b) } else { b.or(a) };
            if found.is_some() {
                return found;
            }
        }
        None
    }

    /// Up to [`PAIR_DISTANCE`] recorded ops after the cursor (`forward`), or before it, nearest
    /// first, crossing chunk boundaries.
    fn ops_around(&self, forward: bool) -> Vec<Op> {
        let mut out = Vec::with_capacity(PAIR_DISTANCE);
        let mut chunk_idx = self.state.cursor.chunk;
        let mut chunk = Arc::clone(&self.cur);
        // Index of the next op to take, one past it when walking backwards.
        let mut i = if forward {
            self.state.cursor.op + 1
        } else {
            self.state.cursor.op.min(chunk.ops.len())
        };
        while out.len() < PAIR_DISTANCE {
            if forward {
                if let Some(o) = chunk.ops.get(i) {
                    out.push(*o);
                    i += 1;
                    continue;
                }
                chunk_idx += 1;
                if chunk_idx >= self.shared.chunk_count {
                    break;
                }
                let Ok(c) = self.shared.chunk(chunk_idx) else {
                    break;
                };
                chunk = c;
                i = 0;
            } else {
                if i > 0 {
                    i -= 1;
                    out.push(chunk.ops[i]);
                    continue;
                }
                if chunk_idx == 0 || chunk_idx > self.shared.chunk_count {
                    break;
                }
                chunk_idx -= 1;
                let Ok(c) = self.shared.chunk(chunk_idx) else {
                    break;
                };
                chunk = c;
                i = chunk.ops.len();
            }
        }
        out
    }

    /// The recorded value of `op`'s partner half, and whether the recording writes it after `op`.
    pub(super) fn recorded_partner(&self, op: Op, partner: u64, prefer_after: bool) -> (u64, bool) {
        self.partner_write(op.region, partner, prefer_after)
            .or_else(|| {
                self.shared
                    .start_registers
                    .get(&(op.region, partner, op.size))
                    .map(|v| (*v, false))
            })
            .unwrap_or((0, false))
    }

    /// The register model's value for `key`: the most recent of what the guest wrote (when it
    /// differed from the recording), what the recording read or wrote there before the cursor, and
    /// the trace's start state.
    pub(super) fn model_value(&self, key: RegKey) -> Option<u64> {
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

    pub(super) fn set_model(&mut self, key: RegKey, value: u64) {
        let stamp = self.state.cursor.stamp();
        self.state.model.insert(key, (stamp, value));
    }

    /// A register access of 1, 2, 4 or 8 bytes. Returns the value a read answers.
    ///
    /// The hot path: compare against the op under the cursor by reference, update the run tracking
    /// only when a new run starts, advance; no allocation, no lock, no `Op` copy unless needed.
    #[inline(always)]
    pub(super) fn access(
        &mut self,
        write: bool,
        region: u8,
        offset: u64,
        size: u8,
        value: u64,
    ) -> u64 {
        self.state.counters.accesses += 1;
        if !self.state.stopped && self.state.response.is_none() {
            let i = self.state.cursor.op;
            let kind = if write { OpKind::Write } else { OpKind::Read };
            if let Some(op) = self.cur.ops.get(i) {
                if op.kind == kind
                    && op.offset == offset
                    && op.region == region
                    && op.size == size
                    && !op.failed
                {
                    if write {
                        if op.value == value {
                            self.state.last_read = None;
                            if self.state.pending_half.is_some() {
                                let o = *op;
                                self.complete_pair(o, value);
                            }
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
                            if self.state.run_pos > self.shorten_after && !self.state.shorten_tried
                            {
                                return self.access_slow(write, region, offset, size, value);
                            }
                        } else {
                            self.state.run_pos = 1;
                            self.state.shorten_tried = false;
                            self.state.last_read = Some(*op);
                        }
                        self.state.run_extended = false;
                        let answer = self.read_answer(op);
                        return self.advance_matched(i, answer);
                    }
                }
            }
        }
        self.access_slow(write, region, offset, size, value)
    }

    /// Remembers that the guest programmed register `key` with `guest` where the recording wrote
    /// `recorded` (a relocated address).
    pub(super) fn note_readback(&mut self, key: RegKey, recorded: u64, guest: u64) {
        if let Some(e) = self.state.readback.iter_mut().find(|e| e.0 == key) {
            *e = (key, recorded, guest);
        } else if self.state.readback.len() < 64 {
            self.state.readback.push((key, recorded, guest));
        }
    }

    /// A recorded read of a relocated address register that returns what the recording wrote
    /// there answers what the guest wrote (drivers read ring bases back to check them).
    #[cold]
    pub(super) fn read_back(&self, region: u8, offset: u64, size: u8, recorded: u64) -> u64 {
        match self
            .state
            .readback
            .iter()
            .find(|e| e.0 == (region, offset, size) && e.1 == recorded)
        {
            Some(e) => e.2,
            None => recorded,
        }
    }

    /// Counts a match of the op at `i` and moves past it, settling when the next op is a device
    /// action.
    #[inline(always)]
    pub(super) fn advance_matched(&mut self, i: usize, answer: u64) -> u64 {
        self.state.counters.matched += 1;
        self.state.ahead_streak = 0;
        self.state.cursor.op = i + 1;
        match self.cur.ops.get(i + 1) {
            Some(next) if next.kind.is_guest_call() => {}
            _ => self.settle(),
        }
        answer
    }

    #[cold]
    pub(super) fn access_slow(
        &mut self,
        write: bool,
        region: u8,
        offset: u64,
        size: u8,
        value: u64,
    ) -> u64 {
        let key = (region, offset, size);
        let kind = if write { OpKind::Write } else { OpKind::Read };
        if self.state.response.is_some() {
            if let Some(v) = self.serve_response(write, key) {
                return v;
            }
        }
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
                    self.state.counters.matched += 1;
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
                        self.note_readback(key, o.value, value);
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
                        && (!write || after.value == value || self.is_relocated(&after, value));
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
                let found = self.lookahead_crossing(kind, region, offset, size, value, window);
                // A read found only past a recorded write or reset the guest has not made: the
                // recorded answer is the best guess of the register, but skipping there would
                // skip that write too, and the answers after it may be its effect (NVMe's
                // CSTS.RDY after CC.EN). Answer without moving.
                // A driver that left the recorded path for good (a watchdog pass that skips
                // the PHY accesses the capture made) would keep the cursor standing: after
                // `MAX_AHEAD_STREAK` such reads in a row, reads skip ahead as writes do.
                let standing = self.state.ahead_streak < MAX_AHEAD_STREAK;
                let ahead = match found {
                    Some((_, o, true)) if !write && standing => Some(o),
                    None if !write && standing => self.irq_handler_read(key, window),
                    _ => None,
                };
                if let Some(o) = ahead {
                    self.state.ahead_streak += 1;
                    self.state.counters.inserted += 1;
                    self.state.counters.answered_from_ahead += 1;
                    self.state.last_read = None;
                    let v = self.read_answer(&o);
                    self.set_model(key, v);
                    return v;
                }
                if let Some((target, _, _)) = found {
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
                if write
                    && !self.state.writes_off_stream.contains(&key)
                    && self.state.writes_off_stream.len() < MAX_WRITES_OFF_STREAM
                {
                    self.state.writes_off_stream.push(key);
                }
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
                        self.pass(o);
                        self.learn_response(key, value);
                        return value;
                    }
                }
                self.state.last_read = None;
                self.answer_from_model(write, key, value, false)
            }
        }
    }

    pub(super) fn answer_from_model(
        &mut self,
        write: bool,
        key: RegKey,
        value: u64,
        inserted: bool,
    ) -> u64 {
        if !inserted {
            self.state.counters.fallbacks += 1;
        }
        if write {
            self.set_model(key, value);
            self.learn_response(key, value);
            value
        } else {
            let v = self.model_value(key).unwrap_or(0);
            // Remember the answer so repeated reads do not rescan the chunk.
            self.set_model(key, v);
            v
        }
    }

    pub(super) fn note_mismatch(&mut self, actual: GuestCall, reason: &'static str) {
        self.state.counters.mismatches += 1;
        let mismatch = Mismatch {
            seq: self.current_seq(),
            actual,
            reason,
        };
        if self.state.later_mismatches.len() + 1 < MAX_LISTED_DIVERGENCES
            && self.state.mismatch.is_some()
        {
            self.state.later_mismatches.push(mismatch);
        } else if self.state.mismatch.is_none() {
            self.state.mismatch = Some(Box::new(mismatch));
        }
    }

    /// Finds the guest's access within `window` recorded guest calls after the cursor.
    pub(super) fn lookahead(
        &self,
        kind: OpKind,
        region: u8,
        offset: u64,
        size: u8,
        value: u64,
        window: u32,
    ) -> Option<Cursor> {
        self.lookahead_crossing(kind, region, offset, size, value, window)
            .map(|(at, _, _)| at)
    }

    /// The recorded first read of `key` after the interrupt the device raised last, when it lies
    /// beyond the resync window (within [`READ_AHEAD_WINDOWS`] windows) and this is the guest's
    /// first such read of `key` since: an interrupt handler that ran right away at replay, where
    /// the capture's ran dozens of driver accesses later (a busy TCG host), reads what the
    /// capture's handler read (e1000e's ICR with the cause it tests for).
    fn irq_handler_read(&mut self, key: RegKey, window: u32) -> Option<Op> {
        let keys = self.state.reads_after_irq.as_ref()?;
        if keys.contains(&key) || keys.len() >= MAX_READS_AFTER_IRQ {
            return None;
        }
        let (region, offset, size) = key;
        let reach = window.saturating_mul(READ_AHEAD_WINDOWS);
        let (_, o, _) = self.lookahead_crossing(OpKind::Read, region, offset, size, 0, reach)?;
        if let Some(keys) = self.state.reads_after_irq.as_mut() {
            keys.push(key);
        }
        Some(o)
    }

    /// [`Self::lookahead`], with the call found and whether the recorded calls before it include
    /// a write or a reset (the one at the cursor counts).
    fn lookahead_crossing(
        &self,
        kind: OpKind,
        region: u8,
        offset: u64,
        size: u8,
        value: u64,
        window: u32,
    ) -> Option<(Cursor, Op, bool)> {
        // A recorded write to a register the guest wrote off the stream is the guest's (with
        // another value): it has been made.
        let made = &self.state.writes_off_stream;
        let changes_state = |o: &Op| match o.kind {
            OpKind::Reset => true,
            OpKind::Write => !made.contains(&(o.region, o.offset, o.size)),
            _ => false,
        };
        let mut crossed = self
            .cur
            .ops
            .get(self.state.cursor.op)
            .is_some_and(changes_state);
        self.find_call(1, window, |_, o| {
            let hit = o.kind == kind
                && o.region == region
                && o.offset == offset
                && o.size == size
                && (kind != OpKind::Write || o.value == value || self.is_relocated(o, value));
            if !hit {
                crossed |= changes_state(o);
            }
            hit
        })
        .map(|(at, o)| (at, o, crossed))
    }

    /// The first of the `window` recorded guest calls after the one at the cursor that `matches`
    /// (given its chunk, for payloads), across chunks.
    fn find_ahead(
        &self,
        window: u32,
        matches: impl FnMut(&CompiledChunk, &Op) -> bool,
    ) -> Option<Cursor> {
        self.find_call(1, window, matches).map(|(at, _)| at)
    }

    /// The first recorded guest call from the cursor on that `matches`, skipping the first
    /// `skip` calls and looking at no more than `window` after them, across chunks.
    fn find_call(
        &self,
        skip: u32,
        window: u32,
        mut matches: impl FnMut(&CompiledChunk, &Op) -> bool,
    ) -> Option<(Cursor, Op)> {
        let mut chunk_idx = self.state.cursor.chunk;
        let mut chunk = Arc::clone(&self.cur);
        let mut i = self.state.cursor.op;
        let mut seen = 0u32;
        loop {
            while let Some(o) = chunk.ops.get(i) {
                if o.kind.is_guest_call() {
                    if seen.saturating_sub(skip) >= window {
                        return None;
                    }
                    if seen >= skip && matches(&chunk, o) {
                        let at = Cursor {
                            chunk: chunk_idx,
                            op: i,
                        };
                        return Some((at, *o));
                    }
                    seen = seen.saturating_add(1);
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

    /// Whether the guest's `value` is the recorded write `o` under a learned relocation, as a whole
    /// address or (for a 32-bit register) as the low or high half of one: used away from the
    /// cursor (resync, leaving a polling run), where the partner half is not known.
    pub(super) fn is_relocated(&self, o: &Op, value: u64) -> bool {
        let map = &self.state.relocations;
        if map.translate(o.value) == value {
            return true;
        }
        if o.size != 4 {
            return false;
        }
        map.ranges().iter().any(|r| {
            let (start, end) = (r.recorded, r.recorded.saturating_add(r.len));
            // The low half within a range (with the range's high half).
            let as_lo = (start & !0xFFFF_FFFF) | o.value;
            let lo_ok =
                as_lo >= start && as_lo < end && map.translate(as_lo) & 0xFFFF_FFFF == value;
            // The high half of a range's start.
            let hi_ok = start >> 32 == o.value && map.translate(start) >> 32 == value;
            lo_ok || hi_ok
        })
    }

    /// Finds the guest's byte access (a read of as many bytes, or a write of the same bytes) within
    /// `window` recorded guest calls after the cursor.
    pub(super) fn lookahead_bytes(
        &self,
        write: bool,
        region: u8,
        offset: u64,
        data: &[u8],
        window: u32,
    ) -> Option<Cursor> {
        let kind = if write { OpKind::Write } else { OpKind::Read };
        self.find_ahead(window, |chunk, o| {
            o.kind == kind
                && o.region == region
                && o.offset == offset
                && o.size == 0
                && chunk
                    .bytes
                    .get(o.aux as usize)
                    .is_some_and(|p| p.len() == data.len() && (!write || p == data))
        })
    }

    /// Moves the cursor to `target`, performing device actions on the way; returns how many
    /// recorded guest calls were skipped.
    pub(super) fn skip_to(&mut self, target: Cursor) -> u64 {
        self.state.writes_off_stream.clear();
        self.state.ahead_streak = 0;
        let mut skipped = 0;
        let mut learned_upto = 0usize;
        while self.state.cursor != target {
            match self.cur.ops.get(self.state.cursor.op).copied() {
                Some(op) => {
                    if op.kind == OpKind::DmaWrite && self.state.cursor.op >= learned_upto {
                        learned_upto = self.learn_from_dma_write_group(self.state.cursor.op);
                    }
                    self.state.cursor.op += 1;
                    if op.kind.is_guest_call() {
                        skipped += 1;
                    } else {
                        self.execute(op);
                    }
                }
                None => {
                    let group_goes_on = learned_upto > 0 && learned_upto >= self.cur.ops.len();
                    if !self.next_chunk() {
                        break;
                    }
                    learned_upto = self.group_rest_learned(group_goes_on);
                }
            }
        }
        self.state.last_read = None;
        skipped
    }

    /// A byte access (length other than 1, 2, 4, 8): matched at the cursor (a read of as many
    /// bytes, a write of the same bytes), or under `resync` within the window ahead.
    pub(super) fn access_bytes(&mut self, write: bool, region: u8, offset: u64, data: &mut [u8]) {
        self.state.counters.accesses += 1;
        self.state.response = None;
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
                Policy::Resync { window } => {
                    if let Some(target) = self.lookahead_bytes(write, region, offset, data, window)
                    {
                        let skipped = self.skip_to(target);
                        self.state.counters.skipped += skipped;
                        if let Some(op) = self.peek() {
                            if !write {
                                if let Some(p) = self.cur.bytes.get(op.aux as usize) {
                                    data.copy_from_slice(p);
                                }
                            }
                            self.consume(op);
                            return;
                        }
                    }
                    self.state.counters.inserted += 1;
                }
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
}
