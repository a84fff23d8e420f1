//! `hwrr`: record a PCI device's behaviour through VFIO and replay it without the hardware.

use clap::Parser;

mod cmd;

fn main() {
    let cli = cmd::Cli::parse();
    let code = match cmd::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hwrr: error: {e:#}");
            2
        }
    };
    std::process::exit(code);
}
