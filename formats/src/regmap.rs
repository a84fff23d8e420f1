//! Register maps: names for register offsets, and which registers hold DMA addresses.
//!
//! A register map is a small TOML file:
//!
//! ```toml
//! [[register]]
//! name = "RDBAL"     # register name
//! region = 0         # VFIO region index (7 = configuration space)
//! offset = 0x2800    # byte offset in the region
//! width = 4          # bytes
//! address = "lo"     # optional: "lo" (low 32 bits of a DMA address), "hi" (high 32 bits), "full" (whole address)
//! pair = "RDBAH"     # optional, with address = "lo"/"hi": the other half's register name
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// Which part of a DMA address a register holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AddressPart {
    /// The low 32 bits.
    Lo,
    /// The high 32 bits.
    Hi,
    /// The whole address (a 64-bit register, or a 32-bit device).
    Full,
}

/// One named register.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Register {
    /// Register name.
    pub name: String,
    /// VFIO region index (7 for configuration space).
    pub region: u32,
    /// Byte offset in the region.
    pub offset: u64,
    /// Width in bytes.
    pub width: u8,
    /// Set when the register holds (part of) a DMA address.
    #[serde(default)]
    pub address: Option<AddressPart>,
    /// With `address` lo/hi: the name of the register holding the other half.
    #[serde(default)]
    pub pair: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterMapFile {
    #[serde(default)]
    register: Vec<Register>,
}

/// Errors loading a register map.
#[derive(Debug, thiserror::Error)]
pub enum RegMapError {
    /// The file could not be read.
    #[error("cannot read register map {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a valid register map.
    #[error("invalid register map: {0}")]
    Parse(String),
}

/// A set of named registers, looked up by region and offset.
#[derive(Clone, Debug, Default)]
pub struct RegisterMap {
    registers: Vec<Register>,
    by_start: BTreeMap<(u32, u64), usize>,
}

impl RegisterMap {
    /// Parses a register map from TOML text.
    pub fn parse(text: &str) -> Result<Self, RegMapError> {
        let file: RegisterMapFile =
            toml::from_str(text).map_err(|e| RegMapError::Parse(e.to_string()))?;
        let mut map = RegisterMap::default();
        for r in file.register {
            if r.width == 0 || r.width > 8 {
                return Err(RegMapError::Parse(format!(
                    "register {} has width {} (must be 1..=8)",
                    r.name, r.width
                )));
            }
            if map.by_start.contains_key(&(r.region, r.offset)) {
                return Err(RegMapError::Parse(format!(
                    "register {} duplicates region {} offset {:#x}",
                    r.name, r.region, r.offset
                )));
            }
            map.by_start
                .insert((r.region, r.offset), map.registers.len());
            map.registers.push(r);
        }
        for r in &map.registers {
            if let Some(p) = &r.pair {
                if map.by_name(p).is_none() {
                    return Err(RegMapError::Parse(format!(
                        "register {} names pair {p}, which is not in the map",
                        r.name
                    )));
                }
            }
        }
        Ok(map)
    }

    /// Loads a register map from a file.
    pub fn load(path: &Path) -> Result<Self, RegMapError> {
        let text = std::fs::read_to_string(path).map_err(|source| RegMapError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// All registers, in file order.
    pub fn registers(&self) -> &[Register] {
        &self.registers
    }

    /// The register named `name`.
    pub fn by_name(&self, name: &str) -> Option<&Register> {
        self.registers.iter().find(|r| r.name == name)
    }

    /// The register that contains byte `offset` of `region`.
    pub fn lookup(&self, region: u32, offset: u64) -> Option<&Register> {
        let (&(reg, start), &i) = self.by_start.range(..=(region, offset)).next_back()?;
        let r = &self.registers[i];
        (reg == region && offset < start + r.width as u64).then_some(r)
    }

    /// A display name for an access: `NAME`, or `NAME+k` for an access inside the register.
    pub fn name_for(&self, region: u32, offset: u64) -> Option<String> {
        let r = self.lookup(region, offset)?;
        Some(if r.offset == offset {
            r.name.clone()
        } else {
            format!("{}+{}", r.name, offset - r.offset)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_looks_up() {
        let m = RegisterMap::parse(
            r#"
            [[register]]
            name = "STATUS"
            region = 0
            offset = 0x8
            width = 4
            [[register]]
            name = "RDBAL"
            region = 0
            offset = 0x2800
            width = 4
            address = "lo"
            pair = "RDBAH"
            [[register]]
            name = "RDBAH"
            region = 0
            offset = 0x2804
            width = 4
            address = "hi"
            pair = "RDBAL"
            "#,
        )
        .unwrap();
        assert_eq!(m.name_for(0, 8).as_deref(), Some("STATUS"));
        assert_eq!(m.name_for(0, 10).as_deref(), Some("STATUS+2"));
        assert_eq!(m.name_for(0, 12), None);
        assert_eq!(m.name_for(1, 8), None);
        assert_eq!(m.lookup(0, 0x2804).unwrap().address, Some(AddressPart::Hi));
    }

    #[test]
    fn rejects_bad_maps() {
        assert!(RegisterMap::parse("[[register]]\nname='A'\nregion=0\noffset=0\nwidth=9").is_err());
        assert!(RegisterMap::parse(
            "[[register]]\nname='A'\nregion=0\noffset=0\nwidth=4\npair='B'"
        )
        .is_err());
        assert!(
            RegisterMap::parse("[[register]]\nname='A'\nregion=0\noffset=0\nwidth=4\nbogus=1")
                .is_err()
        );
        assert!(RegisterMap::parse("not toml [").is_err());
    }
}
