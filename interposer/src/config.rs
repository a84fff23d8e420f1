//! The shim's configuration: environment variables and QEMU's command line.

use std::path::PathBuf;

use hwrr_replayer::Policy;

/// What the shim does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Emulate `/dev/vfio` for the traced devices.
    Replay,
    /// Pass through to the kernel and log (`HWRR_MODE=record`).
    Record,
    /// Pass everything through (no `HWRR_MODE`, or `off`).
    Off,
}

/// One device the shim answers for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSpec {
    /// Host address QEMU names (`0000:00:19.0`), or `None`: the first vfio-pci device QEMU opens.
    pub bdf: Option<String>,
    /// Trace to replay from or record to.
    pub trace: PathBuf,
}

/// Where `HWRR_LOG` sends messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogTarget {
    /// Only errors and warnings, to stderr.
    Quiet,
    /// Everything, to stderr (`HWRR_LOG=1`).
    Stderr,
    /// Everything, appended to this file.
    File(PathBuf),
}

/// Errors in the shim's environment.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// `HWRR_MODE` is not `replay`, `record` or `off`.
    #[error("HWRR_MODE={0:?}: expected replay, record or off")]
    Mode(String),
    /// `HWRR_MODE` is set but `HWRR_TRACE` is not.
    #[error("HWRR_TRACE is not set")]
    NoTrace,
    /// An entry of `HWRR_TRACE` is malformed.
    #[error("HWRR_TRACE entry {0:?}: expected PATH or BDF=PATH with BDF like 0000:00:19.0")]
    TraceEntry(String),
    /// `HWRR_POLICY` is unknown.
    #[error("HWRR_POLICY={0:?}: expected strict, resync or model")]
    Policy(String),
    /// `HWRR_WINDOW` is not a number.
    #[error("HWRR_WINDOW={0:?}: expected a number of recorded accesses")]
    Window(String),
}

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Replay, record or off.
    pub mode: Mode,
    /// Devices, in `HWRR_TRACE` order.
    pub devices: Vec<DeviceSpec>,
    /// Replay policy.
    pub policy: Policy,
    /// JSON report path (replay).
    pub report: Option<PathBuf>,
    /// Logging.
    pub log: LogTarget,
}

/// Normalises a PCI address to the sysfs form `dddd:bb:dd.f` (lower case, domain added).
pub fn normalize_bdf(s: &str) -> Option<String> {
    let s = s.trim();
    let parts: Vec<&str> = s.split(':').collect();
    let (domain, bus, devfn) = match parts.as_slice() {
        [b, df] => ("0000", *b, *df),
        [d, b, df] => (*d, *b, *df),
        _ => return None,
    };
    let (dev, func) = devfn.split_once('.')?;
    let domain = u32::from_str_radix(domain, 16).ok()?;
    let bus = u8::from_str_radix(bus, 16).ok()?;
    let dev = u8::from_str_radix(dev, 16).ok()?;
    let func = u8::from_str_radix(func, 16).ok()?;
    if domain > 0xffff || dev > 0x1f || func > 7 {
        return None;
    }
    Some(format!("{domain:04x}:{bus:02x}:{dev:02x}.{func:x}"))
}

/// Parses `HWRR_TRACE`: one path, or `BDF=PATH[,BDF=PATH...]`.
pub fn parse_traces(value: &str) -> Result<Vec<DeviceSpec>, ConfigError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(ConfigError::NoTrace);
    }
    let looks_like_list = value.split(',').all(|e| {
        e.split_once('=')
            .is_some_and(|(b, _)| normalize_bdf(b).is_some())
    });
    if !looks_like_list {
        return Ok(vec![DeviceSpec {
            bdf: None,
            trace: PathBuf::from(value),
        }]);
    }
    value
        .split(',')
        .map(|entry| {
            let (bdf, path) = entry
                .split_once('=')
                .ok_or_else(|| ConfigError::TraceEntry(entry.into()))?;
            let bdf = normalize_bdf(bdf).ok_or_else(|| ConfigError::TraceEntry(entry.into()))?;
            if path.is_empty() {
                return Err(ConfigError::TraceEntry(entry.into()));
            }
            Ok(DeviceSpec {
                bdf: Some(bdf),
                trace: PathBuf::from(path),
            })
        })
        .collect()
}

/// Parses `HWRR_POLICY` and `HWRR_WINDOW`.
pub fn parse_policy(policy: Option<&str>, window: Option<&str>) -> Result<Policy, ConfigError> {
    let window = match window {
        Some(w) => w
            .trim()
            .parse::<u32>()
            .map_err(|_| ConfigError::Window(w.into()))?,
        None => Policy::DEFAULT_WINDOW,
    };
    match policy.map(str::trim) {
        None | Some("") | Some("strict") => Ok(Policy::Strict),
        Some("resync") => Ok(Policy::Resync { window }),
        Some("model") => Ok(Policy::Model),
        Some(other) => Err(ConfigError::Policy(other.into())),
    }
}

impl Config {
    /// Reads the configuration through `get` (the environment, or a test's map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mode = match get("HWRR_MODE").as_deref().map(str::trim) {
            None | Some("") | Some("off") => Mode::Off,
            Some("replay") => Mode::Replay,
            Some("record") => Mode::Record,
            Some(other) => return Err(ConfigError::Mode(other.into())),
        };
        let devices = match (mode, get("HWRR_TRACE")) {
            (Mode::Off, _) => Vec::new(),
            (_, None) => return Err(ConfigError::NoTrace),
            (_, Some(v)) => parse_traces(&v)?,
        };
        let policy = parse_policy(get("HWRR_POLICY").as_deref(), get("HWRR_WINDOW").as_deref())?;
        let log = match get("HWRR_LOG").as_deref().map(str::trim) {
            None | Some("") | Some("0") => LogTarget::Quiet,
            Some("1") | Some("stderr") => LogTarget::Stderr,
            Some(path) => LogTarget::File(PathBuf::from(path)),
        };
        Ok(Config {
            mode,
            devices,
            policy,
            report: get("HWRR_REPORT")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
            log,
        })
    }

    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|k| std::env::var(k).ok())
    }
}

/// The host devices named by `-device vfio-pci,host=...` / `sysfsdev=...` on a QEMU command line
/// (NUL-separated, as in `/proc/self/cmdline`), in order, as normalised BDFs.
pub fn vfio_hosts_in_cmdline(cmdline: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for arg in cmdline.split(|&b| b == 0) {
        let Ok(arg) = std::str::from_utf8(arg) else {
            continue;
        };
        let mut props = arg.split(',');
        let driver = props.next().unwrap_or_default();
        let driver = driver.strip_prefix("driver=").unwrap_or(driver);
        if driver != "vfio-pci" && !arg.contains("driver=vfio-pci") {
            continue;
        }
        for prop in arg.split(',') {
            let bdf = if let Some(h) = prop.strip_prefix("host=") {
                normalize_bdf(h)
            } else if let Some(p) = prop.strip_prefix("sysfsdev=") {
                p.trim_end_matches('/')
                    .rsplit('/')
                    .next()
                    .and_then(normalize_bdf)
            } else {
                None
            };
            if let Some(b) = bdf {
                out.push(b);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn bdf_forms() {
        assert_eq!(normalize_bdf("00:19.0").as_deref(), Some("0000:00:19.0"));
        assert_eq!(
            normalize_bdf("0000:0A:1f.7").as_deref(),
            Some("0000:0a:1f.7")
        );
        assert_eq!(normalize_bdf("00:20.0"), None);
        assert_eq!(normalize_bdf("00:19.8"), None);
        assert_eq!(normalize_bdf("garbage"), None);
        assert_eq!(normalize_bdf("/tmp/x.hwrr"), None);
    }

    #[test]
    fn trace_lists() {
        let one = parse_traces("/tmp/a.hwrr").unwrap();
        assert_eq!(one[0].bdf, None);
        let two = parse_traces("00:19.0=/a.hwrr,0000:01:00.0=/b=c.hwrr").unwrap();
        assert_eq!(two[0].bdf.as_deref(), Some("0000:00:19.0"));
        assert_eq!(two[1].trace, PathBuf::from("/b=c.hwrr"));
        assert!(parse_traces("").is_err());
        assert!(parse_traces("00:19.0=").is_err());
    }

    #[test]
    fn env() {
        let m: HashMap<&str, &str> = [
            ("HWRR_MODE", "replay"),
            ("HWRR_TRACE", "x.hwrr"),
            ("HWRR_POLICY", "resync"),
            ("HWRR_WINDOW", "9"),
            ("HWRR_LOG", "/tmp/log"),
        ]
        .into();
        let c = Config::from_lookup(|k| m.get(k).map(|s| s.to_string())).unwrap();
        assert_eq!(c.mode, Mode::Replay);
        assert_eq!(c.policy, Policy::Resync { window: 9 });
        assert_eq!(c.log, LogTarget::File("/tmp/log".into()));
        let bad = Config::from_lookup(|k| (k == "HWRR_MODE").then(|| "replay".to_string()));
        assert_eq!(bad, Err(ConfigError::NoTrace));
        assert!(parse_policy(Some("lenient"), None).is_err());
        assert!(parse_policy(Some("resync"), Some("x")).is_err());
    }

    #[test]
    fn cmdline_hosts() {
        let cmd = b"qemu-system-x86_64\0-M\0q35\0-device\0vfio-pci,host=00:19.0,x-no-mmap=on\0-device\0e1000e,addr=3\0-device\0driver=vfio-pci,sysfsdev=/sys/bus/pci/devices/0000:01:00.0/\0";
        assert_eq!(
            vfio_hosts_in_cmdline(cmd),
            vec!["0000:00:19.0".to_string(), "0000:01:00.0".to_string()]
        );
    }
}
