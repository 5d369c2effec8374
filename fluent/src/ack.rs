//! `{"ack": chunk}`: the answer to a message that carried a `chunk`
//! option, sent once its events are stored.

use crate::scan;

/// Encodes the ack for `chunk` (the raw msgpack value from the message's
/// options, copied as sent).
pub fn encode(chunk: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunk.len() + 5);
    out.push(0x81);
    crate::stamp::put_str(&mut out, "ack");
    out.extend_from_slice(chunk);
    out
}

/// The chunk id of an ack (one whole msgpack value), as raw msgpack.
pub fn parse(v: &[u8]) -> Option<&[u8]> {
    let (1, rest) = scan::as_map(v)? else {
        return None;
    };
    let (k, rest) = scan::split_value(rest).ok()?;
    if scan::as_str(k)? != b"ack" {
        return None;
    }
    scan::split_value(rest).ok().map(|(v, _)| v)
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip() {
        let chunk = [0xa2, b'c', b'1'];
        let ack = super::encode(&chunk);
        let v = rmpv::decode::read_value(&mut &ack[..]).expect("msgpack");
        assert_eq!(
            v,
            rmpv::Value::Map(vec![(rmpv::Value::from("ack"), rmpv::Value::from("c1"))])
        );
        assert_eq!(super::parse(&ack), Some(&chunk[..]));
    }
}
