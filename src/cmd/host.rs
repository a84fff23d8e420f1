//! `hwrr doctor`, `hwrr bind`, `hwrr unbind`, `hwrr reset`: host setup for VFIO passthrough.
//!
//! Exit codes: `doctor` exits 0 when no check failed (warnings are printed), 1 when a check failed,
//! 2 when it could not run (no sysfs under the root). `bind`, `unbind` and `reset` exit 0 when
//! done (warnings are printed), 1 when a step failed (the steps done so far are printed, then the
//! error and what to do).

use std::path::PathBuf;

use clap::Args;
use hwrr_host_setup::{
    bind, doctor, reset, unbind, ActionError, ActionReport, Bdf, HostRoot, KernelLog, Status,
};

/// Where the host's files are (shared by the four commands).
#[derive(Args, Debug, Clone)]
pub struct RootArgs {
    /// Treat DIR as `/`: use DIR/sys, DIR/proc, DIR/dev, DIR/lib/modules, DIR/run/hwrr (a fake tree
    /// for tests, or a chroot).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Read the kernel log from FILE (dmesg output) instead of DIR/dev/kmsg.
    #[arg(long, value_name = "FILE", conflicts_with = "dmesg")]
    pub kernel_log: Option<PathBuf>,
    /// Read the kernel log by running `dmesg`.
    #[arg(long)]
    pub dmesg: bool,
    /// Where `bind` records the driver it replaced (default DIR/run/hwrr).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

impl RootArgs {
    fn host_root(&self) -> HostRoot {
        let mut root = match &self.root {
            Some(dir) => HostRoot::under(dir),
            None => HostRoot::real(),
        };
        if let Some(f) = &self.kernel_log {
            root.kernel_log = KernelLog::File(f.clone());
        } else if self.dmesg {
            root.kernel_log = KernelLog::DmesgCommand;
        }
        if let Some(d) = &self.state_dir {
            root.state_dir = d.clone();
        }
        root
    }
}

/// Check that this host can pass a device through with VFIO, and say what to fix.
#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// Also check this device (`0000:00:19.0` or `00:19.0`): group viability, /dev/vfio access.
    pub bdf: Option<Bdf>,
    #[command(flatten)]
    pub root: RootArgs,
    /// Print the findings as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Hand a device to vfio-pci (through driver_override; never new_id).
#[derive(Args, Debug)]
pub struct BindArgs {
    /// The device, e.g. `0000:00:19.0`.
    pub bdf: Bdf,
    #[command(flatten)]
    pub root: RootArgs,
    /// Print the steps as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Take a device off vfio-pci and give it back to its host driver.
#[derive(Args, Debug)]
pub struct UnbindArgs {
    /// The device, e.g. `0000:00:19.0`.
    pub bdf: Bdf,
    #[command(flatten)]
    pub root: RootArgs,
    /// Print the steps as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Recover a device left in a bad state: unbind, function reset, remove, rescan, rebind the host
/// driver.
#[derive(Args, Debug)]
pub struct ResetArgs {
    /// The device, e.g. `0000:00:19.0`.
    pub bdf: Bdf,
    #[command(flatten)]
    pub root: RootArgs,
    /// Print the steps as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `hwrr doctor`.
pub fn run_doctor(args: DoctorArgs) -> anyhow::Result<i32> {
    let root = args.root.host_root();
    let report = match doctor(&root, args.bdf) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hwrr doctor: could not run: {e}");
            return Ok(2);
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for f in &report.findings {
            println!("{:>4}  {:<17} {}", f.status.label(), f.check, f.message);
        }
        let fails = report
            .findings
            .iter()
            .filter(|f| f.status == Status::Fail)
            .count();
        let warns = report
            .findings
            .iter()
            .filter(|f| f.status == Status::Warn)
            .count();
        println!(
            "{}",
            match (fails, warns) {
                (0, 0) => "ready for VFIO passthrough".to_string(),
                (0, w) => format!("ready, with {w} warning(s)"),
                (f, _) => format!("{f} check(s) failed: fix them and run `hwrr doctor` again"),
            }
        );
    }
    Ok(report.exit_code())
}

fn print_action(
    name: &str,
    json: bool,
    result: Result<ActionReport, ActionError>,
) -> anyhow::Result<i32> {
    let (steps, outcome) = match &result {
        Ok(r) => (&r.steps, Ok(r)),
        Err(e) => (&e.steps, Err(e)),
    };
    if json {
        let value = match outcome {
            Ok(r) => serde_json::json!({ "ok": true, "report": r }),
            Err(e) => serde_json::json!({ "ok": false, "steps": e.steps, "error": e.to_string() }),
        };
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        for s in steps {
            println!("{:>4}  {}", s.status.label(), s.what);
        }
        match outcome {
            Ok(r) => println!(
                "{name} done: driver now {}",
                r.final_driver.as_deref().unwrap_or("none")
            ),
            Err(e) => eprintln!("hwrr {name}: {e}"),
        }
    }
    Ok(if result.is_ok() { 0 } else { 1 })
}

/// Runs `hwrr bind`.
pub fn run_bind(args: BindArgs) -> anyhow::Result<i32> {
    let root = args.root.host_root();
    print_action("bind", args.json, bind(&root, args.bdf))
}

/// Runs `hwrr unbind`.
pub fn run_unbind(args: UnbindArgs) -> anyhow::Result<i32> {
    let root = args.root.host_root();
    print_action("unbind", args.json, unbind(&root, args.bdf))
}

/// Runs `hwrr reset`.
pub fn run_reset(args: ResetArgs) -> anyhow::Result<i32> {
    let root = args.root.host_root();
    print_action("reset", args.json, reset(&root, args.bdf))
}
