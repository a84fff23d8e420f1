//! Splitting one QEMU `log` trace-backend line into its prefix (thread id, wall time), the trace
//! event's name and its argument text, and parsing the arguments of the events the importer uses.
//!
//! Three prefixes exist in the wild:
//! - QEMU ≤ 8.x with `-msg timestamp=on`: `<tid>@<sec>.<usec>:<event> <args>` (tracetool's log backend
//!   printed `"%d@%zu.%06zu:%s " fmt`).
//! - QEMU ≥ 9 with `-msg timestamp=on`: `qemu_log` itself prefixes an ISO-8601 UTC time
//!   (`g_date_time_format_iso8601`, e.g. `2025-03-01T10:11:12.345678Z `), then `<event> <args>`.
//! - Without `-msg timestamp=on`: just `<event> <args>`.

/// A parse failure of one line; the text is a short reason for the report.
pub type LineError = &'static str;

/// The prefix and the two halves of a trace line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawLine<'a> {
    /// The QEMU thread id, when the prefix has one.
    pub thread: Option<u32>,
    /// Wall-clock time in ns since the Unix epoch, when the prefix has one.
    pub wall_ns: Option<u64>,
    /// The trace event's name.
    pub name: &'a str,
    /// Everything after the name, leading blanks removed.
    pub args: &'a str,
}

/// Splits a line (without its newline). Errors on truncated or garbled prefixes and on lines
/// whose first word is not a trace event name.
pub fn split_line(line: &str) -> Result<RawLine<'_>, LineError> {
    let line = line.trim_end_matches(['\r', '\n']);
    let bytes = line.as_bytes();
    let (thread, wall_ns, rest) =
        if bytes.len() > 10 && bytes[..4].iter().all(u8::is_ascii_digit) && bytes[4] == b'-' {
            let (wall, rest) = parse_iso_prefix(line)?;
            (None, Some(wall), rest)
        } else if bytes.first().is_some_and(u8::is_ascii_digit) {
            let (tid, wall, rest) = parse_pid_prefix(line)?;
            (Some(tid), Some(wall), rest)
        } else {
            (None, None, line)
        };
    let (name, args) = match rest.find(' ') {
        Some(i) => (&rest[..i], rest[i + 1..].trim_start()),
        None => (rest, ""),
    };
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err("not a trace event line");
    }
    Ok(RawLine {
        thread,
        wall_ns,
        name,
        args,
    })
}

/// `<tid>@<sec>.<usec>:` → (tid, wall ns, rest).
fn parse_pid_prefix(line: &str) -> Result<(u32, u64, &str), LineError> {
    let at = line.find('@').ok_or("timestamp prefix without '@'")?;
    let tid: u32 = parse_dec(&line[..at]).ok_or("bad thread id")? as u32;
    let after = &line[at + 1..];
    let colon = after.find(':').ok_or("truncated timestamp prefix")?;
    let stamp = &after[..colon];
    let dot = stamp.find('.').ok_or("timestamp without '.'")?;
    let sec = parse_dec(&stamp[..dot]).ok_or("bad timestamp seconds")?;
    let frac = &stamp[dot + 1..];
    let frac_ns = parse_fraction_ns(frac).ok_or("bad timestamp fraction")?;
    let wall = sec
        .checked_mul(1_000_000_000)
        .and_then(|s| s.checked_add(frac_ns))
        .ok_or("timestamp out of range")?;
    Ok((tid, wall, &after[colon + 1..]))
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM) ` → (wall ns, rest).
fn parse_iso_prefix(line: &str) -> Result<(u64, &str), LineError> {
    let sp = line.find(' ').ok_or("truncated ISO timestamp")?;
    let stamp = &line[..sp];
    let b = stamp.as_bytes();
    if b.len() < 20 || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return Err("bad ISO timestamp");
    }
    let num = |r: std::ops::Range<usize>| {
        stamp
            .get(r)
            .and_then(parse_dec)
            .ok_or("bad ISO timestamp field")
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return Err("ISO timestamp field out of range");
    }
    let mut tail = stamp.get(19..).ok_or("bad ISO timestamp")?;
    let mut frac_ns = 0;
    if let Some(t) = tail.strip_prefix('.') {
        let end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        frac_ns = parse_fraction_ns(&t[..end]).ok_or("bad ISO fraction")?;
        tail = &t[end..];
    }
    let offset_s: i64 = if tail == "Z" {
        0
    } else if tail.len() == 6 && (tail.starts_with('+') || tail.starts_with('-')) {
        let h = tail.get(1..3).and_then(parse_dec).ok_or("bad ISO zone")? as i64;
        let m = tail.get(4..6).and_then(parse_dec).ok_or("bad ISO zone")? as i64;
        let s = h * 3600 + m * 60;
        if tail.starts_with('-') {
            -s
        } else {
            s
        }
    } else {
        return Err("bad ISO zone");
    };
    let days = days_from_civil(year as i64, month as i64, day as i64);
    let secs = days * 86_400 + (hour * 3600 + min * 60 + sec) as i64 - offset_s;
    if secs < 0 {
        return Err("ISO timestamp before 1970");
    }
    let wall = (secs as u64)
        .checked_mul(1_000_000_000)
        .and_then(|s| s.checked_add(frac_ns))
        .ok_or("timestamp out of range")?;
    Ok((wall, &line[sp + 1..]))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Digits after a decimal point as nanoseconds (at most 9 significant digits are kept).
fn parse_fraction_ns(frac: &str) -> Option<u64> {
    if frac.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut ns = 0u64;
    for i in 0..9 {
        let d = frac.as_bytes().get(i).map_or(0, |b| (b - b'0') as u64);
        ns = ns * 10 + d;
    }
    Some(ns)
}

/// A non-empty string of decimal digits.
pub fn parse_dec(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A signed decimal (`-1`, `0`, `3`).
pub fn parse_signed(s: &str) -> Option<i64> {
    match s.strip_prefix('-') {
        Some(d) => parse_dec(d).and_then(|v| i64::try_from(v).ok()).map(|v| -v),
        None => parse_dec(s).and_then(|v| i64::try_from(v).ok()),
    }
}

/// `0x`-prefixed hexadecimal (the prefix is required).
pub fn parse_hex(s: &str) -> Option<u64> {
    let h = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"))?;
    if h.is_empty() || h.len() > 16 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(h, 16).ok()
}

/// A PCI address as QEMU prints it (`00:02.0`, `0000:00:02.0`, or the VT-d form `00:02.00`),
/// normalised to `bus:dev.fn` with two hex digits for bus and device and one for the function.
pub fn normalize_bdf(s: &str) -> Option<String> {
    let parts: Vec<&str> = s.split(':').collect();
    let (bus, devfn) = match parts.as_slice() {
        [bus, devfn] => (*bus, *devfn),
        [dom, bus, devfn] => {
            u32::from_str_radix(dom, 16).ok()?;
            (*bus, *devfn)
        }
        _ => return None,
    };
    let (dev, func) = devfn.split_once('.')?;
    let hex = |t: &str| -> Option<u32> {
        if t.is_empty() || t.len() > 4 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(t, 16).ok()
    };
    let (bus, dev, func) = (hex(bus)?, hex(dev)?, hex(func)?);
    if bus > 0xff || dev > 0x1f || func > 7 {
        return None;
    }
    Some(format!("{bus:02x}:{dev:02x}.{func:x}"))
}

/// The VT-d source id (`bus << 8 | dev << 3 | fn`) of a normalised BDF.
pub fn source_id(bdf: &str) -> Option<u32> {
    let (bus, devfn) = bdf.split_once(':')?;
    let (dev, func) = devfn.split_once('.')?;
    let bus = u32::from_str_radix(bus, 16).ok()?;
    let dev = u32::from_str_radix(dev, 16).ok()?;
    let func = u32::from_str_radix(func, 16).ok()?;
    Some(bus << 8 | dev << 3 | func)
}

/// `memory_region_ops_read/write`: `cpu %d mr %p addr 0x%x value 0x%x size %u name '%s'`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionOp<'a> {
    /// vCPU index, -1 when not a CPU access.
    pub cpu: i64,
    /// Absolute address.
    pub addr: u64,
    /// Data.
    pub value: u64,
    /// Width in bytes.
    pub size: u8,
    /// The memory region's name.
    pub region: &'a str,
}

/// Parses `memory_region_ops_*` arguments.
pub fn region_op(args: &str) -> Result<RegionOp<'_>, LineError> {
    let name_at = args
        .find(" name '")
        .ok_or("memory_region_ops without name")?;
    let quoted = &args[name_at + 7..];
    let region = quoted
        .strip_suffix('\'')
        .ok_or("memory_region_ops name not closed")?;
    let mut it = args[..name_at].split_ascii_whitespace();
    let mut field = |key: &str| -> Result<&str, LineError> {
        if it.next() != Some(key) {
            return Err("memory_region_ops field missing");
        }
        it.next().ok_or("memory_region_ops truncated")
    };
    let cpu = parse_signed(field("cpu")?).ok_or("bad cpu")?;
    field("mr")?;
    let addr = parse_hex(field("addr")?).ok_or("bad addr")?;
    let value = parse_hex(field("value")?).ok_or("bad value")?;
    let size = parse_dec(field("size")?).ok_or("bad size")?;
    if !matches!(size, 1 | 2 | 4 | 8) {
        return Err("access size not 1, 2, 4 or 8");
    }
    Ok(RegionOp {
        cpu,
        addr,
        value,
        size: size as u8,
        region,
    })
}

/// `pci_cfg_read`/`pci_cfg_write`: `%s %02x:%02x.%x @0x%x -> 0x%x` (or `<-`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CfgOp<'a> {
    /// QEMU's device name (`rtl8139`, `nvme`, ...).
    pub dev: &'a str,
    /// Normalised BDF.
    pub bdf: String,
    /// Config-space offset.
    pub offset: u32,
    /// Data.
    pub value: u32,
}

/// Parses `pci_cfg_*` arguments; `arrow` is `->` for reads and `<-` for writes.
pub fn cfg_op<'a>(args: &'a str, arrow: &str) -> Result<CfgOp<'a>, LineError> {
    let mut it = args.split_ascii_whitespace();
    let dev = it.next().ok_or("pci_cfg truncated")?;
    let bdf = normalize_bdf(it.next().ok_or("pci_cfg truncated")?).ok_or("bad BDF")?;
    let off = it.next().ok_or("pci_cfg truncated")?;
    let offset = parse_hex(off.strip_prefix('@').ok_or("pci_cfg offset without '@'")?)
        .ok_or("bad config offset")?;
    if it.next() != Some(arrow) {
        return Err("pci_cfg arrow missing");
    }
    let value = parse_hex(it.next().ok_or("pci_cfg truncated")?).ok_or("bad config value")?;
    if offset >= 4096 || value > u32::MAX as u64 || it.next().is_some() {
        return Err("pci_cfg value out of range");
    }
    Ok(CfgOp {
        dev,
        bdf,
        offset: offset as u32,
        value: value as u32,
    })
}

/// `pci_update_mappings_add/del`: `%s %02x:%02x.%x %d,0x%x+0x%x`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingOp<'a> {
    /// QEMU's device name.
    pub dev: &'a str,
    /// Normalised BDF.
    pub bdf: String,
    /// BAR number (6 = ROM).
    pub bar: u32,
    /// Base address.
    pub base: u64,
    /// Size.
    pub size: u64,
}

/// Parses `pci_update_mappings_*` arguments.
pub fn mapping_op(args: &str) -> Result<MappingOp<'_>, LineError> {
    let mut it = args.split_ascii_whitespace();
    let dev = it.next().ok_or("mapping truncated")?;
    let bdf = normalize_bdf(it.next().ok_or("mapping truncated")?).ok_or("bad BDF")?;
    let spec = it.next().ok_or("mapping truncated")?;
    let (bar, range) = spec.split_once(',').ok_or("mapping without ','")?;
    let (base, size) = range.split_once('+').ok_or("mapping without '+'")?;
    let bar = parse_dec(bar).ok_or("bad BAR number")?;
    if bar > 6 {
        return Err("BAR number out of range");
    }
    Ok(MappingOp {
        dev,
        bdf,
        bar: bar as u32,
        base: parse_hex(base).ok_or("bad BAR base")?,
        size: parse_hex(size).ok_or("bad BAR size")?,
    })
}

/// `ioapic_set_irq`: `vector: %d level: %d` → (GSI, level).
pub fn ioapic_set_irq(args: &str) -> Result<(u32, bool), LineError> {
    let mut it = args.split_ascii_whitespace();
    if it.next() != Some("vector:") {
        return Err("ioapic_set_irq without vector");
    }
    let gsi = parse_dec(it.next().ok_or("ioapic_set_irq truncated")?).ok_or("bad GSI")?;
    if it.next() != Some("level:") {
        return Err("ioapic_set_irq without level");
    }
    let level = parse_signed(it.next().ok_or("ioapic_set_irq truncated")?).ok_or("bad level")?;
    Ok((u32::try_from(gsi).map_err(|_| "bad GSI")?, level != 0))
}

/// The number (decimal or `0x` hex) that ends the last whitespace-separated word: the vector of
/// `pci_nvme_irq_msix raising MSI-X IRQ vector 3`, `e1000e_irq_msix_notify_vec MSI-X notify
/// vector 0x2` or `e1000e_irq_msix_notify_postponed_vec Sending MSI-X postponed by EITR[1]`
/// (a bracketed or parenthesized index, or one after `=`/`:`, counts; `EITR1` does not).
pub fn last_number(args: &str) -> Option<u64> {
    let w = args.split_ascii_whitespace().next_back()?;
    let w = w.trim_end_matches([']', ')', ',', '.']);
    let w = w.rsplit(['[', '(', '=', ':']).next()?;
    parse_hex(w).or_else(|| parse_dec(w))
}

/// The text between the first `(` and the matching last `)` of vfio's ` (%s...)` formats.
fn parens(args: &str) -> Result<(&str, &str), LineError> {
    let open = args.find('(').ok_or("vfio event without '('")?;
    let close = args.rfind(')').ok_or("vfio event without ')'")?;
    if close < open {
        return Err("vfio event parentheses out of order");
    }
    Ok((&args[open + 1..close], args[close + 1..].trim()))
}

/// `vfio_region_read`: ` (%s:region%d+0x%x, %d) = 0x%x`; `vfio_region_write`:
/// ` (%s:region%d+0x%x, 0x%x, %d)`. Returns (device name, region, offset, size, value).
pub fn vfio_region(args: &str, write: bool) -> Result<(&str, u32, u64, u8, u64), LineError> {
    let (inner, tail) = parens(args)?;
    let mut parts = inner.split(", ");
    let target = parts.next().ok_or("vfio_region truncated")?;
    let at = target
        .rfind(":region")
        .ok_or("vfio_region without region")?;
    let name = &target[..at];
    let (idx, off) = target[at + 7..]
        .split_once('+')
        .ok_or("vfio_region without offset")?;
    let region = parse_dec(idx).ok_or("bad region index")?;
    let offset = parse_hex(off).ok_or("bad region offset")?;
    let (size, value) = if write {
        let value =
            parse_hex(parts.next().ok_or("vfio_region_write truncated")?).ok_or("bad value")?;
        let size =
            parse_dec(parts.next().ok_or("vfio_region_write truncated")?).ok_or("bad size")?;
        (size, value)
    } else {
        let size =
            parse_dec(parts.next().ok_or("vfio_region_read truncated")?).ok_or("bad size")?;
        let v = tail
            .strip_prefix("= ")
            .ok_or("vfio_region_read without value")?;
        (size, parse_hex(v).ok_or("bad value")?)
    };
    if !matches!(size, 1 | 2 | 4 | 8) || region > 8 {
        return Err("vfio_region size or index out of range");
    }
    Ok((name, region as u32, offset, size as u8, value))
}

/// `vfio_pci_read_config`: ` (%s, @0x%x, len=0x%x) 0x%x`; `vfio_pci_write_config`:
/// ` (%s, @0x%x, 0x%x, len=0x%x)`. Returns (device name, offset, len, value).
pub fn vfio_config(args: &str, write: bool) -> Result<(&str, u32, u8, u32), LineError> {
    let (inner, tail) = parens(args)?;
    let mut parts = inner.split(", ");
    let name = parts.next().ok_or("vfio config truncated")?;
    let off = parts
        .next()
        .and_then(|p| p.strip_prefix('@'))
        .and_then(parse_hex)
        .ok_or("bad config offset")?;
    let (len, value) = if write {
        let v = parts.next().and_then(parse_hex).ok_or("bad config value")?;
        let l = parts
            .next()
            .and_then(|p| p.strip_prefix("len="))
            .and_then(parse_hex)
            .ok_or("bad config len")?;
        (l, v)
    } else {
        let l = parts
            .next()
            .and_then(|p| p.strip_prefix("len="))
            .and_then(parse_hex)
            .ok_or("bad config len")?;
        (l, parse_hex(tail).ok_or("bad config value")?)
    };
    if off >= 4096 || !matches!(len, 1 | 2 | 4) || value > u32::MAX as u64 {
        return Err("vfio config access out of range");
    }
    Ok((name, off as u32, len as u8, value as u32))
}

/// ` (%s) ...`: the device name of vfio's per-device events.
pub fn vfio_name(args: &str) -> Result<(&str, &str), LineError> {
    parens_first(args)
}

fn parens_first(args: &str) -> Result<(&str, &str), LineError> {
    let open = args.find('(').ok_or("vfio event without '('")?;
    let close = args[open..].find(')').ok_or("vfio event without ')'")? + open;
    Ok((&args[open + 1..close], args[close + 1..].trim()))
}

/// `vfio_msi_interrupt`: ` (%s) vector %d 0x%x/0x%x` → (name, vector).
pub fn vfio_msi_interrupt(args: &str) -> Result<(&str, u32), LineError> {
    let (name, rest) = parens_first(args)?;
    let mut it = rest.split_ascii_whitespace();
    if it.next() != Some("vector") {
        return Err("vfio_msi_interrupt without vector");
    }
    let v = it.next().and_then(parse_signed).ok_or("bad vector")?;
    Ok((name, u32::try_from(v).map_err(|_| "bad vector")?))
}

/// `vfio_rom_read`: ` (%s, 0x%x, 0x%x) = 0x%x` → (name, offset, size, value).
pub fn vfio_rom_read(args: &str) -> Result<(&str, u64, u8, u64), LineError> {
    let (inner, tail) = parens(args)?;
    let mut parts = inner.split(", ");
    let name = parts.next().ok_or("vfio_rom_read truncated")?;
    let addr = parts.next().and_then(parse_hex).ok_or("bad ROM offset")?;
    let size = parts.next().and_then(parse_hex).ok_or("bad ROM size")?;
    let value = tail
        .strip_prefix("= ")
        .and_then(parse_hex)
        .ok_or("bad ROM value")?;
    if !matches!(size, 1 | 2 | 4 | 8) {
        return Err("ROM read size out of range");
    }
    Ok((name, addr, size as u8, value))
}

/// `key: 0x%lx` fields of `Device '%s' ROM: size: 0x%lx, ...` and friends.
pub fn field_hex(args: &str, key: &str) -> Option<u64> {
    let at = args.find(key)? + key.len();
    let v = args[at..].trim_start();
    let end = v.find([',', ' ', ')']).unwrap_or(v.len());
    parse_hex(&v[..end]).or_else(|| parse_dec(&v[..end]))
}

/// The device of `Device '%s' config: size: ...` (newer QEMUs) or `Device %s config:` /
/// `Device %s ROM:` (older ones, which print the sizes on the next line): vfio_pci_load_rom,
/// vfio_populate_device_config.
pub fn described_device(args: &str) -> Option<&str> {
    let rest = args.strip_prefix("Device ")?;
    if let Some(quoted) = rest.strip_prefix('\'') {
        return Some(&quoted[..quoted.find('\'')?]);
    }
    let name = rest.split_ascii_whitespace().next()?;
    let name = name.strip_suffix(':').unwrap_or(name);
    (!name.is_empty()).then_some(name)
}

/// `vfio_region_setup`: `Device %s, region %d "%s", flags: 0x%lx, offset: 0x%lx, size: 0x%lx`
/// → (device, region, size).
pub fn vfio_region_setup(args: &str) -> Result<(&str, u32, u64), LineError> {
    let rest = args
        .strip_prefix("Device ")
        .ok_or("vfio_region_setup format")?;
    let comma = rest.find(", region ").ok_or("vfio_region_setup format")?;
    let name = &rest[..comma];
    let idx = rest[comma + 9..]
        .split_ascii_whitespace()
        .next()
        .and_then(parse_dec)
        .ok_or("bad region index")?;
    let size = field_hex(rest, "size:").ok_or("bad region size")?;
    if idx > 8 {
        return Err("region index out of range");
    }
    Ok((name, idx as u32, plausible_region_size(idx as u32, size)?))
}

/// A VFIO region size as PCI allows it: BARs (0–5) and the ROM (6) are 0 or a power of two (the
/// ROM at most 2 GiB, a 32-bit BAR), config space (7) is 64 to 4096 bytes.
pub fn plausible_region_size(region: u32, size: u64) -> Result<u64, LineError> {
    let ok = match region {
        0..=5 => size == 0 || size.is_power_of_two(),
        6 => size == 0 || (size.is_power_of_two() && size <= 1 << 31),
        7 => (64..=4096).contains(&size),
        _ => true,
    };
    if ok {
        Ok(size)
    } else {
        Err("region size PCI does not allow")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_all_three_prefixes() {
        let l = split_line("23167@1795495474.934078:pci_cfg_read rtl8139 00:02.0 @0x0 -> 0x10ec")
            .unwrap();
        assert_eq!(l.thread, Some(23167));
        assert_eq!(l.wall_ns, Some(1_795_495_474_934_078_000));
        assert_eq!(l.name, "pci_cfg_read");
        assert_eq!(l.args, "rtl8139 00:02.0 @0x0 -> 0x10ec");
        let l =
            split_line("2026-11-24T05:40:01.500000Z ioapic_set_irq vector: 22 level: 1").unwrap();
        assert_eq!(l.wall_ns, Some(1_795_498_801_500_000_000));
        assert_eq!(l.name, "ioapic_set_irq");
        let l = split_line("vfio_region_write  (0000:01:00.0:region0+0x8, 0x1, 4)").unwrap();
        assert_eq!((l.thread, l.wall_ns), (None, None));
        assert_eq!(l.args, "(0000:01:00.0:region0+0x8, 0x1, 4)");
        assert!(split_line("23167@17954").is_err());
        assert!(split_line("hello, world").is_err());
    }

    #[test]
    fn vectors_end_the_line_bare_or_bracketed() {
        assert_eq!(last_number("raising MSI-X IRQ vector 3"), Some(3));
        assert_eq!(last_number("MSI-X notify vector 0x2"), Some(2));
        assert_eq!(last_number("Sending MSI-X postponed by EITR[1]"), Some(1));
        assert_eq!(last_number("vec (4)"), Some(4));
        assert_eq!(last_number("vector=0x10"), Some(16));
        assert_eq!(last_number("Sending MSI-X postponed by EITR1"), None);
        assert_eq!(last_number("EITR[]"), None);
        assert_eq!(last_number(""), None);
    }

    #[test]
    fn iso_zone_offsets_shift_time() {
        let z = split_line("2026-11-24T05:40:01Z x")
            .unwrap()
            .wall_ns
            .unwrap();
        let p = split_line("2026-11-24T07:40:01+02:00 x")
            .unwrap()
            .wall_ns
            .unwrap();
        assert_eq!(z, p);
    }

    #[test]
    fn parses_vfio_formats() {
        assert_eq!(
            vfio_region(" (0000:01:00.0:region2+0x1c, 4) = 0xdeadbeef", false).unwrap(),
            ("0000:01:00.0", 2, 0x1c, 4, 0xdead_beef)
        );
        assert_eq!(
            vfio_config(" (0000:01:00.0, @0x4, 0x507, len=0x2)", true).unwrap(),
            ("0000:01:00.0", 4, 2, 0x507)
        );
        assert_eq!(
            vfio_config(" (0000:01:00.0, @0x0, len=0x4) 0x10d38086", false).unwrap(),
            ("0000:01:00.0", 0, 4, 0x10d3_8086)
        );
    }

    #[test]
    fn normalizes_bdfs() {
        assert_eq!(normalize_bdf("0000:00:19.0").as_deref(), Some("00:19.0"));
        assert_eq!(normalize_bdf("00:02.00").as_deref(), Some("00:02.0"));
        assert_eq!(normalize_bdf("00:20.0"), None);
        assert_eq!(source_id("00:02.0"), Some(0x10));
    }
}
