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
//! A PackedForward batch of [`PIECE`] bytes or more (not compressed) is
//! passed on as it arrives, in pieces of whole entries, the last one
//! carrying the batch's `chunk`: a large batch does not wait at the router
//! for its last byte (measured: 2.0 → 2.4 M records/s at batches of 1,000,
//! docs/benchmarks.md).
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
//!
//! Every message is bounded in what it makes the router hold and do
//! ([`Limits`]), so a small message cannot make it produce much more than
//! it received: a 61 KB gzip payload inflates to 60 MiB of 3-byte entries
//! `[0, {}]`, which stamped were 700 MB in one call. A message handled
//! whole (every mode but a large uncompressed PackedForward) is refused
//! whole if it decompresses to more than `max_decompressed` bytes, holds
//! more than `max_entries` entries, or stamps to more than `max_output`
//! bytes: nothing of it is in `out`, and the stream ends with the error
//! (its sender gets no ack). A large PackedForward passed on in pieces is
//! bounded by `max_entries` too; the pieces before the bound have gone on
//! already, as with any error in the middle of such a batch (no ack, so
//! the sender sends the batch again: at least once). Buffers that grew
//! for a large message are given back afterwards ([`shrink_buffer`]).

use crate::message::{self, Body};
use crate::scan::split_value;
use crate::stamp::Stamp;
use crate::{scan, FluentError};
use darkport_proto::tags::{TagRules, MAX_TAG};

/// What one stream may make the router hold or produce.
///
/// With the defaults, one stream holds at most, while one message is
/// handled: the message as received (`max_message`, 16 MiB), its payload
/// decompressed (`max_decompressed`, 16 MiB; for zstd, the decoder's
/// window may take as much again) and its stamped output (`max_output`,
/// 32 MiB, plus the one entry that crossed it): 64 MiB, 80 MiB for zstd,
/// resident. A `Vec` that grows by doubling may reserve up to twice that
/// in address space, untouched and so not resident. Afterwards the
/// filter's buffers shrink back to [`KEEP_CAPACITY`], and so should the
/// caller's `out` ([`shrink_buffer`]). Before these bounds, one 61 KB
/// gzip message made a stream hold about 700 MB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest message on the wire.
    pub max_message: usize,
    /// Largest payload after decompression (gzip or zstd).
    pub max_decompressed: usize,
    /// Largest single record.
    pub max_record: usize,
    /// Most entries in one message, whether handled whole or passed on
    /// in pieces: bounds the stamping work of one message, and the bytes
    /// of stamp it adds.
    pub max_entries: usize,
    /// Largest stamped output of one message handled whole (every mode
    /// but a large uncompressed PackedForward, which is passed on in
    /// pieces as it arrives and never held whole): bounds what one
    /// message puts in `out`.
    pub max_output: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message: 16 << 20,
            // 64 MiB before: now the same as `max_message`, so a chunk may
            // be as large compressed as uncompressed, and no larger. Fluent
            // Bit's chunks are about 2 MB; Fluentd's forward output sends a
            // buffer chunk per message, at most 8 MiB with the default
            // memory buffer (chunk_limit_size). A file-buffer chunk (256 MiB
            // by default) is over `max_message` uncompressed already, so
            // such a sender must lower chunk_limit_size either way.
            max_decompressed: 16 << 20,
            max_record: 4 << 20,
            // The smallest real entries are about 16 bytes (an integer
            // time, a map of one short pair): a full 16 MiB chunk of them
            // is 1 M entries; Fluent Bit's 2 MB chunks hold tens of
            // thousands of records. 1 M entries take tens of milliseconds
            // to stamp.
            max_entries: 1_000_000,
            // Twice `max_decompressed`. Each entry goes out with the stamp
            // (the identity and roles pairs: about 60 bytes) and a map32
            // header (4 bytes more than a fixmap): a full 16 MiB chunk of
            // records of 64 bytes or more fits (16 MiB × (1 + 64/64)), a
            // 2 MB chunk of records of 8 bytes or more. The 60 MiB of
            // 3-byte entries of a 61 KB gzip bomb would be 700 MB.
            max_output: 32 << 20,
        }
    }
}

/// Capacity a buffer keeps between messages once [`shrink_buffer`] gave
/// back what a large message made it grow to.
pub const KEEP_CAPACITY: usize = 64 * 1024;

/// Buffers up to this capacity are left as they are, so steady traffic
/// (64 KiB reads, stamped) reuses them without reallocating.
const SHRINK_ABOVE: usize = 1 << 20;

/// Gives back the capacity a buffer grew to for a large message, keeping
/// [`KEEP_CAPACITY`]: the filter does so with its own buffers after each
/// message, and the caller should with the `out` it passes, once written
/// and cleared, so a stream that once sent a large message does not hold
/// that memory for its life. A buffer under 1 MiB of capacity, or holding
/// more than [`KEEP_CAPACITY`] bytes (a message still coming in), is left
/// as it is.
pub fn shrink_buffer(buf: &mut Vec<u8>) {
    if buf.capacity() > SHRINK_ABOVE && buf.len() <= KEEP_CAPACITY {
        buf.shrink_to(KEEP_CAPACITY);
    }
}

/// [`FluentError::TooLarge`]'s `what` for a message over
/// [`Limits::max_output`].
pub const STAMPED_OUTPUT: &str = "stamped output of one message";

/// What one message may still produce.
#[derive(Debug, Clone, Copy)]
struct Budget {
    /// Entries.
    entries: u64,
    /// Where `out` must end, at most.
    out_end: usize,
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
    /// Why.
    pub reason: DenialReason,
}

/// Why a message was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DenialReason {
    /// No policy lets this identity write the tag.
    #[error("no policy lets this identity write the tag")]
    Tag,
    /// Not log events: Fluent Bit's `fluent_signal` says metrics (1),
    /// traces (2) or another kind. Their payloads are not `[time, record]`
    /// entries, so they cannot be stamped, and the router never passes on
    /// what it cannot stamp.
    #[error("fluent_signal {0} (not logs: 1 is metrics, 2 traces) cannot be stamped with the sender's identity; send only logs to this service")]
    Signal(u64),
}

impl DenialReason {
    /// A short name for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DenialReason::Tag => "tag",
            DenialReason::Signal(_) => "signal",
        }
    }
}

/// What the router does with Fluent Bit's event times.
///
/// Since 5.0.5, Fluent Bit's forward output sends each entry's time as
/// `[EventTime, {metadata}]` (forward protocol v1.5), which Fluentd up to
/// 1.19.3 cannot read: its `in_forward` drops such entries. `Unwrap` (the
/// default) turns the time back into the plain `EventTime`, in every mode,
/// compressed ones included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventTime {
    /// Times go on as sent.
    Keep,
    /// `[time, {metadata}]` goes on as `time`. A non-empty metadata map is
    /// carried in the record under `metadata_key`, if set (replacing a
    /// pair of the record's own under that key); otherwise it is dropped.
    /// An empty map (what Fluent Bit sends unless a filter set metadata)
    /// is always dropped.
    Unwrap {
        /// The record key for the metadata map.
        metadata_key: Option<String>,
    },
}

impl Default for EventTime {
    fn default() -> Self {
        EventTime::Unwrap { metadata_key: None }
    }
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
    /// A PackedForward message being passed on entry by entry.
    partial: Option<Partial>,
    /// Unwrap `[time, {metadata}]` times.
    unwrap: bool,
    /// Under `Unwrap`, the metadata key encoded as a msgpack str.
    metadata_key: Option<Vec<u8>>,
}

/// A PackedForward message whose header has been read and whose entries are
/// being forwarded as they arrive (cut-through), so a large batch does not
/// wait at the router until its last byte.
#[derive(Debug)]
struct Partial {
    tag: String,
    allowed: bool,
    /// Payload bytes not yet taken.
    left: usize,
    /// Whether an option map follows the payload.
    options: bool,
    /// Entries taken so far (forwarded, or skipped if denied).
    entries: u64,
    /// Bytes of whole entries already framed at the front of what is
    /// pending, so a wait for more bytes does not frame them again.
    framed: usize,
}

/// A cut-through piece is sent once this many bytes of whole entries are
/// in; less waits for more (or for the message's end).
pub const PIECE: usize = 32 * 1024;

/// Largest option map after a cut-through payload.
const MAX_OPTIONS: usize = 64 * 1024;

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
            partial: None,
            unwrap: true,
            metadata_key: None,
        }
    }

    /// Sets what happens to `[time, {metadata}]` event times (default:
    /// unwrap, metadata dropped).
    pub fn with_event_time(mut self, form: EventTime) -> Filter {
        match form {
            EventTime::Keep => {
                self.unwrap = false;
                self.metadata_key = None;
            }
            EventTime::Unwrap { metadata_key } => {
                self.unwrap = true;
                self.metadata_key = metadata_key.map(|k| {
                    let mut key = Vec::with_capacity(k.len() + 5);
                    crate::stamp::put_str(&mut key, &k);
                    key
                });
            }
        }
        self
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
        let buf = std::mem::take(&mut self.buf);
        let (result, used) = self.run(&buf, out);
        self.buf = buf;
        self.buf.drain(..used);
        shrink_buffer(&mut self.buf);
        result
    }

    /// [`Filter::push`] then [`Filter::process`], without copying `data`
    /// when nothing is pending: whole messages are read from `data` itself
    /// and only an incomplete tail is kept.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<Vec<Denial>, FluentError> {
        if self.stopped {
            return Ok(Vec::new());
        }
        if !self.buf.is_empty() {
            self.push(data);
            return self.process(out);
        }
        let (result, used) = self.run(data, out);
        if !self.stopped {
            self.buf.extend_from_slice(&data[used..]);
        }
        result
    }

    /// Handles the whole messages at the front of `input`; returns the
    /// outcome and how many bytes were used.
    fn run(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> (Result<Vec<Denial>, FluentError>, usize) {
        let mut denials = Vec::new();
        let mut start = 0;
        let result = loop {
            if self.stopped {
                start = input.len();
                break Ok(());
            }
            let rest = &input[start..];
            if rest.is_empty() {
                break Ok(());
            }
            if self.partial.is_some() {
                match self.continue_packed(rest, out, &mut denials) {
                    Ok(0) => break Ok(()),
                    Ok(used) => {
                        start += used;
                        continue;
                    }
                    Err(e) => break Err(e),
                }
            }
            let n = match scan::value_len(rest) {
                Ok(Some(n)) => n,
                // A tag no pattern can match is refused as soon as its
                // length is in, not once up to `max_message` of it is.
                Ok(None) if message::declared_tag_len(rest).is_some_and(|n| n > MAX_TAG) => {
                    break Err(FluentError::TooLarge {
                        what: "tag",
                        limit: MAX_TAG,
                    })
                }
                Ok(None) => match self.start_packed(rest) {
                    Ok(Some(used)) => {
                        start += used;
                        continue;
                    }
                    Ok(None) if rest.len() > self.limits.max_message => {
                        break Err(FluentError::TooLarge {
                            what: "message",
                            limit: self.limits.max_message,
                        })
                    }
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                },
                Err(e) => break Err(e),
            };
            if n > self.limits.max_message {
                break Err(FluentError::TooLarge {
                    what: "message",
                    limit: self.limits.max_message,
                });
            }
            if let Err(e) = self.message(&rest[..n], out, &mut denials) {
                break Err(e);
            }
            start += n;
        };
        (result.map(|()| denials), start)
    }

    /// Whether the stream may end here (no message cut short).
    pub fn finish(&self) -> Result<(), FluentError> {
        if self.stopped {
            return Ok(());
        }
        if let Some(p) = &self.partial {
            return Err(FluentError::Truncated(p.left + self.buf.len()));
        }
        if self.buf.is_empty() {
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
        let refused = match msg.options.non_log_signal() {
            Some(n) => Some(DenialReason::Signal(n)),
            None if !self.allowed(msg.tag) => Some(DenialReason::Tag),
            None => None,
        };
        if let Some(reason) = refused {
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
                reason,
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

    /// An incomplete message at the start of `rest`: if it is a
    /// PackedForward whose header is in (and whose payload is not
    /// compressed), begins passing it on entry by entry; returns the
    /// header's length.
    fn start_packed(&mut self, rest: &[u8]) -> Result<Option<usize>, FluentError> {
        let (len, after) = match rest {
            [0x92, a @ ..] => (2, a),
            [0x93, a @ ..] => (3, a),
            _ => return Ok(None),
        };
        let Some(Some(tag_len)) = scan::value_len(after).ok() else {
            return Ok(None);
        };
        let Some(tag) = scan::as_str(&after[..tag_len]) else {
            return Ok(None);
        };
        let after_tag = &after[tag_len..];
        let (head, payload) = match after_tag {
            [0xc4 | 0xd9, n, ..] => (2, usize::from(*n)),
            [0xc5 | 0xda, a, b, ..] => (3, usize::from(u16::from_be_bytes([*a, *b]))),
            [0xc6 | 0xdb, a, b, c, d, ..] => (5, u32::from_be_bytes([*a, *b, *c, *d]) as usize),
            _ => return Ok(None),
        };
        // Small messages are taken whole, and so is any payload that does
        // not start with an entry (an array): gzip (0x1f 0x8b), zstd (0x28
        // 0xb5 0x2f 0xfd, or a skippable frame's 0x50 to 0x5f), or Fluent
        // Bit's metrics and traces (maps), whose `fluent_signal` in the
        // option map after the payload decides what happens to them.
        let entry_first = matches!(after_tag.get(head), Some(0x92 | 0xdc | 0xdd));
        if payload < PIECE || !entry_first {
            return Ok(None);
        }
        if payload > self.limits.max_message {
            return Err(FluentError::TooLarge {
                what: "message",
                limit: self.limits.max_message,
            });
        }
        let tag = std::str::from_utf8(tag)
            .map_err(|_| FluentError::Malformed("the tag is not UTF-8"))?
            .to_string();
        let allowed = self.allowed(&tag);
        self.partial = Some(Partial {
            tag,
            allowed,
            left: payload,
            options: len == 3,
            entries: 0,
            framed: 0,
        });
        Ok(Some(1 + tag_len + head))
    }

    /// Takes the whole entries at the start of `rest` for the message in
    /// progress: a piece when enough are in, the last piece (with the
    /// message's `chunk`) at its end. Returns the bytes used (0: wait).
    fn continue_packed(
        &mut self,
        rest: &[u8],
        out: &mut Vec<u8>,
        denials: &mut Vec<Denial>,
    ) -> Result<usize, FluentError> {
        let Some(p) = self.partial.as_mut() else {
            return Ok(0);
        };
        let avail = &rest[..rest.len().min(p.left)];
        let end = whole_entries(avail, p.framed.min(avail.len()))?;
        p.framed = end;
        let (left, has_options) = (p.left, p.options);
        if end < left {
            if avail.len() == left {
                return Err(FluentError::Malformed(
                    "an entry runs past the end of the packed payload",
                ));
            }
            // The payload goes on: a piece if there is enough (never the
            // last entries, so the final piece is never empty).
            if end < PIECE {
                return Ok(0);
            }
            let entries = &avail[..end];
            self.piece(entries, None, out)?;
            return Ok(end);
        }
        // The payload is all in; the option map follows.
        let Some((opts_len, options)) = packed_options(&rest[end..], has_options)? else {
            return Ok(0);
        };
        self.piece(&rest[..end], Some(options), out)?;
        self.finish_packed(options.chunk.is_some(), denials);
        Ok(end + opts_len)
    }

    /// Counts the message in progress, whose last piece is out: passed,
    /// or denied (and, if `chunked`, the stream stops for its ack).
    fn finish_packed(&mut self, chunked: bool, denials: &mut Vec<Denial>) {
        let Some(p) = self.partial.take() else {
            return;
        };
        if !p.allowed {
            self.counts.denied_messages += 1;
            self.stopped = chunked;
            denials.push(Denial {
                tag: p.tag,
                records: p.entries,
                chunked,
                reason: DenialReason::Tag,
            });
        } else {
            self.counts.messages += 1;
        }
    }

    /// One piece of a cut-through message: its entries stamped as a
    /// PackedForward of their own (`last` carries the message's chunk),
    /// or counted as denied.
    fn piece(
        &mut self,
        entries: &[u8],
        last: Option<message::Options<'_>>,
        out: &mut Vec<u8>,
    ) -> Result<(), FluentError> {
        let Some(p) = self.partial.as_mut() else {
            return Ok(());
        };
        p.left -= entries.len();
        p.framed = 0;
        if !p.allowed {
            // Counted, not forwarded.
            let mut rest = entries;
            while !rest.is_empty() {
                rest = split_value(rest)?.1;
                p.entries += 1;
                self.counts.denied_records += 1;
            }
            return Ok(());
        }
        let tag = p.tag.clone();
        let mark = out.len();
        out.push(0x93);
        crate::stamp::put_str(out, &tag);
        let bin = out.len();
        out.extend_from_slice(&[0xc6, 0, 0, 0, 0]);
        // `max_entries` counts the whole batch; its pieces are never held
        // whole, so `max_output` does not apply.
        let budget = Budget {
            entries: (self.limits.max_entries as u64).saturating_sub(p.entries),
            out_end: usize::MAX,
        };
        let (n, overwritten) = match self.entries(entries, None, out, budget) {
            Ok(x) => x,
            Err(e) => {
                out.truncate(mark);
                return Err(e);
            }
        };
        let len = (out.len() - bin - 5) as u32;
        out[bin + 1..bin + 5].copy_from_slice(&len.to_be_bytes());
        write_options(out, n, &last.unwrap_or_default());
        if let Some(p) = self.partial.as_mut() {
            p.entries += n;
        }
        self.counts.records += n;
        self.counts.overwritten += overwritten;
        Ok(())
    }

    /// Stamps the entries `[time, record]` at `p` (`count` of them, or
    /// until `p` ends) into `out`, framing and stamping each record in one
    /// pass, within `budget`. Returns (entries, pairs dropped).
    fn entries(
        &self,
        mut p: &[u8],
        count: Option<u32>,
        out: &mut Vec<u8>,
        budget: Budget,
    ) -> Result<(u64, u64), FluentError> {
        let bad = FluentError::Malformed("an entry must be [time, record]");
        let (mut n, mut overwritten) = (0u64, 0u64);
        let mut left = count;
        loop {
            match left {
                Some(0) => break,
                Some(ref mut c) => *c -= 1,
                None if p.is_empty() => break,
                None => {}
            }
            if n >= budget.entries {
                return Err(FluentError::TooManyEntries {
                    limit: self.limits.max_entries,
                });
            }
            let after = match p {
                [0x92, rest @ ..] => rest,
                [0xdc, 0, 2, rest @ ..] => rest,
                [0xdd, 0, 0, 0, 2, rest @ ..] => rest,
                _ => return Err(bad),
            };
            let (time, rest) = split_value(after)?;
            let (used, dropped) = self.entry(time, rest, out)?;
            if used > self.limits.max_record {
                return Err(FluentError::TooLarge {
                    what: "record",
                    limit: self.limits.max_record,
                });
            }
            // Checked after the entry is written, without a second pass
            // over its record: `out` may pass the bound by one entry, and
            // the caller truncates it.
            if out.len() > budget.out_end {
                return Err(FluentError::TooLarge {
                    what: STAMPED_OUTPUT,
                    limit: self.limits.max_output,
                });
            }
            p = &rest[used..];
            n += 1;
            overwritten += u64::from(dropped);
        }
        Ok((n, overwritten))
    }

    /// One entry out: `[time, record]` with the time as [`EventTime`]
    /// says and the record (at the start of `record`) stamped. Returns
    /// the record's length and the pairs dropped.
    fn entry(
        &self,
        time: &[u8],
        record: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(usize, u32), FluentError> {
        if !scan::is_time(time) {
            return Err(FluentError::Malformed(
                "an entry's time must be an integer or EventTime",
            ));
        }
        out.push(0x92);
        if !self.unwrap {
            out.extend_from_slice(time);
            return self.stamp.record_from(record, out);
        }
        let (time, meta) = scan::split_time(time);
        out.extend_from_slice(time);
        let extra = match (&self.metadata_key, meta) {
            (Some(key), Some(meta)) if meta != [0x80] => Some((key.as_slice(), meta)),
            _ => None,
        };
        self.stamp.record_with(record, extra, out)
    }

    /// One message handled whole, stamped into `out` within
    /// `max_entries` and `max_output`; on an error the caller truncates
    /// `out` back to where it was.
    fn write(&mut self, msg: &message::Message<'_>, out: &mut Vec<u8>) -> Result<(), FluentError> {
        let start = out.len();
        let budget = Budget {
            entries: self.limits.max_entries as u64,
            out_end: start.saturating_add(self.limits.max_output),
        };
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
            overwritten += u64::from(self.entry(time, record, out)?.1);
            n += 1;
            Ok(())
        };
        match msg.body {
            Body::Single { time, record } => one(time, record, out)?,
            Body::Forward { count, entries } => {
                let (k, o) = self.entries(entries, Some(count), out, budget)?;
                n += k;
                overwritten += o;
            }
            Body::Packed(p) => {
                let (k, o) = self.entries(p, None, out, budget)?;
                n += k;
                overwritten += o;
            }
            Body::Compressed(data) => {
                let codec = msg.options.compressed.ok_or(FluentError::Malformed(
                    "a compressed payload without compressed: gzip or zstd",
                ))?;
                let mut plain = std::mem::take(&mut self.plain);
                let r = message::decompress(codec, data, self.limits.max_decompressed, &mut plain)
                    .and_then(|()| self.entries(&plain, None, out, budget));
                plain.clear();
                shrink_buffer(&mut plain);
                self.plain = plain;
                let (k, o) = r?;
                n += k;
                overwritten += o;
            }
        }
        let len = out.len() - bin - 5;
        let len = u32::try_from(len).map_err(|_| FluentError::TooLarge {
            what: "message",
            limit: u32::MAX as usize,
        })?;
        out[bin + 1..bin + 5].copy_from_slice(&len.to_be_bytes());
        write_options(out, n, &msg.options);
        // The option map (its `chunk` is the sender's, of any size) and a
        // Message-mode record are outside the entries' budget.
        if out.len() - start > self.limits.max_output {
            return Err(FluentError::TooLarge {
                what: STAMPED_OUTPUT,
                limit: self.limits.max_output,
            });
        }
        self.counts.messages += 1;
        self.counts.records += n;
        self.counts.overwritten += overwritten;
        Ok(())
    }
}

/// The option map of a message going out: `size` recounted, `chunk` and
/// `fluent_signal` as the sender wrote them (`compressed` is gone: what
/// goes out is never compressed).
fn write_options(out: &mut Vec<u8>, size: u64, options: &message::Options<'_>) {
    let pairs = 1 + u32::from(options.chunk.is_some()) + u32::from(options.signal.is_some());
    let _ = rmp::encode::write_map_len(out, pairs);
    crate::stamp::put_str(out, "size");
    let _ = rmp::encode::write_uint(out, size);
    if let Some(chunk) = options.chunk {
        crate::stamp::put_str(out, "chunk");
        out.extend_from_slice(chunk);
    }
    if let Some(signal) = options.signal {
        crate::stamp::put_str(out, "fluent_signal");
        out.extend_from_slice(signal);
    }
}

/// Where the whole entries at the start of `avail` end, scanning on from
/// `from` (the end of those already framed).
fn whole_entries(avail: &[u8], from: usize) -> Result<usize, FluentError> {
    let mut end = from;
    while end < avail.len() {
        match scan::value_len(&avail[end..])? {
            Some(n) => end += n,
            None => break,
        }
    }
    Ok(end)
}

/// The option map at the start of `after` (a cut-through message's
/// payload) and its length, if the message has one (`has_options`);
/// `None` while it is not all in. Refuses options that say the payload is
/// compressed or not logs: it held log entries.
fn packed_options(
    after: &[u8],
    has_options: bool,
) -> Result<Option<(usize, message::Options<'_>)>, FluentError> {
    let (len, options) = if has_options {
        let len = match scan::value_len(after)? {
            Some(n) => n,
            None if after.len() > MAX_OPTIONS => {
                return Err(FluentError::TooLarge {
                    what: "option map",
                    limit: MAX_OPTIONS,
                })
            }
            None => return Ok(None),
        };
        (len, crate::message::options(&after[..len])?)
    } else {
        (0, crate::message::Options::default())
    };
    if options.compressed.is_some() {
        return Err(FluentError::Malformed(
            "compressed: gzip or zstd, but the payload is uncompressed entries",
        ));
    }
    if options.non_log_signal().is_some() {
        return Err(FluentError::Malformed(
            "fluent_signal says these are not logs, but the payload holds log entries",
        ));
    }
    Ok(Some((len, options)))
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
    fn feed_without_copies_gives_the_same_output_as_push_and_process() {
        let mut wire = Vec::new();
        for i in 0..5 {
            wire.extend(enc(&V::Array(vec![
                V::from("t"),
                V::from(i),
                rec("m", "x"),
            ])));
        }
        let mut a = filter(None);
        let mut b = filter(None);
        let (mut out_a, mut out_b) = (Vec::new(), Vec::new());
        for piece in wire.chunks(7) {
            a.push(piece);
            a.process(&mut out_a).expect("process");
            b.feed(piece, &mut out_b).expect("feed");
        }
        assert_eq!(out_a, out_b);
        assert_eq!(decode(&out_b).len(), 5);
        b.finish().expect("complete");
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
                chunked: false,
                reason: DenialReason::Tag,
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

    fn big_packed(records: usize, tag: &str, chunk: Option<&str>) -> Vec<u8> {
        let packed: Vec<u8> = (0..records)
            .flat_map(|i| {
                enc(&V::Array(vec![
                    V::from(i as u64),
                    rec("message", &format!("record {i} {}", "x".repeat(100))),
                ]))
            })
            .collect();
        let mut opts = vec![(V::from("size"), V::from(records as u64))];
        if let Some(c) = chunk {
            opts.push((V::from("chunk"), V::from(c)));
        }
        enc(&V::Array(vec![
            V::from(tag),
            V::Binary(packed),
            V::Map(opts),
        ]))
    }

    #[test]
    fn large_batches_are_passed_on_as_they_arrive_with_the_chunk_last() {
        let wire = big_packed(1000, "app.app-1.big", Some("big-1"));
        assert!(wire.len() > 3 * PIECE);
        let mut f = filter(Some("app.${identity}.**"));
        let mut out = Vec::new();
        let mut pieces_before_end = 0;
        for (i, part) in wire.chunks(20_000).enumerate() {
            f.feed(part, &mut out).expect("feed");
            if (i + 1) * 20_000 < wire.len() && !out.is_empty() {
                pieces_before_end += 1;
            }
        }
        f.finish().expect("complete");
        assert!(
            pieces_before_end > 0,
            "entries went out before the batch ended"
        );
        let msgs = decode(&out);
        assert!(msgs.len() > 1, "several pieces");
        let total: usize = msgs.iter().map(|m| m.1.len()).sum();
        assert_eq!(total, 1000);
        let chunks: Vec<_> = msgs
            .iter()
            .filter(|m| {
                m.2.as_map()
                    .expect("opts")
                    .iter()
                    .any(|(k, _)| k.as_str() == Some("chunk"))
            })
            .collect();
        assert_eq!(chunks.len(), 1, "one ack asked for, on the last piece");
        assert!(std::ptr::eq(chunks[0], msgs.last().expect("last")));
        assert!(
            !msgs.last().expect("last").1.is_empty(),
            "the last piece has records"
        );
        assert_eq!(f.counts().records, 1000);
        assert_eq!(f.counts().messages, 1);
    }

    #[test]
    fn a_large_denied_batch_sends_nothing() {
        let wire = big_packed(1000, "audit.big", Some("big-2"));
        let mut f = filter(Some("app.${identity}.**"));
        let mut out = Vec::new();
        let mut denied = Vec::new();
        for part in wire.chunks(20_000) {
            denied.extend(f.feed(part, &mut out).expect("feed"));
        }
        assert!(out.is_empty());
        assert_eq!(denied.len(), 1);
        assert_eq!(denied[0].records, 1000);
        assert!(denied[0].chunked);
        assert!(f.stopped());
    }

    #[test]
    fn a_large_batch_cut_short_or_claiming_too_much_is_refused() {
        let wire = big_packed(1000, "t", None);
        let mut f = filter(None);
        let mut out = Vec::new();
        f.feed(&wire[..wire.len() / 2], &mut out).expect("half");
        assert!(matches!(f.finish(), Err(FluentError::Truncated(_))));

        let mut f = Filter::new(
            Stamp::new(&[]),
            None,
            Limits {
                max_message: 100_000,
                ..Limits::default()
            },
        );
        let mut head = vec![0x93, 0xa1, b't', 0xc6];
        head.extend_from_slice(&200_000u32.to_be_bytes());
        head.push(0x92);
        assert!(matches!(
            f.feed(&head, &mut Vec::new()),
            Err(FluentError::TooLarge {
                what: "message",
                ..
            })
        ));

        // An entry that runs past the payload's end.
        let mut f = filter(None);
        let mut m = vec![0x93, 0xa1, b't', 0xc6];
        let payload: Vec<u8> = (0..400)
            .flat_map(|i| enc(&V::Array(vec![V::from(i), rec("m", &"y".repeat(100))])))
            .collect();
        let cut = payload.len() - 3;
        m.extend_from_slice(&(cut as u32).to_be_bytes());
        m.extend_from_slice(&payload);
        m.extend(enc(&V::Map(vec![])));
        assert!(f.feed(&m, &mut Vec::new()).is_err());
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

    /// `n` bytes of empty entries `[0, {}]` (3 bytes each), the smallest
    /// entry there is: the most stamps per byte.
    fn empty_entries(n: usize) -> Vec<u8> {
        [0x92, 0x00, 0x80].repeat(n / 3)
    }

    fn gzip(plain: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut gz, plain).expect("gzip");
        gz.finish().expect("gzip")
    }

    /// `[tag, bin(payload), {"compressed": codec}]`.
    fn compressed(tag: &str, payload: Vec<u8>, codec: &str) -> Vec<u8> {
        let opt = V::Map(vec![(V::from("compressed"), V::from(codec))]);
        enc(&V::Array(vec![V::from(tag), V::Binary(payload), opt]))
    }

    fn one_record(tag: &str) -> Vec<u8> {
        enc(&V::Array(vec![V::from(tag), V::from(1), rec("m", "ok")]))
    }

    fn limits(f: impl FnOnce(&mut Limits)) -> Filter {
        let mut l = Limits::default();
        f(&mut l);
        let stamp = Stamp::new(&[("darkport_identity".into(), StampValue::Str("app-1".into()))]);
        Filter::new(stamp, None, l)
    }

    #[test]
    fn a_61_kb_gzip_bomb_of_empty_entries_is_refused_whole() {
        let bomb = gzip(&empty_entries(60 << 20));
        assert!(
            bomb.len() < 70_000,
            "{} bytes inflate to 60 MiB",
            bomb.len()
        );
        let mut wire = one_record("before");
        let before = {
            let mut out = Vec::new();
            filter(None).feed(&wire, &mut out).expect("one record");
            out
        };
        wire.extend(compressed("t", bomb, "gzip"));
        let mut f = filter(None);
        let mut out = Vec::new();
        let r = f.feed(&wire, &mut out);
        assert!(
            matches!(
                r,
                Err(FluentError::TooLarge {
                    what: "decompressed payload",
                    limit: 16_777_216, // 16 MiB
                })
            ),
            "{r:?}"
        );
        assert_eq!(out, before, "nothing of the refused message is in out");
        assert!(
            f.plain.capacity() <= KEEP_CAPACITY,
            "the decompression buffer is given back: {}",
            f.plain.capacity()
        );
    }

    #[test]
    fn a_bomb_under_the_decompressed_limit_is_refused_within_the_output_bound() {
        // 15 MiB of empty entries: 5 M of them, 160 MB stamped.
        let plain = empty_entries(15 << 20);
        let mut f = filter(None);
        let mut out = b"earlier output".to_vec();
        let r = f.feed(&compressed("t", gzip(&plain), "gzip"), &mut out);
        assert!(
            matches!(
                r,
                Err(FluentError::TooManyEntries { limit: 1_000_000 })
                    | Err(FluentError::TooLarge {
                        what: STAMPED_OUTPUT,
                        ..
                    })
            ),
            "{r:?}"
        );
        assert_eq!(out, b"earlier output", "out is back at its mark");
        // The capacity out grew to shows how far the refused message got:
        // up to the bound (and Vec's doubling), never the 160 MB.
        let peak = out.capacity();
        assert!(
            peak <= 2 * (Limits::default().max_output + KEEP_CAPACITY),
            "{peak}"
        );
        shrink_buffer(&mut out);
        assert!(out.capacity() <= KEEP_CAPACITY);
        assert!(f.plain.capacity() <= KEEP_CAPACITY);
    }

    #[test]
    fn the_entries_of_one_message_are_bounded_in_every_mode() {
        let entries: Vec<V> = (0..11)
            .map(|i| V::Array(vec![V::from(i), rec("m", "x")]))
            .collect();
        let packed: Vec<u8> = entries.iter().flat_map(enc).collect();
        let forward = |n: usize| {
            enc(&V::Array(vec![
                V::from("t"),
                V::Array(entries[..n].to_vec()),
            ]))
        };
        let packed_msg = |n: usize| {
            enc(&V::Array(vec![
                V::from("t"),
                V::Binary(entries[..n].iter().flat_map(enc).collect()),
            ]))
        };
        let gz = |n: usize| {
            compressed(
                "t",
                gzip(&entries[..n].iter().flat_map(enc).collect::<Vec<_>>()),
                "gzip",
            )
        };
        assert_eq!(
            packed.len(),
            entries.iter().map(|e| enc(e).len()).sum::<usize>()
        );
        for (mode, msg) in [
            ("forward", &forward as &dyn Fn(usize) -> Vec<u8>),
            ("packed", &packed_msg),
            ("gzip", &gz),
        ] {
            let mut f = limits(|l| l.max_entries = 10);
            let mut out = Vec::new();
            f.feed(&msg(10), &mut out).expect(mode);
            assert_eq!(decode(&out)[0].1.len(), 10, "{mode}: 10 entries pass");
            let mark = out.len();
            let r = f.feed(&msg(11), &mut out);
            assert_eq!(r, Err(FluentError::TooManyEntries { limit: 10 }), "{mode}");
            assert_eq!(out.len(), mark, "{mode}: nothing of the 11 in out");
            assert_eq!(f.counts().records, 10);
        }
    }

    #[test]
    fn the_stamped_output_of_one_message_is_bounded() {
        let msg = enc(&V::Array(vec![
            V::from("t"),
            V::Array(
                (0..50)
                    .map(|i| V::Array(vec![V::from(i), rec("m", "x")]))
                    .collect(),
            ),
            V::Map(vec![(V::from("chunk"), V::from("c-1"))]),
        ]));
        let mut exact = Vec::new();
        filter(None).feed(&msg, &mut exact).expect("unbounded");
        let size = exact.len();

        let mut f = limits(|l| l.max_output = size);
        let mut out = Vec::new();
        f.feed(&msg, &mut out).expect("exactly at the bound");
        assert_eq!(out, exact);

        let mut f = limits(|l| l.max_output = size - 1);
        let mut out = Vec::new();
        let r = f.feed(&msg, &mut out);
        assert_eq!(
            r,
            Err(FluentError::TooLarge {
                what: STAMPED_OUTPUT,
                limit: size - 1
            })
        );
        assert!(out.is_empty());
        // Caught in the entries, not only at the end.
        let mut f = limits(|l| l.max_output = size / 2);
        assert!(matches!(
            f.feed(&msg, &mut out),
            Err(FluentError::TooLarge {
                what: STAMPED_OUTPUT,
                ..
            })
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn a_large_batch_passed_on_in_pieces_is_bounded_in_entries() {
        let wire = big_packed(1000, "t", Some("c"));
        let mut f = limits(|l| l.max_entries = 1000);
        let mut out = Vec::new();
        for part in wire.chunks(20_000) {
            f.feed(part, &mut out).expect("1000 entries pass");
        }
        assert_eq!(f.counts().records, 1000);

        let mut f = limits(|l| l.max_entries = 999);
        let mut out = Vec::new();
        let r: Result<Vec<_>, _> = wire
            .chunks(20_000)
            .map(|part| f.feed(part, &mut out))
            .collect();
        assert_eq!(r, Err(FluentError::TooManyEntries { limit: 999 }));
        let chunked = decode(&out).iter().any(|m| {
            m.2.as_map()
                .expect("opts")
                .iter()
                .any(|(k, _)| k.as_str() == Some("chunk"))
        });
        assert!(!chunked, "the refused batch's chunk is never passed on");
    }

    #[test]
    fn buffers_that_grew_for_a_large_message_are_given_back() {
        // About 3 MiB of records that do not compress much, so the
        // message itself is over 1 MiB on the wire too.
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let plain: Vec<u8> = (0..20_000)
            .flat_map(|i| {
                let noise: String = (0..150)
                    .map(|_| char::from(rng.random_range(b'a'..=b'z')))
                    .collect();
                enc(&V::Array(vec![V::from(i), rec("m", &noise)]))
            })
            .collect();
        let wire = compressed("app.big", gzip(&plain), "gzip");
        assert!(wire.len() > 1 << 20, "{}", wire.len());
        let mut f = filter(None);
        let mut out = Vec::new();
        for part in wire.chunks(64 * 1024) {
            f.feed(part, &mut out).expect("a large, valid message");
        }
        assert_eq!(f.counts().records, 20_000);
        assert!(out.capacity() > 4 << 20);
        out.clear();
        shrink_buffer(&mut out);
        assert!(out.capacity() <= KEEP_CAPACITY, "{}", out.capacity());
        assert!(
            f.plain.capacity() <= KEEP_CAPACITY,
            "{}",
            f.plain.capacity()
        );
        assert!(f.buf.capacity() <= KEEP_CAPACITY, "{}", f.buf.capacity());

        // The stream goes on.
        f.feed(&one_record("app.after"), &mut out)
            .expect("a small one");
        assert_eq!(decode(&out)[0].0, "app.after");
        assert_eq!(f.counts().messages, 2);
    }

    #[test]
    fn shrink_buffer_leaves_small_or_full_buffers_alone() {
        let mut small = Vec::<u8>::with_capacity(512 * 1024);
        shrink_buffer(&mut small);
        assert_eq!(
            small.capacity(),
            512 * 1024,
            "steady traffic keeps its buffer"
        );
        let mut filling = vec![0u8; 2 << 20];
        filling.reserve(1 << 20);
        let cap = filling.capacity();
        shrink_buffer(&mut filling);
        assert_eq!(filling.capacity(), cap, "a message still coming in is kept");
        filling.truncate(100);
        shrink_buffer(&mut filling);
        assert!(filling.capacity() <= KEEP_CAPACITY);
        assert_eq!(filling.len(), 100);
    }

    #[test]
    fn tags_longer_than_any_pattern_matches_are_refused() {
        let at = "a".repeat(MAX_TAG);
        let mut out = Vec::new();
        filter(None)
            .feed(&one_record(&at), &mut out)
            .expect("MAX_TAG bytes pass");
        assert_eq!(decode(&out)[0].0, at);

        let over = "a".repeat(MAX_TAG + 1);
        let mut out = Vec::new();
        let r = filter(None).feed(&one_record(&over), &mut out);
        assert_eq!(
            r,
            Err(FluentError::TooLarge {
                what: "tag",
                limit: MAX_TAG
            })
        );
        assert!(out.is_empty());

        // A 10 MB tag is refused once its length is in, before the router
        // holds it (or logs it in a denial).
        let mut head = vec![0x93, 0xdb];
        head.extend_from_slice(&10_000_000u32.to_be_bytes());
        head.extend_from_slice(&[b'x'; 4096]);
        let mut f = filter(Some("app.**"));
        let r = f.feed(&head, &mut out);
        assert!(matches!(r, Err(FluentError::TooLarge { what: "tag", .. })));
        assert!(out.is_empty());
    }

    #[test]
    fn error_names_for_metrics() {
        assert_eq!(
            FluentError::TooManyEntries { limit: 1 }.as_str(),
            "too_many_entries"
        );
        assert_eq!(FluentError::Zstd(String::new()).as_str(), "decompress");
        assert_eq!(
            FluentError::TooLarge {
                what: STAMPED_OUTPUT,
                limit: 1
            }
            .as_str(),
            "too_large"
        );
    }
}
