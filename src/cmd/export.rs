//! `hwrr export`: Perfetto / Chrome trace-event JSON, or CSV.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use hwrr_formats::{hex, AccessData, Event, EventKind, IrqData, TraceReader};
use serde_json::{json, Value};

/// Output formats.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ExportFormat {
    /// Chrome trace-event JSON (opens in Perfetto and chrome://tracing).
    Perfetto,
    /// One CSV row per event.
    Csv,
}

/// Convert a trace for other tools.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The trace file.
    trace: PathBuf,
    /// Output format.
    #[arg(long)]
    format: ExportFormat,
    /// Output file.
    #[arg(short = 'o', long)]
    output: PathBuf,
}

/// Runs `hwrr export`.
pub fn run(args: ExportArgs) -> anyhow::Result<i32> {
    let (reader, _) = super::open_trace(&args.trace)?;
    let file = File::create(&args.output)
        .with_context(|| format!("cannot create {}", args.output.display()))?;
    let mut out = BufWriter::new(file);
    let events = reader.iter().map(|r| r.context("cannot decode trace"));
    let n = match args.format {
        ExportFormat::Perfetto => write_perfetto(&reader, events, &mut out)?,
        ExportFormat::Csv => write_csv(events, &mut out)?,
    };
    out.flush()?;
    println!("exported {n} events to {}", args.output.display());
    Ok(0)
}

const PID: u64 = 1;
const TRACK_CONFIG: u64 = 10;
const TRACK_DMA: u64 = 20;
const TRACK_CONTROL: u64 = 30;
const TRACK_IRQ_BASE: u64 = 1000;

fn track_name(tid: u64) -> String {
    match tid {
        t if t < TRACK_CONFIG => format!("region {}", t - 1),
        TRACK_CONFIG => "config space".into(),
        TRACK_DMA => "DMA".into(),
        TRACK_CONTROL => "control (irq setup, DMA map, reset, markers)".into(),
        t => {
            let k = t - TRACK_IRQ_BASE;
            let index = k / 65536;
            let vector = k % 65536;
            let kind = match index {
                0 => "INTx",
                1 => "MSI",
                2 => "MSI-X",
                _ => "IRQ",
            };
            format!("{kind} vector {vector}")
        }
    }
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

fn access_args(region: Option<u32>, offset: u64, data: &AccessData, seq: u64) -> Value {
    let mut a = json!({ "seq": seq, "offset": format!("{offset:#x}") });
    if let Some(r) = region {
        a["region"] = json!(r);
    }
    match data {
        AccessData::Value { size, value } => {
            a["size"] = json!(size);
            a["value"] = json!(format!("{value:#x}"));
        }
        AccessData::Bytes(b) => {
            a["size"] = json!(b.len());
            a["data"] = json!(hex::encode(b));
        }
    }
    a
}

/// One trace-event object for `ev`, and the track it goes on.
fn perfetto_event(ev: &Event) -> (u64, Value) {
    let ts = us(ev.t_ns);
    // A zero duration would make slices invisible; 1 ns marks "not measured".
    let dur = us(ev.duration_ns.max(1));
    let complete = |tid: u64, name: String, args: Value| {
        (
            tid,
            json!({"name": name, "cat": ev.tag().name(), "ph": "X", "ts": ts, "dur": dur,
                   "pid": PID, "tid": tid, "args": args}),
        )
    };
    let instant = |tid: u64, name: String, args: Value| {
        (
            tid,
            json!({"name": name, "cat": ev.tag().name(), "ph": "i", "s": "t", "ts": ts,
                   "pid": PID, "tid": tid, "args": args}),
        )
    };
    match &ev.kind {
        EventKind::MmioRead(a) | EventKind::PioRead(a) => complete(
            1 + a.region as u64,
            format!("read {:#x}", a.offset),
            access_args(Some(a.region), a.offset, &a.data, ev.seq),
        ),
        EventKind::MmioWrite(a) | EventKind::PioWrite(a) => complete(
            1 + a.region as u64,
            format!("write {:#x}", a.offset),
            access_args(Some(a.region), a.offset, &a.data, ev.seq),
        ),
        EventKind::ConfigRead(c) => complete(
            TRACK_CONFIG,
            format!("read {:#x}", c.offset),
            access_args(None, c.offset as u64, &c.data, ev.seq),
        ),
        EventKind::ConfigWrite(c) => complete(
            TRACK_CONFIG,
            format!("write {:#x}", c.offset),
            access_args(None, c.offset as u64, &c.data, ev.seq),
        ),
        EventKind::Irq(i) => instant(
            TRACK_IRQ_BASE + i.index as u64 * 65536 + (i.vector as u64 % 65536),
            "irq".into(),
            json!({"seq": ev.seq, "index": i.index, "vector": i.vector}),
        ),
        EventKind::DmaRead(d) => complete(
            TRACK_DMA,
            "dma_read".into(),
            json!({"seq": ev.seq, "iova": format!("{:#x}", d.iova), "len": d.data.len()}),
        ),
        EventKind::DmaWrite(d) => complete(
            TRACK_DMA,
            "dma_write".into(),
            json!({"seq": ev.seq, "iova": format!("{:#x}", d.iova), "len": d.data.len()}),
        ),
        EventKind::IrqSetup(s) => instant(
            TRACK_CONTROL,
            format!("irq_setup {}", s.action.name()),
            json!({"seq": ev.seq, "index": s.index, "start": s.start, "count": s.count}),
        ),
        EventKind::DmaMap(m) | EventKind::DmaUnmap(m) => instant(
            TRACK_CONTROL,
            ev.tag().name().into(),
            json!({"seq": ev.seq, "iova": format!("{:#x}", m.iova), "len": m.len, "flags": m.flags}),
        ),
        EventKind::Reset => instant(TRACK_CONTROL, "reset".into(), json!({"seq": ev.seq})),
        EventKind::Marker(m) => instant(
            TRACK_CONTROL,
            format!("marker {}", m.label),
            json!({"seq": ev.seq}),
        ),
    }
}

/// Writes Chrome trace-event JSON: one track per region, one per interrupt vector, DMA as slices.
pub fn write_perfetto(
    reader: &TraceReader,
    events: impl Iterator<Item = anyhow::Result<Event>>,
    out: &mut impl Write,
) -> anyhow::Result<u64> {
    let h = reader.header();
    out.write_all(b"{\"displayTimeUnit\":\"ns\",\"traceEvents\":[\n")?;
    let process = json!({"name": "process_name", "ph": "M", "pid": PID, "tid": 0,
        "args": {"name": format!("hwrr {:04x}:{:04x}", h.device.vendor_id, h.device.device_id)}});
    serde_json::to_writer(&mut *out, &process)?;
    let mut tracks = BTreeSet::new();
    let mut n = 0u64;
    for ev in events {
        let ev = ev?;
        let (tid, obj) = perfetto_event(&ev);
        if tracks.insert(tid) {
            out.write_all(b",\n")?;
            let meta = json!({"name": "thread_name", "ph": "M", "pid": PID, "tid": tid,
                "args": {"name": track_name(tid)}});
            serde_json::to_writer(&mut *out, &meta)?;
        }
        out.write_all(b",\n")?;
        serde_json::to_writer(&mut *out, &obj)?;
        n += 1;
    }
    out.write_all(b"\n]}\n")?;
    Ok(n)
}

/// CSV column names.
pub const CSV_HEADER: &str = "seq,t_ns,kind,status,duration_ns,region,offset,size,value,data,index,vector,start,count,action,iova,len,flags,label";

fn csv_quote(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Writes one CSV row per event under [`CSV_HEADER`].
pub fn write_csv(
    events: impl Iterator<Item = anyhow::Result<Event>>,
    out: &mut impl Write,
) -> anyhow::Result<u64> {
    writeln!(out, "{CSV_HEADER}")?;
    let mut n = 0u64;
    for ev in events {
        let ev = ev?;
        // region, offset, size, value, data, index, vector, start, count, action, iova, len, flags, label
        let mut f: [String; 14] = Default::default();
        let access = |f: &mut [String; 14], region: Option<u32>, offset: u64, d: &AccessData| {
            f[0] = region.map(|r| r.to_string()).unwrap_or_default();
            f[1] = offset.to_string();
            match d {
                AccessData::Value { size, value } => {
                    f[2] = size.to_string();
                    f[3] = value.to_string();
                }
                AccessData::Bytes(b) => {
                    f[2] = b.len().to_string();
                    f[4] = hex::encode(b);
                }
            }
        };
        match &ev.kind {
            EventKind::MmioRead(a)
            | EventKind::MmioWrite(a)
            | EventKind::PioRead(a)
            | EventKind::PioWrite(a) => access(&mut f, Some(a.region), a.offset, &a.data),
            EventKind::ConfigRead(c) | EventKind::ConfigWrite(c) => {
                access(&mut f, None, c.offset as u64, &c.data)
            }
            EventKind::Irq(i) => {
                f[5] = i.index.to_string();
                f[6] = i.vector.to_string();
            }
            EventKind::IrqSetup(s) => {
                f[5] = s.index.to_string();
                f[7] = s.start.to_string();
                f[8] = s.count.to_string();
                f[9] = s.action.name().to_string();
                f[4] = match &s.data {
                    IrqData::None => String::new(),
                    IrqData::Bool(b) | IrqData::Eventfd(b) => {
                        b.iter().map(|x| if *x { '1' } else { '0' }).collect()
                    }
                };
            }
            EventKind::DmaMap(m) | EventKind::DmaUnmap(m) => {
                f[10] = m.iova.to_string();
                f[11] = m.len.to_string();
                f[12] = m.flags.to_string();
            }
            EventKind::DmaRead(d) => {
                f[10] = d.iova.to_string();
                f[11] = d.data.len().to_string();
            }
            EventKind::DmaWrite(d) => {
                f[10] = d.iova.to_string();
                f[11] = d.data.len().to_string();
            }
            EventKind::Reset => {}
            EventKind::Marker(m) => f[13] = csv_quote(&m.label),
        }
        writeln!(
            out,
            "{},{},{},{},{},{}",
            ev.seq,
            ev.t_ns,
            ev.tag().name(),
            ev.status,
            ev.duration_ns,
            f.join(",")
        )?;
        n += 1;
    }
    Ok(n)
}
