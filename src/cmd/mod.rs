//! Command-line interface: one module per subcommand.

use clap::{Parser, Subcommand};

pub mod host;

/// Record a PCI device's behaviour through VFIO and replay it without the hardware.
#[derive(Parser, Debug)]
#[command(name = "hwrr", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check that this host can pass a device through with VFIO.
    Doctor(host::DoctorArgs),
    /// Hand a device to vfio-pci.
    Bind(host::BindArgs),
    /// Give a device back to its host driver.
    Unbind(host::UnbindArgs),
    /// Recover a device: unbind, reset, remove, rescan, rebind.
    Reset(host::ResetArgs),
}

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Doctor(a) => host::run_doctor(a),
        Command::Bind(a) => host::run_bind(a),
        Command::Unbind(a) => host::run_unbind(a),
        Command::Reset(a) => host::run_reset(a),
    }
}
