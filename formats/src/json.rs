//! The JSON form of events, shared by `hwrr dump --json`, `hwrr diff` and replay reports.
//!
//! Numbers are plain unsigned JSON integers; bytes are lowercase hex strings.

use serde_json::{json, Map, Value};

use crate::event::{AccessData, Event, EventKind, IrqData};
use crate::hex;
use crate::regmap::RegisterMap;

/// How much of an event's payload to include.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JsonOptions {
    /// Include DMA and marker payload bytes (`data`, `before`) as hex.
    pub payloads: bool,
}

/// Adds `size` and `value` (widths 1, 2, 4, 8) or `size` and hex `data` for other lengths: how every
/// JSON form of an access carries its data.
pub fn insert_access_data(obj: &mut Map<String, Value>, data: &AccessData) {
    match data {
        AccessData::Value { size, value } => {
            obj.insert("size".into(), json!(size));
            obj.insert("value".into(), json!(value));
        }
        AccessData::Bytes(b) => {
            obj.insert("size".into(), json!(b.len()));
            obj.insert("data".into(), json!(hex::encode(b)));
        }
    }
}

/// The JSON object for one event: `seq`, `t_ns`, `kind`, `status`, `duration_ns`, then the kind's
/// fields (see `docs/FORMAT.md`), plus `name` when `regmap` names the accessed register.
pub fn event_to_json(ev: &Event, regmap: Option<&RegisterMap>, opts: JsonOptions) -> Value {
    let mut obj = Map::new();
    obj.insert("seq".into(), json!(ev.seq));
    obj.insert("t_ns".into(), json!(ev.t_ns));
    obj.insert("kind".into(), json!(ev.tag().name()));
    obj.insert("status".into(), json!(ev.status));
    obj.insert("duration_ns".into(), json!(ev.duration_ns));
    match &ev.kind {
        EventKind::MmioRead(a)
        | EventKind::MmioWrite(a)
        | EventKind::PioRead(a)
        | EventKind::PioWrite(a) => {
            obj.insert("region".into(), json!(a.region));
            obj.insert("offset".into(), json!(a.offset));
            insert_access_data(&mut obj, &a.data);
            if let Some(name) = regmap.and_then(|m| m.name_for(a.region, a.offset)) {
                obj.insert("name".into(), json!(name));
            }
        }
        EventKind::ConfigRead(c) | EventKind::ConfigWrite(c) => {
            obj.insert("offset".into(), json!(c.offset));
            insert_access_data(&mut obj, &c.data);
            let config = crate::header::region_index::CONFIG;
            if let Some(name) = regmap.and_then(|m| m.name_for(config, c.offset as u64)) {
                obj.insert("name".into(), json!(name));
            }
        }
        EventKind::Irq(i) => {
            obj.insert("index".into(), json!(i.index));
            obj.insert("vector".into(), json!(i.vector));
        }
        EventKind::IrqSetup(s) => {
            obj.insert("index".into(), json!(s.index));
            obj.insert("start".into(), json!(s.start));
            obj.insert("count".into(), json!(s.count));
            obj.insert("action".into(), json!(s.action.name()));
            let (data, flags) = match &s.data {
                IrqData::None => ("none", None),
                IrqData::Bool(b) => ("bool", Some(b)),
                IrqData::Eventfd(b) => ("eventfd", Some(b)),
            };
            obj.insert("data".into(), json!(data));
            if let Some(flags) = flags {
                obj.insert("flags".into(), json!(flags));
            }
        }
        EventKind::DmaMap(m) | EventKind::DmaUnmap(m) => {
            obj.insert("iova".into(), json!(m.iova));
            obj.insert("len".into(), json!(m.len));
            obj.insert("flags".into(), json!(m.flags));
        }
        EventKind::DmaRead(d) => {
            obj.insert("iova".into(), json!(d.iova));
            obj.insert("len".into(), json!(d.data.len()));
            if opts.payloads {
                obj.insert("data".into(), json!(hex::encode(&d.data)));
            }
        }
        EventKind::DmaWrite(d) => {
            obj.insert("iova".into(), json!(d.iova));
            obj.insert("len".into(), json!(d.data.len()));
            obj.insert("has_before".into(), json!(d.before.is_some()));
            if opts.payloads {
                obj.insert("data".into(), json!(hex::encode(&d.data)));
                if let Some(b) = &d.before {
                    obj.insert("before".into(), json!(hex::encode(b)));
                }
            }
        }
        EventKind::Reset => {}
        EventKind::Marker(m) => {
            obj.insert("label".into(), json!(m.label));
            if let Some(d) = &m.data {
                obj.insert("len".into(), json!(d.len()));
                if opts.payloads {
                    obj.insert("data".into(), json!(hex::encode(d)));
                }
            }
        }
    }
    Value::Object(obj)
}

/// A one-line human-readable rendering of an event (the plain `hwrr dump` format).
pub fn event_to_text(ev: &Event, regmap: Option<&RegisterMap>) -> String {
    let head = format!("{:>10} {:>15} {:<12}", ev.seq, ev.t_ns, ev.tag().name());
    let data_str = |d: &AccessData| match d {
        AccessData::Value { size, value } => {
            format!("/{size} = {value:#0w$x}", w = 2 + 2 * *size as usize)
        }
        AccessData::Bytes(b) => format!("/{} = [{}]", b.len(), hex::encode(b)),
    };
    let body = match &ev.kind {
        EventKind::MmioRead(a)
        | EventKind::MmioWrite(a)
        | EventKind::PioRead(a)
        | EventKind::PioWrite(a) => {
            let name = regmap
                .and_then(|m| m.name_for(a.region, a.offset))
                .map(|n| format!(" {n}"))
                .unwrap_or_default();
            format!(
                "bar{}+{:#x}{}{}",
                a.region,
                a.offset,
                data_str(&a.data),
                name
            )
        }
        EventKind::ConfigRead(c) | EventKind::ConfigWrite(c) => {
            format!("cfg+{:#x}{}", c.offset, data_str(&c.data))
        }
        EventKind::Irq(i) => format!("index {} vector {}", i.index, i.vector),
        EventKind::IrqSetup(s) => format!(
            "index {} start {} count {} {} {:?}",
            s.index,
            s.start,
            s.count,
            s.action.name(),
            s.data
        ),
        EventKind::DmaMap(m) | EventKind::DmaUnmap(m) => {
            format!("iova {:#x} len {:#x} flags {:#x}", m.iova, m.len, m.flags)
        }
        EventKind::DmaRead(d) => format!("iova {:#x} len {}", d.iova, d.data.len()),
        EventKind::DmaWrite(d) => format!(
            "iova {:#x} len {}{}",
            d.iova,
            d.data.len(),
            if d.before.is_some() {
                " (with before)"
            } else {
                ""
            }
        ),
        EventKind::Reset => String::new(),
        EventKind::Marker(m) => format!("{:?}", m.label),
    };
    let status = if ev.status != 0 {
        format!(" status={}", ev.status)
    } else {
        String::new()
    };
    format!("{head} {body}{status}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{DmaWrite, RegionAccess};

    #[test]
    fn access_json_has_contract_fields() {
        let ev = Event::new(
            7,
            1000,
            EventKind::MmioRead(RegionAccess {
                region: 0,
                offset: 8,
                data: AccessData::Value {
                    size: 4,
                    value: 0x80283,
                },
            }),
        );
        let v = event_to_json(&ev, None, JsonOptions::default());
        assert_eq!(v["seq"], 7);
        assert_eq!(v["t_ns"], 1000);
        assert_eq!(v["kind"], "mmio_read");
        assert_eq!(v["region"], 0);
        assert_eq!(v["offset"], 8);
        assert_eq!(v["size"], 4);
        assert_eq!(v["value"], 0x80283);
        assert!(event_to_text(&ev, None).contains("bar0+0x8/4 = 0x00080283"));
    }

    #[test]
    fn dma_payload_only_on_request() {
        let ev = Event::new(
            1,
            2,
            EventKind::DmaWrite(DmaWrite {
                iova: 0x1000,
                data: vec![1, 2],
                before: Some(vec![0, 0]),
            }),
        );
        let v = event_to_json(&ev, None, JsonOptions::default());
        assert_eq!(v["len"], 2);
        assert!(v.get("data").is_none());
        let v = event_to_json(&ev, None, JsonOptions { payloads: true });
        assert_eq!(v["data"], "0102");
        assert_eq!(v["before"], "0000");
    }
}
