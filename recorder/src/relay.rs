//! The interrupt relay: the tap registers its own eventfds with the backend; this thread waits on
//! them, logs each interrupt, and forwards it to the consumer's eventfd.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use hwrr_device::eventfd;
use hwrr_formats::{EventKind, Irq};

use crate::watch::WatchSet;
use crate::writer::RecorderHandle;

struct Route {
    index: u32,
    vector: u32,
    ours: OwnedFd,
    consumer: OwnedFd,
}

struct Inner {
    epoll: OwnedFd,
    wake: OwnedFd,
    routes: Mutex<HashMap<RawFd, Route>>,
    stop: AtomicBool,
}

/// Relays interrupts from the backend to the consumer, logging each one.
pub struct IrqRelay {
    inner: Arc<Inner>,
    thread: Option<JoinHandle<()>>,
}

fn epoll_ctl(epoll: &OwnedFd, op: libc::c_int, fd: RawFd) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: fd as u64,
    };
    // SAFETY: `ev` is a live epoll_event; both descriptors are open for the duration of the call.
    let r = unsafe { libc::epoll_ctl(epoll.as_raw_fd(), op, fd, &mut ev) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl IrqRelay {
    /// Starts the relay thread. With a watch set, memory the device wrote is diffed (and logged)
    /// before each interrupt is logged, so the `dma_write` precedes the `irq` in the stream.
    pub fn start(recorder: RecorderHandle, watch: Option<Arc<WatchSet>>) -> io::Result<Self> {
        // SAFETY: epoll_create1 takes no pointers; the result is checked before it is owned.
        let raw = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor owned by nobody else.
        let epoll = unsafe { OwnedFd::from_raw_fd(raw) };
        let wake = eventfd::create()?;
        epoll_ctl(&epoll, libc::EPOLL_CTL_ADD, wake.as_raw_fd())?;
        let inner = Arc::new(Inner {
            epoll,
            wake,
            routes: Mutex::new(HashMap::new()),
            stop: AtomicBool::new(false),
        });
        let worker = inner.clone();
        let thread = std::thread::Builder::new()
            .name("hwrr-irq-relay".into())
            .spawn(move || relay_loop(&worker, &recorder, watch.as_deref()))?;
        Ok(IrqRelay {
            inner,
            thread: Some(thread),
        })
    }

    /// Routes `index`/`vector`: returns the eventfd to hand to the backend in place of `consumer`.
    /// Replaces any earlier route for the vector.
    pub fn route(&self, index: u32, vector: u32, consumer: OwnedFd) -> io::Result<OwnedFd> {
        self.unroute(index, vector);
        let ours = eventfd::create()?;
        let for_backend = ours.try_clone()?;
        let fd = ours.as_raw_fd();
        let mut routes = self.inner.routes.lock().unwrap_or_else(|p| p.into_inner());
        epoll_ctl(&self.inner.epoll, libc::EPOLL_CTL_ADD, fd)?;
        routes.insert(
            fd,
            Route {
                index,
                vector,
                ours,
                consumer,
            },
        );
        Ok(for_backend)
    }

    /// Removes the route of `index`/`vector`, if any.
    pub fn unroute(&self, index: u32, vector: u32) {
        self.unroute_where(|r| r.index == index && r.vector == vector);
    }

    /// Removes every route of `index`.
    pub fn unroute_index(&self, index: u32) {
        self.unroute_where(|r| r.index == index);
    }

    fn unroute_where(&self, pred: impl Fn(&Route) -> bool) {
        let mut routes = self.inner.routes.lock().unwrap_or_else(|p| p.into_inner());
        let doomed: Vec<RawFd> = routes
            .iter()
            .filter(|(_, r)| pred(r))
            .map(|(fd, _)| *fd)
            .collect();
        for fd in doomed {
            // Failure only means the fd was never added; the route goes either way.
            let _ = epoll_ctl(&self.inner.epoll, libc::EPOLL_CTL_DEL, fd);
            routes.remove(&fd);
        }
    }
}

impl Drop for IrqRelay {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        // Waking the thread cannot fail in a way that matters here: it also polls with a timeout.
        let _ = eventfd::signal(&self.inner.wake);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn relay_loop(inner: &Inner, recorder: &RecorderHandle, watch: Option<&WatchSet>) {
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 16];
    while !inner.stop.load(Ordering::SeqCst) {
        // SAFETY: `events` is a live array of 16 epoll_events; the epoll fd is open.
        let n = unsafe {
            libc::epoll_wait(
                inner.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as i32,
                200,
            )
        };
        if n < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            tracing::error!(
                "irq relay: epoll_wait failed: {}",
                io::Error::last_os_error()
            );
            return;
        }
        for ev in &events[..n as usize] {
            let fd = ev.u64 as RawFd;
            if fd == inner.wake.as_raw_fd() {
                let _ = eventfd::drain(&inner.wake);
                continue;
            }
            let routes = inner.routes.lock().unwrap_or_else(|p| p.into_inner());
            let Some(route) = routes.get(&fd) else {
                continue;
            };
            let count = eventfd::drain(&route.ours).unwrap_or(0);
            if count > 0 {
                if let Some(w) = watch {
                    w.observe();
                }
            }
            for _ in 0..count {
                // Logged before it is forwarded, so the interrupt precedes whatever the guest does
                // in response.
                recorder.log(
                    EventKind::Irq(Irq {
                        index: route.index,
                        vector: route.vector,
                    }),
                    0,
                    0,
                );
                if let Err(e) = eventfd::signal(&route.consumer) {
                    tracing::warn!(
                        "irq relay: cannot signal the consumer's eventfd for index {} vector {}: {e}",
                        route.index,
                        route.vector
                    );
                }
            }
        }
    }
}
