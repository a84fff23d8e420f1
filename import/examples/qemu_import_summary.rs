//! Prints what an import of a QEMU trace log would produce: the device, the header's tables and
//! the event counts. `cargo run --release -p hwrr-import --example qemu_import_summary -- LOG [DEVICE]`

use std::time::Instant;

use hwrr_formats::KindTag;
use hwrr_import::{scan, ImportOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: qemu_import_summary LOG [DEVICE]")?;
    let opts = ImportOptions {
        device: args.next(),
        ..ImportOptions::default()
    };
    let started = Instant::now();
    let import = scan(path.as_ref(), &opts)?;
    let scanned = started.elapsed();
    let h = import.header();
    println!("device: {:?}", import.device());
    println!("identity: {:?}", h.device);
    println!("regions: {:?}", h.regions);
    println!("irqs: {:?}", h.irqs);
    println!(
        "config[0..0x40]: {:02x?}",
        &h.config_space[..0x40.min(h.config_space.len())]
    );
    let mut first = None;
    let mut last = None;
    let report = import.events(&mut |e| {
        if first.is_none() {
            first = Some(e.clone());
        }
        last = Some(e);
        Ok(())
    })?;
    let total = started.elapsed();
    println!("first: {first:?}");
    println!("last: {last:?}");
    for k in KindTag::ALL {
        let n = report.by_kind.get(k);
        if n > 0 {
            println!("{:>12} {n}", k.name());
        }
    }
    println!(
        "lines {} events {} malformed {} ignored {} unmapped {} clamped {}",
        report.lines,
        report.events,
        report.malformed,
        report.ignored,
        report.unmapped,
        report.timestamps_clamped
    );
    for (n, t) in &report.malformed_examples {
        println!("  malformed line {n}: {t}");
    }
    println!(
        "scan {:.3}s, total {:.3}s, {:.2} M lines/s per pass",
        scanned.as_secs_f64(),
        total.as_secs_f64(),
        2.0 * report.lines as f64 / total.as_secs_f64() / 1e6
    );
    Ok(())
}
