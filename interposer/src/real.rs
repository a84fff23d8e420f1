//! The next definitions of the wrapped symbols (`dlsym(RTLD_NEXT)`), so the shim stacks with other
//! preloaded libraries (libs2e wraps `open` and `ioctl` for `/dev/kvm`) and with libc.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A lazily resolved next definition of one symbol.
pub struct NextSymbol {
    name: &'static CStr,
    /// glibc version to try with `dlvsym` when the default version is missing (`__xstat` is a
    /// compat-only symbol in glibc >= 2.33).
    version: Option<&'static CStr>,
    addr: AtomicUsize,
}

impl NextSymbol {
    /// A symbol resolved on first use.
    pub const fn new(name: &'static CStr, version: Option<&'static CStr>) -> Self {
        NextSymbol {
            name,
            version,
            addr: AtomicUsize::new(0),
        }
    }

    /// The address of the next definition, or `None` when no later object defines it.
    pub fn get(&self) -> Option<usize> {
        let cached = self.addr.load(Ordering::Acquire);
        if cached != 0 {
            return Some(cached);
        }
        // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name; it returns null or an address.
        let mut p = unsafe { libc::dlsym(libc::RTLD_NEXT, self.name.as_ptr()) };
        if p.is_null() {
            if let Some(v) = self.version {
                // SAFETY: as above, with a NUL-terminated version string.
                p = unsafe { libc::dlvsym(libc::RTLD_NEXT, self.name.as_ptr(), v.as_ptr()) };
            }
        }
        if p.is_null() {
            return None;
        }
        self.addr.store(p as usize, Ordering::Release);
        Some(p as usize)
    }
}

/// Declares the next definitions and a typed accessor for each.
macro_rules! next_symbols {
    ($( $fn_name:ident : $sym:literal $(@ $ver:literal)? => fn($($arg:ty),*) -> $ret:ty; )*) => {
        $(
            #[doc = concat!("The next `", $sym, "`.")]
            pub fn $fn_name() -> Option<unsafe extern "C" fn($($arg),*) -> $ret> {
                static SYM: NextSymbol = NextSymbol::new(
                    // A literal with the trailing NUL added here: the check cannot fail.
                    match CStr::from_bytes_with_nul(concat!($sym, "\0").as_bytes()) {
                        Ok(c) => c,
                        Err(_) => panic!("symbol name"),
                    },
                    next_symbols!(@ver $($ver)?),
                );
                // SAFETY: the address is the next definition of this very C function, whose
                // prototype is the one declared here.
                SYM.get().map(|a| unsafe {
                    std::mem::transmute::<usize, unsafe extern "C" fn($($arg),*) -> $ret>(a)
                })
            }
        )*
    };
    (@ver) => { None };
    (@ver $v:literal) => {
        match CStr::from_bytes_with_nul(concat!($v, "\0").as_bytes()) {
            Ok(c) => Some(c),
            Err(_) => panic!("version name"),
        }
    };
}

type Stat = libc::stat64;

next_symbols! {
    open: "open" => fn(*const c_char, c_int, libc::mode_t) -> c_int;
    open64: "open64" => fn(*const c_char, c_int, libc::mode_t) -> c_int;
    openat: "openat" => fn(c_int, *const c_char, c_int, libc::mode_t) -> c_int;
    openat64: "openat64" => fn(c_int, *const c_char, c_int, libc::mode_t) -> c_int;
    open_2: "__open_2" => fn(*const c_char, c_int) -> c_int;
    open64_2: "__open64_2" => fn(*const c_char, c_int) -> c_int;
    openat_2: "__openat_2" => fn(c_int, *const c_char, c_int) -> c_int;
    openat64_2: "__openat64_2" => fn(c_int, *const c_char, c_int) -> c_int;
    close: "close" => fn(c_int) -> c_int;
    ioctl: "ioctl" => fn(c_int, libc::c_ulong, *mut c_void) -> c_int;
    pread: "pread" => fn(c_int, *mut c_void, usize, libc::off_t) -> isize;
    pread64: "pread64" => fn(c_int, *mut c_void, usize, libc::off64_t) -> isize;
    pread_chk: "__pread_chk" => fn(c_int, *mut c_void, usize, libc::off_t, usize) -> isize;
    pread64_chk: "__pread64_chk" => fn(c_int, *mut c_void, usize, libc::off64_t, usize) -> isize;
    pwrite: "pwrite" => fn(c_int, *const c_void, usize, libc::off_t) -> isize;
    pwrite64: "pwrite64" => fn(c_int, *const c_void, usize, libc::off64_t) -> isize;
    mmap: "mmap" => fn(*mut c_void, usize, c_int, c_int, c_int, libc::off_t) -> *mut c_void;
    mmap64: "mmap64" => fn(*mut c_void, usize, c_int, c_int, c_int, libc::off64_t) -> *mut c_void;
    munmap: "munmap" => fn(*mut c_void, usize) -> c_int;
    stat: "stat" => fn(*const c_char, *mut Stat) -> c_int;
    stat64: "stat64" => fn(*const c_char, *mut Stat) -> c_int;
    lstat: "lstat" => fn(*const c_char, *mut Stat) -> c_int;
    lstat64: "lstat64" => fn(*const c_char, *mut Stat) -> c_int;
    fstatat: "fstatat" => fn(c_int, *const c_char, *mut Stat, c_int) -> c_int;
    fstatat64: "fstatat64" => fn(c_int, *const c_char, *mut Stat, c_int) -> c_int;
    xstat: "__xstat" @ "GLIBC_2.2.5" => fn(c_int, *const c_char, *mut Stat) -> c_int;
    xstat64: "__xstat64" @ "GLIBC_2.2.5" => fn(c_int, *const c_char, *mut Stat) -> c_int;
    lxstat: "__lxstat" @ "GLIBC_2.2.5" => fn(c_int, *const c_char, *mut Stat) -> c_int;
    lxstat64: "__lxstat64" @ "GLIBC_2.2.5" => fn(c_int, *const c_char, *mut Stat) -> c_int;
    statx: "statx" => fn(c_int, *const c_char, c_int, libc::c_uint, *mut libc::statx) -> c_int;
    access: "access" => fn(*const c_char, c_int) -> c_int;
    faccessat: "faccessat" => fn(c_int, *const c_char, c_int, c_int) -> c_int;
    readlink: "readlink" => fn(*const c_char, *mut c_char, usize) -> isize;
    readlinkat: "readlinkat" => fn(c_int, *const c_char, *mut c_char, usize) -> isize;
    readlink_chk: "__readlink_chk" => fn(*const c_char, *mut c_char, usize, usize) -> isize;
    readlinkat_chk: "__readlinkat_chk" => fn(c_int, *const c_char, *mut c_char, usize, usize) -> isize;
    realpath_chk: "__realpath_chk" => fn(*const c_char, *mut c_char, usize) -> *mut c_char;
    realpath: "realpath" => fn(*const c_char, *mut c_char) -> *mut c_char;
}
