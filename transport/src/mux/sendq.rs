use std::collections::HashMap;

/// The smallest piece a writer is woken for when it wants more: a
/// writer waits rather than queue a sliver (one minimum HTTP/2 frame).
pub(super) const MIN_GRANT: u64 = 16 * 1024;

/// What a walker saw in a byte stream of HTTP/2 frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Frame {
    /// A `HEADERS` frame on this stream (opens it, if it is new).
    Headers(u32),
    /// This many bytes of a `DATA` frame's payload on this stream.
    Data(u32, usize),
    /// The last byte of a frame with `END_STREAM` on this stream.
    Ended(u32),
    /// A `RST_STREAM` frame on this stream.
    Reset(u32),
    /// A `GOAWAY` frame: streams above this id are given up.
    GoAway(u32),
}

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
/// What a client writes before its first frame (RFC 9113 §3.4).
pub(super) const PREFACE: usize = 24;

/// Follows the frames of an HTTP/2 byte stream fed in pieces of any
/// size: reads each 9-byte frame header and skips payloads (it never
/// looks at payload bytes but a `GOAWAY`'s first four), so the cost is
/// per frame, not per byte.
///
/// `DATA` padding is counted as payload: h2 never pads what it sends,
/// and only the frames we send are counted.
#[derive(Debug)]
pub(super) struct FrameWalker {
    /// Preface bytes still to skip before the first frame.
    preface: usize,
    /// The frame header being read.
    head: [u8; 9],
    /// How much of `head` is read; 9 once in the payload.
    have: usize,
    /// Payload bytes of the current frame not yet seen.
    left: usize,
    /// A `GOAWAY`'s last stream id, as its bytes arrive.
    last: [u8; 4],
    /// How much of `last` is read.
    last_have: usize,
}

impl FrameWalker {
    /// A walker that skips `preface` bytes first.
    pub(super) fn new(preface: usize) -> FrameWalker {
        FrameWalker {
            preface,
            head: [0; 9],
            have: 0,
            left: 0,
            last: [0; 4],
            last_have: 0,
        }
    }

    fn kind(&self) -> u8 {
        self.head[3]
    }

    fn stream(&self) -> u32 {
        u32::from_be_bytes([self.head[5], self.head[6], self.head[7], self.head[8]]) & 0x7fff_ffff
    }

    /// Walks `bytes`, the next bytes of the stream, calling `on` for
    /// each thing seen, in order.
    pub(super) fn feed(&mut self, mut bytes: &[u8], on: &mut impl FnMut(Frame)) {
        while !bytes.is_empty() {
            if self.preface > 0 {
                let n = self.preface.min(bytes.len());
                self.preface -= n;
                bytes = &bytes[n..];
                continue;
            }
            if self.have < 9 {
                let n = (9 - self.have).min(bytes.len());
                self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
                self.have += n;
                bytes = &bytes[n..];
                if self.have < 9 {
                    return;
                }
                self.left = usize::from(self.head[0]) << 16
                    | usize::from(self.head[1]) << 8
                    | usize::from(self.head[2]);
                self.last_have = 0;
                match self.kind() {
                    HEADERS => on(Frame::Headers(self.stream())),
                    RST_STREAM => on(Frame::Reset(self.stream())),
                    _ => {}
                }
            } else {
                let n = self.left.min(bytes.len());
                match self.kind() {
                    DATA => on(Frame::Data(self.stream(), n)),
                    GOAWAY if self.last_have < 4 => {
                        let m = (4 - self.last_have).min(n);
                        self.last[self.last_have..self.last_have + m].copy_from_slice(&bytes[..m]);
                        self.last_have += m;
                        if self.last_have == 4 {
                            on(Frame::GoAway(u32::from_be_bytes(self.last) & 0x7fff_ffff));
                        }
                    }
                    _ => {}
                }
                self.left -= n;
                bytes = &bytes[n..];
            }
            if self.left == 0 {
                // The frame is over (a frame without payload ends with
                // its header).
                let kind = self.kind();
                if (kind == DATA || kind == HEADERS) && self.head[4] & END_STREAM != 0 {
                    on(Frame::Ended(self.stream()));
                }
                self.have = 0;
            }
        }
    }
}

/// How many of `want` bytes a writer may queue when the connection
/// has `room` left: all of them if they fit, else what fits if that is
/// at least [`MIN_GRANT`], else none (wait).
pub(super) fn room_for(room: u64, want: usize) -> usize {
    let want64 = want as u64;
    if room >= want64 {
        want
    } else if room >= MIN_GRANT {
        // room < want, so it fits in usize.
        room as usize
    } else {
        0
    }
}

/// Whether giving back bytes, from `before` to `after` queued, should
/// wake the writers waiting for room. Writers wait only with less than
/// [`MIN_GRANT`] left; they are woken together once a quarter of the
/// limit is free again, so a connection at its limit wakes them a few
/// times per limit's worth of bytes written, not once per frame.
pub(super) fn wakes(limit: u64, before: u64, after: u64) -> bool {
    let resume = (limit / 4).max(MIN_GRANT);
    limit.saturating_sub(before) < resume && limit.saturating_sub(after) >= resume
}

/// What a writer may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Grant {
    /// Queue this many bytes; they are counted (give them back with
    /// [`SendQueue::refund`] if h2 refuses them).
    Counted(usize),
    /// Queue what h2 takes, uncounted: the stream is over (h2 refuses
    /// its data or drops it) or the connection has ended.
    Uncounted,
    /// Wait until bytes are given back.
    Wait,
}

/// The bytes one HTTP/2 connection holds queued to send, per stream.
#[derive(Debug)]
pub(super) struct SendQueue {
    /// Most bytes queued at once.
    limit: u64,
    /// Bytes queued now: the sum over `streams`.
    queued: u64,
    /// Streams that may still send, with what each has queued.
    streams: HashMap<u32, u64>,
    /// The highest stream id whose `HEADERS` crossed: a stream at or
    /// below it missing from `streams` is over, one above it is not on
    /// the wire yet. Stream ids only grow (RFC 9113 §5.1.1).
    newest: u32,
    /// This end opened the streams (the client) rather than accepted
    /// them: which direction's `HEADERS` open a stream, and whether a
    /// `GOAWAY` gives any of ours up.
    client: bool,
    /// The connection has ended: nothing is counted any more.
    closed: bool,
}

impl SendQueue {
    /// An empty queue holding at most `limit` bytes.
    pub(super) fn new(limit: u64, client: bool) -> SendQueue {
        SendQueue {
            limit,
            queued: 0,
            streams: HashMap::new(),
            newest: 0,
            client,
            closed: false,
        }
    }

    /// Bytes queued now.
    pub(super) fn queued(&self) -> u64 {
        self.queued
    }

    /// Streams being tracked (for tests: none are left behind).
    #[cfg(test)]
    pub(super) fn tracked(&self) -> usize {
        self.streams.len()
    }

    /// May a writer on `stream` queue `want` more bytes? Counts what
    /// it grants.
    pub(super) fn grant(&mut self, stream: u32, want: usize) -> Grant {
        if self.closed || want == 0 {
            return Grant::Uncounted;
        }
        if !self.streams.contains_key(&stream) && stream <= self.newest {
            return Grant::Uncounted;
        }
        let n = room_for(self.limit.saturating_sub(self.queued), want);
        if n == 0 {
            return Grant::Wait;
        }
        *self.streams.entry(stream).or_insert(0) += n as u64;
        self.queued += n as u64;
        Grant::Counted(n)
    }

    /// Takes back `n` bytes granted to `stream` that h2 refused.
    /// Returns whether to wake waiting writers.
    pub(super) fn refund(&mut self, stream: u32, n: usize) -> bool {
        self.give_back(stream, n as u64)
    }

    /// A frame we wrote. Returns whether to wake waiting writers.
    pub(super) fn sent(&mut self, frame: Frame) -> bool {
        match frame {
            Frame::Data(stream, n) => self.give_back(stream, n as u64),
            Frame::Ended(stream) | Frame::Reset(stream) => self.forget(stream),
            Frame::Headers(stream) if self.client => {
                self.open(stream);
                false
            }
            Frame::Headers(_) | Frame::GoAway(_) => false,
        }
    }

    /// A frame the peer wrote. Returns whether to wake waiting writers.
    pub(super) fn received(&mut self, frame: Frame) -> bool {
        match frame {
            Frame::Headers(stream) if !self.client => {
                self.open(stream);
                false
            }
            // h2 drops what it had queued for the stream.
            Frame::Reset(stream) => self.forget(stream),
            // h2 gives up our streams above `last` (a server opens
            // none of its own here).
            Frame::GoAway(last) if self.client => {
                let gone: Vec<u32> = self.streams.keys().copied().filter(|&s| s > last).collect();
                // Every one is forgotten; any of them may wake.
                let mut wake = false;
                for s in gone {
                    wake |= self.forget(s);
                }
                wake
            }
            _ => false,
        }
    }

    /// We reset `stream`: h2 dropped what it had queued for it.
    /// Returns whether to wake waiting writers.
    pub(super) fn reset(&mut self, stream: u32) -> bool {
        // If its HEADERS have not crossed yet, they will, then the
        // RST_STREAM (h2 never resets an idle stream): the stream is
        // opened again empty, then forgotten.
        self.forget(stream)
    }

    /// The connection ended: every write from now on fails in h2, so
    /// nothing waits for room any more. Returns whether to wake.
    pub(super) fn close(&mut self) -> bool {
        self.closed = true;
        self.streams = HashMap::new();
        self.queued = 0;
        true
    }

    fn open(&mut self, stream: u32) {
        if stream > self.newest {
            self.newest = stream;
            self.streams.entry(stream).or_insert(0);
        }
    }

    fn give_back(&mut self, stream: u32, n: u64) -> bool {
        let Some(tally) = self.streams.get_mut(&stream) else {
            return false;
        };
        // Bytes of a stream we were not counting (a notice stream, or
        // data granted uncounted) are not ours to give back.
        let n = n.min(*tally);
        *tally -= n;
        self.release(n)
    }

    fn forget(&mut self, stream: u32) -> bool {
        match self.streams.remove(&stream) {
            Some(n) => self.release(n),
            None => false,
        }
    }

    fn release(&mut self, n: u64) -> bool {
        let before = self.queued;
        self.queued -= n;
        n > 0 && wakes(self.limit, before, self.queued)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame header: length, type, flags, stream.
    fn head(len: usize, kind: u8, flags: u8, stream: u32) -> Vec<u8> {
        let mut h = (len as u32).to_be_bytes()[1..].to_vec();
        h.extend([kind, flags]);
        h.extend(stream.to_be_bytes());
        h
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = head(payload.len(), kind, flags, stream);
        f.extend(payload);
        f
    }

    /// What a walker sees in `bytes` fed in pieces of `step` bytes,
    /// with adjacent `Data` pieces of one stream merged.
    fn walk(preface: usize, bytes: &[u8], step: usize) -> Vec<Frame> {
        let mut w = FrameWalker::new(preface);
        let mut seen: Vec<Frame> = Vec::new();
        for piece in bytes.chunks(step) {
            w.feed(piece, &mut |f| match (seen.last_mut(), f) {
                (Some(Frame::Data(s, n)), Frame::Data(t, m)) if *s == t => *n += m,
                _ => seen.push(f),
            });
        }
        seen
    }

    #[test]
    fn the_walker_sees_the_same_frames_however_the_bytes_are_cut() {
        let mut goaway = 7u32.to_be_bytes().to_vec();
        goaway.extend([0, 0, 0, 0]);
        let mut stream = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        assert_eq!(stream.len(), PREFACE);
        for f in [
            frame(0x4, 0, 0, &[0; 6]),                // SETTINGS
            frame(HEADERS, 0x4, 1, &[0x82, 0x84]),    // opens 1
            frame(DATA, 0, 1, &[1; 1000]),            // 1000 on 1
            frame(0x8, 0, 0, &[0, 1, 0, 0]),          // WINDOW_UPDATE
            frame(HEADERS, 0x4, 3, &[0x82]),          // opens 3
            frame(DATA, 0, 3, &[3; 70_000]),          // 70,000 on 3
            frame(DATA, END_STREAM, 1, &[1; 10]),     // 10 on 1, ended
            frame(DATA, END_STREAM, 5, &[]),          // empty, ended
            frame(RST_STREAM, 0, 3, &[0, 0, 0, 8]),   // 3 reset
            frame(0x6, 0, 0, &[0; 8]),                // PING
            frame(GOAWAY, 0, 0, &goaway),             // above 7 given up
            frame(HEADERS, 0x4 | END_STREAM, 9, &[]), // opened and ended
        ] {
            stream.extend(f);
        }
        let expected = vec![
            Frame::Headers(1),
            Frame::Data(1, 1000),
            Frame::Headers(3),
            Frame::Data(3, 70_000),
            Frame::Data(1, 10),
            Frame::Ended(1),
            Frame::Ended(5),
            Frame::Reset(3),
            Frame::GoAway(7),
            Frame::Headers(9),
            Frame::Ended(9),
        ];
        for step in [1, 2, 5, 9, 10, 4096, stream.len()] {
            assert_eq!(
                walk(PREFACE, &stream, step),
                expected,
                "fed {step} bytes at a time"
            );
        }
    }

    #[test]
    fn the_stream_id_reserved_bit_is_ignored() {
        let f = frame(RST_STREAM, 0, 0x8000_0005, &[0; 4]);
        assert_eq!(walk(0, &f, 3), vec![Frame::Reset(5)]);
    }

    #[test]
    fn room_is_all_of_a_write_that_fits_else_a_useful_piece_else_none() {
        let k = MIN_GRANT;
        for (room, want, granted) in [
            (1_000_000, 100, 100),
            (100, 100, 100),
            (99, 100, 0),
            (k, 1_000_000, k as usize),
            (k - 1, 1_000_000, 0),
            (k - 1, 10, 10),
            (0, 1, 0),
        ] {
            assert_eq!(room_for(room, want), granted, "room {room}, want {want}");
        }
    }

    #[test]
    fn writers_are_woken_when_a_quarter_of_the_limit_is_free_again() {
        let l = 1_000_000;
        for (before, after, wake) in [
            (l, l - 1, false),
            (l, 750_001, false),
            (l, 750_000, true),
            (l, 0, true),
            (800_000, 700_000, true),
            (700_000, 600_000, false),
            (l + 5, l - 5, false),
        ] {
            assert_eq!(wakes(l, before, after), wake, "{before} -> {after}");
        }
    }

    const L: u64 = 1 << 20;

    #[test]
    fn writers_wait_at_the_limit_and_go_on_as_data_is_written() {
        let mut q = SendQueue::new(L, false);
        q.received(Frame::Headers(1));
        q.received(Frame::Headers(3));
        assert_eq!(q.grant(1, 600 << 10), Grant::Counted(600 << 10));
        assert_eq!(q.grant(3, 600 << 10), Grant::Counted(424 << 10));
        assert_eq!(q.queued(), L);
        assert_eq!(q.grant(3, 1), Grant::Wait);
        // Written in pieces: no wake until a quarter is free.
        assert!(!q.sent(Frame::Data(1, 100 << 10)));
        assert_eq!(q.grant(3, 64 << 10), Grant::Counted(64 << 10));
        assert!(!q.sent(Frame::Data(1, 200 << 10)));
        assert!(q.sent(Frame::Data(1, 100 << 10)));
        assert_eq!(q.queued(), (600 + 424 + 64 - 400) << 10);
        // The end of a stream forgets it (and what it still had).
        q.sent(Frame::Data(1, 200 << 10));
        q.sent(Frame::Ended(1));
        q.sent(Frame::Data(3, 488 << 10));
        q.sent(Frame::Ended(3));
        assert_eq!((q.queued(), q.tracked()), (0, 0));
    }

    #[test]
    fn a_reset_either_way_gives_back_what_the_stream_had_queued() {
        let mut q = SendQueue::new(L, false);
        for s in [1, 3, 5] {
            q.received(Frame::Headers(s));
            assert_eq!(q.grant(s, 340 << 10), Grant::Counted(340 << 10));
        }
        assert_eq!(q.grant(7, 300 << 10), Grant::Wait);
        assert!(q.reset(1), "reset here");
        assert!(!q.received(Frame::Reset(3)), "reset by the peer");
        assert!(!q.sent(Frame::Reset(5)), "reset by h2");
        assert_eq!((q.queued(), q.tracked()), (0, 0));
        // Data h2 had already taken out still crosses: not counted twice.
        assert!(!q.sent(Frame::Data(1, 16 << 10)));
        assert_eq!(q.queued(), 0);
        // A stream that is over is not counted again (h2 refuses or
        // drops what is written to it).
        assert_eq!(q.grant(3, 100), Grant::Uncounted);
        assert_eq!(q.tracked(), 0);
    }

    #[test]
    fn streams_open_with_headers_one_way_for_a_server_and_the_other_for_a_client() {
        let mut server = SendQueue::new(L, false);
        server.sent(Frame::Headers(1));
        server.received(Frame::Headers(3));
        // Ours to count: 3 (the peer opened it); 1's HEADERS were our
        // response, and 1 is below the newest stream.
        assert_eq!(server.grant(3, 10), Grant::Counted(10));
        assert_eq!(server.grant(1, 10), Grant::Uncounted);

        let mut client = SendQueue::new(L, true);
        // A client writes before its HEADERS cross: counted.
        assert_eq!(client.grant(1, 10), Grant::Counted(10));
        client.sent(Frame::Headers(1));
        client.received(Frame::Headers(1));
        client.sent(Frame::Headers(3));
        assert_eq!(client.grant(3, 10), Grant::Counted(10));
        assert_eq!(client.queued(), 20);
        // Trailers or a late HEADERS do not bring back a stream.
        client.sent(Frame::Ended(1));
        client.sent(Frame::Headers(1));
        assert_eq!(client.grant(1, 10), Grant::Uncounted);
    }

    #[test]
    fn a_goaway_gives_up_a_clients_streams_above_its_last_id() {
        let mut client = SendQueue::new(L, true);
        for s in [1, 3, 5, 7] {
            assert_eq!(client.grant(s, 1000), Grant::Counted(1000));
        }
        client.received(Frame::GoAway(3));
        assert_eq!((client.queued(), client.tracked()), (2000, 2));

        // A server's streams are the client's: a GOAWAY from a client
        // gives up none of them.
        let mut server = SendQueue::new(L, false);
        server.received(Frame::Headers(5));
        assert_eq!(server.grant(5, 1000), Grant::Counted(1000));
        server.received(Frame::GoAway(0));
        assert_eq!(server.queued(), 1000);
    }

    #[test]
    fn a_refused_send_is_given_back_and_a_closed_connection_counts_nothing() {
        let mut q = SendQueue::new(L, true);
        assert_eq!(q.grant(1, L as usize), Grant::Counted(L as usize));
        assert!(q.refund(1, L as usize));
        assert_eq!(q.queued(), 0);
        assert_eq!(q.grant(1, L as usize), Grant::Counted(L as usize));
        assert_eq!(q.grant(3, 1), Grant::Wait);
        assert!(q.close(), "waiting writers are woken");
        assert_eq!(q.grant(3, 1), Grant::Uncounted);
        assert_eq!((q.queued(), q.tracked()), (0, 0));
        assert!(!q.sent(Frame::Data(1, 100)));
    }
}
