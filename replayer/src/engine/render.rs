//! The replay report and the divergence rendered as `hwrr dump --json` objects.

use super::*;
use hwrr_formats::json::insert_access_data;

impl Replayer {
    /// What the session did so far.
    pub fn report(&self) -> ReplayReport {
        let s = &self.state;
        let first_divergence = s.mismatch.as_ref().map(|m| self.render_mismatch(m, true));
        let divergences = s
            .mismatch
            .iter()
            .map(|m| m.as_ref())
            .chain(s.later_mismatches.iter())
            .map(|m| self.render_mismatch(m, false))
            .collect();
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
            divergences,
            relocations: s.relocations.ranges().to_vec(),
            trace_events: self.shared.source.event_count(),
            position_seq,
            trace_finished: finished,
            source_error: s.source_error.clone(),
        }
    }

    pub(super) fn find_chunk(&self, seq: u64) -> usize {
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

    pub(super) fn events_before(&self, seq: u64, count: usize) -> (Option<Event>, Vec<Event>) {
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

    pub(super) fn render_mismatch(&self, m: &Mismatch, with_context: bool) -> DivergenceReport {
        let regmap = self.shared.options.regmap.as_ref();
        let count = if with_context {
            self.shared.options.context_events
        } else {
            0
        };
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

    pub(super) fn render_call(&self, call: &GuestCall) -> serde_json::Value {
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
}
