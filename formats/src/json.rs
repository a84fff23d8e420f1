//! The JSON form of an event, as `hwrr dump --json` prints it and as replay divergence reports embed
//! it: keys `seq`, `t_ns`, `kind`, then per-kind fields. Numbers are plain unsigned integers; bytes
//! are lowercase hex strings.

use serde_json::{json, Map, Value};

use crate::event::{AccessData, Event, EventKind};
use crate::regmap::RegisterMap;

/// Renders one event. With a register map, register and config accesses that fall inside a named
/// register get a `register` key (`NAME` or `NAME+k`).
pub fn event_to_json(event: &Event, regmap: Option<&RegisterMap>) -> Value {
    let mut obj = Map::new();
    obj.insert("seq".into(), json!(event.seq));
    obj.insert("t_ns".into(), json!(event.t_ns));
    obj.insert("kind".into(), json!(event.tag().name()));
    let name_for = |region: u32, offset: u64, obj: &mut Map<String, Value>| {
        if let Some(name) = regmap.and_then(|m| m.name_for(region, offset)) {
            obj.insert("register".into(), json!(name));
        }
    };
    match &event.kind {
        EventKind::MmioRead(a)
        | EventKind::MmioWrite(a)
        | EventKind::PioRead(a)
        | EventKind::PioWrite(a) => {
            obj.insert("region".into(), json!(a.region));
            obj.insert("offset".into(), json!(a.offset));
            insert_access_data(&mut obj, &a.data);
            name_for(a.region, a.offset, &mut obj);
        }
        EventKind::ConfigRead(c) | EventKind::ConfigWrite(c) => {
            obj.insert("offset".into(), json!(c.offset));
            insert_access_data(&mut obj, &c.data);
            name_for(
                crate::header::region_index::CONFIG,
                c.offset as u64,
                &mut obj,
            );
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
        }
        EventKind::DmaMap(m) | EventKind::DmaUnmap(m) => {
            obj.insert("iova".into(), json!(m.iova));
            obj.insert("len".into(), json!(m.len));
            obj.insert("flags".into(), json!(m.flags));
        }
        EventKind::DmaRead(r) => {
            obj.insert("iova".into(), json!(r.iova));
            obj.insert("len".into(), json!(r.data.len() as u64));
        }
        EventKind::DmaWrite(w) => {
            obj.insert("iova".into(), json!(w.iova));
            obj.insert("len".into(), json!(w.data.len() as u64));
        }
        EventKind::Reset => {}
        EventKind::Marker(m) => {
            obj.insert("label".into(), json!(m.label));
        }
    }
    if event.status != 0 {
        obj.insert("status".into(), json!(event.status));
    }
    Value::Object(obj)
}

/// Adds `size` and `value` (widths 1, 2, 4, 8) or `size` and `data` (hex, any other length).
pub fn insert_access_data(obj: &mut Map<String, Value>, data: &AccessData) {
    match data {
        AccessData::Value { size, value } => {
            obj.insert("size".into(), json!(size));
            obj.insert("value".into(), json!(value));
        }
        AccessData::Bytes(b) => {
            obj.insert("size".into(), json!(b.len() as u64));
            obj.insert("data".into(), json!(crate::hex::encode(b)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{ConfigAccess, DmaWrite, RegionAccess};

    #[test]
    fn renders_accesses_with_names() {
        let map =
            RegisterMap::parse("[[register]]\nname='CTRL'\nregion=0\noffset=0\nwidth=4").unwrap();
        let e = Event::new(
            7,
            100,
            EventKind::MmioWrite(RegionAccess {
                region: 0,
                offset: 2,
                data: AccessData::Value {
                    size: 2,
                    value: 0xbeef,
                },
            }),
        );
        let v = event_to_json(&e, Some(&map));
        assert_eq!(
            v,
            json!({"seq":7,"t_ns":100,"kind":"mmio_write","region":0,"offset":2,"size":2,
                   "value":0xbeef,"register":"CTRL+2"})
        );
        let c = Event::new(
            1,
            2,
            EventKind::ConfigRead(ConfigAccess {
                offset: 4,
                data: AccessData::Bytes(vec![1, 2, 3]),
            }),
        );
        assert_eq!(
            event_to_json(&c, None),
            json!({"seq":1,"t_ns":2,"kind":"config_read","offset":4,"size":3,"data":"010203"})
        );
        let d = Event::new(
            3,
            4,
            EventKind::DmaWrite(DmaWrite {
                iova: 0x1000,
                data: vec![0; 5],
                before: None,
            }),
        );
        assert_eq!(
            event_to_json(&d, None),
            json!({"seq":3,"t_ns":4,"kind":"dma_write","iova":4096,"len":5})
        );
    }
}
