//! The `Device` implementation: modelled regions (ROM, MSI-X table and PBA), config space, resets and connections.

use super::*;

impl Replayer {
    pub(super) fn restart(&mut self) {
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

    pub(super) fn check_region(
        &self,
        region: u32,
        offset: u64,
        len: usize,
    ) -> hwrr_device::Result<()> {
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

    /// Mappings are not sequenced (a VMM maps when it likes), so a guest's map or unmap is compared
    /// with the recorded ones of the same range around the cursor (this chunk, then the previous
    /// and the next one):
    /// when the nearest one failed, it fails again with the recorded errno.
    fn recorded_mapping_failure(
        &mut self,
        kind: OpKind,
        mapping: &DmaMapping,
    ) -> hwrr_device::Result<()> {
        let same = |o: &Op| o.kind == kind && o.value == mapping.iova && o.offset == mapping.len;
        let here = self.state.cursor.op.min(self.cur.ops.len());
        let in_current = {
            let ops = &self.cur.ops;
            let after = ops[here..].iter().position(same).map(|i| here + i);
            let before = ops[..here].iter().rposition(same);
            match (before, after) {
                (Some(b), Some(a)) => Some(if here - b <= a - here { b } else { a }),
                (b, a) => b.or(a),
            }
        };
        let errno = match in_current {
            Some(i) => self.cur.ops[i].failed.then(|| self.cur.status_of(i)),
            None => {
                // The previous chunk's last such call, else the next chunk's first.
                let current = self.state.cursor.chunk;
                let neighbours = [(current.checked_sub(1), true), (Some(current + 1), false)];
                neighbours
                    .into_iter()
                    .filter_map(|(c, backwards)| {
                        let c = c.filter(|c| *c < self.shared.chunk_count)?;
                        let chunk = self.shared.chunk(c).ok()?;
                        let i = if backwards {
                            chunk.ops.iter().rposition(same)
                        } else {
                            chunk.ops.iter().position(same)
                        }?;
                        Some(chunk.ops[i].failed.then(|| chunk.status_of(i)))
                    })
                    .next()
                    .flatten()
            }
        };
        match errno {
            Some(errno) => Err(DeviceError::Io(std::io::Error::from_raw_os_error(
                errno as i32,
            ))),
            None => Ok(()),
        }
    }

    /// The error a failed recorded call is replayed as.
    #[cold]
    pub(super) fn take_failure(&mut self) -> DeviceError {
        let errno = std::mem::take(&mut self.failed_errno);
        DeviceError::Io(std::io::Error::from_raw_os_error(errno as i32))
    }

    /// Whether a region access goes to a model (ROM, MSI-X table or PBA) rather than the sequencer.
    #[inline(always)]
    pub(super) fn is_modelled(&self, region: u32, offset: u64, len: usize) -> bool {
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
    pub(super) fn modelled_access(
        &mut self,
        write: bool,
        region: u32,
        offset: u64,
        data: &mut [u8],
    ) -> bool {
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

/// The device as the header describes it: aliases become ordinary regions, nothing is mmappable
/// (the engine must see every access), config space and the ROM are listed.
pub(super) fn describe_header(header: &TraceHeader, config_len: usize) -> DeviceDescription {
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
            if self.failed_errno != 0 {
                return Err(self.take_failure());
            }
            match data.len() {
                1 => data[0] = v as u8,
                2 => data.copy_from_slice(&(v as u16).to_le_bytes()),
                4 => data.copy_from_slice(&(v as u32).to_le_bytes()),
                _ => data.copy_from_slice(&v.to_le_bytes()),
            }
        } else {
            self.access_bytes(false, canonical, offset, data);
        }
        if self.failed_errno != 0 {
            return Err(self.take_failure());
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
        if self.failed_errno != 0 {
            return Err(self.take_failure());
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
        self.fire_unmasked_msi();
        self.fire_enabled_intx();
        Ok(())
    }

    fn set_irqs(&mut self, request: IrqSetRequest) -> hwrr_device::Result<()> {
        self.irqs.set_irqs(request)
    }

    fn dma_map(&mut self, region: DmaRegion) -> hwrr_device::Result<()> {
        // The frontend owns the memory behind mappings and reaches it through `attach_memory`;
        // only a mapping the recording's IOMMU refused is refused again.
        self.recorded_mapping_failure(OpKind::DmaMap, &region.mapping)
    }

    fn dma_unmap(&mut self, mapping: DmaMapping) -> hwrr_device::Result<()> {
        self.recorded_mapping_failure(OpKind::DmaUnmap, &mapping)
    }

    fn reset(&mut self) -> hwrr_device::Result<()> {
        self.state.config = self.shared.rules.snapshot.clone();
        self.state.msix = self.shared.rules.msix.map(|m| MsixModel::new(m.entries));
        self.state.last_read = None;
        self.state.response = None;
        // The device forgot the half address register written before the reset: its guess stays
        // as it is, with nothing to complete it.
        self.state.pending_half = None;
        if self.state.stopped {
            return Ok(());
        }
        if let Some(op) = self.peek() {
            if op.kind == OpKind::Reset {
                self.state.counters.resets_matched += 1;
                self.pass(op);
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
                self.pass(op);
                return Ok(());
            }
        }
        if self.state.counters.accesses == 0 {
            // A VMM resets the device at machine reset, before its guest runs (QEMU's vfio-pci
            // and vfio-user clients both do). Before any register access such a reset leaves
            // the device as the capture found it (a capture starts from a freshly reset
            // device): the config and MSI-X models are back at the snapshot (above) and the
            // cursor stays at the start.
            self.state.counters.power_on_resets += 1;
            return Ok(());
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
