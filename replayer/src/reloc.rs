//! The relocation map: how recorded DMA addresses (IOVAs) map to the addresses the replay guest
//! uses, learned from register writes and from descriptors.

use serde::Serialize;

/// Page size used for page-granular learning.
pub const PAGE: u64 = 4096;

/// Most relocations kept; beyond this the oldest are forgotten (keeps the replay state small).
const MAX_RELOCATIONS: usize = 1024;

/// One learned range: recorded `recorded..recorded+len` is at `replay..replay+len` in the replay
/// guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Relocation {
    /// First recorded IOVA of the range.
    pub recorded: u64,
    /// The replay IOVA it maps to.
    pub replay: u64,
    /// Length of the range in bytes.
    pub len: u64,
}

/// A set of relocations. The most specific (shortest) range containing an address wins, so a
/// buffer learned from a descriptor overrides the span learned from a ring base register.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RelocationMap {
    ranges: Vec<Relocation>,
}

impl RelocationMap {
    /// An empty map: every address maps to itself.
    pub fn new() -> Self {
        Self::default()
    }

    /// The learned ranges, oldest first.
    pub fn ranges(&self) -> &[Relocation] {
        &self.ranges
    }

    /// Whether nothing has been learned.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    fn find(&self, addr: u64) -> Option<&Relocation> {
        let mut best: Option<&Relocation> = None;
        for r in &self.ranges {
            if addr >= r.recorded
                && addr - r.recorded < r.len
                && best.map_or(true, |b| r.len <= b.len)
            {
                best = Some(r);
            }
        }
        best
    }

    /// Whether a learned range covers recorded address `addr`.
    pub fn covers(&self, addr: u64) -> bool {
        self.find(addr).is_some()
    }

    /// The learned range that translates recorded address `addr` (the most specific one).
    pub fn range_of(&self, addr: u64) -> Option<&Relocation> {
        self.find(addr)
    }

    /// The replay address of recorded address `addr` (itself when no range covers it).
    pub fn translate(&self, addr: u64) -> u64 {
        match self.find(addr) {
            Some(r) => r.replay.wrapping_add(addr - r.recorded),
            None => addr,
        }
    }

    /// The replay address of `addr` and how many bytes from `addr` on are translated the same way.
    pub fn translate_span(&self, addr: u64) -> (u64, u64) {
        let next_start = self
            .ranges
            .iter()
            .filter(|r| r.recorded > addr)
            .map(|r| r.recorded - addr)
            .min()
            .unwrap_or(u64::MAX);
        match self.find(addr) {
            Some(r) => {
                let in_range = r.len - (addr - r.recorded);
                (
                    r.replay.wrapping_add(addr - r.recorded),
                    in_range.min(next_start),
                )
            }
            None => (addr, next_start),
        }
    }

    /// Records that recorded address `recorded` is `replay` in the replay guest, for `span` bytes
    /// from the start of `recorded`'s page when both addresses share their offset in the page (so
    /// page-aligned buffers relocate as pages), else from `recorded` itself. Returns false when the
    /// map already translated it that way.
    pub fn learn(&mut self, recorded: u64, replay: u64, span: u64) -> bool {
        self.learn_range(recorded, replay, span).is_some()
    }

    /// Like [`RelocationMap::learn`], returning the range added (`None` when the map already
    /// translated `recorded` to `replay`), so that a tentative guess can later be
    /// [forgotten](RelocationMap::forget).
    pub fn learn_range(&mut self, recorded: u64, replay: u64, span: u64) -> Option<Relocation> {
        if self.translate(recorded) == replay {
            return None;
        }
        let in_page = recorded & (PAGE - 1);
        let (start, rep) = if replay & (PAGE - 1) == in_page {
            (recorded - in_page, replay - in_page)
        } else {
            (recorded, replay)
        };
        let len = span.max(1);
        self.ranges
            .retain(|r| !(r.recorded == start && r.len == len));
        if self.ranges.len() >= MAX_RELOCATIONS {
            self.ranges.remove(0);
        }
        let range = Relocation {
            recorded: start,
            replay: rep,
            len,
        };
        self.ranges.push(range);
        Some(range)
    }

    /// Removes exactly `range` (as returned by [`RelocationMap::learn_range`]); returns whether it
    /// was there.
    pub fn forget(&mut self, range: &Relocation) -> bool {
        match self.ranges.iter().rposition(|r| r == range) {
            Some(i) => {
                self.ranges.remove(i);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_specific_range_wins() {
        let mut m = RelocationMap::new();
        assert_eq!(m.translate(0x1234), 0x1234);
        assert!(m.learn(0x10_0000, 0x50_0000, 0x10000));
        assert!(!m.learn(0x10_0000, 0x50_0000, 0x10000));
        assert_eq!(m.translate(0x10_0010), 0x50_0010);
        assert!(m.learn(0x10_2000, 0x90_0000, PAGE));
        assert_eq!(m.translate(0x10_2008), 0x90_0008);
        assert_eq!(m.translate(0x10_3008), 0x50_3008);
        assert_eq!(m.translate_span(0x10_1ff0), (0x50_1ff0, 0x10));
        assert_eq!(m.translate(0x20_0000), 0x20_0000);
    }

    #[test]
    fn a_forgotten_guess_leaves_the_older_ranges() {
        let mut m = RelocationMap::new();
        let wide = m.learn_range(0x10_0000, 0x50_0000, 0x10000).unwrap();
        let guess = m.learn_range(0x10_2000, 0x90_0000, PAGE).unwrap();
        assert_eq!(m.translate(0x10_2000), 0x90_0000);
        assert!(m.forget(&guess));
        assert!(!m.forget(&guess));
        assert_eq!(m.translate(0x10_2000), 0x50_2000);
        assert_eq!(m.ranges(), &[wide]);
    }

    #[test]
    fn unaligned_pairs_map_exactly() {
        let mut m = RelocationMap::new();
        m.learn(0x1010, 0x8020, 0x100);
        assert_eq!(m.translate(0x1010), 0x8020);
        assert_eq!(m.translate(0x1018), 0x8028);
        assert_eq!(m.translate(0x1008), 0x1008);
    }
}
