//! Every frame captured between real Ceph 16.2.15 daemons and clients decodes with all CRCs
//! verified, to the values of the `decoded_*.txt` listings, and re-encodes to the same bytes.

use std::path::PathBuf;

use ringwire::decode::{control_lines, decode_stream, header_line, FrameBody, FrameReport};
use ringwire::proto::{Frame, FrameDecoder, FrameLimits, Message, Tag, TxQueue};

pub fn fixtures_dir() -> PathBuf {
    let dir = std::env::var_os("RINGWIRE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/msgr2")
        });
    assert!(
        dir.is_dir(),
        "msgr2 fixtures not found at {} (set RINGWIRE_FIXTURES)",
        dir.display()
    );
    dir
}

/// One frame as the listing describes it.
#[derive(Debug, Default)]
struct ListedFrame {
    offset: u64,
    tag: u8,
    segments: Vec<(u32, u16)>,
    preamble_crc: u32,
    seg0_crc: Option<u32>,
    late_status: Option<u8>,
    epilogue_crcs: Vec<u32>,
    payload_lines: Vec<String>,
    parts: Vec<(String, usize, String)>,
}

#[derive(Debug)]
struct ListedStream {
    file: String,
    bytes: u64,
    decoded: bool,
    frames: Vec<ListedFrame>,
    frame_count: Option<usize>,
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let start = line
        .find(key)
        .unwrap_or_else(|| panic!("{key} missing in {line}"))
        + key.len();
    let rest = &line[start..];
    let end = rest.find([' ', ';']).unwrap_or(rest.len());
    &rest[..end]
}

fn hex_u32(s: &str) -> u32 {
    u32::from_str_radix(s.trim_start_matches("0x"), 16).unwrap()
}

fn parse_listing(name: &str, text: &str) -> Vec<ListedStream> {
    let mut streams = Vec::new();
    let mut stream_no = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("##### TCP stream ") {
            stream_no = rest.split(':').next().unwrap().to_string();
        } else if let Some(rest) = line.strip_prefix("=== ") {
            let (dir, tail) = rest.split_once(": ").unwrap();
            let dir = dir.replace("->", "-to-");
            if let Some(n) = tail
                .strip_suffix(" bytes")
                .filter(|t| !t.contains("frames"))
            {
                streams.push(ListedStream {
                    file: format!("{name}-stream{stream_no}-{dir}.bin"),
                    bytes: n.parse().unwrap(),
                    decoded: true,
                    frames: Vec::new(),
                    frame_count: None,
                });
            } else {
                let n = tail.split(' ').next().unwrap().parse().unwrap();
                streams.last_mut().unwrap().frame_count = Some(n);
            }
        } else if line.contains("no msgr2 banner") {
            streams.last_mut().unwrap().decoded = false;
        } else if let Some(rest) = line.strip_prefix("-- @") {
            let s = streams.last_mut().unwrap();
            let segs_full =
                &line[line.find("segments=[").unwrap() + 10..line.find("] reserved").unwrap()];
            let segments = segs_full
                .split("), (")
                .map(|p| {
                    let p = p.trim_matches(|c| c == '(' || c == ')');
                    let (l, a) = p.split_once(", ").unwrap();
                    (l.parse().unwrap(), a.parse().unwrap())
                })
                .collect();
            s.frames.push(ListedFrame {
                offset: rest.split(' ').next().unwrap().parse().unwrap(),
                tag: field(line, "tag=")
                    .split('(')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap(),
                segments,
                preamble_crc: hex_u32(field(line, "preamble_crc=")),
                ..Default::default()
            });
        } else if let Some(rest) = line.strip_prefix("   ") {
            let Some(f) = streams.last_mut().and_then(|s| s.frames.last_mut()) else {
                continue;
            };
            if rest.starts_with("seg0 ") {
                f.seg0_crc = Some(hex_u32(field(rest, "crc=")));
            } else if rest.starts_with("epilogue(13B)") {
                f.late_status = Some(hex_u32(field(rest, "late_status=")) as u8);
                for part in rest.split("; ").skip(1) {
                    f.epilogue_crcs.push(hex_u32(field(part, "crc=")));
                }
            } else if let Some(p) = ["front ", "middle ", "data "]
                .iter()
                .find(|p| rest.starts_with(**p))
            {
                let (head, hex) = rest
                    .split_once(": ")
                    .unwrap_or((rest.trim_end_matches(':'), ""));
                let len = head[p.len()..].trim_end_matches('B').parse().unwrap();
                f.parts.push((p.trim().to_string(), len, hex.to_string()));
            } else {
                f.payload_lines.push(rest.to_string());
            }
        }
    }
    streams
}

/// The values of `key=value` tokens, normalised the same way on both sides: the listing's
/// encoding notes and quotes dropped, a `(name)` suffix dropped, empty values skipped.
fn values(line: &str) -> Vec<String> {
    let mut l = line.to_string();
    while let Some(start) = l.find(" [enc ") {
        let end = start + l[start..].find(']').unwrap() + 1;
        l.replace_range(start..end, "");
    }
    l.replace('\'', "")
        .split_whitespace()
        .filter_map(|t| t.split_once('=').map(|(_, v)| v.to_string()))
        .filter(|v| !v.is_empty())
        .map(|v| match (v.find('('), v.ends_with(')')) {
            (Some(i), true) if i > 0 && !v[..i].contains('[') => v[..i].to_string(),
            _ => v,
        })
        .collect()
}

fn check_frame(file: &str, listed: &ListedFrame, got: &FrameReport) {
    let ctx = format!("{file} @{}", listed.offset);
    assert_eq!(got.offset, listed.offset, "{ctx}: offset");
    assert_eq!(got.tag as u8, listed.tag, "{ctx}: tag");
    let segs: Vec<(u32, u16)> = got.segments.iter().map(|s| (s.len, s.align)).collect();
    assert_eq!(segs, listed.segments, "{ctx}: segments");
    assert_eq!(got.preamble_crc, listed.preamble_crc, "{ctx}: preamble crc");
    assert_eq!(got.seg0_crc, listed.seg0_crc, "{ctx}: seg0 crc");
    assert_eq!(got.late_status, listed.late_status, "{ctx}: late_status");
    let ep: Vec<u32> = got.epilogue_crcs.map(|c| c.to_vec()).unwrap_or_default();
    assert_eq!(ep, listed.epilogue_crcs, "{ctx}: epilogue crcs");
    match &got.body {
        FrameBody::Control { control, auth_none } => {
            let mine: Vec<Vec<String>> = control_lines(control, auth_none.as_ref())
                .iter()
                .map(|l| values(l))
                .collect();
            let theirs: Vec<Vec<String>> = listed.payload_lines.iter().map(|l| values(l)).collect();
            assert_eq!(mine, theirs, "{ctx}: control payload values");
        }
        FrameBody::Message {
            header,
            front_len,
            middle_len,
            data_len,
            front_head,
            middle_head,
            data_head,
        } => {
            assert_eq!(listed.payload_lines.len(), 1, "{ctx}: one header line");
            assert_eq!(
                values(&header_line(header)),
                values(&listed.payload_lines[0]),
                "{ctx}: ceph_msg_header2"
            );
            for (part, len, hex) in &listed.parts {
                let (l, h) = match part.as_str() {
                    "front" => (front_len, front_head),
                    "middle" => (middle_len, middle_head),
                    _ => (data_len, data_head),
                };
                assert_eq!((l, h), (len, hex), "{ctx}: {part}");
            }
        }
    }
}

/// Re-encodes a decoded frame; control and message frames must come out byte-identical.
fn reencode(frame: &Frame) -> Vec<u8> {
    let mut tx = TxQueue::default();
    if frame.tag() == Tag::Message {
        let (header, msg) = Message::from_frame(frame.clone()).unwrap();
        msg.encode_frame(&mut tx, header.seq, header.ack_seq);
    } else {
        ringwire::proto::Control::decode_frame(frame.tag(), frame.payload())
            .unwrap()
            .encode_frame(&mut tx);
    }
    tx.take_all()
}

#[test]
fn every_captured_frame_decodes_to_the_listing_and_reencodes_identically() {
    let dir = fixtures_dir();
    let mut listings: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().to_string();
            n.starts_with("decoded_") && n.ends_with(".txt")
        })
        .collect();
    listings.sort();
    assert!(listings.len() >= 6, "expected the six capture listings");
    let (mut files, mut frames, mut reencoded) = (0, 0, 0);
    for listing in listings {
        let stem = listing.file_stem().unwrap().to_string_lossy();
        let name = stem.trim_start_matches("decoded_");
        let text = std::fs::read_to_string(&listing).unwrap();
        for stream in parse_listing(name, &text) {
            let path = dir.join(&stream.file);
            // Streams that are a bare banner (26 bytes, no frame) were listed but not saved.
            if stream.bytes == 26 && stream.frame_count == Some(0) && !path.exists() {
                continue;
            }
            files += 1;
            let data =
                std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()));
            assert_eq!(data.len() as u64, stream.bytes, "{}", stream.file);
            let result = decode_stream(&data, FrameLimits::default());
            if !stream.decoded {
                let err = result.expect_err("mid-connection capture has no banner");
                assert_eq!(err.offset, 0);
                continue;
            }
            let report = result.unwrap_or_else(|e| panic!("{}: {e}", stream.file));
            assert_eq!(
                Some(report.frames.len()),
                stream.frame_count,
                "{}",
                stream.file
            );
            assert_eq!(report.frames.len(), stream.frames.len());
            for (listed, got) in stream.frames.iter().zip(&report.frames) {
                check_frame(&stream.file, listed, got);
                frames += 1;
            }
            // Byte-exact re-encoding of every frame, control and message alike.
            let mut dec = FrameDecoder::new(FrameLimits::default(), 26);
            let mut input = &data[26..];
            let mut offset = 26usize;
            while let Some(frame) = dec.feed(&mut input).unwrap() {
                let len = frame.preamble.onwire_len() as usize;
                assert_eq!(
                    reencode(&frame),
                    &data[offset..offset + len],
                    "{} @{offset}: re-encoding differs",
                    stream.file
                );
                offset += len;
                reencoded += 1;
            }
            assert_eq!(offset, data.len());
        }
    }
    assert!(files >= 20, "only {files} fixture streams found");
    assert!(frames >= 570, "only {frames} frames checked");
    assert_eq!(frames, reencoded);
    eprintln!("{files} streams, {frames} frames checked and re-encoded");
}

#[test]
fn values_normalisation_keeps_what_matters() {
    assert_eq!(
        values("entity_type=client(8) peer_addr=v2:127.0.0.1:3300/0 [enc v1 compat1 len28 elen16]"),
        ["client", "v2:127.0.0.1:3300/0"]
    );
    assert_eq!(values("u64=6"), values("seq=6"));
    assert_ne!(values("u64=6"), values("seq=7"));
}
