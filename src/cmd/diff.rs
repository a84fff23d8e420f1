//! `hwrr diff`: the first point where two traces' access streams differ.

use std::collections::VecDeque;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use hwrr_formats::json::{event_to_json, event_to_text, JsonOptions};
use hwrr_formats::regmap::RegisterMap;
use hwrr_formats::{Event, EventKind, TraceReader};
use serde_json::json;

/// Events of context printed on each side of the first difference.
const CONTEXT: usize = 4;

/// Compare the register and config-space access streams of two traces.
#[derive(Args, Debug)]
pub struct DiffArgs {
    /// First trace.
    a: PathBuf,
    /// Second trace.
    b: PathBuf,
    /// Name registers with this register map (TOML).
    #[arg(long)]
    regmap: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// What is compared: the access itself, not when it happened or how long it took.
fn access_key(ev: &Event) -> Option<&EventKind> {
    ev.tag().is_access().then_some(&ev.kind)
}

struct Side<'a> {
    iter: Box<dyn Iterator<Item = anyhow::Result<Event>> + 'a>,
    before: VecDeque<Event>,
}

impl<'a> Side<'a> {
    fn new(reader: &'a TraceReader) -> Self {
        Side {
            iter: Box::new(
                reader
                    .iter()
                    .map(|r| r.context("cannot decode trace"))
                    .filter(|r| r.as_ref().map_or(true, |e| e.tag().is_access())),
            ),
            before: VecDeque::new(),
        }
    }

    fn next(&mut self) -> anyhow::Result<Option<Event>> {
        self.iter.next().transpose()
    }

    fn remember(&mut self, ev: Event) {
        if self.before.len() == CONTEXT {
            self.before.pop_front();
        }
        self.before.push_back(ev);
    }

    fn after(&mut self) -> anyhow::Result<Vec<Event>> {
        let mut v = Vec::new();
        while v.len() < CONTEXT {
            match self.next()? {
                Some(e) => v.push(e),
                None => break,
            }
        }
        Ok(v)
    }
}

/// Runs `hwrr diff`.
pub fn run(args: DiffArgs) -> anyhow::Result<i32> {
    let (ra, _) = super::open_trace(&args.a)?;
    let (rb, _) = super::open_trace(&args.b)?;
    let regmap = args.regmap.as_deref().map(RegisterMap::load).transpose()?;
    let mut a = Side::new(&ra);
    let mut b = Side::new(&rb);
    let mut index: u64 = 0;
    let (ea, eb) = loop {
        let (ea, eb) = (a.next()?, b.next()?);
        match (&ea, &eb) {
            (None, None) => {
                if args.json {
                    println!("{}", json!({"equal": true, "accesses": index}));
                } else {
                    println!("equal: {index} accesses");
                }
                return Ok(0);
            }
            (Some(x), Some(y)) if access_key(x) == access_key(y) => {
                a.remember(x.clone());
                b.remember(y.clone());
                index += 1;
            }
            _ => break (ea, eb),
        }
    };
    let after_a = a.after()?;
    let after_b = b.after()?;
    let rm = regmap.as_ref();
    let opts = JsonOptions::default();
    if args.json {
        let side = |first: &Option<Event>, before: &VecDeque<Event>, after: &[Event]| {
            json!({
                "event": first.as_ref().map(|e| event_to_json(e, rm, opts)),
                "before": before.iter().map(|e| event_to_json(e, rm, opts)).collect::<Vec<_>>(),
                "after": after.iter().map(|e| event_to_json(e, rm, opts)).collect::<Vec<_>>(),
            })
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "equal": false,
                "access_index": index,
                "a": side(&ea, &a.before, &after_a),
                "b": side(&eb, &b.before, &after_b),
            }))?
        );
    } else {
        println!("first difference at access #{index}");
        for (name, path, first, before, after) in [
            ("a", &args.a, &ea, &a.before, &after_a),
            ("b", &args.b, &eb, &b.before, &after_b),
        ] {
            println!("--- {name}: {}", path.display());
            for e in before {
                println!("    {}", event_to_text(e, rm));
            }
            match first {
                Some(e) => println!("  > {}", event_to_text(e, rm)),
                None => println!("  > (end of trace)"),
            }
            for e in after {
                println!("    {}", event_to_text(e, rm));
            }
        }
    }
    Ok(1)
}
