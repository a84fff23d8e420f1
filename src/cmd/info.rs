//! `hwrr info`: what a trace holds, without decoding its events.

use std::path::PathBuf;

use clap::Args;
use hwrr_formats::{KindTag, TraceReader};
use serde_json::{json, Map, Value};

/// Print a trace's device, regions and event counts.
#[derive(Args, Debug)]
pub struct InfoArgs {
    /// The trace file.
    trace: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Builds the `info` JSON object (the CLI contract: `events`, `by_kind`, `file_bytes`, `chunks`,
/// `duration_ns`, `device`, `regions`, ...).
pub fn info_json(reader: &TraceReader) -> Value {
    let h = reader.header();
    let counts = reader.counts();
    let mut by_kind = Map::new();
    for k in KindTag::ALL {
        by_kind.insert(k.name().into(), json!(counts.get(k)));
    }
    let (first_t, last_t) = reader.time_range().unwrap_or((0, 0));
    let regions: Vec<Value> = h
        .regions
        .iter()
        .map(|r| {
            let mut o = json!({
                "index": r.index,
                "kind": r.kind.name(),
                "bytes": r.size,
                "flags": r.flags,
            });
            if let Some(a) = r.alias_of {
                o["alias_of"] = json!(a);
            }
            o
        })
        .collect();
    let irqs: Vec<Value> = h
        .irqs
        .iter()
        .map(|i| json!({"index": i.index, "count": i.count, "flags": i.flags}))
        .collect();
    let accesses = counts.accesses();
    json!({
        "events": reader.event_count(),
        "by_kind": by_kind,
        "file_bytes": reader.file_len(),
        "chunks": reader.chunk_count(),
        "first_seq": reader.first_seq(),
        "first_t_ns": first_t,
        "last_t_ns": last_t,
        "duration_ns": last_t - first_t,
        "accesses": accesses,
        "bytes_per_access": if accesses > 0 { reader.file_len() as f64 / accesses as f64 } else { 0.0 },
        "device": {
            "vendor": format!("{:#06x}", h.device.vendor_id),
            "device": format!("{:#06x}", h.device.device_id),
            "subsystem_vendor": format!("{:#06x}", h.device.subsystem_vendor_id),
            "subsystem": format!("{:#06x}", h.device.subsystem_id),
            "class": format!("{:#08x}", h.device.class_code),
            "revision": format!("{:#04x}", h.device.revision),
            "bdf": h.device.bdf,
        },
        "config_bytes": h.config_space.len(),
        "rom_bytes": h.rom.as_ref().map_or(0, |r| r.len()),
        "regions": regions,
        "irqs": irqs,
        "capture": {
            "tool": h.capture.tool,
            "source": h.capture.source,
            "kernel": h.capture.kernel,
            "host": h.capture.host,
            "start_unix_ns": h.capture.start_unix_ns,
        },
        "labels": h.labels,
        "sliced": h.start_state.is_some(),
    })
}

/// Runs `hwrr info`.
pub fn run(args: InfoArgs) -> anyhow::Result<i32> {
    let (reader, recovered) = super::open_trace(&args.trace)?;
    let mut info = info_json(&reader);
    // A recovered trace's numbers (file_bytes among them) are those of its recovered form.
    info["unfinished"] = json!(recovered.is_some());
    if let Some(r) = &recovered {
        info["recovered"] = json!({
            "events": r.events,
            "event_chunks": r.event_chunks,
            "blob_chunks": r.blob_chunks,
            "dropped_bytes": r.dropped_bytes,
            "stopped_because": r.stopped_because,
        });
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(0);
    }
    let h = reader.header();
    println!("trace        {}", args.trace.display());
    if let Some(r) = &recovered {
        println!(
            "unfinished   no footer: {} events in {} event chunks recovered in memory, {} bytes dropped",
            r.events, r.event_chunks, r.dropped_bytes
        );
    }
    println!(
        "device       {:04x}:{:04x} (subsystem {:04x}:{:04x}, class {:06x}, rev {:02x}){}",
        h.device.vendor_id,
        h.device.device_id,
        h.device.subsystem_vendor_id,
        h.device.subsystem_id,
        h.device.class_code,
        h.device.revision,
        h.device
            .bdf
            .as_ref()
            .map(|b| format!(" at {b}"))
            .unwrap_or_default()
    );
    println!(
        "capture      {} via {}{}",
        h.capture.tool,
        h.capture.source,
        h.capture
            .kernel
            .as_ref()
            .map(|k| format!(", kernel {k}"))
            .unwrap_or_default()
    );
    for (k, v) in &h.labels {
        println!("label        {k}={v}");
    }
    for r in &h.regions {
        println!(
            "region {:<5} {:<6} {:>10} bytes{}",
            r.index,
            r.kind.name(),
            r.size,
            r.alias_of
                .map(|a| format!(" (alias of region {a})"))
                .unwrap_or_default()
        );
    }
    for i in &h.irqs {
        println!("irq index {:<2} {} vectors", i.index, i.count);
    }
    if let Some(rom) = &h.rom {
        println!("rom          {} bytes", rom.len());
    }
    println!(
        "events       {} in {} chunks, {} bytes on disk ({:.3} bytes/access)",
        info["events"],
        info["chunks"],
        info["file_bytes"],
        info["bytes_per_access"].as_f64().unwrap_or(0.0)
    );
    println!("duration     {} ns", info["duration_ns"]);
    let counts = reader.counts();
    for k in KindTag::ALL {
        if counts.get(k) > 0 {
            println!("  {:<13}{:>12}", k.name(), counts.get(k));
        }
    }
    Ok(0)
}
