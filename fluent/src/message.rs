//! One forward-protocol message, as slices of the bytes it came in: the
//! four event modes, the option map, and the events inside.
//!
//! CompressedPackedForward, as the specification
//! (<https://github.com/fluent/fluentd/wiki/Forward-Protocol-Specification-v1#compressedpackedforward-mode>)
//! writes it: `[tag, bin(entries), {"compressed": "gzip", ...}]`, the
//! entries being a PackedForward payload compressed by gzip, which MAY be
//! several gzip members back to back. Fluentd 1.19 also sends
//! `compressed: "zstd"` (experimental, not in the specification yet:
//! fluent/fluentd#4657 and #4758), the payload being one or more zstd
//! frames (RFC 8878) back to back. Both are decoded as bounded streams:
//! never more than the limit plus one byte comes out.

use std::io::Read;

use darkport_proto::tags::MAX_TAG;

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
    /// as the option `compressed` says (gzip: one or more members; zstd:
    /// one or more frames); [`decompress`] it.
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
    /// `compressed: "gzip"` or `"zstd"`; `None` for no option, or for any
    /// other value (the specification: Fluentd sends `"text"`).
    pub compressed: Option<Compression>,
    /// `fluent_signal` (Fluent Bit): what kind of events the message
    /// holds, the raw msgpack value kept byte for byte.
    pub signal: Option<&'a [u8]>,
}

/// How a CompressedPackedForward payload is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Compression {
    /// `compressed: "gzip"` (the specification's only codec).
    Gzip,
    /// `compressed: "zstd"` (Fluentd 1.19 `compress zstd`).
    Zstd,
}

impl Compression {
    /// The option's value, as sent.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
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
    // No tag pattern matches a longer tag (darkport_proto::tags), and a
    // tag goes into denial logs: refused here, before it is used.
    if tag.len() > MAX_TAG {
        return Err(FluentError::TooLarge {
            what: "tag",
            limit: MAX_TAG,
        });
    }
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
        (Body::Packed(p), Some(_)) => Body::Compressed(p),
        (_, Some(_)) => {
            return Err(bad(
                "compressed: gzip or zstd applies to a packed payload only",
            ))
        }
        (b, None) => b,
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
            Some(b"compressed") => {
                o.compressed = match scan::as_str(val) {
                    Some(b"gzip") => Some(Compression::Gzip),
                    Some(b"zstd") => Some(Compression::Zstd),
                    _ => None,
                }
            }
            Some(b"fluent_signal") => o.signal = Some(val),
            // Fluentd ignores options it does not know.
            _ => {}
        }
    }
    Ok(o)
}

/// The declared length of the tag of a message whose start is in `head`
/// (an array, then a str header), if that much is in: a tag over
/// [`MAX_TAG`] can be refused before the whole message is buffered.
pub(crate) fn declared_tag_len(head: &[u8]) -> Option<usize> {
    let after = match head {
        [0x90..=0x9f, a @ ..] => a,
        [0xdc, _, _, a @ ..] => a,
        [0xdd, _, _, _, _, a @ ..] => a,
        _ => return None,
    };
    let n = match after {
        [m @ 0xa0..=0xbf, ..] => u32::from(m & 0x1f),
        [0xd9, n, ..] => u32::from(*n),
        [0xda, a, b, ..] => u32::from(u16::from_be_bytes([*a, *b])),
        [0xdb, a, b, c, d, ..] => u32::from_be_bytes([*a, *b, *c, *d]),
        _ => return None,
    };
    usize::try_from(n).ok()
}

/// Decompresses a CompressedPackedForward payload compressed with `codec`
/// into `out` (cleared first), refusing to produce more than `limit`
/// bytes.
pub fn decompress(
    codec: Compression,
    data: &[u8],
    limit: usize,
    out: &mut Vec<u8>,
) -> Result<(), FluentError> {
    match codec {
        Compression::Gzip => gunzip(data, limit, out),
        Compression::Zstd => unzstd(data, limit, out),
    }
}

/// Decompresses a gzip CompressedPackedForward payload into `out`
/// (cleared first), refusing to produce more than `limit` bytes.
pub fn gunzip(data: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), FluentError> {
    out.clear();
    let mut d = flate2::read::MultiGzDecoder::new(data).take((limit as u64).saturating_add(1));
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

/// Decompresses a zstd CompressedPackedForward payload (one or more
/// frames) into `out` (cleared first), refusing to produce more than
/// `limit` bytes. A frame that asks for a window larger than `limit`
/// (rounded up to a power of two, and at least 8 MiB) is refused too: the
/// decoder would allocate that window whatever the frame holds, and no
/// payload we would accept needs more.
pub fn unzstd(data: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), FluentError> {
    out.clear();
    let err = |e: std::io::Error| FluentError::Zstd(e.to_string());
    // `with_buffer`: the payload is already in memory, no copy into a
    // BufReader. Frames back to back are read one after the other.
    let mut d = zstd::stream::read::Decoder::with_buffer(data).map_err(err)?;
    d.window_log_max(window_log(limit)).map_err(err)?;
    d.take((limit as u64).saturating_add(1))
        .read_to_end(out)
        .map_err(err)?;
    if out.len() > limit {
        return Err(FluentError::TooLarge {
            what: "decompressed payload",
            limit,
        });
    }
    Ok(())
}

/// The largest zstd window (as a log) a frame may ask for: one that holds
/// `limit` bytes, and never less than 8 MiB (log 23), the window zstd's
/// levels 1 to 19 use when the content size is not known in advance (a
/// streaming encoder, as Fluentd's), so a small limit does not refuse
/// ordinary frames; at most libzstd's largest (30). Only the "ultra"
/// levels 20 to 22 (32 to 128 MiB windows) are refused under the default
/// 16 MiB limit.
fn window_log(limit: usize) -> u32 {
    let bits = usize::BITS - limit.saturating_sub(1).leading_zeros();
    bits.clamp(23, 30)
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
            V::Array(vec![
                V::from("t"),
                V::Array(vec![]),
                V::Map(vec![(V::from("compressed"), V::from("zstd"))]),
            ]),
        ] {
            assert!(parse(&enc(&v)).is_err(), "{v:?}");
        }
        let bad_entry = Entries::packed(&[0x91, 0x01]).next().expect("one");
        assert!(bad_entry.is_err());
    }

    #[test]
    fn the_compressed_option_names_the_codec() {
        let opt = |v: V| {
            options(&enc(&V::Map(vec![(V::from("compressed"), v)])))
                .expect("map")
                .compressed
        };
        assert_eq!(opt(V::from("gzip")), Some(Compression::Gzip));
        assert_eq!(opt(V::from("zstd")), Some(Compression::Zstd));
        // The specification: other values are ignored.
        assert_eq!(opt(V::from("text")), None);
        assert_eq!(opt(V::from(1)), None);

        let packed = enc(&V::Array(vec![V::from(1), rec("a")]));
        let z = zstd::encode_all(&packed[..], 1).expect("zstd");
        let m = enc(&V::Array(vec![
            V::from("t"),
            V::Binary(z),
            V::Map(vec![(V::from("compressed"), V::from("zstd"))]),
        ]));
        let p = parse(&m).expect("zstd message");
        let Body::Compressed(data) = p.body else {
            panic!("compressed");
        };
        let mut out = Vec::new();
        decompress(Compression::Zstd, data, 1 << 20, &mut out).expect("unzstd");
        assert_eq!(out, packed);
        let r = decompress(Compression::Zstd, data, packed.len() - 1, &mut out);
        assert!(matches!(r, Err(FluentError::TooLarge { .. })), "{r:?}");
        assert!(matches!(
            decompress(Compression::Gzip, data, 1 << 20, &mut out),
            Err(FluentError::Gzip(_))
        ));
    }

    #[test]
    fn zstd_windows_are_bounded_by_the_limit() {
        assert_eq!(window_log(16 << 20), 24);
        assert_eq!(window_log((16 << 20) + 1), 25);
        assert_eq!(window_log(1), 23, "what zstd's levels 1 to 19 use");
        assert_eq!(window_log(usize::MAX), 30, "libzstd's largest");
    }

    #[test]
    fn tags_are_bounded() {
        let msg = |tag: &str| enc(&V::Array(vec![V::from(tag), V::from(1), rec("a")]));
        assert!(parse(&msg(&"t".repeat(MAX_TAG))).is_ok());
        assert_eq!(
            parse(&msg(&"t".repeat(MAX_TAG + 1))),
            Err(FluentError::TooLarge {
                what: "tag",
                limit: MAX_TAG
            })
        );
        // The declared length, from the first bytes only.
        let head = msg(&"t".repeat(5000));
        assert_eq!(declared_tag_len(&head[..4]), Some(5000));
        assert_eq!(declared_tag_len(&head[..2]), None, "not in yet");
        assert_eq!(declared_tag_len(&msg("abc")), Some(3));
        assert_eq!(declared_tag_len(&[0x93, 0x01]), None, "not a str");
    }
}
