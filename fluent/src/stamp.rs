//! Stamping records with the verified sender: the stamp's keys are
//! encoded once per stream, and each record is copied pair by pair, minus
//! any pair whose key the stamp sets, plus the stamp.

use crate::scan::{self, split_value};
use crate::FluentError;

/// A stamp value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StampValue {
    /// A string.
    Str(String),
    /// A list of strings (roles).
    List(Vec<String>),
}

/// The key/value pairs added to every record of one stream.
#[derive(Debug, Clone)]
pub struct Stamp {
    /// The pairs, msgpack-encoded back to back.
    pairs: Vec<u8>,
    /// The keys, to drop pairs the app sent under them.
    keys: Vec<Vec<u8>>,
}

impl Stamp {
    /// A stamp of `fields` (key, value).
    pub fn new(fields: &[(String, StampValue)]) -> Stamp {
        let mut pairs = Vec::new();
        for (k, v) in fields {
            put_str(&mut pairs, k);
            match v {
                StampValue::Str(s) => put_str(&mut pairs, s),
                StampValue::List(items) => {
                    // Writing to a Vec cannot fail.
                    let _ = rmp::encode::write_array_len(&mut pairs, items.len() as u32);
                    for s in items {
                        put_str(&mut pairs, s);
                    }
                }
            }
        }
        Stamp {
            pairs,
            keys: fields.iter().map(|(k, _)| k.as_bytes().to_vec()).collect(),
        }
    }

    /// Writes `record` (one msgpack map) stamped to `out`; returns how many
    /// of the record's own pairs were dropped because the stamp sets their
    /// key (a forgery, or a second pass through a router).
    pub fn record(&self, record: &[u8], out: &mut Vec<u8>) -> Result<u32, FluentError> {
        self.record_from(record, out).map(|(_, dropped)| dropped)
    }

    /// [`Stamp::record`] for the record at the start of `input` (which may
    /// go on past it): returns the record's length and the pairs dropped.
    /// One pass over the record: framing and stamping together.
    pub fn record_from(
        &self,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(usize, u32), FluentError> {
        self.record_with(input, None, out)
    }

    /// [`Stamp::record_from`], with one more pair `extra` (a msgpack str
    /// key and a msgpack value, both encoded) written before the stamp: a
    /// pair of the record's own under the same key is dropped, so the key
    /// appears once. It carries Fluent Bit's event metadata (see
    /// [`crate::EventTime`]).
    pub fn record_with(
        &self,
        input: &[u8],
        extra: Option<(&[u8], &[u8])>,
        out: &mut Vec<u8>,
    ) -> Result<(usize, u32), FluentError> {
        let extra_key = extra.and_then(|(k, _)| scan::as_str(k));
        let not_map = FluentError::Malformed("a record must be a map");
        let (pairs, head) = match input.first() {
            Some(m @ 0x80..=0x8f) => (u32::from(m & 0x0f), 1),
            Some(0xde) => match input.get(1..3) {
                Some(b) => (u32::from(u16::from_be_bytes([b[0], b[1]])), 3),
                None => return Err(FluentError::Malformed("a msgpack value is cut short")),
            },
            Some(0xdf) => match input.get(1..5) {
                Some(b) => (u32::from_be_bytes([b[0], b[1], b[2], b[3]]), 5),
                None => return Err(FluentError::Malformed("a msgpack value is cut short")),
            },
            _ => return Err(not_map),
        };
        let mut rest = &input[head..];
        // map32 is a valid encoding of any map: its length is written once
        // the pairs are counted, with no second pass.
        let header = out.len();
        out.extend_from_slice(&[0xdf, 0, 0, 0, 0]);
        let mut kept: u32 = 0;
        let mut dropped: u32 = 0;
        // Pairs are copied in runs: one copy for a record with no
        // forged key, whatever its size.
        let body = rest;
        let mut run = 0usize;
        let mut pos = 0usize;
        for _ in 0..pairs {
            let (k, r) = split_value(rest)?;
            let (v, r) = split_value(r)?;
            rest = r;
            let len = k.len() + v.len();
            let key = scan::as_str(k);
            let stamped = key.is_some_and(|k| self.keys.iter().any(|s| s == k));
            if stamped || (extra_key.is_some() && key == extra_key) {
                out.extend_from_slice(&body[run..pos]);
                run = pos + len;
                // Only a stamp key counts as overwritten (a forgery).
                dropped += u32::from(stamped);
            } else {
                kept += 1;
            }
            pos += len;
        }
        out.extend_from_slice(&body[run..pos]);
        let mut total = kept + self.keys.len() as u32;
        if let Some((k, v)) = extra {
            out.extend_from_slice(k);
            out.extend_from_slice(v);
            total += 1;
        }
        out.extend_from_slice(&self.pairs);
        out[header + 1..header + 5].copy_from_slice(&total.to_be_bytes());
        Ok((head + pos, dropped))
    }
}

/// Appends a msgpack str.
pub fn put_str(out: &mut Vec<u8>, s: &str) {
    // Writing to a Vec cannot fail.
    let _ = rmp::encode::write_str(out, s);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmpv::Value as V;

    fn enc(v: &V) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, v).expect("encode");
        out
    }

    #[test]
    fn stamps_and_overwrites_forgeries() {
        let stamp = Stamp::new(&[
            ("darkport_identity".into(), StampValue::Str("app-1".into())),
            (
                "darkport_roles".into(),
                StampValue::List(vec!["web".into(), "eu".into()]),
            ),
        ]);
        let record = V::Map(vec![
            (V::from("message"), V::from("hi")),
            (V::from("darkport_identity"), V::from("admin")),
            (V::from(7), V::from("odd key")),
        ]);
        let mut out = Vec::new();
        let dropped = stamp.record(&enc(&record), &mut out).expect("stamp");
        assert_eq!(dropped, 1);
        let v = rmpv::decode::read_value(&mut &out[..]).expect("valid msgpack");
        let map = v.as_map().expect("map");
        assert_eq!(map.len(), 4);
        let get = |k: &str| {
            map.iter()
                .find(|(a, _)| a.as_str() == Some(k))
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("darkport_identity"), Some(V::from("app-1")));
        assert_eq!(get("message"), Some(V::from("hi")));
        assert_eq!(
            get("darkport_roles"),
            Some(V::Array(vec![V::from("web"), V::from("eu")]))
        );
        assert!(stamp.record(&enc(&V::from("not a map")), &mut out).is_err());
    }
}
