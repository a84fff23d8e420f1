//! The tap: forwards every `Device` call to a backend and logs it.

use std::sync::Arc;

use hwrr_device::{Device, DeviceDescription, DmaRegion, GuestMemory, IrqSetRequest, Result};
use hwrr_formats::{
    AccessData, ConfigAccess, DmaMapping, DmaRead, DmaWrite, EventKind, IrqAction, IrqData,
    RegionAccess, RegionKind,
};

use crate::relay::IrqRelay;
use crate::watch::{Sweeper, WatchOptions, WatchSet, WatchStats};
use crate::writer::RecorderHandle;

fn status_of<T>(r: &Result<T>) -> u32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.errno().unsigned_abs(),
    }
}

/// A backend with every call logged to a recorder.
pub struct Tap<D: Device> {
    inner: D,
    recorder: RecorderHandle,
    relay: IrqRelay,
    /// Which region indices are I/O ports, so an access is logged as MMIO or PIO without asking
    /// the backend: a bit per index below 64 (VFIO's are below 10), a list for the rest (the
    /// backend's description is not trusted to keep indices small).
    pio_regions: (u64, Vec<u32>),
    /// Infers DMA into memory the device writes directly; `None` when disabled.
    watch: Option<Arc<WatchSet>>,
    /// Stops the periodic sweep when the tap goes away (declared after `relay`, dropped after it).
    _sweeper: Option<Sweeper>,
}

impl<D: Device> Tap<D> {
    /// Wraps `inner`; events go to `recorder`. Starts the interrupt relay thread, and the watch
    /// set with its default options (see [`Tap::with_options`]).
    pub fn new(inner: D, recorder: RecorderHandle) -> std::io::Result<Self> {
        Self::with_options(inner, recorder, WatchOptions::default())
    }

    /// Wraps `inner` with the watch set configured by `watch` (its sweep thread is started here).
    pub fn with_options(
        inner: D,
        recorder: RecorderHandle,
        watch: WatchOptions,
    ) -> std::io::Result<Self> {
        let mut pio_regions = (0u64, Vec::new());
        for r in inner.describe().regions {
            match (r.kind, r.index) {
                (RegionKind::Pio, index @ 0..=63) => pio_regions.0 |= 1 << index,
                (RegionKind::Pio, index) => pio_regions.1.push(index),
                _ => {}
            }
        }
        let sweep = watch.sweep_interval;
        let watch = watch
            .enabled
            .then(|| Arc::new(WatchSet::new(watch, recorder.clone())));
        let relay = IrqRelay::start(recorder.clone(), watch.clone())?;
        let sweeper = match (&watch, sweep) {
            (Some(w), Some(interval)) => Some(Sweeper::start(w.clone(), interval)?),
            _ => None,
        };
        Ok(Tap {
            inner,
            recorder,
            relay,
            pio_regions,
            watch,
            _sweeper: sweeper,
        })
    }

    /// What the watch set did so far (`None` when it is disabled).
    pub fn watch_stats(&self) -> Option<WatchStats> {
        self.watch.as_ref().map(|w| w.stats())
    }

    /// The watch set, when enabled.
    pub fn watch_set(&self) -> Option<&Arc<WatchSet>> {
        self.watch.as_ref()
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    /// The wrapped backend, mutably (calls made through it are not logged).
    pub fn inner_mut(&mut self) -> &mut D {
        &mut self.inner
    }

    /// Unwraps the backend; interrupt routes are torn down.
    pub fn into_inner(self) -> D {
        self.inner
    }

    fn region_event(&self, region: u32, write: bool, access: RegionAccess) -> EventKind {
        let pio = match region {
            0..=63 => self.pio_regions.0 & (1 << region) != 0,
            _ => self.pio_regions.1.contains(&region),
        };
        match (pio, write) {
            (false, false) => EventKind::MmioRead(access),
            (false, true) => EventKind::MmioWrite(access),
            (true, false) => EventKind::PioRead(access),
            (true, true) => EventKind::PioWrite(access),
        }
    }

    /// Replaces the consumer's eventfds with relayed ones before the backend sees them.
    fn substitute_fds(&self, request: &mut IrqSetRequest) -> Result<()> {
        let s = &request.setup;
        match (s.action, &s.data) {
            (IrqAction::Trigger, IrqData::None) if s.count == 0 => {
                self.relay.unroute_index(s.index);
            }
            (IrqAction::Trigger, IrqData::Eventfd(_)) => {
                for (i, fd) in request.fds.iter_mut().enumerate() {
                    let vector = s.start.saturating_add(i as u32);
                    match fd.take() {
                        Some(consumer) => {
                            *fd = Some(self.relay.route(s.index, vector, consumer)?);
                        }
                        None => self.relay.unroute(s.index, vector),
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl<D: Device> Device for Tap<D> {
    fn describe(&self) -> DeviceDescription {
        self.inner.describe()
    }

    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> Result<()> {
        // Two clock reads per access: the end of the call is also the event's stamp.
        let t0 = self.recorder.now_ns();
        let r = self.inner.region_read(region, offset, data);
        let t1 = self.recorder.now_ns();
        // The value read may announce DMA the device did: log that DMA first.
        if let Some(w) = &self.watch {
            w.observe();
        }
        let access = RegionAccess {
            region,
            offset,
            data: AccessData::from_le_bytes(data),
        };
        let kind = self.region_event(region, false, access);
        self.recorder
            .log_at(kind, status_of(&r), t1.saturating_sub(t0), t1);
        r
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<()> {
        // What the guest wrote to memory before this (descriptors, buffers) is absorbed here, so
        // that only what changes after the device saw the write is attributed to the device.
        if let Some(w) = &self.watch {
            w.before_register_write(region, offset, data);
        }
        // Reserved before the call: the DMA and interrupts a write triggers come after it.
        let ticket = self.recorder.reserve();
        if let Some(w) = &self.watch {
            // What the write hands the device comes right after it.
            w.log_reads();
        }
        let r = self.inner.region_write(region, offset, data);
        let dur = self.recorder.now_ns().saturating_sub(ticket.t_ns());
        let access = RegionAccess {
            region,
            offset,
            data: AccessData::from_le_bytes(data),
        };
        let kind = self.region_event(region, true, access);
        self.recorder.submit(ticket, kind, status_of(&r), dur);
        r
    }

    fn config_read(&mut self, offset: u32, data: &mut [u8]) -> Result<()> {
        let t0 = self.recorder.now_ns();
        let r = self.inner.config_read(offset, data);
        let t1 = self.recorder.now_ns();
        let kind = EventKind::ConfigRead(ConfigAccess {
            offset,
            data: AccessData::from_le_bytes(data),
        });
        self.recorder
            .log_at(kind, status_of(&r), t1.saturating_sub(t0), t1);
        r
    }

    fn config_write(&mut self, offset: u32, data: &[u8]) -> Result<()> {
        let ticket = self.recorder.reserve();
        let r = self.inner.config_write(offset, data);
        let dur = self.recorder.now_ns().saturating_sub(ticket.t_ns());
        let kind = EventKind::ConfigWrite(ConfigAccess {
            offset,
            data: AccessData::from_le_bytes(data),
        });
        self.recorder.submit(ticket, kind, status_of(&r), dur);
        r
    }

    fn set_irqs(&mut self, mut request: IrqSetRequest) -> Result<()> {
        let setup = request.setup.clone();
        let ticket = self.recorder.reserve();
        let r = self
            .substitute_fds(&mut request)
            .and_then(|()| self.inner.set_irqs(request));
        let dur = self.recorder.now_ns().saturating_sub(ticket.t_ns());
        self.recorder
            .submit(ticket, EventKind::IrqSetup(setup), status_of(&r), dur);
        r
    }

    fn dma_map(&mut self, region: DmaRegion) -> Result<()> {
        let mapping = region.mapping;
        let memory = region.memory.clone();
        let ticket = self.recorder.reserve();
        let r = self.inner.dma_map(region);
        let dur = self.recorder.now_ns().saturating_sub(ticket.t_ns());
        self.recorder
            .submit(ticket, EventKind::DmaMap(mapping), status_of(&r), dur);
        if let (Ok(()), Some(w)) = (&r, &self.watch) {
            w.add_mapping(mapping, memory);
        }
        r
    }

    fn dma_unmap(&mut self, mapping: DmaMapping) -> Result<()> {
        // What the device wrote there is logged while the memory is still mapped.
        if let Some(w) = &self.watch {
            w.remove_mapping(mapping);
        }
        let ticket = self.recorder.reserve();
        let r = self.inner.dma_unmap(mapping);
        let dur = self.recorder.now_ns().saturating_sub(ticket.t_ns());
        self.recorder
            .submit(ticket, EventKind::DmaUnmap(mapping), status_of(&r), dur);
        r
    }

    fn reset(&mut self) -> Result<()> {
        let ticket = self.recorder.reserve();
        let r = self.inner.reset();
        let dur = self.recorder.now_ns().saturating_sub(ticket.t_ns());
        self.recorder
            .submit(ticket, EventKind::Reset, status_of(&r), dur);
        r
    }

    fn attach_memory(&mut self, memory: Arc<dyn GuestMemory>) {
        self.inner.attach_memory(Arc::new(LoggingMemory {
            inner: memory,
            recorder: self.recorder.clone(),
            watch: self.watch.clone(),
        }));
    }

    fn disconnect(&mut self) {
        self.inner.disconnect()
    }
}

/// Guest memory that logs every DMA access the device makes through it, exactly: the bytes read,
/// the bytes written and the bytes they overwrote.
pub struct LoggingMemory {
    inner: Arc<dyn GuestMemory>,
    recorder: RecorderHandle,
    watch: Option<Arc<WatchSet>>,
}

impl LoggingMemory {
    /// Wraps `inner`, logging to `recorder`.
    pub fn new(inner: Arc<dyn GuestMemory>, recorder: RecorderHandle) -> Self {
        LoggingMemory {
            inner,
            recorder,
            watch: None,
        }
    }

    /// Wraps `inner`, logging to `recorder`; writes are taken into `watch`'s shadows so the watch
    /// set does not report them a second time.
    pub fn with_watch(
        inner: Arc<dyn GuestMemory>,
        recorder: RecorderHandle,
        watch: Arc<WatchSet>,
    ) -> Self {
        LoggingMemory {
            inner,
            recorder,
            watch: Some(watch),
        }
    }
}

impl GuestMemory for LoggingMemory {
    fn read(&self, iova: u64, buf: &mut [u8]) -> Result<()> {
        let t0 = self.recorder.now_ns();
        let r = self.inner.read(iova, buf);
        let t1 = self.recorder.now_ns();
        self.recorder.log_at(
            EventKind::DmaRead(DmaRead {
                iova,
                data: buf.to_vec(),
            }),
            status_of(&r),
            t1.saturating_sub(t0),
            t1,
        );
        r
    }

    fn write(&self, iova: u64, data: &[u8]) -> Result<()> {
        match &self.watch {
            Some(w) => w.exact_write(iova, data.len(), || self.logged_write(iova, data)),
            None => self.logged_write(iova, data),
        }
    }
}

impl LoggingMemory {
    fn logged_write(&self, iova: u64, data: &[u8]) -> Result<()> {
        let mut before = vec![0u8; data.len()];
        // The before-bytes are what the replayer compares against; when memory cannot be read
        // first (a write-only mapping), the write is logged without them.
        let before = match self.inner.read(iova, &mut before) {
            Ok(()) => Some(before),
            Err(_) => None,
        };
        let t0 = self.recorder.now_ns();
        let r = self.inner.write(iova, data);
        let t1 = self.recorder.now_ns();
        self.recorder.log_at(
            EventKind::DmaWrite(DmaWrite {
                iova,
                data: data.to_vec(),
                before,
            }),
            status_of(&r),
            t1.saturating_sub(t0),
            t1,
        );
        r
    }
}
