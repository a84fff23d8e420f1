//! Runs the scripted driver against the test device and prints what it observed as JSON.
//!
//! `cargo run -p hwrr-testdev --example drive [msix|msi|intx]`

use hwrr_testdev::driver::{self, DriverOptions, IrqMode};
use hwrr_testdev::TestDevice;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let irq_mode = match std::env::args().nth(1).as_deref() {
        None | Some("msix") => IrqMode::Msix,
        Some("msi") => IrqMode::Msi,
        Some("intx") => IrqMode::Intx,
        Some(other) => return Err(format!("unknown interrupt mode {other:?}").into()),
    };
    let mut dev = TestDevice::new();
    let opts = DriverOptions {
        irq_mode,
        ..DriverOptions::default()
    };
    let mem = driver::setup_guest_memory(&mut dev, opts.iova_base, driver::DMA_AREA_SIZE)?;
    let observed = driver::run(&mut dev, &mem, opts)?;
    println!("{}", serde_json::to_string_pretty(&observed)?);
    eprintln!("{:?}", dev.stats());
    Ok(())
}
