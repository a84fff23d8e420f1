//! Guest memory as the device sees it: by IOVA, through mappings.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, RwLock};

use crate::{dma_flags, DeviceError, Result};

/// The device's way into guest memory (DMA).
pub trait GuestMemory: Send + Sync {
    /// Reads `buf.len()` bytes at `iova`.
    fn read(&self, iova: u64, buf: &mut [u8]) -> Result<()>;
    /// Writes `data` at `iova`.
    fn write(&self, iova: u64, data: &[u8]) -> Result<()>;
}

/// A range of memory mapped into this process: a VMM's shared guest RAM (vfio-user `DMA_MAP` with an
/// fd) or memory the process already has (the interposer's view of QEMU's RAM).
#[derive(Debug)]
pub struct MappedMemory {
    ptr: *mut u8,
    len: usize,
    unmap_on_drop: bool,
    fd: Option<OwnedFd>,
    fd_offset: u64,
}

// SAFETY: the mapping is plain memory shared with another agent (the VMM); every access goes through
// bounds-checked copies, so moving the handle across threads is sound.
unsafe impl Send for MappedMemory {}
// SAFETY: as above; concurrent copies into shared guest RAM are what a device does to memory the
// guest also uses, and carry no Rust references into it.
unsafe impl Sync for MappedMemory {}

impl MappedMemory {
    /// Maps `len` bytes of `fd` at `offset` shared, readable and (if `writable`) writable.
    pub fn map_fd(fd: OwnedFd, offset: u64, len: usize, writable: bool) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty mapping"));
        }
        let off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        // SAFETY: a fresh shared mapping chosen by the kernel; the fd is valid for the call and the
        // result is checked against MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                off,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(MappedMemory {
            ptr: ptr.cast(),
            len,
            unmap_on_drop: true,
            fd: Some(fd),
            fd_offset: offset,
        })
    }

    /// Anonymous private memory of `len` bytes, zeroed (tests, the demo's guest RAM).
    pub fn anonymous(len: usize) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty mapping"));
        }
        // SAFETY: a fresh anonymous mapping; the result is checked against MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(MappedMemory {
            ptr: ptr.cast(),
            len,
            unmap_on_drop: true,
            fd: None,
            fd_offset: 0,
        })
    }

    /// Wraps memory this process already has, without taking ownership.
    ///
    /// # Safety
    /// `ptr..ptr+len` must stay mapped and readable (and writable, if written through this handle)
    /// for the life of the returned value.
    pub unsafe fn from_raw(ptr: *mut u8, len: usize) -> Self {
        MappedMemory {
            ptr,
            len,
            unmap_on_drop: false,
            fd: None,
            fd_offset: 0,
        }
    }

    /// Start of the mapping in this process.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an empty mapping (never constructed by this type's safe constructors).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The file descriptor behind the mapping, when there is one.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(|f| f.as_fd())
    }

    /// Offset of the mapping in its file.
    pub fn fd_offset(&self) -> u64 {
        self.fd_offset
    }

    fn check(&self, offset: u64, len: usize) -> Result<usize> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.len as u64 => Ok(offset as usize),
            _ => Err(DeviceError::DmaFault {
                iova: offset,
                len: len as u64,
                detail: format!(": beyond a {}-byte mapping", self.len),
            }),
        }
    }

    /// Copies out `buf.len()` bytes at `offset` into the mapping.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let off = self.check(offset, buf.len())?;
        // SAFETY: the range was bounds-checked against the live mapping; `buf` is a distinct Rust
        // buffer, so the ranges cannot overlap.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(off), buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Copies `data` into the mapping at `offset`.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        let off = self.check(offset, data.len())?;
        // SAFETY: bounds-checked against the live, writable mapping; `data` is a distinct buffer.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(off), data.len()) };
        Ok(())
    }
}

impl Drop for MappedMemory {
    fn drop(&mut self) {
        if self.unmap_on_drop {
            // SAFETY: the mapping was created by mmap in this type with this length and is unmapped
            // exactly once, here.
            unsafe { libc::munmap(self.ptr.cast(), self.len) };
        }
    }
}

#[derive(Debug, Clone)]
enum Backing {
    Mapped(Arc<MappedMemory>),
    Local(Arc<Mutex<Vec<u8>>>),
    /// Known to the device but reachable only through the frontend (vfio-user DMA_READ/WRITE).
    Remote,
}

#[derive(Debug, Clone)]
struct Mapping {
    len: u64,
    flags: u32,
    backing: Backing,
}

/// A table of DMA mappings by IOVA, each backed by mapped memory, by a local buffer, or by nothing
/// this process can touch ("remote": the frontend must move the bytes).
#[derive(Debug, Default)]
pub struct SparseMemory {
    map: RwLock<BTreeMap<u64, Mapping>>,
}

/// Where a DMA access landed, for frontends that must move remote bytes themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    /// Backed by memory in this process.
    Local,
    /// Only the frontend can reach it.
    Remote,
}

impl SparseMemory {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    fn insert(&self, iova: u64, len: u64, flags: u32, backing: Backing) -> Result<()> {
        let end = iova.checked_add(len).filter(|_| len > 0).ok_or_else(|| {
            DeviceError::Invalid(format!(
                "DMA mapping of {len} bytes at {iova:#x} wraps or is empty"
            ))
        })?;
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        if let Some((&s, m)) = map.range(..end).next_back() {
            if s + m.len > iova {
                return Err(DeviceError::Invalid(format!(
                    "DMA mapping {iova:#x}+{len:#x} overlaps {s:#x}+{:#x}",
                    m.len
                )));
            }
        }
        map.insert(
            iova,
            Mapping {
                len,
                flags,
                backing,
            },
        );
        Ok(())
    }

    /// Adds a mapping backed by memory mapped into this process.
    pub fn add_mapped(&self, iova: u64, flags: u32, memory: Arc<MappedMemory>) -> Result<()> {
        let len = memory.len() as u64;
        self.insert(iova, len, flags, Backing::Mapped(memory))
    }

    /// Adds a zero-filled mapping backed by a local buffer.
    pub fn add_local(&self, iova: u64, len: u64, flags: u32) -> Result<()> {
        let size = usize::try_from(len)
            .map_err(|_| DeviceError::Invalid(format!("mapping of {len} bytes is too large")))?;
        self.insert(
            iova,
            len,
            flags,
            Backing::Local(Arc::new(Mutex::new(vec![0; size]))),
        )
    }

    /// Adds a mapping that only the frontend can reach.
    pub fn add_remote(&self, iova: u64, len: u64, flags: u32) -> Result<()> {
        self.insert(iova, len, flags, Backing::Remote)
    }

    /// Removes the mapping that starts at `iova` with length `len`. Returns whether one was removed.
    pub fn remove(&self, iova: u64, len: u64) -> bool {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        match map.get(&iova) {
            Some(m) if m.len == len => {
                map.remove(&iova);
                true
            }
            _ => false,
        }
    }

    /// Removes every mapping inside `iova..iova+len`; returns how many.
    pub fn remove_range(&self, iova: u64, len: u64) -> usize {
        let end = iova.saturating_add(len);
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        let doomed: Vec<u64> = map
            .range(iova..end)
            .filter(|(s, m)| s.saturating_add(m.len) <= end)
            .map(|(s, _)| *s)
            .collect();
        for s in &doomed {
            map.remove(s);
        }
        doomed.len()
    }

    /// Removes every mapping.
    pub fn clear(&self) {
        self.map.write().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// The mappings as `(iova, len, flags)`, in IOVA order.
    pub fn mappings(&self) -> Vec<(u64, u64, u32)> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(s, m)| (*s, m.len, m.flags)).collect()
    }

    /// Whether `iova..iova+len` lies inside one mapping, and how it is backed.
    pub fn resolve(&self, iova: u64, len: u64) -> Option<Resolved> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        let (s, m) = map.range(..=iova).next_back()?;
        let end = iova.checked_add(len)?;
        if end > s + m.len {
            return None;
        }
        Some(match m.backing {
            Backing::Remote => Resolved::Remote,
            _ => Resolved::Local,
        })
    }

    fn access(
        &self,
        iova: u64,
        len: usize,
        need: u32,
        mut f: impl FnMut(&Backing, u64, usize, usize) -> Result<()>,
    ) -> Result<()> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        let mut done = 0usize;
        while done < len {
            let at = iova.checked_add(done as u64).ok_or(DeviceError::DmaFault {
                iova,
                len: len as u64,
                detail: ": address wraps".into(),
            })?;
            let fault = || DeviceError::DmaFault {
                iova: at,
                len: (len - done) as u64,
                detail: String::new(),
            };
            let (s, m) = map.range(..=at).next_back().ok_or_else(fault)?;
            if at >= s + m.len {
                return Err(fault());
            }
            if m.flags & need != need {
                return Err(DeviceError::DmaFault {
                    iova: at,
                    len: (len - done) as u64,
                    detail: ": mapping lacks the permission".into(),
                });
            }
            let off = at - s;
            let n = ((m.len - off).min((len - done) as u64)) as usize;
            f(&m.backing, off, done, n)?;
            done += n;
        }
        Ok(())
    }
}

impl GuestMemory for SparseMemory {
    fn read(&self, iova: u64, buf: &mut [u8]) -> Result<()> {
        let len = buf.len();
        self.access(iova, len, dma_flags::READ, |b, off, at, n| match b {
            Backing::Mapped(m) => m.read(off, &mut buf[at..at + n]),
            Backing::Local(v) => {
                let v = v.lock().unwrap_or_else(|p| p.into_inner());
                buf[at..at + n].copy_from_slice(&v[off as usize..off as usize + n]);
                Ok(())
            }
            Backing::Remote => Err(DeviceError::Unsupported(
                "DMA to a mapping without memory needs the frontend".into(),
            )),
        })
    }

    fn write(&self, iova: u64, data: &[u8]) -> Result<()> {
        self.access(
            iova,
            data.len(),
            dma_flags::WRITE,
            |b, off, at, n| match b {
                Backing::Mapped(m) => m.write(off, &data[at..at + n]),
                Backing::Local(v) => {
                    let mut v = v.lock().unwrap_or_else(|p| p.into_inner());
                    v[off as usize..off as usize + n].copy_from_slice(&data[at..at + n]);
                    Ok(())
                }
                Backing::Remote => Err(DeviceError::Unsupported(
                    "DMA to a mapping without memory needs the frontend".into(),
                )),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_memory_reads_writes_across_mappings() {
        let m = SparseMemory::new();
        m.add_local(0x1000, 0x1000, 3).unwrap();
        m.add_local(0x2000, 0x1000, 3).unwrap();
        assert!(m.add_local(0x1800, 0x100, 3).is_err());
        m.write(0x1ffe, &[1, 2, 3, 4]).unwrap();
        let mut b = [0u8; 4];
        m.read(0x1ffe, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4]);
        assert!(m.read(0x2ffe, &mut b).is_err());
        assert!(m.read(0x500, &mut b).is_err());
        assert_eq!(m.remove_range(0, u64::MAX), 2);
        assert!(m.read(0x1000, &mut b).is_err());
    }

    #[test]
    fn permissions_are_enforced() {
        let m = SparseMemory::new();
        m.add_local(0, 0x1000, dma_flags::READ).unwrap();
        assert!(m.write(0, &[1]).is_err());
        let mut b = [0u8; 1];
        m.read(0, &mut b).unwrap();
    }

    #[test]
    fn mapped_memory_bounds() {
        let mm = Arc::new(MappedMemory::anonymous(4096).unwrap());
        mm.write(4092, &[9, 9, 9, 9]).unwrap();
        assert!(mm.write(4093, &[9, 9, 9, 9]).is_err());
        let m = SparseMemory::new();
        m.add_mapped(0x10000, 3, mm.clone()).unwrap();
        let mut b = [0u8; 4];
        m.read(0x10000 + 4092, &mut b).unwrap();
        assert_eq!(b, [9; 4]);
    }
}
