//! Lowercase hex encoding of byte strings (JSON output carries bytes as hex).

/// Encodes `bytes` as lowercase hex.
pub fn encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

/// Decodes a hex string (either case, even length, optional `0x` prefix).
pub fn decode(s: &str) -> Result<Vec<u8>, HexError> {
    let s = s.strip_prefix("0x").unwrap_or(s);
    if s.len() % 2 != 0 {
        return Err(HexError::OddLength(s.len()));
    }
    let nibble = |c: u8, at: usize| -> Result<u8, HexError> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(HexError::BadDigit(at)),
        }
    };
    let b = s.as_bytes();
    (0..b.len() / 2)
        .map(|i| Ok(nibble(b[2 * i], 2 * i)? << 4 | nibble(b[2 * i + 1], 2 * i + 1)?))
        .collect()
}

/// A hex string that could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HexError {
    /// The string has an odd number of digits.
    #[error("hex string has odd length {0}")]
    OddLength(usize),
    /// A character is not a hex digit.
    #[error("not a hex digit at position {0}")]
    BadDigit(usize),
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip() {
        let v = vec![0u8, 1, 0xab, 0xff];
        assert_eq!(super::encode(&v), "0001abff");
        assert_eq!(super::decode("0001ABff").unwrap(), v);
        assert!(super::decode("abc").is_err());
        assert!(super::decode("zz").is_err());
    }
}
