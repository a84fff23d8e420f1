//! The exported C symbols (`open`, `ioctl`, `pread64`, ...) that `LD_PRELOAD` puts in front of libc.
//!
//! Every wrapper follows one pattern: calls made while the shim itself is working on this thread go
//! straight to the next definition (the shim opens trace files and log files through libc too);
//! calls about fds or paths the shim does not own take a lock-free fast path to the next definition;
//! the rest is handled under one lock inside `catch_unwind`, so a bug in the shim becomes an errno,
//! never a crash of QEMU.

use std::cell::Cell;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::os::fd::RawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::config::{vfio_hosts_in_cmdline, Config, Mode};
use crate::emulator::{report_json, Emulator, Errno, PathAnswer};
use crate::guest_ram;
use crate::log::Logger;
use crate::real;
use crate::record::Recording;
use crate::uapi;

thread_local! {
    static BUSY: Cell<bool> = const { Cell::new(false) };
}

/// The shim's state for the life of the process.
struct Shim {
    log: Arc<Logger>,
    report: Option<std::path::PathBuf>,
    replay: Option<Mutex<Emulator>>,
    record: Option<Mutex<Recording>>,
}

static SHIM: OnceLock<Option<Shim>> = OnceLock::new();

/// Fds the shim owns or watches, as a bitmap (fds below 65536): the fast path for everyone else.
static WATCHED: [AtomicU64; 1024] = [const { AtomicU64::new(0) }; 1024];
/// Set when a watched fd is 65536 or above: then every fd takes the slow path.
static WATCHED_HIGH: AtomicU64 = AtomicU64::new(0);

/// Marks `fd` as one the shim owns or watches.
pub(crate) fn watch(fd: RawFd) {
    if fd < 0 {
        return;
    }
    let fd = fd as usize;
    match WATCHED.get(fd / 64) {
        Some(w) => {
            w.fetch_or(1 << (fd % 64), Ordering::SeqCst);
        }
        None => {
            WATCHED_HIGH.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Forgets `fd`.
pub(crate) fn unwatch(fd: RawFd) {
    if fd < 0 {
        return;
    }
    let fd = fd as usize;
    if let Some(w) = WATCHED.get(fd / 64) {
        w.fetch_and(!(1 << (fd % 64)), Ordering::SeqCst);
    }
}

fn watched(fd: c_int) -> bool {
    if fd < 0 {
        return false;
    }
    let fd = fd as usize;
    match WATCHED.get(fd / 64) {
        Some(w) => w.load(Ordering::SeqCst) & (1 << (fd % 64)) != 0,
        None => WATCHED_HIGH.load(Ordering::SeqCst) > 0,
    }
}

/// Whether this code runs from a shared object (the preloaded `libhwrr_vfio.so`). A program that
/// links the rlib (the crate's own tests, a Rust program embedding the emulator) also defines these
/// symbols and so interposes its own libc calls: there the shim stays inert.
fn loaded_as_shared_object() -> bool {
    // SAFETY: an all-zero Dl_info is a valid value for dladdr to fill.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    let addr = loaded_as_shared_object as *const c_void;
    // SAFETY: dladdr reads the address and fills `info`; it returns 0 when it finds nothing.
    if unsafe { libc::dladdr(addr, &mut info) } == 0 || info.dli_fname.is_null() {
        return false;
    }
    // SAFETY: dli_fname is a NUL-terminated path owned by the dynamic linker.
    let name = unsafe { CStr::from_ptr(info.dli_fname) }.to_bytes();
    name.windows(3).any(|w| w == b".so")
}

fn init() -> Option<Shim> {
    if !loaded_as_shared_object() {
        return None;
    }
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hwrr-vfio: {e}; passing every call through");
            return None;
        }
    };
    let log = Arc::new(Logger::new(&config.log));
    match config.mode {
        Mode::Off => None,
        Mode::Replay => {
            let cmdline = std::fs::read("/proc/self/cmdline").unwrap_or_default();
            let hosts = vfio_hosts_in_cmdline(&cmdline);
            let emulator = Emulator::new(&config, &hosts, log.clone());
            for (bdf, group) in emulator.devices() {
                log.debug(|| format!("answering for {bdf} as IOMMU group {group}"));
            }
            register_exit_hook();
            Some(Shim {
                log,
                report: config.report.clone(),
                replay: Some(Mutex::new(emulator)),
                record: None,
            })
        }
        Mode::Record => {
            let recording = Recording::new(&config, log.clone());
            register_exit_hook();
            Some(Shim {
                log,
                report: None,
                replay: None,
                record: Some(Mutex::new(recording)),
            })
        }
    }
}

extern "C" fn at_exit() {
    let _ = catch_unwind(|| {
        BUSY.with(|b| b.set(true));
        finish();
    });
}

fn register_exit_hook() {
    // SAFETY: registers a plain extern "C" function with no captured state.
    unsafe { libc::atexit(at_exit) };
}

/// Writes the report (replay) or finishes the trace (record). Safe to call more than once.
fn finish() {
    let Some(Some(shim)) = SHIM.get() else {
        return;
    };
    if let Some(em) = &shim.replay {
        let em = em.lock().unwrap_or_else(|p| p.into_inner());
        if !em.was_used() {
            return;
        }
        let reports = em.reports();
        for (bdf, _, sessions) in &reports {
            if let Some(last) = sessions.last() {
                let c = &last.counters;
                shim.log.debug(|| {
                    format!(
                        "{bdf}: {} accesses, {} matched, {} skipped, {} inserted, {} fallbacks, {} irqs delivered, {} DMA writes applied{}",
                        c.accesses, c.matched, c.skipped, c.inserted, c.fallbacks, c.irqs_delivered, c.dma_writes_applied,
                        match &last.first_divergence {
                            Some(d) => format!("; DIVERGED at seq {}: {}", d.seq, d.reason),
                            None => String::new(),
                        }
                    )
                });
            }
        }
        if let Some(path) = &shim.report {
            let v = report_json(&reports);
            let text = serde_json::to_string_pretty(&v).unwrap_or_default() + "\n";
            if let Err(e) = std::fs::write(path, text) {
                shim.log
                    .warn(&format!("cannot write HWRR_REPORT={}: {e}", path.display()));
            }
        }
    }
    if let Some(rec) = &shim.record {
        let mut rec = rec.lock().unwrap_or_else(|p| p.into_inner());
        rec.finish();
    }
}

/// Runs `ours` with the shim's state, unless this thread is already inside the shim or the shim
/// is off; `pass` is the next definition. `ours` returns `None` to pass the call on. A panic in
/// `ours` gives `failed`.
fn intercept<R>(
    pass: impl FnOnce() -> R,
    ours: impl FnOnce(&Shim) -> Option<R>,
    failed: impl FnOnce() -> R,
) -> R {
    let busy = BUSY.try_with(|b| b.replace(true)).unwrap_or(true);
    if busy {
        return pass();
    }
    let outcome = catch_unwind(AssertUnwindSafe(|| match SHIM.get_or_init(init) {
        Some(shim) => ours(shim),
        None => None,
    }));
    let _ = BUSY.try_with(|b| b.set(false));
    match outcome {
        Ok(Some(r)) => r,
        Ok(None) => pass(),
        Err(_) => {
            eprintln!("hwrr-vfio: internal error (panic) handled; the call fails with EIO");
            failed()
        }
    }
}

fn set_errno(e: Errno) {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() = e };
}

fn fail_int() -> c_int {
    set_errno(libc::EIO);
    -1
}

fn fail_isize() -> isize {
    set_errno(libc::EIO);
    -1
}

fn int_result(r: Result<i32, Errno>) -> c_int {
    match r {
        Ok(v) => v,
        Err(e) => {
            set_errno(e);
            -1
        }
    }
}

fn size_result(r: Result<usize, Errno>) -> isize {
    match r {
        Ok(v) => v as isize,
        Err(e) => {
            set_errno(e);
            -1
        }
    }
}

fn missing_symbol_int() -> c_int {
    set_errno(libc::ENOSYS);
    -1
}

/// A path the shim may care about (a cheap filter before taking the lock).
///
/// # Safety
/// `path` must be null or a NUL-terminated string.
unsafe fn candidate_path<'a>(path: *const c_char) -> Option<&'a str> {
    if path.is_null() {
        return None;
    }
    // SAFETY: a NUL-terminated string by the caller's contract.
    let s = unsafe { CStr::from_ptr(path) }.to_str().ok()?;
    (s.starts_with("/dev/vfio") || s.starts_with("/sys/")).then_some(s)
}

fn path_answer(shim: &Shim, path: &str) -> Option<PathAnswer> {
    let em = shim.replay.as_ref()?;
    let em = em.lock().unwrap_or_else(|p| p.into_inner());
    em.path(path)
}

fn open_common(path: *const c_char, flags: c_int, pass: impl FnOnce() -> c_int) -> c_int {
    // SAFETY: `path` comes from the caller of open, a NUL-terminated string or null.
    let Some(p) = (unsafe { candidate_path(path) }) else {
        return pass();
    };
    intercept(
        pass,
        |shim| {
            if let Some(em) = &shim.replay {
                let mut em = em.lock().unwrap_or_else(|p| p.into_inner());
                let r = em.open(p)?;
                if let Ok(fd) = r {
                    watch(fd);
                }
                return Some(int_result(r));
            }
            if let Some(rec) = &shim.record {
                let mut rec = rec.lock().unwrap_or_else(|p| p.into_inner());
                return rec.open(p, flags);
            }
            None
        },
        fail_int,
    )
}

/// `open(2)`.
///
/// # Safety
/// The C contract of `open`.
#[no_mangle]
pub unsafe extern "C" fn open(path: *const c_char, flags: c_int, mode: libc::mode_t) -> c_int {
    open_common(path, flags, || match real::open() {
        // SAFETY: forwarding the caller's arguments unchanged.
        Some(f) => unsafe { f(path, flags, mode) },
        None => missing_symbol_int(),
    })
}

/// `open64(2)`.
///
/// # Safety
/// The C contract of `open64`.
#[no_mangle]
pub unsafe extern "C" fn open64(path: *const c_char, flags: c_int, mode: libc::mode_t) -> c_int {
    open_common(path, flags, || match real::open64() {
        // SAFETY: forwarding the caller's arguments unchanged.
        Some(f) => unsafe { f(path, flags, mode) },
        None => missing_symbol_int(),
    })
}

/// `__open_2` (fortified `open` without a mode).
///
/// # Safety
/// The C contract of `__open_2`.
#[no_mangle]
pub unsafe extern "C" fn __open_2(path: *const c_char, flags: c_int) -> c_int {
    open_common(path, flags, || match real::open_2() {
        // SAFETY: forwarding the caller's arguments unchanged.
        Some(f) => unsafe { f(path, flags) },
        None => missing_symbol_int(),
    })
}

/// `__open64_2` (fortified `open64` without a mode).
///
/// # Safety
/// The C contract of `__open64_2`.
#[no_mangle]
pub unsafe extern "C" fn __open64_2(path: *const c_char, flags: c_int) -> c_int {
    open_common(path, flags, || match real::open64_2() {
        // SAFETY: forwarding the caller's arguments unchanged.
        Some(f) => unsafe { f(path, flags) },
        None => missing_symbol_int(),
    })
}

/// Only absolute paths (or `AT_FDCWD`-relative absolute ones) can name the emulated files.
fn at_path_ok(dirfd: c_int, path: *const c_char) -> bool {
    // SAFETY: null-checked; a NUL-terminated string by the caller's contract.
    dirfd == libc::AT_FDCWD || (!path.is_null() && unsafe { *path } == b'/' as c_char)
}

/// `openat(2)`.
///
/// # Safety
/// The C contract of `openat`.
#[no_mangle]
pub unsafe extern "C" fn openat(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mode: libc::mode_t,
) -> c_int {
    let pass = || match real::openat() {
        // SAFETY: forwarding the caller's arguments unchanged.
        Some(f) => unsafe { f(dirfd, path, flags, mode) },
        None => missing_symbol_int(),
    };
    if !at_path_ok(dirfd, path) {
        return pass();
    }
    open_common(path, flags, pass)
}

/// `openat64(2)`.
///
/// # Safety
/// The C contract of `openat64`.
#[no_mangle]
pub unsafe extern "C" fn openat64(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mode: libc::mode_t,
) -> c_int {
    let pass = || match real::openat64() {
        // SAFETY: forwarding the caller's arguments unchanged.
        Some(f) => unsafe { f(dirfd, path, flags, mode) },
        None => missing_symbol_int(),
    };
    if !at_path_ok(dirfd, path) {
        return pass();
    }
    open_common(path, flags, pass)
}

/// `__openat_2`.
///
/// # Safety
/// The C contract of `__openat_2`.
#[no_mangle]
pub unsafe extern "C" fn __openat_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int {
    let pass = || match real::openat_2() {
        // SAFETY: forwarding the caller's arguments unchanged.
        Some(f) => unsafe { f(dirfd, path, flags) },
        None => missing_symbol_int(),
    };
    if !at_path_ok(dirfd, path) {
        return pass();
    }
    open_common(path, flags, pass)
}

/// `__openat64_2`.
///
/// # Safety
/// The C contract of `__openat64_2`.
#[no_mangle]
pub unsafe extern "C" fn __openat64_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int {
    let pass = || match real::openat64_2() {
        // SAFETY: forwarding the caller's arguments unchanged.
        Some(f) => unsafe { f(dirfd, path, flags) },
        None => missing_symbol_int(),
    };
    if !at_path_ok(dirfd, path) {
        return pass();
    }
    open_common(path, flags, pass)
}

/// `close(2)`.
///
/// # Safety
/// The C contract of `close`.
#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    let pass = || match real::close() {
        // SAFETY: forwarding the caller's argument unchanged.
        Some(f) => unsafe { f(fd) },
        None => missing_symbol_int(),
    };
    if !watched(fd) {
        return pass();
    }
    intercept(
        pass,
        |shim| {
            if let Some(em) = &shim.replay {
                let mut em = em.lock().unwrap_or_else(|p| p.into_inner());
                em.close(fd);
            }
            if let Some(rec) = &shim.record {
                let mut rec = rec.lock().unwrap_or_else(|p| p.into_inner());
                rec.close(fd);
            }
            unwatch(fd);
            // The placeholder (or the real kernel fd) is closed by the next definition.
            None
        },
        fail_int,
    )
}

/// `ioctl(2)`. The request's argument is taken as one pointer-sized value, which is how every
/// VFIO ioctl passes it (the x86-64 and aarch64 calling conventions pass it in the same register
/// whether or not the prototype is variadic).
///
/// # Safety
/// The C contract of `ioctl`.
#[no_mangle]
pub unsafe extern "C" fn ioctl(fd: c_int, request: libc::c_ulong, arg: *mut c_void) -> c_int {
    let pass = || match real::ioctl() {
        // SAFETY: forwarding the caller's arguments unchanged.
        Some(f) => unsafe { f(fd, request, arg) },
        None => missing_symbol_int(),
    };
    if !watched(fd) {
        return pass();
    }
    intercept(
        pass,
        |shim| {
            if let Some(em) = &shim.replay {
                let mut em = em.lock().unwrap_or_else(|p| p.into_inner());
                // SAFETY: the caller's ioctl contract, forwarded.
                let r = unsafe { em.ioctl(fd, request, arg) }?;
                if (request & 0xffff_ffff) == uapi::GROUP_GET_DEVICE_FD {
                    if let Ok(dev) = r {
                        watch(dev);
                    }
                }
                return Some(int_result(r));
            }
            if let Some(rec) = &shim.record {
                let mut rec = rec.lock().unwrap_or_else(|p| p.into_inner());
                // SAFETY: the caller's ioctl contract, forwarded.
                return unsafe { rec.ioctl(fd, request, arg) };
            }
            None
        },
        fail_int,
    )
}

fn pread_common(
    fd: c_int,
    buf: *mut c_void,
    count: usize,
    offset: i64,
    pass: impl FnOnce() -> isize,
) -> isize {
    if !watched(fd) || buf.is_null() {
        return pass();
    }
    intercept(
        pass,
        |shim| {
            // SAFETY: the caller gives `count` writable bytes at `buf` (pread's contract).
            let data = unsafe { std::slice::from_raw_parts_mut(buf as *mut u8, count) };
            if let Some(em) = &shim.replay {
                let mut em = em.lock().unwrap_or_else(|p| p.into_inner());
                return em.pread(fd, data, offset).map(size_result);
            }
            if let Some(rec) = &shim.record {
                let mut rec = rec.lock().unwrap_or_else(|p| p.into_inner());
                return rec.pread(fd, data, offset);
            }
            None
        },
        fail_isize,
    )
}

fn pwrite_common(
    fd: c_int,
    buf: *const c_void,
    count: usize,
    offset: i64,
    pass: impl FnOnce() -> isize,
) -> isize {
    if !watched(fd) || buf.is_null() {
        return pass();
    }
    intercept(
        pass,
        |shim| {
            // SAFETY: the caller gives `count` readable bytes at `buf` (pwrite's contract).
            let data = unsafe { std::slice::from_raw_parts(buf as *const u8, count) };
            if let Some(em) = &shim.replay {
                let mut em = em.lock().unwrap_or_else(|p| p.into_inner());
                return em.pwrite(fd, data, offset).map(size_result);
            }
            if let Some(rec) = &shim.record {
                let mut rec = rec.lock().unwrap_or_else(|p| p.into_inner());
                return rec.pwrite(fd, data, offset);
            }
            None
        },
        fail_isize,
    )
}

/// `pread(2)`.
///
/// # Safety
/// The C contract of `pread`.
#[no_mangle]
pub unsafe extern "C" fn pread(
    fd: c_int,
    buf: *mut c_void,
    count: usize,
    offset: libc::off_t,
) -> isize {
    pread_common(fd, buf, count, offset, || match real::pread() {
        // SAFETY: forwarding the caller's arguments unchanged.
        Some(f) => unsafe { f(fd, buf, count, offset) },
        None => missing_symbol_int() as isize,
    })
}

/// `pread64(2)`.
///
/// # Safety
/// The C contract of `pread64`.
#[no_mangle]
pub unsafe extern "C" fn pread64(
    fd: c_int,
    buf: *mut c_void,
    count: usize,
    offset: libc::off64_t,
) -> isize {
    pread_common(fd, buf, count, offset, || match real::pread64() {
        // SAFETY: forwarding the caller's arguments unchanged.
        Some(f) => unsafe { f(fd, buf, count, offset) },
        None => missing_symbol_int() as isize,
    })
}

/// `__pread_chk` (fortified `pread`: QEMU's vfio-pci reads config space through it).
///
/// # Safety
/// The C contract of `__pread_chk`.
#[no_mangle]
pub unsafe extern "C" fn __pread_chk(
    fd: c_int,
    buf: *mut c_void,
    count: usize,
    offset: libc::off_t,
    buflen: usize,
) -> isize {
    let pass = || match real::pread_chk() {
        // SAFETY: forwarding the caller's arguments unchanged (the next definition does the check).
        Some(f) => unsafe { f(fd, buf, count, offset, buflen) },
        None => missing_symbol_int() as isize,
    };
    if count > buflen {
        return pass();
    }
    pread_common(fd, buf, count, offset, pass)
}

/// `__pread64_chk` (fortified `pread64`).
///
/// # Safety
/// The C contract of `__pread64_chk`.
#[no_mangle]
pub unsafe extern "C" fn __pread64_chk(
    fd: c_int,
    buf: *mut c_void,
    count: usize,
    offset: libc::off64_t,
    buflen: usize,
) -> isize {
    let pass = || match real::pread64_chk() {
        // SAFETY: forwarding the caller's arguments unchanged (the next definition does the check).
        Some(f) => unsafe { f(fd, buf, count, offset, buflen) },
        None => missing_symbol_int() as isize,
    };
    if count > buflen {
        return pass();
    }
    pread_common(fd, buf, count, offset, pass)
}

/// `pwrite(2)`.
///
/// # Safety
/// The C contract of `pwrite`.
#[no_mangle]
pub unsafe extern "C" fn pwrite(
    fd: c_int,
    buf: *const c_void,
    count: usize,
    offset: libc::off_t,
) -> isize {
    pwrite_common(fd, buf, count, offset, || match real::pwrite() {
        // SAFETY: forwarding the caller's arguments unchanged.
        Some(f) => unsafe { f(fd, buf, count, offset) },
        None => missing_symbol_int() as isize,
    })
}

/// `pwrite64(2)`.
///
/// # Safety
/// The C contract of `pwrite64`.
#[no_mangle]
pub unsafe extern "C" fn pwrite64(
    fd: c_int,
    buf: *const c_void,
    count: usize,
    offset: libc::off64_t,
) -> isize {
    pwrite_common(fd, buf, count, offset, || match real::pwrite64() {
        // SAFETY: forwarding the caller's arguments unchanged.
        Some(f) => unsafe { f(fd, buf, count, offset) },
        None => missing_symbol_int() as isize,
    })
}

fn mmap_common(
    fd: c_int,
    len: usize,
    offset: i64,
    pass: impl FnOnce() -> *mut c_void,
) -> *mut c_void {
    if !watched(fd) {
        return pass();
    }
    intercept(
        pass,
        |shim| {
            if let Some(em) = &shim.replay {
                let em = em.lock().unwrap_or_else(|p| p.into_inner());
                em.kind(fd)?;
                // The shim never offers VFIO_REGION_INFO_FLAG_MMAP, so QEMU does not ask; if
                // something does, the kernel's answer for a region without mmap is EINVAL.
                shim.log.warn(&format!(
                    "mmap of emulated fd {fd} (offset {offset:#x}, {len} bytes) refused: EINVAL"
                ));
                set_errno(libc::EINVAL);
                return Some(libc::MAP_FAILED);
            }
            if let Some(rec) = &shim.record {
                let rec = rec.lock().unwrap_or_else(|p| p.into_inner());
                rec.note_mmap(fd, offset, len);
            }
            None
        },
        || {
            set_errno(libc::EIO);
            libc::MAP_FAILED
        },
    )
}

/// `mmap(2)`.
///
/// # Safety
/// The C contract of `mmap`.
#[no_mangle]
pub unsafe extern "C" fn mmap(
    addr: *mut c_void,
    len: usize,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    offset: libc::off_t,
) -> *mut c_void {
    mmap_common(fd, len, offset, || match real::mmap() {
        // SAFETY: forwarding the caller's arguments unchanged.
        Some(f) => unsafe { f(addr, len, prot, flags, fd, offset) },
        None => {
            set_errno(libc::ENOSYS);
            libc::MAP_FAILED
        }
    })
}

/// `mmap64(2)`.
///
/// # Safety
/// The C contract of `mmap64`.
#[no_mangle]
pub unsafe extern "C" fn mmap64(
    addr: *mut c_void,
    len: usize,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    offset: libc::off64_t,
) -> *mut c_void {
    mmap_common(fd, len, offset, || match real::mmap64() {
        // SAFETY: forwarding the caller's arguments unchanged.
        Some(f) => unsafe { f(addr, len, prot, flags, fd, offset) },
        None => {
            set_errno(libc::ENOSYS);
            libc::MAP_FAILED
        }
    })
}

/// `munmap(2)`. In record mode, a range a watch set reads (memory given to the device with
/// `VFIO_IOMMU_MAP_DMA`) is let go first; every other call costs one atomic load.
///
/// # Safety
/// The C contract of `munmap`.
#[no_mangle]
pub unsafe extern "C" fn munmap(addr: *mut c_void, len: usize) -> c_int {
    guest_ram::before_unmap(addr as u64, len as u64);
    match real::munmap() {
        // SAFETY: forwarding the caller's arguments unchanged.
        Some(f) => unsafe { f(addr, len) },
        None => missing_symbol_int(),
    }
}

/// Fills a `stat` buffer for an emulated path.
fn fill_stat(answer: &PathAnswer, buf: *mut libc::stat64) -> c_int {
    if buf.is_null() {
        set_errno(libc::EFAULT);
        return -1;
    }
    // SAFETY: an all-zero `stat64` is a valid value (plain integers).
    let mut st: libc::stat64 = unsafe { std::mem::zeroed() };
    st.st_mode = match answer {
        PathAnswer::Directory => libc::S_IFDIR | 0o755,
        PathAnswer::Symlink(_) => libc::S_IFLNK | 0o777,
        PathAnswer::CharDevice => libc::S_IFCHR | 0o600,
    };
    st.st_nlink = 1;
    st.st_blksize = 4096;
    // SAFETY: `buf` is non-null and points to a caller-provided `stat` buffer.
    unsafe { std::ptr::write_unaligned(buf, st) };
    0
}

fn stat_common(
    path: *const c_char,
    follow: bool,
    buf: *mut libc::stat64,
    pass: impl FnOnce() -> c_int,
) -> c_int {
    // SAFETY: a NUL-terminated string or null, by the caller's contract.
    let Some(p) = (unsafe { candidate_path(path) }) else {
        return pass();
    };
    intercept(
        pass,
        |shim| {
            let answer = path_answer(shim, p)?;
            let answer = match (&answer, follow) {
                // Following the iommu_group link lands in the group directory.
                (PathAnswer::Symlink(_), true) => PathAnswer::Directory,
                _ => answer,
            };
            Some(fill_stat(&answer, buf))
        },
        fail_int,
    )
}

macro_rules! stat_wrappers {
    ($($name:ident => $real:ident, follow $follow:expr;)*) => {$(
        #[doc = concat!("`", stringify!($name), "(2)`.")]
        ///
        /// # Safety
        /// The C contract of the function of that name.
        #[no_mangle]
        pub unsafe extern "C" fn $name(path: *const c_char, buf: *mut libc::stat64) -> c_int {
            stat_common(path, $follow, buf, || match real::$real() {
                // SAFETY: forwarding the caller's arguments unchanged.
                Some(f) => unsafe { f(path, buf) },
                None => missing_symbol_int(),
            })
        }
    )*};
}

stat_wrappers! {
    stat => stat, follow true;
    stat64 => stat64, follow true;
    lstat => lstat, follow false;
    lstat64 => lstat64, follow false;
}

macro_rules! xstat_wrappers {
    ($($name:ident => $real:ident, follow $follow:expr;)*) => {$(
        #[doc = concat!("`", stringify!($name), "` (glibc < 2.33 stat entry point).")]
        ///
        /// # Safety
        /// The C contract of the function of that name.
        #[no_mangle]
        pub unsafe extern "C" fn $name(ver: c_int, path: *const c_char, buf: *mut libc::stat64) -> c_int {
            stat_common(path, $follow, buf, || match real::$real() {
                // SAFETY: forwarding the caller's arguments unchanged.
                Some(f) => unsafe { f(ver, path, buf) },
                None => missing_symbol_int(),
            })
        }
    )*};
}

xstat_wrappers! {
    __xstat => xstat, follow true;
    __xstat64 => xstat64, follow true;
    __lxstat => lxstat, follow false;
    __lxstat64 => lxstat64, follow false;
}

/// `fstatat(2)`.
///
/// # Safety
/// The C contract of `fstatat`.
#[no_mangle]
pub unsafe extern "C" fn fstatat(
    dirfd: c_int,
    path: *const c_char,
    buf: *mut libc::stat64,
    flags: c_int,
) -> c_int {
    let pass = || match real::fstatat() {
        // SAFETY: forwarding the caller's arguments unchanged.
        Some(f) => unsafe { f(dirfd, path, buf, flags) },
        None => missing_symbol_int(),
    };
    if !at_path_ok(dirfd, path) {
        return pass();
    }
    stat_common(path, flags & libc::AT_SYMLINK_NOFOLLOW == 0, buf, pass)
}

/// `fstatat64(2)`.
///
/// # Safety
/// The C contract of `fstatat64`.
#[no_mangle]
pub unsafe extern "C" fn fstatat64(
    dirfd: c_int,
    path: *const c_char,
    buf: *mut libc::stat64,
    flags: c_int,
) -> c_int {
    let pass = || match real::fstatat64() {
        // SAFETY: forwarding the caller's arguments unchanged.
        Some(f) => unsafe { f(dirfd, path, buf, flags) },
        None => missing_symbol_int(),
    };
    if !at_path_ok(dirfd, path) {
        return pass();
    }
    stat_common(path, flags & libc::AT_SYMLINK_NOFOLLOW == 0, buf, pass)
}

/// `statx(2)`.
///
/// # Safety
/// The C contract of `statx`.
#[no_mangle]
pub unsafe extern "C" fn statx(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mask: libc::c_uint,
    buf: *mut libc::statx,
) -> c_int {
    let pass = || match real::statx() {
        // SAFETY: forwarding the caller's arguments unchanged.
        Some(f) => unsafe { f(dirfd, path, flags, mask, buf) },
        None => missing_symbol_int(),
    };
    if !at_path_ok(dirfd, path) {
        return pass();
    }
    // SAFETY: a NUL-terminated string or null, by the caller's contract.
    let Some(p) = (unsafe { candidate_path(path) }) else {
        return pass();
    };
    let follow = flags & libc::AT_SYMLINK_NOFOLLOW == 0;
    intercept(
        pass,
        |shim| {
            let answer = path_answer(shim, p)?;
            if buf.is_null() {
                set_errno(libc::EFAULT);
                return Some(-1);
            }
            // SAFETY: an all-zero `statx` is a valid value.
            let mut st: libc::statx = unsafe { std::mem::zeroed() };
            st.stx_mask = libc::STATX_TYPE | libc::STATX_MODE;
            st.stx_mode = match (&answer, follow) {
                (PathAnswer::Symlink(_), true) | (PathAnswer::Directory, _) => {
                    (libc::S_IFDIR | 0o755) as u16
                }
                (PathAnswer::Symlink(_), false) => (libc::S_IFLNK | 0o777) as u16,
                (PathAnswer::CharDevice, _) => (libc::S_IFCHR | 0o600) as u16,
            };
            st.stx_nlink = 1;
            // SAFETY: non-null caller-provided buffer.
            unsafe { std::ptr::write_unaligned(buf, st) };
            Some(0)
        },
        fail_int,
    )
}

/// `access(2)`.
///
/// # Safety
/// The C contract of `access`.
#[no_mangle]
pub unsafe extern "C" fn access(path: *const c_char, mode: c_int) -> c_int {
    let pass = || match real::access() {
        // SAFETY: forwarding the caller's arguments unchanged.
        Some(f) => unsafe { f(path, mode) },
        None => missing_symbol_int(),
    };
    // SAFETY: a NUL-terminated string or null, by the caller's contract.
    let Some(p) = (unsafe { candidate_path(path) }) else {
        return pass();
    };
    intercept(pass, |shim| path_answer(shim, p).map(|_| 0), fail_int)
}

/// `faccessat(2)`.
///
/// # Safety
/// The C contract of `faccessat`.
#[no_mangle]
pub unsafe extern "C" fn faccessat(
    dirfd: c_int,
    path: *const c_char,
    mode: c_int,
    flags: c_int,
) -> c_int {
    let pass = || match real::faccessat() {
        // SAFETY: forwarding the caller's arguments unchanged.
        Some(f) => unsafe { f(dirfd, path, mode, flags) },
        None => missing_symbol_int(),
    };
    if !at_path_ok(dirfd, path) {
        return pass();
    }
    // SAFETY: a NUL-terminated string or null, by the caller's contract.
    let Some(p) = (unsafe { candidate_path(path) }) else {
        return pass();
    };
    intercept(pass, |shim| path_answer(shim, p).map(|_| 0), fail_int)
}

fn readlink_common(
    path: *const c_char,
    buf: *mut c_char,
    size: usize,
    pass: impl FnOnce() -> isize,
) -> isize {
    // SAFETY: a NUL-terminated string or null, by the caller's contract.
    let Some(p) = (unsafe { candidate_path(path) }) else {
        return pass();
    };
    intercept(
        pass,
        |shim| {
            let answer = path_answer(shim, p)?;
            let PathAnswer::Symlink(target) = answer else {
                set_errno(libc::EINVAL);
                return Some(-1);
            };
            if buf.is_null() {
                set_errno(libc::EFAULT);
                return Some(-1);
            }
            // readlink truncates silently and does not NUL-terminate.
            let n = target.len().min(size);
            // SAFETY: the caller gives `size` writable bytes at `buf`; n <= size.
            unsafe { std::ptr::copy_nonoverlapping(target.as_ptr(), buf as *mut u8, n) };
            Some(n as isize)
        },
        fail_isize,
    )
}

/// `readlink(2)`.
///
/// # Safety
/// The C contract of `readlink`.
#[no_mangle]
pub unsafe extern "C" fn readlink(path: *const c_char, buf: *mut c_char, size: usize) -> isize {
    readlink_common(path, buf, size, || match real::readlink() {
        // SAFETY: forwarding the caller's arguments unchanged.
        Some(f) => unsafe { f(path, buf, size) },
        None => missing_symbol_int() as isize,
    })
}

/// `readlinkat(2)`.
///
/// # Safety
/// The C contract of `readlinkat`.
#[no_mangle]
pub unsafe extern "C" fn readlinkat(
    dirfd: c_int,
    path: *const c_char,
    buf: *mut c_char,
    size: usize,
) -> isize {
    let pass = || match real::readlinkat() {
        // SAFETY: forwarding the caller's arguments unchanged.
        Some(f) => unsafe { f(dirfd, path, buf, size) },
        None => missing_symbol_int() as isize,
    };
    if !at_path_ok(dirfd, path) {
        return pass();
    }
    readlink_common(path, buf, size, pass)
}

/// `__readlink_chk` (fortified `readlink`).
///
/// # Safety
/// The C contract of `__readlink_chk`.
#[no_mangle]
pub unsafe extern "C" fn __readlink_chk(
    path: *const c_char,
    buf: *mut c_char,
    size: usize,
    buflen: usize,
) -> isize {
    let pass = || match real::readlink_chk() {
        // SAFETY: forwarding the caller's arguments unchanged (the next definition does the check).
        Some(f) => unsafe { f(path, buf, size, buflen) },
        None => missing_symbol_int() as isize,
    };
    if size > buflen {
        return pass();
    }
    readlink_common(path, buf, size, pass)
}

/// `__readlinkat_chk` (fortified `readlinkat`).
///
/// # Safety
/// The C contract of `__readlinkat_chk`.
#[no_mangle]
pub unsafe extern "C" fn __readlinkat_chk(
    dirfd: c_int,
    path: *const c_char,
    buf: *mut c_char,
    size: usize,
    buflen: usize,
) -> isize {
    let pass = || match real::readlinkat_chk() {
        // SAFETY: forwarding the caller's arguments unchanged (the next definition does the check).
        Some(f) => unsafe { f(dirfd, path, buf, size, buflen) },
        None => missing_symbol_int() as isize,
    };
    if size > buflen || !at_path_ok(dirfd, path) {
        return pass();
    }
    readlink_common(path, buf, size, pass)
}

/// `__realpath_chk` (fortified `realpath`; QEMU's vfio-pci resolves `<sysfsdev>/subsystem` with it).
///
/// # Safety
/// The C contract of `__realpath_chk`.
#[no_mangle]
pub unsafe extern "C" fn __realpath_chk(
    path: *const c_char,
    resolved: *mut c_char,
    resolvedlen: usize,
) -> *mut c_char {
    let pass = || match real::realpath_chk() {
        // SAFETY: forwarding the caller's arguments unchanged (the next definition does the check).
        Some(f) => unsafe { f(path, resolved, resolvedlen) },
        None => {
            set_errno(libc::ENOSYS);
            std::ptr::null_mut()
        }
    };
    if !resolved.is_null() && resolvedlen < libc::PATH_MAX as usize {
        return pass();
    }
    realpath_common(path, resolved, pass)
}

/// `realpath(3)`.
///
/// # Safety
/// The C contract of `realpath`.
#[no_mangle]
pub unsafe extern "C" fn realpath(path: *const c_char, resolved: *mut c_char) -> *mut c_char {
    let pass = || match real::realpath() {
        // SAFETY: forwarding the caller's arguments unchanged.
        Some(f) => unsafe { f(path, resolved) },
        None => {
            set_errno(libc::ENOSYS);
            std::ptr::null_mut()
        }
    };
    realpath_common(path, resolved, pass)
}

fn realpath_common(
    path: *const c_char,
    resolved: *mut c_char,
    pass: impl FnOnce() -> *mut c_char,
) -> *mut c_char {
    // SAFETY: a NUL-terminated string or null, by the caller's contract.
    let Some(p) = (unsafe { candidate_path(path) }) else {
        return pass();
    };
    intercept(
        pass,
        |shim| {
            let em = shim.replay.as_ref()?;
            let canonical = em.lock().unwrap_or_else(|p| p.into_inner()).realpath(p)?;
            let bytes = canonical.as_bytes();
            if bytes.len() + 1 > libc::PATH_MAX as usize {
                set_errno(libc::ENAMETOOLONG);
                return Some(std::ptr::null_mut());
            }
            let out = if resolved.is_null() {
                // SAFETY: malloc of a small size; the caller frees it, as realpath's contract says.
                let p = unsafe { libc::malloc(bytes.len() + 1) } as *mut c_char;
                if p.is_null() {
                    set_errno(libc::ENOMEM);
                    return Some(std::ptr::null_mut());
                }
                p
            } else {
                resolved
            };
            // SAFETY: `out` holds PATH_MAX bytes (caller's buffer) or bytes.len()+1 (malloc).
            unsafe {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), out as *mut u8, bytes.len());
                *out.add(bytes.len()) = 0;
            }
            Some(out)
        },
        || {
            set_errno(libc::EIO);
            std::ptr::null_mut()
        },
    )
}
