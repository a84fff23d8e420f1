//! The bounded queue between producers (the access path, the interrupt relay, DMA capture) and the
//! writer thread: a lock-free ring of event slots, many producers, one consumer.
//!
//! A producer claims a position with one `fetch_add`, writes its event into that slot and publishes
//! it with one release store (Vyukov's bounded queue; each slot's `state` says which lap may write
//! or read it). No lock, no allocation, no system call on the way in. When the ring is full the
//! producer waits for its slot: it spins briefly, then sleeps on a condition variable that the
//! consumer signals when it frees slots while anyone sleeps. Nothing is dropped while the queue is
//! open.
//!
//! Closing sets the top bit of the claim counter in the same atomic operation that reads it, so the
//! consumer knows exactly which positions were claimed before the close (it drains all of them) and
//! producers that claim afterwards see the bit and give up.

use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::thread::Thread;
use std::time::Duration;

use crate::entry::Entry;

/// How many slots ahead of the one it takes the consumer asks for.
const PREFETCH_AHEAD: u64 = 8;

/// A hint to bring `slot`'s cache line closer; no effect on what the program computes.
#[inline(always)]
fn prefetch(slot: &Slot) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: SSE is part of the x86_64 baseline, and a prefetch is only a hint: it reads
        // nothing the program sees and cannot fault, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>((slot as *const Slot).cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = slot;
}

/// The claim counter's bit that marks the queue closed.
const CLOSED: u64 = 1 << 63;

/// Spins before a producer facing a full ring goes to sleep: the consumer frees slots in bursts.
const SPINS_BEFORE_SLEEP: u32 = 200;

/// Keeps hot counters on their own cache line, away from what the other side writes.
#[repr(align(128))]
struct CachePadded<T>(T);

/// One cache line: a producer filling one slot never shares a line with the consumer reading the
/// one before.
#[repr(C, align(64))]
struct Slot {
    /// `position` when the slot is free for the producer of `position`; `position + 1` once that
    /// producer published its event (the ring has at least 2 slots, so the two never meet).
    state: AtomicU64,
    event: UnsafeCell<MaybeUninit<Entry>>,
}

/// What a producer's attempt came to.
pub(crate) enum Pushed {
    /// The event is in the queue.
    Queued,
    /// The queue is closed (or its consumer is gone): the event was dropped.
    Closed,
}

/// A bounded multi-producer, single-consumer queue of events.
pub(crate) struct EventQueue {
    slots: Box<[Slot]>,
    mask: u64,
    /// Positions claimed by producers, with [`CLOSED`] once closed.
    tail: CachePadded<AtomicU64>,
    /// Positions claimed before the close (`u64::MAX` while open).
    closed_at: AtomicU64,
    /// How many times a producer found its slot still in use.
    stalls: CachePadded<AtomicU64>,
    /// The most events the queue held (sampled by the consumer, and `capacity` when a producer
    /// stalled).
    high_water: AtomicU64,
    /// Set when the consumer stops for good (finished or failed): waiting producers give up.
    consumer_gone: AtomicBool,
    /// Producers asleep on a full ring.
    sleepers: AtomicUsize,
    room_lock: Mutex<()>,
    room: Condvar,
    /// The consumer thread, woken every eighth of a ring of claims (and by stalled producers).
    consumer: OnceLock<Thread>,
}

// SAFETY: each slot's event is written only by the one producer that claimed its position (and
// only while `state == position`), and read only by the single consumer after the producer's
// release store made `state == position + 1`; the acquire/release pair on `state` orders the
// accesses. Entries are `Send`.
unsafe impl Sync for EventQueue {}
// SAFETY: as above; the queue owns its entries, which are `Send`.
unsafe impl Send for EventQueue {}

impl EventQueue {
    /// A queue of at least `capacity` slots (rounded up to a power of two, at least 2).
    pub(crate) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(2).next_power_of_two();
        let slots = (0..capacity as u64)
            .map(|i| Slot {
                state: AtomicU64::new(i),
                event: UnsafeCell::new(MaybeUninit::uninit()),
            })
            .collect();
        EventQueue {
            slots,
            mask: capacity as u64 - 1,
            tail: CachePadded(AtomicU64::new(0)),
            closed_at: AtomicU64::new(u64::MAX),
            stalls: CachePadded(AtomicU64::new(0)),
            high_water: AtomicU64::new(0),
            consumer_gone: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            room_lock: Mutex::new(()),
            room: Condvar::new(),
            consumer: OnceLock::new(),
        }
    }

    /// Slots in the ring.
    pub(crate) fn capacity(&self) -> u64 {
        self.mask + 1
    }

    /// Names the consumer thread, so producers can wake it.
    pub(crate) fn set_consumer(&self, thread: Thread) {
        // Set once, right after the consumer thread starts; a second call changes nothing.
        let _ = self.consumer.set(thread);
    }

    fn wake_consumer(&self) {
        if let Some(t) = self.consumer.get() {
            t.unpark();
        }
    }

    fn slot(&self, position: u64) -> &Slot {
        &self.slots[(position & self.mask) as usize]
    }

    /// Claims a position, or `None` once the queue is closed. The caller must then
    /// [`EventQueue::fill`] it: the consumer waits for every position claimed before the close.
    #[inline(always)]
    pub(crate) fn claim(&self) -> Option<u64> {
        let position = self.tail.0.fetch_add(1, Ordering::Relaxed);
        (position & CLOSED == 0).then_some(position)
    }

    /// Writes `event` into the claimed `position` (waiting, and counting a stall, while the ring
    /// is full) and publishes it.
    #[inline(always)]
    pub(crate) fn fill(&self, position: u64, event: Entry) -> Pushed {
        let slot = self.slot(position);
        if slot.state.load(Ordering::Acquire) != position && !self.wait_for_slot(slot, position) {
            return Pushed::Closed;
        }
        // SAFETY: `state == position`: the consumer has read whatever the previous lap left here
        // and only this producer holds `position`, so nobody else touches the slot until the
        // release store below hands it over.
        unsafe { (*slot.event.get()).write(event) };
        slot.state.store(position + 1, Ordering::Release);
        // Wake the consumer every eighth of the ring: the ring stays shallow, so the consumer can
        // be kept off the CPU for most of a ring's worth of events before anyone stalls, and the
        // wake-up (a futex call only when the consumer sleeps) costs nothing per event.
        if position & (self.mask >> 3) == 0 {
            self.wake_consumer();
        }
        Pushed::Queued
    }

    /// The slow path of a full ring. Returns false when the consumer is gone for good.
    #[cold]
    fn wait_for_slot(&self, slot: &Slot, position: u64) -> bool {
        self.stalls.0.fetch_add(1, Ordering::Relaxed);
        self.high_water
            .fetch_max(self.capacity(), Ordering::Relaxed);
        self.wake_consumer();
        for _ in 0..SPINS_BEFORE_SLEEP {
            if slot.state.load(Ordering::Acquire) == position {
                return true;
            }
            if self.consumer_gone.load(Ordering::Relaxed) {
                return false;
            }
            std::hint::spin_loop();
        }
        let mut guard = self.room_lock.lock().unwrap_or_else(|p| p.into_inner());
        // SeqCst pairs with the consumer's fence after it frees slots: either it sees this
        // sleeper and signals, or this producer sees the freed slot below.
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        let free = loop {
            if slot.state.load(Ordering::SeqCst) == position {
                break true;
            }
            if self.consumer_gone.load(Ordering::SeqCst) {
                break false;
            }
            self.wake_consumer();
            // The timeout is a backstop only; the consumer signals.
            guard = self
                .room
                .wait_timeout(guard, Duration::from_millis(10))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        };
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
        drop(guard);
        if free {
            fence(Ordering::Acquire);
        }
        free
    }

    /// Closes the queue: later claims fail. Returns the number of positions claimed before, all of
    /// which the consumer must drain.
    pub(crate) fn close(&self) -> u64 {
        let claimed = self.tail.0.fetch_or(CLOSED, Ordering::SeqCst) & !CLOSED;
        self.closed_at.fetch_min(claimed, Ordering::SeqCst);
        claimed
    }

    /// Positions claimed so far (not counting claims refused after the close).
    pub(crate) fn claimed(&self) -> u64 {
        let tail = self.tail.0.load(Ordering::Relaxed) & !CLOSED;
        tail.min(self.closed_at.load(Ordering::Relaxed))
    }

    /// Producers that found the ring full.
    pub(crate) fn stalls(&self) -> u64 {
        self.stalls.0.load(Ordering::Relaxed)
    }

    /// The most events the queue was seen holding.
    pub(crate) fn high_water(&self) -> u64 {
        self.high_water.load(Ordering::Relaxed)
    }

    /// The consumer stops for good: producers waiting on a full ring give up, and so do later
    /// ones. Events still in the ring are dropped with the queue.
    pub(crate) fn consumer_gone(&self) {
        self.consumer_gone.store(true, Ordering::SeqCst);
        self.close();
        self.notify_room();
    }

    fn notify_room(&self) {
        fence(Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = self.room_lock.lock().unwrap_or_else(|p| p.into_inner());
            self.room.notify_all();
        }
    }
}

/// The consumer's side: its position in the ring. Only one may exist per queue.
pub(crate) struct Consumer {
    head: u64,
    /// Slots freed since sleepers were last looked for.
    freed: u64,
}

impl Consumer {
    /// The consumer of a fresh queue.
    pub(crate) fn new() -> Self {
        Consumer { head: 0, freed: 0 }
    }

    /// Events taken so far.
    pub(crate) fn taken(&self) -> u64 {
        self.head
    }

    /// Takes the next event, if it was published.
    #[inline]
    pub(crate) fn pop(&mut self, queue: &EventQueue) -> Option<Entry> {
        let slot = queue.slot(self.head);
        // Each slot is a cache line the producer's core wrote: asking for the one a few positions
        // ahead now overlaps its transfer with the work on this one.
        prefetch(queue.slot(self.head + PREFETCH_AHEAD));

        if slot.state.load(Ordering::Acquire) != self.head + 1 {
            return None;
        }
        // SAFETY: `state == head + 1`: the producer of `head` wrote the event and published it
        // with a release store (paired with the acquire load above); the slot is not handed to
        // the next lap's producer until the store below, so the event is read exactly once.
        let event = unsafe { (*slot.event.get()).assume_init_read() };
        slot.state
            .store(self.head + queue.capacity(), Ordering::Release);
        self.head += 1;
        self.freed += 1;
        // Sleeping producers are looked for every 256 events and whenever the ring runs dry.
        if self.freed >= 256 {
            self.release(queue);
        }
        Some(event)
    }

    /// Lets producers asleep on a full ring know that slots were freed.
    pub(crate) fn release(&mut self, queue: &EventQueue) {
        if self.freed > 0 {
            self.freed = 0;
            queue.notify_room();
        }
    }

    /// Records how many events wait in the queue right now (for the high-water mark).
    pub(crate) fn sample_depth(&self, queue: &EventQueue) {
        let depth = queue
            .claimed()
            .saturating_sub(self.head)
            .min(queue.capacity());
        queue.high_water.fetch_max(depth, Ordering::Relaxed);
    }

    /// Waits for the next event until `timeout` (woken early by producers).
    pub(crate) fn wait(&self, queue: &EventQueue, timeout: Duration) {
        if queue.slot(self.head).state.load(Ordering::Acquire) != self.head + 1 {
            std::thread::park_timeout(timeout);
        }
    }
}

impl Drop for EventQueue {
    fn drop(&mut self) {
        // Events the consumer never took (it failed, or producers filled slots after the close):
        // a slot holds one exactly when its state is one past a position of its own lap.
        for (index, slot) in self.slots.iter_mut().enumerate() {
            let state = *slot.state.get_mut();
            if state.wrapping_sub(1) & self.mask == index as u64 {
                // SAFETY: the state says a producer published an event here that was never read;
                // `&mut self` means no thread can touch the slot any more.
                unsafe { slot.event.get_mut().assume_init_drop() };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hwrr_formats::{EventKind, Marker};
    use std::sync::Arc;

    /// Entries carry their number in the stamp here, to check the order they come out in.
    fn marker(n: u64, label: &str) -> Entry {
        let kind = EventKind::Marker(Marker {
            label: label.to_string(),
            data: None,
        });
        Entry::event(n, 0, 0, kind)
    }

    fn reset(n: u64) -> Entry {
        Entry::event(n, 0, 0, EventKind::Reset)
    }

    #[test]
    fn a_slot_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<Slot>(), 64);
    }

    #[test]
    fn capacity_rounds_up_to_a_power_of_two_of_at_least_two() {
        assert_eq!(EventQueue::new(0).capacity(), 2);
        assert_eq!(EventQueue::new(1).capacity(), 2);
        assert_eq!(EventQueue::new(5).capacity(), 8);
        assert_eq!(EventQueue::new(1 << 16).capacity(), 1 << 16);
    }

    #[test]
    fn events_come_out_in_claim_order_across_laps() {
        let q = EventQueue::new(4);
        let mut c = Consumer::new();
        for lap in 0..5u64 {
            for i in 0..4 {
                let p = q.claim().unwrap();
                assert_eq!(p, lap * 4 + i);
                assert!(matches!(q.fill(p, reset(p)), Pushed::Queued));
            }
            for i in 0..4 {
                assert_eq!(c.pop(&q).unwrap().t_ns(), lap * 4 + i);
            }
            assert!(c.pop(&q).is_none());
        }
        assert_eq!(q.stalls(), 0);
    }

    #[test]
    fn closing_counts_the_claims_before_and_refuses_the_rest() {
        let q = EventQueue::new(8);
        let p = q.claim().unwrap();
        assert_eq!(q.close(), 1);
        assert!(q.claim().is_none());
        // A position claimed before the close is still filled and drained.
        assert!(matches!(q.fill(p, marker(0, "late")), Pushed::Queued));
        let mut c = Consumer::new();
        assert_eq!(c.pop(&q).unwrap().t_ns(), 0);
        assert_eq!(q.claimed(), 1);
    }

    /// Events left in the ring (heap data included) are dropped with it, each exactly once.
    #[test]
    fn unread_events_are_dropped_with_the_queue() {
        let leaked = crate::alloc_count::live_bytes_change(|| {
            let q = EventQueue::new(4);
            // Two laps, so that slots hold events of the second lap.
            for i in 0..7 {
                let p = q.claim().unwrap();
                q.fill(p, marker(i, "heap-allocated label"));
                if i < 4 {
                    let mut c = Consumer { head: i, freed: 0 };
                    assert_eq!(c.pop(&q).unwrap().t_ns(), i);
                }
            }
            drop(q);
        });
        assert_eq!(leaked, 0);
    }

    /// Four producers push through a 4-slot ring into a slow consumer: every event arrives exactly
    /// once, each producer's in its own order, and the producers stalled.
    #[test]
    fn a_full_ring_blocks_producers_and_loses_nothing() {
        let q = Arc::new(EventQueue::new(4));
        let per_producer = 20_000u64;
        let consumer = {
            let q = q.clone();
            std::thread::spawn(move || {
                q.set_consumer(std::thread::current());
                let mut c = Consumer::new();
                let mut last = [None::<u64>; 4];
                let mut n = 0u64;
                while n < 4 * per_producer {
                    match c.pop(&q) {
                        Some(ev) => {
                            let producer = (ev.t_ns() >> 32) as usize;
                            let i = ev.t_ns() & 0xffff_ffff;
                            assert_eq!(last[producer].map_or(0, |l| l + 1), i);
                            last[producer] = Some(i);
                            n += 1;
                            if n % 1000 == 0 {
                                std::thread::sleep(Duration::from_micros(200));
                            }
                        }
                        None => {
                            c.release(&q);
                            c.wait(&q, Duration::from_millis(1));
                        }
                    }
                }
                n
            })
        };
        let producers: Vec<_> = (0..4u64)
            .map(|producer| {
                let q = q.clone();
                std::thread::spawn(move || {
                    for i in 0..per_producer {
                        let p = q.claim().unwrap();
                        let ev = reset(producer << 32 | i);
                        assert!(matches!(q.fill(p, ev), Pushed::Queued));
                    }
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        assert_eq!(consumer.join().unwrap(), 4 * per_producer);
        assert!(
            q.stalls() > 0,
            "a 4-slot ring with a sleeping consumer must fill"
        );
        assert_eq!(q.high_water(), 4);
    }

    #[test]
    fn producers_waiting_on_a_full_ring_give_up_when_the_consumer_is_gone() {
        let q = Arc::new(EventQueue::new(2));
        for i in 0..2 {
            let p = q.claim().unwrap();
            q.fill(p, reset(i));
        }
        let blocked = {
            let q = q.clone();
            std::thread::spawn(move || {
                let p = q.claim().unwrap();
                matches!(q.fill(p, reset(2)), Pushed::Closed)
            })
        };
        while q.stalls() == 0 {
            std::thread::yield_now();
        }
        q.consumer_gone();
        assert!(blocked.join().unwrap());
        assert!(q.claim().is_none());
    }
}
