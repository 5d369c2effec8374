//! msgpack without value trees: where one value ends, and the few scalar
//! reads the protocol needs. Nothing here allocates.

use crate::FluentError;

/// The length in bytes of the first msgpack value in `buf`; `Ok(None)` if
/// `buf` holds only part of it. Iterative (no recursion, so no depth
/// limit is needed): it counts the values still to skip.
pub fn value_len(buf: &[u8]) -> Result<Option<usize>, FluentError> {
    let mut pos = 0usize;
    let mut remaining: u64 = 1;
    while remaining > 0 {
        // Each value takes at least one byte: more values than bytes left
        // means the value is not complete yet.
        if remaining > (buf.len() - pos) as u64 {
            return Ok(None);
        }
        let m = buf[pos];
        let rest = &buf[pos + 1..];
        let (header, payload, children): (usize, u64, u64) = match m {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (1, 0, 0),
            0x80..=0x8f => (1, 0, u64::from(m & 0x0f) * 2),
            0x90..=0x9f => (1, 0, u64::from(m & 0x0f)),
            0xa0..=0xbf => (1, u64::from(m & 0x1f), 0),
            0xc1 => return Err(FluentError::Malformed("msgpack marker 0xc1 is never used")),
            0xc4 | 0xd9 => match be(rest, 1) {
                Some(n) => (2, n, 0),
                None => return Ok(None),
            },
            0xc5 | 0xda => match be(rest, 2) {
                Some(n) => (3, n, 0),
                None => return Ok(None),
            },
            0xc6 | 0xdb => match be(rest, 4) {
                Some(n) => (5, n, 0),
                None => return Ok(None),
            },
            0xc7 => match be(rest, 1) {
                Some(n) => (3, n, 0),
                None => return Ok(None),
            },
            0xc8 => match be(rest, 2) {
                Some(n) => (4, n, 0),
                None => return Ok(None),
            },
            0xc9 => match be(rest, 4) {
                Some(n) => (6, n, 0),
                None => return Ok(None),
            },
            0xca | 0xce | 0xd2 => (5, 0, 0),
            0xcb | 0xcf | 0xd3 => (9, 0, 0),
            0xcc | 0xd0 => (2, 0, 0),
            0xcd | 0xd1 => (3, 0, 0),
            0xd4 => (3, 0, 0),
            0xd5 => (4, 0, 0),
            0xd6 => (6, 0, 0),
            0xd7 => (10, 0, 0),
            0xd8 => (18, 0, 0),
            0xdc => match be(rest, 2) {
                Some(n) => (3, 0, n),
                None => return Ok(None),
            },
            0xdd => match be(rest, 4) {
                Some(n) => (5, 0, n),
                None => return Ok(None),
            },
            0xde => match be(rest, 2) {
                Some(n) => (3, 0, n * 2),
                None => return Ok(None),
            },
            0xdf => match be(rest, 4) {
                Some(n) => (5, 0, n * 2),
                None => return Ok(None),
            },
        };
        let end = pos as u64 + header as u64 + payload;
        if end > buf.len() as u64 {
            return Ok(None);
        }
        pos = end as usize;
        remaining = remaining - 1 + children;
    }
    Ok(Some(pos))
}

/// A big-endian unsigned integer of `width` bytes at the start of `b`.
fn be(b: &[u8], width: usize) -> Option<u64> {
    let bytes = b.get(..width)?;
    Some(bytes.iter().fold(0u64, |n, &x| (n << 8) | u64::from(x)))
}

/// Splits the first complete value off `buf`: (value, rest).
pub fn split_value(buf: &[u8]) -> Result<(&[u8], &[u8]), FluentError> {
    match value_len(buf)? {
        Some(n) => Ok(buf.split_at(n)),
        None => Err(FluentError::Malformed("a msgpack value is cut short")),
    }
}

/// If `v` (one whole value) is an array: its length and its contents.
pub fn as_array(v: &[u8]) -> Option<(u32, &[u8])> {
    let m = *v.first()?;
    match m {
        0x90..=0x9f => Some((u32::from(m & 0x0f), &v[1..])),
        0xdc => Some((be(&v[1..], 2)? as u32, v.get(3..)?)),
        0xdd => Some((be(&v[1..], 4)? as u32, v.get(5..)?)),
        _ => None,
    }
}

/// If `v` (one whole value) is a map: its number of pairs and its contents.
pub fn as_map(v: &[u8]) -> Option<(u32, &[u8])> {
    let m = *v.first()?;
    match m {
        0x80..=0x8f => Some((u32::from(m & 0x0f), &v[1..])),
        0xde => Some((be(&v[1..], 2)? as u32, v.get(3..)?)),
        0xdf => Some((be(&v[1..], 4)? as u32, v.get(5..)?)),
        _ => None,
    }
}

/// If `v` (one whole value) is a str: its bytes.
pub fn as_str(v: &[u8]) -> Option<&[u8]> {
    let m = *v.first()?;
    let (h, n) = match m {
        0xa0..=0xbf => (1, u64::from(m & 0x1f)),
        0xd9 => (2, be(&v[1..], 1)?),
        0xda => (3, be(&v[1..], 2)?),
        0xdb => (5, be(&v[1..], 4)?),
        _ => return None,
    };
    v.get(h..h + n as usize)
}

/// If `v` (one whole value) is a bin or a str: its bytes (PackedForward
/// entries come as either).
pub fn as_bytes(v: &[u8]) -> Option<&[u8]> {
    if let Some(s) = as_str(v) {
        return Some(s);
    }
    let m = *v.first()?;
    let (h, n) = match m {
        0xc4 => (2, be(&v[1..], 1)?),
        0xc5 => (3, be(&v[1..], 2)?),
        0xc6 => (5, be(&v[1..], 4)?),
        _ => return None,
    };
    v.get(h..h + n as usize)
}

/// If `v` (one whole value) is a non-negative integer: its value.
pub fn as_uint(v: &[u8]) -> Option<u64> {
    let m = *v.first()?;
    match m {
        0x00..=0x7f => Some(u64::from(m)),
        0xcc => be(&v[1..], 1),
        0xcd => be(&v[1..], 2),
        0xce => be(&v[1..], 4),
        0xcf => be(&v[1..], 8),
        0xd0 => Some(u64::from(*v.get(1)?)).filter(|x| *x < 0x80),
        0xd1 => be(&v[1..], 2).filter(|x| *x < 0x8000),
        0xd2 => be(&v[1..], 4).filter(|x| *x < 0x8000_0000),
        0xd3 => be(&v[1..], 8).filter(|x| *x < 0x8000_0000_0000_0000),
        _ => None,
    }
}

/// Whether `v` (one whole value) is an event time: an integer, the
/// EventTime extension (type 0, 8 bytes), a float or nil (Fluentd accepts
/// the last two as "now"/truncated), or, as forward protocol v1.5 allows
/// (Fluent Bit sends it), `[time, {metadata}]`.
pub fn is_time(v: &[u8]) -> bool {
    match v.first() {
        // Signed encodings too: Go's msgp writes an int64 as 0xd3.
        Some(0x00..=0x7f | 0xcc..=0xcf | 0xd0..=0xd3 | 0xca | 0xcb | 0xc0) => true,
        Some(0xd7) => v.get(1) == Some(&0),
        Some(0xc7) => v.get(1) == Some(&8) && v.get(2) == Some(&0),
        Some(0x92) => split_value(&v[1..]).is_ok_and(|(t, rest)| {
            t.first() != Some(&0x92) && is_time(t) && as_map(rest).is_some()
        }),
        _ => false,
    }
}

/// Splits an event time (one whole value that [`is_time`] accepts) into
/// the time itself and, for `[time, {metadata}]`, the metadata map.
pub fn split_time(v: &[u8]) -> (&[u8], Option<&[u8]>) {
    if v.first() == Some(&0x92) {
        if let Ok((t, rest)) = split_value(&v[1..]) {
            if let Ok((meta, _)) = split_value(rest) {
                return (t, Some(meta));
            }
        }
    }
    (v, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: &rmpv::Value) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, v).expect("encode");
        out
    }

    #[test]
    fn lengths_match_the_encoder_and_prefixes_are_incomplete() {
        use rmpv::Value as V;
        let values = [
            V::Nil,
            V::from(true),
            V::from(5),
            V::from(-3),
            V::from(300),
            V::from(u64::MAX),
            V::from(-40_000),
            V::from(1.5f32),
            V::from(2.5f64),
            V::from("x".repeat(31)),
            V::from("y".repeat(300)),
            V::from("z".repeat(70_000)),
            V::Binary(vec![1; 10]),
            V::Binary(vec![1; 300]),
            V::Ext(0, vec![0; 8]),
            V::Ext(1, vec![0; 3]),
            V::Ext(2, vec![0; 300]),
            V::Array((0..20).map(V::from).collect()),
            V::Map(vec![(V::from("a"), V::Array(vec![V::Map(vec![]); 3]))]),
            V::Map((0..20).map(|i| (V::from(i), V::from("v"))).collect()),
        ];
        for v in &values {
            let b = enc(v);
            assert_eq!(value_len(&b).expect("valid"), Some(b.len()), "{v:?}");
            for cut in 0..b.len() {
                assert_eq!(
                    value_len(&b[..cut]).expect("valid prefix"),
                    None,
                    "{v:?} cut at {cut}"
                );
            }
            let mut longer = b.clone();
            longer.extend_from_slice(&[0xc0, 0xc0]);
            assert_eq!(value_len(&longer).expect("valid"), Some(b.len()));
        }
        assert!(value_len(&[0xc1]).is_err());
        // A huge claimed array with no bytes behind it is incomplete, not
        // an allocation.
        assert_eq!(
            value_len(&[0xdd, 0xff, 0xff, 0xff, 0xff]).expect("valid"),
            None
        );
    }

    #[test]
    fn scalar_reads() {
        use rmpv::Value as V;
        assert_eq!(as_uint(&enc(&V::from(70_000))), Some(70_000));
        assert_eq!(as_uint(&enc(&V::from(-1))), None);
        assert_eq!(as_str(&enc(&V::from("tag.a"))), Some(&b"tag.a"[..]));
        assert_eq!(as_bytes(&enc(&V::Binary(vec![9, 9]))), Some(&[9u8, 9][..]));
        let arr = enc(&V::Array(vec![V::from(1), V::from(2)]));
        let (n, rest) = as_array(&arr).expect("array");
        assert_eq!((n, rest), (2, &[1u8, 2][..]));
        assert!(is_time(&enc(&V::Ext(0, vec![0; 8]))));
        assert!(is_time(&enc(&V::from(1_700_000_000))));
        let mut int64 = vec![0xd3];
        int64.extend_from_slice(&1_700_000_000i64.to_be_bytes());
        assert!(is_time(&int64), "Go's msgp encodes int64 times as 0xd3");
        assert!(!is_time(&enc(&V::from("now"))));
    }
}
