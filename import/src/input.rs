//! Opening a log, plain or zstd-compressed (detected by the frame magic, not the file name), and
//! reading it line by line with one reused buffer.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use crate::ImportError;

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Opens `path` as a buffered stream of decompressed log bytes.
pub fn open_log(path: &Path) -> Result<Box<dyn BufRead>, ImportError> {
    let io_err = |source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = BufReader::with_capacity(1 << 20, File::open(path).map_err(io_err)?);
    let head = file.fill_buf().map_err(io_err)?;
    if head.len() >= 4 && head[..4] == ZSTD_MAGIC {
        let dec = zstd::stream::read::Decoder::with_buffer(file).map_err(io_err)?;
        Ok(Box::new(BufReader::with_capacity(1 << 20, dec)))
    } else {
        Ok(Box::new(file))
    }
}

/// Reads lines into a reused buffer; yields each line without its terminator.
pub struct Lines {
    reader: Box<dyn BufRead>,
    buf: Vec<u8>,
    path: std::path::PathBuf,
}

impl Lines {
    /// Wraps an opened log.
    pub fn new(reader: Box<dyn BufRead>, path: &Path) -> Self {
        Lines {
            reader,
            buf: Vec::with_capacity(512),
            path: path.to_path_buf(),
        }
    }

    /// The next line's bytes, or `None` at the end. A read or decompression error (a truncated
    /// `.zst`, say) is returned as an error.
    pub fn next_line(&mut self) -> Result<Option<&[u8]>, ImportError> {
        self.buf.clear();
        let n = self
            .reader
            .by_ref()
            .take(1 << 20)
            .read_until(b'\n', &mut self.buf)
            .map_err(|source| ImportError::Io {
                path: self.path.clone(),
                source,
            })?;
        if n == 0 {
            return Ok(None);
        }
        let mut line = &self.buf[..];
        while let [rest @ .., b'\n' | b'\r'] = line {
            line = rest;
        }
        Ok(Some(line))
    }
}
