//! The router's view of a forward-protocol stream from a client: bytes in,
//! stamped and tag-checked messages out. Sans-IO: the caller reads, calls
//! [`Filter::push`] and [`Filter::process`], and writes what it got.
//!
//! Every allowed message goes out as one PackedForward message
//! `[tag, bin(entries), {"size": n, "chunk": id}]`: entries keep their
//! time bytes and their record pairs byte for byte, plus the stamp; `size`
//! is recounted; `chunk` is copied as sent, so the service's `{"ack": id}`
//! is the client's ack. A compressed payload is sent on uncompressed.
//!
//! A message whose tag no policy allows is dropped whole, and never
//! reaches the service. What follows depends on the sender:
//!
//! - without `chunk` (no acks asked for, e.g. Python's fluent-logger): the
//!   stream goes on. Such a sender cannot be told anything without losing
//!   the allowed records it has in flight, so the router only logs and
//!   counts the denial.
//! - with `chunk`: the filter stops there ([`Filter::stopped`]); the router
//!   lets the service ack what it already has, then ends the stream. The
//!   sender's denied chunk is never acked and its connection fails, so it
//!   fails loudly; allowed chunks it sent after the denied one are not
//!   acked either, and it sends them again (at least once, never lost).

use crate::message::{self, Body, Entries};
use crate::stamp::Stamp;
use crate::{scan, FluentError};
use darkport_proto::tags::TagRules;

/// What one stream may make the router hold or produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest message on the wire.
    pub max_message: usize,
    /// Largest payload after gzip decompression.
    pub max_decompressed: usize,
    /// Largest single record.
    pub max_record: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message: 16 << 20,
            max_decompressed: 64 << 20,
            max_record: 4 << 20,
        }
    }
}

/// A message that was not forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// Its tag.
    pub tag: String,
    /// Its events.
    pub records: u64,
    /// Whether the sender asked for an ack (it will not get one).
    pub chunked: bool,
}

/// Counts since the stream began.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Messages forwarded.
    pub messages: u64,
    /// Records forwarded.
    pub records: u64,
    /// Messages denied by tag policy.
    pub denied_messages: u64,
    /// Records in them.
    pub denied_records: u64,
    /// Record pairs dropped because the stamp sets their key.
    pub overwritten: u64,
}

/// Remembers recent tag decisions: a stream usually writes few tags.
const TAG_CACHE: usize = 64;

/// One client stream's filter.
pub struct Filter {
    stamp: Stamp,
    /// `None`: every tag allowed.
    tags: Option<TagRules>,
    limits: Limits,
    buf: Vec<u8>,
    /// Decompression scratch space, reused.
    plain: Vec<u8>,
    cache: Vec<(String, bool)>,
    counts: Counts,
    /// A chunked message was denied: nothing more is forwarded.
    stopped: bool,
}

impl Filter {
    /// A filter stamping with `stamp` and allowing the tags of `tags`.
    pub fn new(stamp: Stamp, tags: Option<TagRules>, limits: Limits) -> Filter {
        Filter {
            stamp,
            tags,
            limits,
            buf: Vec::new(),
            plain: Vec::new(),
            cache: Vec::new(),
            counts: Counts::default(),
            stopped: false,
        }
    }

    /// Whether a denied message asked for an ack, so the stream must end
    /// (see the module docs); input is ignored from then on.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Counts so far.
    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// Bytes received but not yet a whole message.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Takes bytes from the client.
    pub fn push(&mut self, data: &[u8]) {
        if !self.stopped {
            self.buf.extend_from_slice(data);
        }
    }

    /// Handles every whole message received so far: allowed ones are
    /// appended to `out`, denied ones returned.
    pub fn process(&mut self, out: &mut Vec<u8>) -> Result<Vec<Denial>, FluentError> {
        let mut denials = Vec::new();
        let mut start = 0;
        let result = loop {
            if self.stopped {
                start = self.buf.len();
                break Ok(());
            }
            let rest = &self.buf[start..];
            if rest.is_empty() {
                break Ok(());
            }
            let n = match scan::value_len(rest) {
                Ok(Some(n)) => n,
                Ok(None) if rest.len() > self.limits.max_message => {
                    break Err(FluentError::TooLarge {
                        what: "message",
                        limit: self.limits.max_message,
                    })
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            };
            if n > self.limits.max_message {
                break Err(FluentError::TooLarge {
                    what: "message",
                    limit: self.limits.max_message,
                });
            }
            // The message is read from `buf` while `plain` and `out` grow.
            let msg = std::mem::take(&mut self.buf);
            let r = self.message(&msg[start..start + n], out, &mut denials);
            self.buf = msg;
            if let Err(e) = r {
                break Err(e);
            }
            start += n;
        };
        self.buf.drain(..start);
        result.map(|()| denials)
    }

    /// Whether the stream may end here (no message cut short).
    pub fn finish(&self) -> Result<(), FluentError> {
        if self.buf.is_empty() || self.stopped {
            Ok(())
        } else {
            Err(FluentError::Truncated(self.buf.len()))
        }
    }

    fn allowed(&mut self, tag: &str) -> bool {
        let Some(rules) = &self.tags else {
            return true;
        };
        if let Some((_, ok)) = self.cache.iter().find(|(t, _)| t == tag) {
            return *ok;
        }
        let ok = rules.allows(tag);
        if self.cache.len() >= TAG_CACHE {
            self.cache.remove(0);
        }
        self.cache.push((tag.to_string(), ok));
        ok
    }

    fn message(
        &mut self,
        raw: &[u8],
        out: &mut Vec<u8>,
        denials: &mut Vec<Denial>,
    ) -> Result<(), FluentError> {
        // A top-level nil is a heartbeat; Fluentd ignores it.
        if raw == [0xc0] {
            return Ok(());
        }
        let msg = message::parse(raw)?;
        if !self.allowed(msg.tag) {
            let records = match msg.body {
                Body::Single { .. } => 1,
                Body::Forward { count, .. } => u64::from(count),
                // Not unpacked just to count: the sender's `size`, if any.
                Body::Packed(_) | Body::Compressed(_) => msg.options.size.unwrap_or(0),
            };
            self.counts.denied_messages += 1;
            self.counts.denied_records += records;
            self.stopped = msg.options.chunk.is_some();
            denials.push(Denial {
                tag: msg.tag.to_string(),
                records,
                chunked: msg.options.chunk.is_some(),
            });
            return Ok(());
        }
        let mark = out.len();
        let r = self.write(&msg, out);
        if r.is_err() {
            out.truncate(mark);
        }
        r
    }

    fn write(&mut self, msg: &message::Message<'_>, out: &mut Vec<u8>) -> Result<(), FluentError> {
        out.push(0x93);
        crate::stamp::put_str(out, msg.tag);
        // bin32, its length written once the entries are.
        let bin = out.len();
        out.extend_from_slice(&[0xc6, 0, 0, 0, 0]);
        let mut n: u64 = 0;
        let mut overwritten: u64 = 0;
        let max_record = self.limits.max_record;
        let mut one = |time: &[u8], record: &[u8], out: &mut Vec<u8>| {
            if record.len() > max_record {
                return Err(FluentError::TooLarge {
                    what: "record",
                    limit: max_record,
                });
            }
            out.push(0x92);
            out.extend_from_slice(time);
            overwritten += u64::from(self.stamp.record(record, out)?);
            n += 1;
            Ok(())
        };
        match msg.body {
            Body::Single { time, record } => one(time, record, out)?,
            Body::Forward { count, entries } => {
                for e in Entries::forward(count, entries) {
                    let (t, r) = e?;
                    one(t, r, out)?;
                }
            }
            Body::Packed(p) => {
                for e in Entries::packed(p) {
                    let (t, r) = e?;
                    one(t, r, out)?;
                }
            }
            Body::Compressed(gz) => {
                let mut plain = std::mem::take(&mut self.plain);
                let r =
                    message::gunzip(gz, self.limits.max_decompressed, &mut plain).and_then(|()| {
                        for e in Entries::packed(&plain) {
                            let (t, r) = e?;
                            one(t, r, out)?;
                        }
                        Ok(())
                    });
                plain.clear();
                self.plain = plain;
                r?;
            }
        }
        let len = out.len() - bin - 5;
        let len = u32::try_from(len).map_err(|_| FluentError::TooLarge {
            what: "message",
            limit: u32::MAX as usize,
        })?;
        out[bin + 1..bin + 5].copy_from_slice(&len.to_be_bytes());
        let options = if msg.options.chunk.is_some() { 2 } else { 1 };
        let _ = rmp::encode::write_map_len(out, options);
        crate::stamp::put_str(out, "size");
        let _ = rmp::encode::write_uint(out, n);
        if let Some(chunk) = msg.options.chunk {
            crate::stamp::put_str(out, "chunk");
            out.extend_from_slice(chunk);
        }
        self.counts.messages += 1;
        self.counts.records += n;
        self.counts.overwritten += overwritten;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stamp::StampValue;
    use rmpv::Value as V;

    fn enc(v: &V) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, v).expect("encode");
        out
    }

    fn filter(tags: Option<&str>) -> Filter {
        let stamp = Stamp::new(&[("darkport_identity".into(), StampValue::Str("app-1".into()))]);
        let tags = tags.map(|t| {
            let list = darkport_proto::tags::split_list(t).expect("list");
            TagRules::new(list.iter().map(String::as_str), "app-1").expect("rules")
        });
        Filter::new(stamp, tags, Limits::default())
    }

    /// Decodes what the filter wrote: (tag, records, options).
    fn decode(mut out: &[u8]) -> Vec<(String, Vec<V>, V)> {
        let mut msgs = Vec::new();
        while !out.is_empty() {
            let v = rmpv::decode::read_value(&mut out).expect("valid output");
            let a = v.as_array().expect("array").clone();
            let tag = a[0].as_str().expect("tag").to_string();
            let mut payload = match &a[1] {
                V::Binary(b) => &b[..],
                other => panic!("packed output, got {other:?}"),
            };
            let mut records = Vec::new();
            while !payload.is_empty() {
                let e = rmpv::decode::read_value(&mut payload).expect("entry");
                records.push(e.as_array().expect("entry")[1].clone());
            }
            msgs.push((tag, records, a[2].clone()));
        }
        msgs
    }

    fn rec(k: &str, v: &str) -> V {
        V::Map(vec![(V::from(k), V::from(v))])
    }

    #[test]
    fn messages_split_across_reads_come_out_stamped_with_chunk_and_size() {
        let mut f = filter(None);
        let entries = V::Array(vec![
            V::Array(vec![V::from(1), rec("message", "a")]),
            V::Array(vec![V::from(2), rec("darkport_identity", "forged")]),
        ]);
        let opt = V::Map(vec![
            (V::from("chunk"), V::from("c1")),
            (V::from("size"), V::from(9)),
        ]);
        let mut wire = enc(&V::Array(vec![V::from("app.x"), entries, opt]));
        wire.extend(enc(&V::Array(vec![
            V::from("app.y"),
            V::from(3),
            rec("m", "b"),
        ])));
        let mut out = Vec::new();
        for b in wire.chunks(3) {
            f.push(b);
            assert!(f.process(&mut out).expect("process").is_empty());
        }
        f.finish().expect("nothing pending");
        let msgs = decode(&out);
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0].0, "app.x");
        let opts = msgs[0].2.as_map().expect("options");
        assert!(
            opts.contains(&(V::from("size"), V::from(2))),
            "size recounted"
        );
        assert!(
            opts.contains(&(V::from("chunk"), V::from("c1"))),
            "chunk kept"
        );
        for r in &msgs[0].1 {
            let m = r.as_map().expect("map");
            let ids: Vec<_> = m
                .iter()
                .filter(|(k, _)| k.as_str() == Some("darkport_identity"))
                .collect();
            assert_eq!(ids.len(), 1);
            assert_eq!(ids[0].1, V::from("app-1"));
        }
        assert_eq!(f.counts().overwritten, 1);
        assert_eq!(f.counts().records, 3);
        assert_eq!(msgs[1].2, V::Map(vec![(V::from("size"), V::from(1))]));
    }

    #[test]
    fn denied_tags_are_dropped_and_the_stream_goes_on_without_acks() {
        let mut f = filter(Some("app.${identity}.**"));
        let mut wire = enc(&V::Array(vec![
            V::from("audit.other-team"),
            V::from(1),
            rec("m", "forged"),
        ]));
        wire.extend(enc(&V::Array(vec![
            V::from("app.app-1.web"),
            V::from(1),
            rec("m", "ok"),
        ])));
        f.push(&wire);
        let mut out = Vec::new();
        let denied = f.process(&mut out).expect("process");
        assert_eq!(
            denied,
            [Denial {
                tag: "audit.other-team".into(),
                records: 1,
                chunked: false
            }]
        );
        assert!(!f.stopped());
        let msgs = decode(&out);
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].0, "app.app-1.web");
    }

    #[test]
    fn a_denied_chunk_stops_the_stream() {
        let mut f = filter(Some("app.${identity}.**"));
        let chunk = |c: &str| V::Map(vec![(V::from("chunk"), V::from(c))]);
        let mut wire = enc(&V::Array(vec![
            V::from("app.app-1"),
            V::from(1),
            rec("m", "a"),
            chunk("c1"),
        ]));
        wire.extend(enc(&V::Array(vec![
            V::from("audit.x"),
            V::from(1),
            rec("m", "b"),
            chunk("c2"),
        ])));
        wire.extend(enc(&V::Array(vec![
            V::from("app.app-1"),
            V::from(1),
            rec("m", "c"),
            chunk("c3"),
        ])));
        f.push(&wire);
        let mut out = Vec::new();
        let denied = f.process(&mut out).expect("process");
        assert_eq!(denied.len(), 1);
        assert!(denied[0].chunked);
        assert!(f.stopped());
        let msgs = decode(&out);
        assert_eq!(msgs.len(), 1, "only the chunk before the denied one");
        f.push(&wire);
        assert!(f.process(&mut out).expect("ignored").is_empty());
        f.finish().expect("a stopped stream may end");
    }

    #[test]
    fn hostile_input_is_bounded() {
        // A gzip bomb: 64 MiB of zeros in a small payload.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut gz, &vec![0u8; 80 << 20]).expect("gzip");
        let gz = gz.finish().expect("gzip");
        let opt = V::Map(vec![(V::from("compressed"), V::from("gzip"))]);
        let mut f = filter(None);
        f.push(&enc(&V::Array(vec![V::from("t"), V::Binary(gz), opt])));
        let mut out = Vec::new();
        assert!(matches!(
            f.process(&mut out),
            Err(FluentError::TooLarge {
                what: "decompressed payload",
                ..
            })
        ));
        assert!(out.is_empty(), "nothing of a refused message goes out");

        // A message that claims more than the limit is refused before it
        // is all buffered.
        let mut f = Filter::new(
            Stamp::new(&[]),
            None,
            Limits {
                max_message: 1024,
                ..Limits::default()
            },
        );
        f.push(&[0x93, 0xa1, b't', 0xc6, 0, 0x10, 0, 0]);
        f.push(&vec![0u8; 2000]);
        assert!(matches!(
            f.process(&mut Vec::new()),
            Err(FluentError::TooLarge {
                what: "message",
                ..
            })
        ));

        // A record that is not a map, and a stream cut mid-message.
        let mut f = filter(None);
        f.push(&enc(&V::Array(vec![
            V::from("t"),
            V::from(1),
            V::from("text"),
        ])));
        assert!(f.process(&mut Vec::new()).is_err());
        let mut f = filter(None);
        f.push(&[0x93, 0xa1]);
        f.process(&mut Vec::new()).expect("incomplete is fine");
        assert!(matches!(f.finish(), Err(FluentError::Truncated(2))));
    }
}
