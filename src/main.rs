//! `hwrr`: record a PCI device's behaviour through VFIO and replay it without the hardware.

use clap::Parser;

mod cmd;

fn main() {
    // Like other Unix tools, die quietly when a reader such as `head` closes the pipe.
    // SAFETY: resetting SIGPIPE to its default disposition before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
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
