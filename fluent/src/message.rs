//! One forward-protocol message, as slices of the bytes it came in: the
//! four event modes, the option map, and the events inside.

use std::io::Read;

use crate::scan::{self, split_value};
use crate::FluentError;

/// The events of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body<'a> {
    /// Message mode: `[tag, time, record, option?]`.
    Single {
        /// The time value, as sent.
        time: &'a [u8],
        /// The record value, as sent.
        record: &'a [u8],
    },
    /// Forward mode: `[tag, [[time, record], ...], option?]`.
    Forward {
        /// Number of entries.
        count: u32,
        /// The entries, one msgpack value each.
        entries: &'a [u8],
    },
    /// PackedForward mode: `[tag, bin|str, option?]`, the payload being
    /// concatenated `[time, record]` entries.
    Packed(&'a [u8]),
    /// CompressedPackedForward mode: a PackedForward payload compressed
    /// with gzip (one or more members), option `compressed: "gzip"`.
    Compressed(&'a [u8]),
}

/// The option map.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options<'a> {
    /// `chunk`: the sender wants `{"ack": chunk}` once the events are
    /// stored; the raw msgpack value, kept byte for byte.
    pub chunk: Option<&'a [u8]>,
    /// `size`: the number of events, as the sender counted them.
    pub size: Option<u64>,
    /// `compressed: "gzip"`.
    pub compressed: bool,
    /// `fluent_signal` (Fluent Bit): what kind of events the message
    /// holds, the raw msgpack value kept byte for byte.
    pub signal: Option<&'a [u8]>,
}

/// `fluent_signal` of logs (Fluent Bit's `FLB_EVENT_TYPE_LOGS`); 1 is
/// metrics and 2 traces.
pub const SIGNAL_LOGS: u64 = 0;

impl Options<'_> {
    /// The kind of events, if the sender said and it is not logs: the
    /// `fluent_signal` value (`u64::MAX` if it is not an unsigned integer).
    pub fn non_log_signal(&self) -> Option<u64> {
        let v = self.signal?;
        match scan::as_uint(v) {
            Some(SIGNAL_LOGS) => None,
            Some(n) => Some(n),
            None => Some(u64::MAX),
        }
    }
}

/// A parsed message: slices of the bytes it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    /// The tag.
    pub tag: &'a str,
    /// The events.
    pub body: Body<'a>,
    /// The options.
    pub options: Options<'a>,
}

/// Parses one whole message (`msg` is exactly one msgpack value).
pub fn parse(msg: &[u8]) -> Result<Message<'_>, FluentError> {
    let bad = FluentError::Malformed;
    let (len, rest) = scan::as_array(msg).ok_or(bad("a message must be a msgpack array"))?;
    if !(2..=4).contains(&len) {
        return Err(bad("a message is an array of 2 to 4 elements"));
    }
    let (tag, rest) = split_value(rest)?;
    let tag = scan::as_str(tag).ok_or(bad("the tag must be a string"))?;
    let tag = std::str::from_utf8(tag).map_err(|_| bad("the tag is not UTF-8"))?;
    let (second, rest) = split_value(rest)?;
    let (body, option_count) = if let Some((count, entries)) = scan::as_array(second) {
        (Body::Forward { count, entries }, len - 2)
    } else if let Some(payload) = scan::as_bytes(second) {
        (Body::Packed(payload), len - 2)
    } else if scan::is_time(second) {
        if len < 3 {
            return Err(bad("a Message-mode message needs a record"));
        }
        let (record, _) = split_value(rest)?;
        (
            Body::Single {
                time: second,
                record,
            },
            len - 3,
        )
    } else {
        return Err(bad(
            "the second element must be a time, an array of entries, or a packed payload",
        ));
    };
    let rest = match body {
        Body::Single { record, .. } => &rest[record.len()..],
        _ => rest,
    };
    let options = match option_count {
        0 => Options::default(),
        1 => options(split_value(rest)?.0)?,
        _ => return Err(bad("too many elements for this mode")),
    };
    let body = match (body, options.compressed) {
        (Body::Packed(p), true) => Body::Compressed(p),
        (_, true) => return Err(bad("compressed: gzip applies to a packed payload only")),
        (b, false) => b,
    };
    Ok(Message { tag, body, options })
}

/// Parses an option map (one whole value; nil is no options).
pub fn options(v: &[u8]) -> Result<Options<'_>, FluentError> {
    let bad = FluentError::Malformed;
    if v == [0xc0] {
        return Ok(Options::default());
    }
    let (pairs, mut rest) = scan::as_map(v).ok_or(bad("the option must be a map"))?;
    let mut o = Options::default();
    for _ in 0..pairs {
        let (k, r) = split_value(rest)?;
        let (val, r) = split_value(r)?;
        rest = r;
        match scan::as_str(k) {
            Some(b"chunk") => o.chunk = Some(val),
            Some(b"size") => o.size = scan::as_uint(val),
            // The spec: other values are ignored (Fluentd sends "text").
            Some(b"compressed") => o.compressed = scan::as_str(val) == Some(b"gzip"),
            Some(b"fluent_signal") => o.signal = Some(val),
            // Fluentd ignores options it does not know.
            _ => {}
        }
    }
    Ok(o)
}

/// Decompresses a CompressedPackedForward payload into `out` (cleared
/// first), refusing to produce more than `limit` bytes.
pub fn gunzip(data: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), FluentError> {
    out.clear();
    let mut d = flate2::read::MultiGzDecoder::new(data).take(limit as u64 + 1);
    d.read_to_end(out)
        .map_err(|e| FluentError::Gzip(e.to_string()))?;
    if out.len() > limit {
        return Err(FluentError::TooLarge {
            what: "decompressed payload",
            limit,
        });
    }
    Ok(())
}

/// Entries `[time, record]` of a Forward array or a packed payload:
/// (time, record) slices, in order.
pub struct Entries<'a> {
    rest: &'a [u8],
    /// Entries left, for Forward mode (`None`: until the bytes end).
    left: Option<u32>,
}

impl<'a> Entries<'a> {
    /// The entries of a Forward-mode array.
    pub fn forward(count: u32, entries: &'a [u8]) -> Self {
        Entries {
            rest: entries,
            left: Some(count),
        }
    }

    /// The entries of a packed payload.
    pub fn packed(payload: &'a [u8]) -> Self {
        Entries {
            rest: payload,
            left: None,
        }
    }
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<(&'a [u8], &'a [u8]), FluentError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.left {
            Some(0) => return None,
            Some(ref mut n) => *n -= 1,
            None if self.rest.is_empty() => return None,
            None => {}
        }
        Some(self.next_entry())
    }
}

impl<'a> Entries<'a> {
    fn next_entry(&mut self) -> Result<(&'a [u8], &'a [u8]), FluentError> {
        let bad = FluentError::Malformed;
        let (entry, rest) = split_value(self.rest)?;
        self.rest = rest;
        let (n, inner) = scan::as_array(entry).ok_or(bad("an entry must be [time, record]"))?;
        if n != 2 {
            return Err(bad("an entry must be [time, record]"));
        }
        let (time, inner) = split_value(inner)?;
        if !scan::is_time(time) {
            return Err(bad("an entry's time must be an integer or EventTime"));
        }
        let (record, _) = split_value(inner)?;
        Ok((time, record))
    }
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

    fn rec(msg: &str) -> V {
        V::Map(vec![(V::from("message"), V::from(msg))])
    }

    fn time() -> V {
        let mut b = 1_700_000_000u32.to_be_bytes().to_vec();
        b.extend_from_slice(&5u32.to_be_bytes());
        V::Ext(0, b)
    }

    #[test]
    fn the_four_modes() {
        let chunk = V::Map(vec![
            (V::from("chunk"), V::from("abc")),
            (V::from("size"), V::from(2)),
        ]);
        let m = enc(&V::Array(vec![
            V::from("t"),
            time(),
            rec("a"),
            chunk.clone(),
        ]));
        let p = parse(&m).expect("message");
        assert_eq!(p.tag, "t");
        assert!(matches!(p.body, Body::Single { .. }));
        assert_eq!(p.options.chunk, Some(&enc(&V::from("abc"))[..]));

        let entries = vec![
            V::Array(vec![time(), rec("a")]),
            V::Array(vec![V::from(1), rec("b")]),
        ];
        let f = enc(&V::Array(vec![
            V::from("t"),
            V::Array(entries.clone()),
            chunk.clone(),
        ]));
        let Body::Forward {
            count,
            entries: raw,
        } = parse(&f).expect("forward").body
        else {
            panic!("forward");
        };
        let got: Vec<_> = Entries::forward(count, raw)
            .collect::<Result<_, _>>()
            .expect("entries");
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].1, &enc(&rec("b"))[..]);

        let packed: Vec<u8> = entries.iter().flat_map(enc).collect();
        let pf = enc(&V::Array(vec![V::from("t"), V::Binary(packed.clone())]));
        let Body::Packed(raw) = parse(&pf).expect("packed").body else {
            panic!("packed");
        };
        assert_eq!(Entries::packed(raw).count(), 2);

        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &packed).expect("gzip");
        let gz = gz.finish().expect("gzip");
        let opt = V::Map(vec![(V::from("compressed"), V::from("gzip"))]);
        let cf = enc(&V::Array(vec![V::from("t"), V::Binary(gz), opt]));
        let Body::Compressed(data) = parse(&cf).expect("compressed").body else {
            panic!("compressed");
        };
        let mut out = Vec::new();
        gunzip(data, 1 << 20, &mut out).expect("gunzip");
        assert_eq!(out, packed);
        assert!(matches!(
            gunzip(data, 10, &mut out),
            Err(FluentError::TooLarge { .. })
        ));
    }

    #[test]
    fn malformed_messages_are_errors() {
        for v in [
            V::from("not an array"),
            V::Array(vec![V::from("t")]),
            V::Array(vec![V::from(1), V::Array(vec![])]),
            V::Array(vec![V::from("t"), V::from(1)]),
            V::Array(vec![V::from("t"), V::Array(vec![]), V::from("opt")]),
            V::Array(vec![
                V::from("t"),
                V::Array(vec![]),
                V::Map(vec![(V::from("compressed"), V::from("gzip"))]),
            ]),
        ] {
            assert!(parse(&enc(&v)).is_err(), "{v:?}");
        }
        let bad_entry = Entries::packed(&[0x91, 0x01]).next().expect("one");
        assert!(bad_entry.is_err());
    }
}
