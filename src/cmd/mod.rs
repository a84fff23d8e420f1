//! Command-line interface: one module per subcommand.

use clap::{Parser, Subcommand};

/// Record a PCI device's behaviour through VFIO and replay it without the hardware.
#[derive(Parser, Debug)]
#[command(name = "hwrr", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {}

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {}
}
