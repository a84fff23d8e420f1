//! PCI addresses (`domain:bus:device.function`).

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

/// A PCI address, e.g. `0000:00:19.0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    /// PCI domain (segment).
    pub domain: u16,
    /// Bus number.
    pub bus: u8,
    /// Device number (0..32).
    pub device: u8,
    /// Function number (0..8).
    pub function: u8,
}

/// A string that is not a PCI address.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a PCI address: expected DDDD:BB:DD.F or BB:DD.F (hex), e.g. 0000:00:19.0")]
pub struct BdfError(pub String);

impl FromStr for Bdf {
    type Err = BdfError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || BdfError(s.to_string());
        let hex = |t: &str, max_len: usize| -> Result<u32, BdfError> {
            if t.is_empty() || t.len() > max_len || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err());
            }
            u32::from_str_radix(t, 16).map_err(|_| err())
        };
        let parts: Vec<&str> = s.trim().split(':').collect();
        let (domain, bus, devfn) = match parts.as_slice() {
            [d, b, df] => (hex(d, 4)?, hex(b, 2)?, *df),
            [b, df] => (0, hex(b, 2)?, *df),
            _ => return Err(err()),
        };
        let (dev, func) = devfn.split_once('.').ok_or_else(err)?;
        let (device, function) = (hex(dev, 2)?, hex(func, 1)?);
        if device > 0x1f || function > 7 {
            return Err(err());
        }
        Ok(Bdf {
            domain: domain as u16,
            bus: bus as u8,
            device: device as u8,
            function: function as u8,
        })
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

impl Serialize for Bdf {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Finds every PCI address in `text`, in either form (`bb:dd.f` gets domain 0).
pub(crate) fn find_all(text: &str) -> Vec<Bdf> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        // Multi-byte characters in log lines: only char boundaries can start an address.
        let Some(rest) = text.get(i..) else {
            i += 1;
            continue;
        };
        // Try the long form first, then the short one; a token must not continue a hex run.
        let boundary_before = i == 0 || !bytes[i - 1].is_ascii_hexdigit() && bytes[i - 1] != b':';
        if boundary_before {
            for len in [12usize, 7] {
                if let Some(tok) = rest.get(..len) {
                    let after_ok = rest
                        .as_bytes()
                        .get(len)
                        .map_or(true, |b| !b.is_ascii_hexdigit());
                    if after_ok {
                        if let Ok(b) = tok.parse::<Bdf>() {
                            out.push(b);
                            i += len;
                            break;
                        }
                    }
                }
            }
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_forms_and_rejects_junk() {
        let b: Bdf = "0000:00:19.0".parse().unwrap();
        assert_eq!(b.to_string(), "0000:00:19.0");
        assert_eq!(
            "01:00.7".parse::<Bdf>().unwrap().to_string(),
            "0000:01:00.7"
        );
        assert_eq!(
            "ABCD:ff:1f.0".parse::<Bdf>().unwrap().to_string(),
            "abcd:ff:1f.0"
        );
        for bad in [
            "",
            "00:20.0",
            "00:19.8",
            "0:0:0:0",
            "00:19",
            "g0:00.0",
            "00000:00:00.0",
            "00:19.0x",
        ] {
            assert!(bad.parse::<Bdf>().is_err(), "{bad}");
        }
    }

    #[test]
    fn finds_addresses_in_log_lines() {
        let got = find_all(
            "Request device [00:19.0] fault; vfio-pci 0000:01:00.0: AMD-Vi: x 1:2.3 ab00:19.0",
        );
        let s: Vec<String> = got.iter().map(|b| b.to_string()).collect();
        assert_eq!(s, vec!["0000:00:19.0", "0000:01:00.0"]);
    }
}
