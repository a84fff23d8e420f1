//! Slicing: the device state at a point of a trace, and a smaller trace that starts there.

use std::collections::BTreeMap;

use crate::event::{AccessData, DmaMapping, Event, EventKind, IrqAction, IrqData, IrqSetup};
use crate::header::{RegisterValue, StartState, TraceHeader};

/// IRQ wiring requests kept per IRQ index at most (older ones are superseded in practice).
const MAX_IRQ_SETUPS_PER_INDEX: usize = 256;

/// Follows a stream of events and keeps what a replay starting after them needs to know: the last
/// value of every register, the DMA mappings in force, the IRQ wiring requests in force and the
/// configuration space.
#[derive(Clone, Debug, Default)]
pub struct StateTracker {
    registers: BTreeMap<(u32, u64, usize), AccessData>,
    dma: BTreeMap<u64, DmaMapping>,
    irq_setups: Vec<IrqSetup>,
    config: Vec<u8>,
}

impl StateTracker {
    /// Starts from a trace's header (its config-space snapshot and, for a slice, its start state).
    pub fn new(header: &TraceHeader) -> Self {
        let mut t = StateTracker {
            config: header.config_space.clone(),
            ..Default::default()
        };
        if let Some(s) = &header.start_state {
            for r in &s.registers {
                t.registers
                    .insert((r.region, r.offset, r.data.len()), r.data.clone());
            }
            for m in &s.dma_mappings {
                t.dma.insert(m.iova, *m);
            }
            t.irq_setups = s.irq_setups.clone();
        }
        t
    }

    /// Applies one event.
    pub fn apply(&mut self, ev: &Event) {
        if ev.status != 0 {
            return;
        }
        match &ev.kind {
            EventKind::MmioRead(a)
            | EventKind::MmioWrite(a)
            | EventKind::PioRead(a)
            | EventKind::PioWrite(a) => {
                self.registers
                    .insert((a.region, a.offset, a.data.len()), a.data.clone());
            }
            EventKind::ConfigRead(c) | EventKind::ConfigWrite(c) => {
                let bytes = c.data.to_le_bytes();
                let start = c.offset as usize;
                let end = start.saturating_add(bytes.len());
                if end <= 4096 {
                    if self.config.len() < end {
                        self.config.resize(if end > 256 { 4096 } else { 256 }, 0);
                    }
                    self.config[start..end].copy_from_slice(&bytes);
                }
            }
            EventKind::DmaMap(m) => {
                self.dma.insert(m.iova, *m);
            }
            EventKind::DmaUnmap(m) => {
                if m.flags & 2 != 0 {
                    self.dma.clear();
                } else {
                    let end = m.iova.saturating_add(m.len);
                    self.dma.retain(|&s, _| s < m.iova || s >= end);
                }
            }
            EventKind::IrqSetup(s) => {
                let disables = s.action == IrqAction::Trigger
                    && s.count == 0
                    && matches!(s.data, IrqData::None);
                if disables {
                    self.irq_setups.retain(|x| x.index != s.index);
                } else {
                    self.irq_setups.push(s.clone());
                    let same: Vec<usize> = self
                        .irq_setups
                        .iter()
                        .enumerate()
                        .filter(|(_, x)| x.index == s.index)
                        .map(|(i, _)| i)
                        .collect();
                    if same.len() > MAX_IRQ_SETUPS_PER_INDEX {
                        self.irq_setups.remove(same[0]);
                    }
                }
            }
            EventKind::Reset => {
                self.registers.clear();
            }
            _ => {}
        }
    }

    /// The configuration space as the events left it.
    pub fn config_space(&self) -> &[u8] {
        &self.config
    }

    /// The start state for a trace whose first event is `first`.
    pub fn start_state(&self, first_seq: u64, first_t_ns: u64) -> StartState {
        StartState {
            first_seq,
            first_t_ns,
            registers: self
                .registers
                .iter()
                .map(|(&(region, offset, _), data)| RegisterValue {
                    region,
                    offset,
                    data: data.clone(),
                })
                .collect(),
            dma_mappings: self.dma.values().copied().collect(),
            irq_setups: self.irq_setups.clone(),
        }
    }

    /// A header for a slice starting at `first_seq`/`first_t_ns`, after every event applied so far.
    pub fn slice_header(&self, base: &TraceHeader, first_seq: u64, first_t_ns: u64) -> TraceHeader {
        let mut h = base.clone();
        h.config_space = self.config.clone();
        h.start_state = Some(self.start_state(first_seq, first_t_ns));
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{ConfigAccess, RegionAccess};

    #[test]
    fn tracks_registers_config_and_dma() {
        let header = TraceHeader {
            config_space: vec![0; 256],
            ..Default::default()
        };
        let mut t = StateTracker::new(&header);
        let evs = [
            EventKind::MmioWrite(RegionAccess {
                region: 0,
                offset: 4,
                data: AccessData::Value { size: 4, value: 9 },
            }),
            EventKind::ConfigWrite(ConfigAccess {
                offset: 4,
                data: AccessData::Value {
                    size: 2,
                    value: 0x107,
                },
            }),
            EventKind::DmaMap(DmaMapping {
                iova: 0x1000,
                len: 0x1000,
                flags: 3,
            }),
            EventKind::DmaMap(DmaMapping {
                iova: 0x4000,
                len: 0x1000,
                flags: 3,
            }),
            EventKind::DmaUnmap(DmaMapping {
                iova: 0x1000,
                len: 0x1000,
                flags: 0,
            }),
        ];
        for (i, k) in evs.into_iter().enumerate() {
            t.apply(&Event::new(i as u64, i as u64, k));
        }
        let h = t.slice_header(&header, 5, 5);
        assert_eq!(&h.config_space[4..6], &[0x07, 0x01]);
        let s = h.start_state.unwrap();
        assert_eq!(s.first_seq, 5);
        assert_eq!(s.registers.len(), 1);
        assert_eq!(s.dma_mappings.len(), 1);
        assert_eq!(s.dma_mappings[0].iova, 0x4000);
    }
}
