//! Bad input from the network: each case is a distinct error value, nothing panics, and no
//! buffer is sized by a peer before the configured limit was checked.

use std::net::SocketAddr;

use bytes::Bytes;
use ringwire::proto::control::AuthNonePayload;
use ringwire::proto::crc::ceph_crc32c;
use ringwire::proto::frame::{encode_control_frame, Banner, FEATURE_REVISION_1};
use ringwire::proto::{
    Control, ControlError, Endpoint, EndpointConfig, EntityAddr, EntityAddrVec, EntityName,
    EntityType, Event, FaultReason, FrameDecoder, FrameError, FrameLimits, Io, Message, Tag, Time,
    TxQueue, WireError,
};

fn preamble(tag: u8, segs: &[(u32, u16)], nseg: u8) -> [u8; 32] {
    let mut p = [0u8; 32];
    p[0] = tag;
    p[1] = nseg;
    for (i, (len, align)) in segs.iter().enumerate() {
        p[2 + i * 6..6 + i * 6].copy_from_slice(&len.to_le_bytes());
        p[6 + i * 6..8 + i * 6].copy_from_slice(&align.to_le_bytes());
    }
    let crc = ceph_crc32c(0, &p[..28]);
    p[28..].copy_from_slice(&crc.to_le_bytes());
    p
}

fn decode(bytes: &[u8], limits: FrameLimits) -> Result<Option<ringwire::proto::Frame>, FrameError> {
    let mut dec = FrameDecoder::new(limits, 0);
    let mut input = bytes;
    let r = dec.feed(&mut input)?;
    if r.is_none() {
        dec.finish()?;
    }
    Ok(r)
}

fn err(bytes: &[u8]) -> FrameError {
    decode(bytes, FrameLimits::default()).expect_err("must be rejected")
}

fn ping_frame() -> Vec<u8> {
    let mut tx = TxQueue::default();
    Message::new(2)
        .with_front(&b"front"[..])
        .encode_frame(&mut tx, 1, 0);
    tx.take_all()
}

#[test]
fn banners() {
    let mut head = [0u8; 10];
    head[..8].copy_from_slice(b"GET / HT");
    assert!(matches!(
        Banner::decode_head(&head),
        Err(FrameError::BadBanner(_))
    ));
    head[..8].copy_from_slice(b"ceph v02");
    assert_eq!(Banner::decode_head(&head), Err(FrameError::Msgr1Banner));
    head[..8].copy_from_slice(b"ceph v2\n");
    head[8..].copy_from_slice(&60000u16.to_le_bytes());
    assert_eq!(
        Banner::decode_head(&head),
        Err(FrameError::BadBannerLength(60000))
    );
    let needs_more = Banner {
        supported: FEATURE_REVISION_1,
        required: FEATURE_REVISION_1 | 0x80,
    };
    assert_eq!(
        Banner::RINGWIRE.negotiate(&needs_more),
        Err(FrameError::IncompatibleFeatures {
            peer_lacks: 0,
            we_lack: 0x80
        })
    );
    let rev0 = Banner {
        supported: 0,
        required: 0,
    };
    assert_eq!(
        Banner::RINGWIRE.negotiate(&rev0),
        Err(FrameError::IncompatibleFeatures {
            peer_lacks: FEATURE_REVISION_1,
            we_lack: 0
        })
    );
    // msgr2.1 is required even by a banner that does not say so: rev0 framing is not spoken.
    let lenient = Banner {
        supported: FEATURE_REVISION_1,
        required: 0,
    };
    assert_eq!(
        lenient.negotiate(&rev0),
        Err(FrameError::IncompatibleFeatures {
            peer_lacks: FEATURE_REVISION_1,
            we_lack: 0
        })
    );
}

#[test]
fn preamble_crc_mismatch() {
    let mut f = ping_frame();
    f[3] ^= 1;
    assert!(matches!(err(&f), FrameError::PreambleCrc { .. }));
}

#[test]
fn segment_crc_mismatches() {
    let mut f = ping_frame();
    f[32] ^= 0xff; // inside segment 0 (the header)
    assert!(matches!(err(&f), FrameError::SegmentCrc { segment: 0, .. }));
    let mut f = ping_frame();
    let front_at = 32 + 41 + 4;
    f[front_at] ^= 0xff;
    assert!(matches!(err(&f), FrameError::SegmentCrc { segment: 1, .. }));
}

#[test]
fn unknown_tag_and_segment_counts() {
    assert_eq!(err(&preamble(99, &[(0, 8)], 1)), FrameError::UnknownTag(99));
    assert_eq!(err(&preamble(0, &[(0, 8)], 1)), FrameError::UnknownTag(0));
    assert_eq!(err(&preamble(17, &[], 0)), FrameError::BadSegmentCount(0));
    assert_eq!(
        err(&preamble(17, &[(1, 8)], 5)),
        FrameError::BadSegmentCount(5)
    );
    assert_eq!(
        err(&preamble(17, &[(41, 8), (0, 8)], 2)),
        FrameError::EmptyLastSegment(2)
    );
}

#[test]
fn oversized_lengths_are_refused_from_the_preamble_alone() {
    let limits = FrameLimits {
        max_segment: 1 << 20,
        max_frame: 3 << 20,
        max_control: 4096,
    };
    // Only the 32 preamble bytes are fed: the error comes before any segment buffer exists.
    let p = preamble(17, &[(41, 8), (u32::MAX, 8)], 2);
    assert_eq!(
        decode(&p, limits).unwrap_err(),
        FrameError::SegmentTooLarge {
            segment: 1,
            len: u32::MAX,
            max: 1 << 20
        }
    );
    let p = preamble(1, &[(5000, 8)], 1);
    assert_eq!(
        decode(&p, limits).unwrap_err(),
        FrameError::SegmentTooLarge {
            segment: 0,
            len: 5000,
            max: 4096
        }
    );
    let p = preamble(17, &[(41, 8), (1 << 20, 8), (1 << 20, 8), (1 << 20, 8)], 4);
    assert!(matches!(
        decode(&p, limits).unwrap_err(),
        FrameError::FrameTooLarge { .. }
    ));
}

#[test]
fn truncated_frame() {
    let f = ping_frame();
    assert!(matches!(
        err(&f[..f.len() - 3]),
        FrameError::Truncated {
            unit: "epilogue",
            ..
        }
    ));
    assert!(matches!(
        err(&f[..10]),
        FrameError::Truncated {
            unit: "preamble",
            ..
        }
    ));
}

#[test]
fn bad_late_status() {
    let mut f = ping_frame();
    let at = f.len() - 13;
    f[at] = 0x0b;
    assert_eq!(err(&f), FrameError::BadLateStatus(0x0b));
    // An aborted frame is dropped, not delivered, and is no error.
    let mut f = ping_frame();
    f[at] = 0x01;
    assert_eq!(decode(&f, FrameLimits::default()), Ok(None));
}

fn control_err(tag: Tag, payload: &[u8]) -> ControlError {
    Control::decode_frame(tag, &Bytes::copy_from_slice(payload)).unwrap_err()
}

#[test]
fn malformed_control_payloads() {
    // HELLO whose address has a bad marker.
    assert!(matches!(
        control_err(Tag::Hello, &[8, 7, 1, 1, 28, 0, 0, 0]),
        ControlError::Malformed {
            source: WireError::BadMarker { got: 7, .. },
            ..
        }
    ));
    // An address whose struct_len runs past the payload.
    assert!(matches!(
        control_err(Tag::Hello, &[8, 1, 1, 1, 0xff, 0xff, 0, 0]),
        ControlError::Malformed {
            source: WireError::LengthOverrun { .. },
            ..
        }
    ));
    // A sockaddr length that fits no family.
    let mut hello = vec![8, 1, 1, 1, 17, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0];
    hello.extend_from_slice(&[2, 0, 0, 0, 0]);
    assert!(matches!(
        control_err(Tag::Hello, &hello),
        ControlError::Malformed {
            source: WireError::BadSockaddr { elen: 5, .. },
            ..
        }
    ));
    // A vector count of four billion: refused without allocating.
    let mut req = 1u32.to_le_bytes().to_vec();
    req.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        control_err(Tag::AuthRequest, &req),
        ControlError::Malformed {
            source: WireError::LengthOverrun { .. },
            ..
        }
    ));
    // A bufferlist longer than what follows.
    let mut more = 1000u32.to_le_bytes().to_vec();
    more.extend_from_slice(b"short");
    assert!(matches!(
        control_err(Tag::AuthReplyMore, &more),
        ControlError::Malformed {
            source: WireError::LengthOverrun { len: 1000, .. },
            ..
        }
    ));
    // Trailing garbage and truncation.
    assert!(matches!(
        control_err(Tag::Ack, &[0; 9]),
        ControlError::Malformed {
            source: WireError::TrailingBytes(1),
            ..
        }
    ));
    assert!(matches!(
        control_err(Tag::Ack, &[0; 3]),
        ControlError::Malformed {
            source: WireError::Truncated { .. },
            ..
        }
    ));
    assert_eq!(
        control_err(Tag::CompressionRequest, &[]),
        ControlError::Unsupported("COMPRESSION_REQUEST")
    );
    // A message header of the wrong size.
    let f = ringwire::proto::Frame {
        preamble: ringwire::proto::frame::Preamble {
            tag: Tag::Message,
            num_segments: 1,
            segments: Default::default(),
            crc: 0,
        },
        segments: [Bytes::from_static(&[0; 40])].into_iter().collect(),
        trailer: ringwire::proto::frame::FrameTrailer {
            seg0_crc: None,
            epilogue: None,
        },
    };
    assert!(matches!(
        Message::from_frame(f),
        Err(WireError::Truncated { .. })
    ));
}

#[test]
fn entity_type_past_a_byte_is_refused_not_truncated() {
    // An auth-none authorizer naming type 0x108, which `as u8` would have read as a client.
    let mut p = vec![1u8];
    p.extend_from_slice(&0x108u32.to_le_bytes());
    p.extend_from_slice(&5u32.to_le_bytes());
    p.extend_from_slice(b"admin");
    p.extend_from_slice(&0u64.to_le_bytes());
    assert_eq!(
        AuthNonePayload::decode(&p),
        Err(WireError::BadEntityType(0x108))
    );
    p[1..5].copy_from_slice(&8u32.to_le_bytes());
    assert!(AuthNonePayload::decode(&p).is_ok());
}

fn server() -> Endpoint {
    let me: SocketAddr = "127.0.0.1:6800".parse().unwrap();
    let mut cfg = EndpointConfig::new(
        EntityName {
            ty: EntityType::OSD,
            id: "0".into(),
        },
        EntityAddrVec(vec![EntityAddr::msgr2(me, 0)]),
    );
    cfg.default_policy = ringwire::proto::Policy::stateless_server();
    Endpoint::new(cfg)
}

fn faults(ep: &mut Endpoint) -> Vec<FaultReason> {
    let mut out = Vec::new();
    while let Some(ev) = ep.poll_event() {
        if let Event::Fault { reason, .. } = ev {
            out.push(reason);
        }
    }
    out
}

#[test]
fn endpoint_faults_only_the_bad_connection() {
    let mut ep = server();
    let now = Time(1);
    let good = ep.accept(now, "127.0.0.1:40001".parse().unwrap());
    let bad = ep.accept(now, "127.0.0.1:40002".parse().unwrap());
    ep.on_input(now, bad, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let f = faults(&mut ep);
    assert!(
        matches!(f.as_slice(), [FaultReason::Frame(FrameError::BadBanner(_))]),
        "{f:?}"
    );
    let mut closed = Vec::new();
    while let Some(io) = ep.poll_io() {
        if let Io::Close { conn, .. } = io {
            closed.push(conn);
        }
    }
    assert_eq!(closed, vec![bad]);
    // The good connection still takes its banner.
    ep.on_input(now, good, &Banner::RINGWIRE.encode());
    assert!(faults(&mut ep).is_empty());
}

#[test]
fn unexpected_frame_for_the_state() {
    let mut ep = server();
    let now = Time(1);
    let c = ep.accept(now, "127.0.0.1:40001".parse().unwrap());
    let mut wire = TxQueue::default();
    wire.push_small(&Banner::RINGWIRE.encode());
    // A MESSAGE before any handshake.
    Message::new(2).encode_frame(&mut wire, 1, 0);
    ep.on_input(now, c, &wire.take_all());
    let f = faults(&mut ep);
    assert_eq!(
        f,
        vec![FaultReason::UnexpectedFrame {
            state: "HELLO_ACCEPTING",
            tag: Tag::Message
        }]
    );
    // And a control frame the server never expects.
    let c = ep.accept(now, "127.0.0.1:40003".parse().unwrap());
    let mut wire = TxQueue::default();
    wire.push_small(&Banner::RINGWIRE.encode());
    encode_control_frame(&mut wire, Tag::SessionRetry, &7u64.to_le_bytes());
    ep.on_input(now, c, &wire.take_all());
    assert!(matches!(
        faults(&mut ep).as_slice(),
        [FaultReason::UnexpectedFrame {
            tag: Tag::SessionRetry,
            ..
        }]
    ));
}

#[test]
fn before_ready_a_segment_past_a_control_payload_is_refused_from_the_preamble() {
    // A peer that has not said hello announces a MESSAGE with a 64 MiB data segment: refused
    // from the 32 bytes of its preamble, before a buffer is sized by it (no MESSAGE is
    // legitimate yet). After READY the full limits apply (the large messages of test_msgr).
    let mut ep = server();
    let c = ep.accept(Time(1), "127.0.0.1:40001".parse().unwrap());
    let mut wire = Banner::RINGWIRE.encode().to_vec();
    wire.extend_from_slice(&preamble(Tag::Message as u8, &[(60, 8), (64 << 20, 0)], 2));
    ep.on_input(Time(1), c, &wire);
    assert_eq!(
        faults(&mut ep),
        vec![FaultReason::Frame(FrameError::SegmentTooLarge {
            segment: 1,
            len: 64 << 20,
            max: 64 << 10
        })]
    );
}

#[test]
fn msgr1_peer_and_half_open_peer() {
    let mut ep = server();
    let c = ep.accept(Time(1), "127.0.0.1:40001".parse().unwrap());
    ep.on_input(Time(1), c, b"ceph v027\n");
    assert_eq!(
        faults(&mut ep),
        vec![FaultReason::Frame(FrameError::Msgr1Banner)]
    );
    // A peer that connects and never speaks is cut at the handshake timeout.
    let c2 = ep.accept(Time(1), "127.0.0.1:40002".parse().unwrap());
    let deadline = ep.poll_timeout().expect("a handshake deadline");
    ep.handle_timeout(deadline);
    assert_eq!(faults(&mut ep), vec![FaultReason::HandshakeTimeout]);
    assert!(ep.tx_queue(c2).is_none(), "connection gone");
    // One that stops mid-frame is reported as truncated when the stream ends.
    let c3 = ep.accept(Time(2), "127.0.0.1:40003".parse().unwrap());
    let mut wire = Banner::RINGWIRE.encode().to_vec();
    wire.extend_from_slice(&ping_frame()[..50]);
    ep.on_input(Time(2), c3, &wire);
    ep.on_closed(Time(3), c3);
    assert!(matches!(
        faults(&mut ep).as_slice(),
        [FaultReason::Frame(FrameError::Truncated { .. })]
    ));
}
