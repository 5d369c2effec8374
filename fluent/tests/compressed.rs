//! CompressedPackedForward through the router's filter, gzip and zstd,
//! with messages written byte by byte from the specifications:
//!
//! - the forward protocol's CompressedPackedForward mode
//!   (<https://github.com/fluent/fluentd/wiki/Forward-Protocol-Specification-v1#compressedpackedforward-mode>):
//!   `[tag, bin(entries), {"compressed": "gzip"}]`, the entries being a
//!   PackedForward payload (concatenated `[time, record]`), compressed,
//!   and MAY be several compressed members back to back. Fluentd 1.19
//!   sends `"zstd"` the same way (fluent/fluentd#4657; the specification's
//!   update is fluent/fluentd#4758);
//! - zstd frames (RFC 8878, section 3.1.1), so the fixtures do not depend
//!   on what an encoder chooses to emit.
//!
//! Only the public API is used.

use darkport_fluent::{Filter, FluentError, Limits, Stamp, StampValue};
use rmpv::Value as V;

fn filter(limits: Limits) -> Filter {
    let stamp = Stamp::new(&[("darkport_identity".into(), StampValue::Str("app-1".into()))]);
    Filter::new(stamp, None, limits)
}

/// One entry, by hand: `[1700000000 + i, {"message": "hi"}]`.
fn entry(i: u32) -> Vec<u8> {
    let mut e = vec![0x92, 0xce]; // fixarray 2; uint32
    e.extend_from_slice(&(1_700_000_000 + i).to_be_bytes());
    e.push(0x81); // fixmap 1
    e.push(0xa7); // fixstr 7
    e.extend_from_slice(b"message");
    e.push(0xa2); // fixstr 2
    e.extend_from_slice(b"hi");
    e
}

/// `[tag, bin32(payload), {"compressed": codec, "chunk": chunk}]`, by hand.
fn message(tag: &str, payload: &[u8], codec: &str, chunk: Option<&str>) -> Vec<u8> {
    let mut m = vec![0x93]; // fixarray 3: tag, entries, option
    m.push(0xa0 | tag.len() as u8); // fixstr (tags here are short)
    m.extend_from_slice(tag.as_bytes());
    m.push(0xc6); // bin32: the specification's "MUST send ... as msgpack bin"
    m.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    m.extend_from_slice(payload);
    m.push(0x80 | (1 + u8::from(chunk.is_some()))); // fixmap
    m.push(0xaa); // fixstr 10
    m.extend_from_slice(b"compressed");
    m.push(0xa0 | codec.len() as u8);
    m.extend_from_slice(codec.as_bytes());
    if let Some(c) = chunk {
        m.push(0xa5);
        m.extend_from_slice(b"chunk");
        m.push(0xa0 | c.len() as u8);
        m.extend_from_slice(c.as_bytes());
    }
    m
}

/// The zstd magic number, 0xFD2FB528 little-endian (RFC 8878, 3.1.1).
const MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// A block header (RFC 8878, 3.1.1.2): 3 bytes little-endian, bit 0
/// Last_Block, bits 1-2 Block_Type (0 Raw, 1 RLE), bits 3-23 Block_Size.
fn block_header(last: bool, kind: u32, size: u32) -> [u8; 3] {
    let h = u32::from(last) | (kind << 1) | (size << 3);
    let b = h.to_le_bytes();
    [b[0], b[1], b[2]]
}

/// One single-segment zstd frame holding `content` in one Raw block
/// (content up to 128 KiB, the largest block).
fn raw_frame(content: &[u8]) -> Vec<u8> {
    let mut f = MAGIC.to_vec();
    // Frame_Header_Descriptor: Frame_Content_Size_flag 2 (a 4-byte
    // size), Single_Segment_flag 1 (no Window_Descriptor: the window is
    // the content size), no checksum, no dictionary.
    f.push(0b1010_0000);
    f.extend_from_slice(&(content.len() as u32).to_le_bytes());
    f.extend_from_slice(&block_header(true, 0, content.len() as u32));
    f.extend_from_slice(content);
    f
}

/// A zstd frame of `blocks` RLE blocks of 128 KiB of `byte` each: 4 bytes
/// a block, 128 KiB out. Window_Descriptor 0x50: exponent 10, so a window
/// of 2^(10+10) = 1 MiB, mantissa 0; no content size.
fn rle_frame(byte: u8, blocks: usize) -> Vec<u8> {
    let mut f = MAGIC.to_vec();
    f.push(0x00);
    f.push(0x50);
    for i in 0..blocks {
        f.extend_from_slice(&block_header(i + 1 == blocks, 1, 128 * 1024));
        f.push(byte);
    }
    f
}

/// Every message the filter wrote: (tag, records, options).
fn decode(mut out: &[u8]) -> Vec<(String, Vec<V>, V)> {
    let mut msgs = Vec::new();
    while !out.is_empty() {
        let v = rmpv::decode::read_value(&mut out).expect("valid output");
        let a = v.as_array().expect("array").clone();
        let V::Binary(payload) = &a[1] else {
            panic!("PackedForward out, got {:?}", a[1]);
        };
        let mut p = &payload[..];
        let mut records = Vec::new();
        while !p.is_empty() {
            let e = rmpv::decode::read_value(&mut p).expect("entry");
            records.push(e.as_array().expect("entry")[1].clone());
        }
        msgs.push((
            a[0].as_str().expect("tag").to_string(),
            records,
            a[2].clone(),
        ));
    }
    msgs
}

fn option<'a>(opts: &'a V, key: &str) -> Option<&'a V> {
    opts.as_map()
        .expect("option map")
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

#[test]
fn a_zstd_message_built_from_the_specifications_comes_out_stamped() {
    let payload = [entry(0), entry(1)].concat();
    let frame = raw_frame(&payload);
    // What a real decoder makes of the hand-made frame, to be sure it is
    // one.
    assert_eq!(
        zstd::decode_all(&frame[..]).expect("a valid frame"),
        payload
    );
    let wire = message("app.z", &frame, "zstd", Some("c-9"));

    // In one piece, and a byte at a time.
    for step in [wire.len(), 1] {
        let mut f = filter(Limits::default());
        let mut out = Vec::new();
        for part in wire.chunks(step) {
            f.feed(part, &mut out).expect("a valid zstd message");
        }
        f.finish().expect("complete");
        let msgs = decode(&out);
        assert_eq!(msgs.len(), 1);
        let (tag, records, opts) = &msgs[0];
        assert_eq!(tag, "app.z");
        assert_eq!(records.len(), 2);
        for r in records {
            let m = r.as_map().expect("map");
            assert!(m.contains(&(V::from("message"), V::from("hi"))));
            assert!(m.contains(&(V::from("darkport_identity"), V::from("app-1"))));
        }
        assert_eq!(option(opts, "size"), Some(&V::from(2)));
        assert_eq!(
            option(opts, "chunk"),
            Some(&V::from("c-9")),
            "the ack rides on"
        );
        assert_eq!(option(opts, "compressed"), None, "what goes out is plain");
        assert_eq!(f.counts().records, 2);
    }
}

#[test]
fn gzip_and_zstd_of_the_same_entries_give_the_same_output() {
    let payload: Vec<u8> = (0..500).flat_map(entry).collect();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &payload).expect("gzip");
    let gz = gz.finish().expect("gzip");
    let zs = zstd::encode_all(&payload[..], 3).expect("zstd");
    let mut outs = Vec::new();
    for (codec, data) in [("gzip", gz), ("zstd", zs)] {
        let mut out = Vec::new();
        filter(Limits::default())
            .feed(&message("t", &data, codec, Some("c")), &mut out)
            .expect(codec);
        outs.push(out);
    }
    assert_eq!(outs[0], outs[1]);
    assert_eq!(decode(&outs[0])[0].1.len(), 500);
}

#[test]
fn zstd_frames_back_to_back_are_one_payload() {
    // The specification: the payload MAY be several compressed binaries
    // back to back (Fluentd appends one per buffer write).
    let a = raw_frame(&[entry(0), entry(1)].concat());
    let b = zstd::encode_all(&entry(2)[..], 1).expect("zstd");
    let mut out = Vec::new();
    filter(Limits::default())
        .feed(&message("t", &[a, b].concat(), "zstd", None), &mut out)
        .expect("two frames");
    assert_eq!(decode(&out)[0].1.len(), 3);
}

#[test]
fn a_zstd_bomb_is_refused_like_a_gzip_bomb() {
    // 17 MiB of nil in 548 bytes: past the 16 MiB limit.
    let bomb = rle_frame(0xc0, 17 * 8);
    assert!(bomb.len() < 600);
    let mut f = filter(Limits::default());
    let mut out = b"earlier".to_vec();
    let r = f.feed(&message("t", &bomb, "zstd", Some("c")), &mut out);
    assert_eq!(
        r,
        Err(FluentError::TooLarge {
            what: "decompressed payload",
            limit: 16 << 20
        })
    );
    assert_eq!(out, b"earlier", "nothing of the refused message");

    // 60 MiB of empty entries `[0, {}]`, from the encoder.
    let plain = [0x92, 0x00, 0x80].repeat(20 << 20);
    let bomb = zstd::encode_all(&plain[..], 3).expect("zstd");
    assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
    let mut out = Vec::new();
    let r = filter(Limits::default()).feed(&message("t", &bomb, "zstd", None), &mut out);
    assert!(matches!(
        r,
        Err(FluentError::TooLarge {
            what: "decompressed payload",
            ..
        })
    ));
    assert!(out.is_empty());

    // Under the decompressed limit: the entries and output bounds, as for
    // gzip.
    let small = zstd::encode_all(&[0x92, 0x00, 0x80].repeat(5000)[..], 3).expect("zstd");
    let mut f = filter(Limits {
        max_entries: 1000,
        ..Limits::default()
    });
    let r = f.feed(&message("t", &small, "zstd", None), &mut out);
    assert_eq!(r, Err(FluentError::TooManyEntries { limit: 1000 }));
    assert!(out.is_empty());
    let mut f = filter(Limits {
        max_output: 64 * 1024,
        ..Limits::default()
    });
    let r = f.feed(&message("t", &small, "zstd", None), &mut out);
    assert!(matches!(
        r,
        Err(FluentError::TooLarge {
            what: darkport_fluent::filter::STAMPED_OUTPUT,
            limit: 65_536
        })
    ));
    assert!(out.is_empty());
}

#[test]
fn a_zstd_frame_asking_for_a_larger_window_than_the_limit_is_refused() {
    // Window_Descriptor 0x88: exponent 17, a 128 MiB window (zstd's
    // default maximum), which the decoder would allocate for one tiny
    // block.
    let mut frame = MAGIC.to_vec();
    frame.extend_from_slice(&[0x00, 0x88]);
    frame.extend_from_slice(&block_header(true, 0, 3));
    frame.extend_from_slice(&[0x92, 0x00, 0x80]);
    let r = filter(Limits::default()).feed(&message("t", &frame, "zstd", None), &mut Vec::new());
    assert!(matches!(r, Err(FluentError::Zstd(_))), "{r:?}");

    // The same block in a 1 MiB window passes.
    frame[5] = 0x50;
    let mut out = Vec::new();
    filter(Limits::default())
        .feed(&message("t", &frame, "zstd", None), &mut out)
        .expect("a 1 MiB window");
    assert_eq!(decode(&out)[0].1.len(), 1);
}

#[test]
fn compressed_zstd_with_a_payload_that_is_not_zstd_is_a_clear_error() {
    let payload = [entry(0), entry(1)].concat();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &payload).expect("gzip");
    let gz = gz.finish().expect("gzip");
    let frame = raw_frame(&payload);

    let cases: [(&str, Vec<u8>); 4] = [
        ("gzip under zstd", gz.clone()),
        ("plain entries under zstd", payload.clone()),
        ("a frame cut short", frame[..frame.len() - 3].to_vec()),
        (
            "a frame and garbage",
            [frame.clone(), b"junk".to_vec()].concat(),
        ),
    ];
    for (what, data) in cases {
        let mut out = Vec::new();
        let r = filter(Limits::default()).feed(&message("t", &data, "zstd", None), &mut out);
        let Err(e @ FluentError::Zstd(_)) = r else {
            panic!("{what}: {r:?}");
        };
        assert!(
            e.to_string()
                .starts_with("the zstd payload does not decompress: "),
            "{what}: {e}"
        );
        assert!(out.is_empty(), "{what}");
    }
    // And the other way round.
    let r = filter(Limits::default()).feed(&message("t", &frame, "gzip", None), &mut Vec::new());
    assert!(matches!(r, Err(FluentError::Gzip(_))), "{r:?}");

    // A large batch of plain entries marked zstd: whole, the same error;
    // in pieces, the filter passes it on as it arrives, and refuses it
    // when its option map does.
    let big = message(
        "t",
        &(0..2000).flat_map(entry).collect::<Vec<u8>>(),
        "zstd",
        None,
    );
    let r = filter(Limits::default()).feed(&big, &mut Vec::new());
    assert!(matches!(r, Err(FluentError::Zstd(_))), "{r:?}");
    let mut f = filter(Limits::default());
    let r: Result<Vec<_>, _> = big
        .chunks(8192)
        .map(|part| f.feed(part, &mut Vec::new()))
        .collect();
    assert_eq!(
        r,
        Err(FluentError::Malformed(
            "compressed: gzip or zstd, but the payload is uncompressed entries"
        ))
    );
}
