//! The recorder's clock: nanoseconds since capture start, cheap enough to read twice per register
//! access.
//!
//! `clock_gettime(CLOCK_MONOTONIC)` through the vDSO costs 20–30 ns and was a quarter of the access
//! path. Where the CPU has an invariant TSC (constant rate, keeps counting in every power state) and
//! the kernel trusts it as its own clocksource (so it is synchronised across cores), the clock reads
//! the TSC instead and converts ticks to nanoseconds with a multiply and a shift. The rate is
//! calibrated against `CLOCK_MONOTONIC` at start and re-checked from the writer thread
//! ([`Clock::recalibrate`]): the conversion is re-anchored so that it converges on
//! `CLOCK_MONOTONIC` without ever stepping back. Everywhere else (other architectures, no invariant
//! TSC, a kernel on another clocksource, `HWRR_CLOCK=monotonic`) it reads `CLOCK_MONOTONIC`.
//!
//! Either way every reading on one thread is at least the previous one. Across threads the recorder
//! additionally raises each stamp to the previous one in sequence order (see `writer.rs`), which is
//! what makes stamps non-decreasing along the trace.

use std::sync::Mutex;
use std::time::Instant;

/// Where the recorder's timestamps come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClockSource {
    /// The CPU's invariant time-stamp counter, calibrated against `CLOCK_MONOTONIC`.
    Tsc,
    /// `CLOCK_MONOTONIC` (through `std::time::Instant`).
    Monotonic,
}

impl ClockSource {
    /// A short name for reports: `tsc` or `monotonic`.
    pub fn name(self) -> &'static str {
        match self {
            ClockSource::Tsc => "tsc",
            ClockSource::Monotonic => "monotonic",
        }
    }
}

/// What decides the clock source, gathered from the machine (or made up by a test).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClockEnvironment {
    /// CPUID says the TSC is invariant (leaf 0x8000_0007, EDX bit 8). Always false off x86_64.
    pub invariant_tsc: bool,
    /// The kernel's current clocksource (`/sys/devices/system/clocksource/clocksource0/
    /// current_clocksource`), when it could be read.
    pub kernel_clocksource: Option<String>,
    /// `HWRR_CLOCK` from the environment: `monotonic` forces the fallback, `tsc` or unset let the
    /// other facts decide.
    pub requested: Option<String>,
}

impl ClockEnvironment {
    /// The facts of this machine and process.
    pub fn detect() -> Self {
        ClockEnvironment {
            invariant_tsc: tsc::invariant(),
            kernel_clocksource: std::fs::read_to_string(
                "/sys/devices/system/clocksource/clocksource0/current_clocksource",
            )
            .ok()
            .map(|s| s.trim().to_string()),
            requested: std::env::var("HWRR_CLOCK").ok(),
        }
    }

    /// The source these facts allow, and why when it is not the TSC.
    ///
    /// The TSC needs all of: x86_64, the invariant bit, no `HWRR_CLOCK=monotonic`, and a kernel that
    /// uses `tsc` itself when that can be read. A kernel on another clocksource (`kvm-clock`, `hpet`,
    /// ...) either found the TSC unsynchronised across cores or does not trust it; neither does the
    /// recorder then.
    pub fn choose(&self) -> (ClockSource, Option<String>) {
        if self.requested.as_deref() == Some("monotonic") {
            return (
                ClockSource::Monotonic,
                Some("HWRR_CLOCK=monotonic".to_string()),
            );
        }
        if !cfg!(target_arch = "x86_64") {
            return (ClockSource::Monotonic, Some("not x86_64".to_string()));
        }
        if !self.invariant_tsc {
            return (
                ClockSource::Monotonic,
                Some("the CPU does not report an invariant TSC".to_string()),
            );
        }
        match self.kernel_clocksource.as_deref() {
            Some("tsc") | None => (ClockSource::Tsc, None),
            Some(other) => (
                ClockSource::Monotonic,
                Some(format!("the kernel's clocksource is {other}, not tsc")),
            ),
        }
    }
}

/// Nanoseconds since the clock was created, from the TSC or `CLOCK_MONOTONIC`.
pub struct Clock {
    start: Instant,
    tsc: Option<TscClock>,
    fallback_reason: Option<String>,
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clock")
            .field("source", &self.source())
            .field("fallback_reason", &self.fallback_reason)
            .finish()
    }
}

impl Clock {
    /// The best clock this machine allows ([`ClockEnvironment::detect`]), calibrated now (the TSC
    /// calibration takes about a millisecond).
    pub fn new() -> Self {
        Self::for_environment(&ClockEnvironment::detect())
    }

    /// The clock `env` allows. When the TSC is chosen but its calibration fails (it does not
    /// advance, or not at a plausible rate), the clock falls back to `CLOCK_MONOTONIC`.
    pub fn for_environment(env: &ClockEnvironment) -> Self {
        let start = Instant::now();
        match env.choose() {
            (ClockSource::Tsc, _) => match TscClock::calibrate(start) {
                Ok(tsc) => Clock {
                    start,
                    tsc: Some(tsc),
                    fallback_reason: None,
                },
                Err(reason) => Clock {
                    start,
                    tsc: None,
                    fallback_reason: Some(reason),
                },
            },
            (ClockSource::Monotonic, reason) => Clock {
                start,
                tsc: None,
                fallback_reason: reason,
            },
        }
    }

    /// A clock that reads `CLOCK_MONOTONIC` whatever the machine has.
    pub fn monotonic() -> Self {
        Clock {
            start: Instant::now(),
            tsc: None,
            fallback_reason: Some("requested".to_string()),
        }
    }

    /// Where readings come from.
    pub fn source(&self) -> ClockSource {
        if self.tsc.is_some() {
            ClockSource::Tsc
        } else {
            ClockSource::Monotonic
        }
    }

    /// Why the clock reads `CLOCK_MONOTONIC` (`None` when it reads the TSC).
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }

    /// Nanoseconds since the clock was created. Non-decreasing on each thread.
    #[inline]
    pub fn now_ns(&self) -> u64 {
        match &self.tsc {
            Some(tsc) => tsc.now_ns(),
            None => self.start.elapsed().as_nanos() as u64,
        }
    }

    /// Re-measures the TSC rate against `CLOCK_MONOTONIC` and re-anchors the conversion so that it
    /// converges on it (continuously: readings never step back). Cheap (a few hundred ns); the
    /// recorder's writer thread calls it every [`RECALIBRATE_EVERY`]. Does nothing on the fallback.
    pub fn recalibrate(&self) {
        if let Some(tsc) = &self.tsc {
            tsc.recalibrate(self.start);
        }
    }

    /// How far a TSC reading is from `CLOCK_MONOTONIC` right now, in ns (positive: the TSC clock
    /// is behind). Zero on the fallback.
    pub fn offset_from_monotonic_ns(&self) -> i64 {
        match &self.tsc {
            Some(tsc) => {
                let (ticks, mono) = tsc::paired_reading(self.start);
                mono as i64 - tsc.convert(ticks) as i64
            }
            None => 0,
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// How often the writer thread re-anchors the TSC conversion.
pub const RECALIBRATE_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// The horizon over which a measured offset is slewed away: the conversion's rate is changed by
/// `offset / SLEW_HORIZON_NS` until the next re-anchoring.
const SLEW_HORIZON_NS: i128 = 1_000_000_000;
/// Offsets above this (the TSC clock behind `CLOCK_MONOTONIC`) are stepped forward at once rather
/// than slewed: stepping forward keeps readings monotonic.
const STEP_FORWARD_NS: i128 = 1_000_000;
/// Fixed-point shift of the ns-per-tick multiplier.
const MULT_SHIFT: u32 = 32;

/// The TSC conversion: `ns = anchor_ns + (ticks - anchor_ticks) * mult >> 32`, published through
/// a sequence lock so that readers on any thread see one consistent triple.
struct TscClock {
    version: std::sync::atomic::AtomicU64,
    anchor_ticks: std::sync::atomic::AtomicU64,
    anchor_ns: std::sync::atomic::AtomicU64,
    mult: std::sync::atomic::AtomicU64,
    /// The first paired reading (ticks, ns since start): the long baseline the rate is measured on.
    base: (u64, u64),
    /// Serialises re-anchoring (one writer of the sequence lock at a time).
    recalibrating: Mutex<()>,
}

impl TscClock {
    /// Measures the rate over about a millisecond.
    fn calibrate(start: Instant) -> Result<Self, String> {
        let base = tsc::paired_reading(start);
        let mut later = base;
        while later.1.saturating_sub(base.1) < 1_000_000 {
            later = tsc::paired_reading(start);
        }
        let mult = rate(base, later).ok_or_else(|| {
            format!(
                "TSC calibration failed: {} ticks in {} ns",
                later.0.wrapping_sub(base.0),
                later.1 - base.1
            )
        })?;
        Ok(TscClock {
            version: 0.into(),
            anchor_ticks: base.0.into(),
            anchor_ns: base.1.into(),
            mult: mult.into(),
            base,
            recalibrating: Mutex::new(()),
        })
    }

    /// The published conversion, and a TSC reading taken while it was published (when `read_tsc`).
    #[inline]
    fn params_and_ticks(&self, read_tsc: bool) -> ((u64, u64, u64), u64) {
        use std::sync::atomic::{fence, Ordering};
        let mut tries = 0u32;
        loop {
            let v1 = self.version.load(Ordering::Acquire);
            // The TSC is read after the version, like the kernel's vDSO: see `recalibrate`.
            let ticks = if read_tsc { tsc::read() } else { 0 };
            let anchor_ticks = self.anchor_ticks.load(Ordering::Relaxed);
            let anchor_ns = self.anchor_ns.load(Ordering::Relaxed);
            let mult = self.mult.load(Ordering::Relaxed);
            fence(Ordering::Acquire);
            let v2 = self.version.load(Ordering::Relaxed);
            if v1 == v2 && v1 & 1 == 0 {
                return ((anchor_ticks, anchor_ns, mult), ticks);
            }
            // A re-anchoring is being published: a few stores, unless the thread doing it was
            // preempted in the middle; then give the CPU away rather than spin through its time
            // slice (it may be waiting for this very CPU).
            tries += 1;
            if tries % 64 == 0 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }

    #[inline]
    fn params(&self) -> (u64, u64, u64) {
        self.params_and_ticks(false).0
    }

    #[inline]
    fn convert(&self, ticks: u64) -> u64 {
        convert_with(self.params(), ticks)
    }

    #[inline]
    fn now_ns(&self) -> u64 {
        let (params, ticks) = self.params_and_ticks(true);
        convert_with(params, ticks)
    }

    fn recalibrate(&self, start: Instant) {
        use std::sync::atomic::Ordering;
        let _only_one = self.recalibrating.lock().unwrap_or_else(|p| p.into_inner());
        let now = tsc::paired_reading(start);
        let Some(long_rate) = rate(self.base, now) else {
            return;
        };
        let old = self.params();
        let offset = now.1 as i128 - convert_with(old, now.0) as i128;
        let (step, mult) = if offset > STEP_FORWARD_NS {
            (offset as u64, long_rate)
        } else {
            // Slew: run fast or slow by offset / horizon (at most by half) until the next
            // re-anchoring.
            let correction = (offset.clamp(-SLEW_HORIZON_NS / 2, SLEW_HORIZON_NS / 2)
                * long_rate as i128)
                / SLEW_HORIZON_NS;
            (0, (long_rate as i128 + correction).max(1) as u64)
        };
        let v = self.version.load(Ordering::Relaxed);
        // The odd version is visible to every core (SeqCst: a full barrier) before the anchor is
        // read from the TSC, and readers read the TSC after the version: a reader that gets the
        // old conversion read its TSC before the anchor, so it maps to at most the old conversion
        // at the anchor, which is where the new conversion starts. No reading is ever below an
        // earlier one (short of the few cycles an unfenced RDTSC may run ahead, times a rate
        // change of a few ppm: far below a nanosecond).
        self.version.store(v + 1, Ordering::SeqCst);
        let anchor_ticks = tsc::read_ordered();
        let anchor_ns = convert_with(old, anchor_ticks) + step;
        self.anchor_ticks.store(anchor_ticks, Ordering::Relaxed);
        self.anchor_ns.store(anchor_ns, Ordering::Relaxed);
        self.mult.store(mult, Ordering::Relaxed);
        self.version.store(v + 2, Ordering::Release);
    }
}

/// Applies a conversion `(anchor_ticks, anchor_ns, mult)` to a TSC reading. A reading taken before
/// the anchor (a thread that read the TSC just before a re-anchoring was published) maps to the
/// anchor: never before it.
#[inline]
fn convert_with((anchor_ticks, anchor_ns, mult): (u64, u64, u64), ticks: u64) -> u64 {
    let delta = ticks.saturating_sub(anchor_ticks);
    anchor_ns + ((delta as u128 * mult as u128) >> MULT_SHIFT) as u64
}

/// ns per tick in 32.32 fixed point between two paired readings, when plausible (the TSC advanced,
/// at between 10 MHz and 100 GHz).
fn rate(from: (u64, u64), to: (u64, u64)) -> Option<u64> {
    let ticks = to.0.checked_sub(from.0).filter(|t| *t > 0)?;
    let ns = to.1.checked_sub(from.1)?;
    let mult = ((ns as u128) << MULT_SHIFT) / ticks as u128;
    let plausible = (1u128 << MULT_SHIFT) / 100..=(100u128 << MULT_SHIFT);
    plausible.contains(&mult).then_some(mult as u64)
}

#[cfg(target_arch = "x86_64")]
mod tsc {
    use std::time::Instant;

    /// CPUID leaf 0x8000_0007 EDX bit 8: the TSC runs at a constant rate in every P-, C- and
    /// T-state.
    pub fn invariant() -> bool {
        use std::arch::x86_64::__cpuid;
        // `__cpuid` is safe since Rust 1.87 and unsafe before (the MSRV is older).
        #[allow(unused_unsafe)]
        // SAFETY: CPUID exists on every x86_64 CPU. Leaf 0x8000_0000 reports the highest
        // extended leaf; 0x8000_0007 is only queried when it is in range.
        unsafe {
            let max_extended = __cpuid(0x8000_0000).eax;
            max_extended >= 0x8000_0007 && __cpuid(0x8000_0007).edx & (1 << 8) != 0
        }
    }

    /// The TSC, unordered: RDTSC may execute a few cycles before or after its neighbours. The
    /// access path reads it twice per call, and an LFENCE in front (which waits for every earlier
    /// load, cache misses included) cost 25 ns per access there. Nothing depends on the order at
    /// that scale: the writer raises each stamp to the one before it in the stream.
    #[inline]
    pub fn read() -> u64 {
        // SAFETY: RDTSC has no operands and exists on every x86_64 CPU; the TSC is only used as
        // a clock when it was detected invariant.
        unsafe { std::arch::x86_64::_rdtsc() }
    }

    /// The TSC, read after every earlier instruction completed (LFENCE first, as the kernel's
    /// `rdtsc_ordered`): for calibration and re-anchoring, where the pairing with another clock
    /// or with the sequence lock matters.
    #[inline]
    pub fn read_ordered() -> u64 {
        // SAFETY: LFENCE and RDTSC have no memory operands and exist on every x86_64 CPU (SSE2 is
        // part of the base ISA).
        unsafe {
            std::arch::x86_64::_mm_lfence();
            std::arch::x86_64::_rdtsc()
        }
    }

    /// A TSC reading and `CLOCK_MONOTONIC` (ns since `start`) taken as close together as possible:
    /// the TSC is read on both sides and the tightest of a few tries is kept, its midpoint paired
    /// with the monotonic reading.
    pub fn paired_reading(start: Instant) -> (u64, u64) {
        let mut best: Option<(u64, u64, u64)> = None;
        for _ in 0..5 {
            let before = read_ordered();
            let ns = start.elapsed().as_nanos() as u64;
            let after = read_ordered();
            let width = after.saturating_sub(before);
            if best.map_or(true, |(w, _, _)| width < w) {
                best = Some((width, before + width / 2, ns));
            }
        }
        let (_, ticks, ns) = best.unwrap_or((0, read_ordered(), start.elapsed().as_nanos() as u64));
        (ticks, ns)
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod tsc {
    use std::time::Instant;

    pub fn invariant() -> bool {
        false
    }

    pub fn read() -> u64 {
        0
    }

    pub fn read_ordered() -> u64 {
        0
    }

    pub fn paired_reading(start: Instant) -> (u64, u64) {
        (0, start.elapsed().as_nanos() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn env(invariant: bool, kernel: Option<&str>, requested: Option<&str>) -> ClockEnvironment {
        ClockEnvironment {
            invariant_tsc: invariant,
            kernel_clocksource: kernel.map(str::to_string),
            requested: requested.map(str::to_string),
        }
    }

    #[test]
    fn the_tsc_needs_the_invariant_bit_and_a_kernel_that_trusts_it() {
        let tsc_if_x86 = if cfg!(target_arch = "x86_64") {
            ClockSource::Tsc
        } else {
            ClockSource::Monotonic
        };
        assert_eq!(env(true, Some("tsc"), None).choose().0, tsc_if_x86);
        assert_eq!(env(true, None, Some("tsc")).choose().0, tsc_if_x86);
        let (source, why) = env(false, Some("tsc"), None).choose();
        assert_eq!(source, ClockSource::Monotonic);
        assert!(why.is_some());
        let (source, why) = env(true, Some("kvm-clock"), None).choose();
        assert_eq!(source, ClockSource::Monotonic);
        if cfg!(target_arch = "x86_64") {
            assert!(why.unwrap().contains("kvm-clock"));
        }
        let (source, why) = env(true, Some("tsc"), Some("monotonic")).choose();
        assert_eq!(source, ClockSource::Monotonic);
        assert_eq!(why.as_deref(), Some("HWRR_CLOCK=monotonic"));
    }

    #[test]
    fn a_refused_tsc_falls_back_to_the_monotonic_clock() {
        let clock = Clock::for_environment(&env(false, Some("tsc"), None));
        assert_eq!(clock.source(), ClockSource::Monotonic);
        assert!(clock.fallback_reason().is_some());
        let a = clock.now_ns();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = clock.now_ns();
        assert!(b >= a + 2_000_000, "{a} then {b}");
        // Nothing to re-anchor; readings go on.
        clock.recalibrate();
        assert!(clock.now_ns() >= b);
        assert_eq!(clock.offset_from_monotonic_ns(), 0);
    }

    #[test]
    fn implausible_calibrations_are_refused() {
        // The TSC did not advance, went backwards, or ran at 1 tick per second.
        assert_eq!(rate((100, 0), (100, 1_000_000)), None);
        assert_eq!(rate((100, 0), (50, 1_000_000)), None);
        assert_eq!(rate((0, 0), (1, 1_000_000_000)), None);
        // 2.5 GHz: 0.4 ns per tick.
        let mult = rate((0, 0), (2_500_000, 1_000_000)).unwrap();
        assert_eq!(mult, ((1_000_000u128 << 32) / 2_500_000) as u64);
    }

    #[test]
    fn the_chosen_clock_tracks_the_monotonic_clock() {
        let clock = Clock::new();
        // The clock's readings enclose the monotonic ones: a preemption can only widen them.
        let t0 = clock.now_ns();
        let start = Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let elapsed = start.elapsed().as_nanos() as u64;
        let t1 = clock.now_ns();
        // The clock measured at least the monotonic interval, to within 1 % (the calibration's
        // error is a few ppm).
        let measured = t1 - t0;
        assert!(
            measured >= elapsed * 99 / 100,
            "{measured} ns for {elapsed} ns"
        );
        clock.recalibrate();
        assert!(clock.offset_from_monotonic_ns().abs() < 1_000_000);
    }

    /// A reading that happens after everything before it and before everything after it: the
    /// clock's own RDTSC is unfenced (it may run a few cycles early or late), so a test that
    /// compares readings across threads puts fences around it.
    fn fenced(clock: &Clock) -> u64 {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: LFENCE has no operands and exists on every x86_64 CPU.
        unsafe {
            std::arch::x86_64::_mm_lfence()
        };
        let t = clock.now_ns();
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        unsafe {
            std::arch::x86_64::_mm_lfence()
        };
        t
    }

    /// Every thread's readings are non-decreasing while another thread keeps re-anchoring the
    /// conversion, and readings taken after another thread's reading (ordered by an atomic) are
    /// not below it.
    #[test]
    fn readings_never_go_back_under_concurrent_recalibration() {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        for clock in [Clock::new(), Clock::monotonic()] {
            let clock = Arc::new(clock);
            let stop = Arc::new(AtomicBool::new(false));
            let latest = Arc::new(AtomicU64::new(0));
            let recalibrator = {
                let (clock, stop) = (clock.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        clock.recalibrate();
                        n += 1;
                    }
                    n
                })
            };
            let readers: Vec<_> = (0..3)
                .map(|_| {
                    let (clock, latest) = (clock.clone(), latest.clone());
                    std::thread::spawn(move || {
                        let mut last = 0u64;
                        for _ in 0..200_000 {
                            // A reading published by any thread before this one started.
                            let seen = latest.load(Ordering::SeqCst);
                            let t = fenced(&clock);
                            assert!(t >= last, "went back on one thread: {last} then {t}");
                            assert!(
                                t >= seen,
                                "below another thread's earlier reading: {seen} then {t}"
                            );
                            latest.fetch_max(t, Ordering::SeqCst);
                            last = t;
                        }
                    })
                })
                .collect();
            for r in readers {
                r.join().unwrap();
            }
            stop.store(true, Ordering::Relaxed);
            assert!(recalibrator.join().unwrap() > 0);
        }
    }
}
