//! Frame codec: the on-wire length table of Ceph's test_frames_v2.cc (rev1, crc mode) and
//! property tests that encode → decode is the identity.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use bytes::Bytes;
use proptest::prelude::*;
use ringwire::proto::control::{ClientIdent, Reconnect, ServerIdent, UTime};
use ringwire::proto::frame::{encode_frame, ALIGN_DEFAULT};
use ringwire::proto::{
    AddrType, Control, EntityAddr, EntityAddrVec, EntityType, FrameDecoder, FrameLimits, Message,
    Tag, TxQueue,
};

fn segment(len: usize, fill: u8) -> Bytes {
    Bytes::from(vec![fill; len])
}

fn encode_segments(tag: Tag, lens: &[usize]) -> Vec<u8> {
    let segs: Vec<Bytes> = lens
        .iter()
        .enumerate()
        .map(|(i, l)| segment(*l, i as u8 + 1))
        .collect();
    let refs: Vec<(&[Bytes], u16)> = segs
        .iter()
        .map(|s| (std::slice::from_ref(s), ALIGN_DEFAULT))
        .collect();
    let mut tx = TxQueue::default();
    encode_frame(&mut tx, tag, &refs);
    tx.take_all()
}

fn decode_all(wire: &[u8], split: usize) -> Vec<ringwire::proto::Frame> {
    let mut dec = FrameDecoder::new(FrameLimits::default(), 0);
    let mut frames = Vec::new();
    for chunk in wire.chunks(split.max(1)) {
        let mut input = chunk;
        while let Some(f) = dec.feed(&mut input).unwrap() {
            frames.push(f);
        }
    }
    dec.finish().unwrap();
    frames
}

#[test]
fn onwire_lengths_match_cephs_rev1_crc_table() {
    // header+front+middle+data → bytes on the wire (test_frames_v2.cc, rev1 crc rows).
    let rows: [([usize; 4], usize); 4] = [
        ([0, 0, 0, 0], 32),
        ([1, 0, 0, 0], 32 + 1 + 4),
        ([0, 0, 202, 0], 32 + 202 + 13),
        ([49, 101, 202, 303], 32 + 49 + 4 + 101 + 202 + 303 + 13),
    ];
    for (lens, expected) in rows {
        let wire = encode_segments(Tag::Message, &lens);
        assert_eq!(wire.len(), expected, "{lens:?}");
        let frames = decode_all(&wire, 7);
        assert_eq!(frames.len(), 1);
        let f = &frames[0];
        assert_eq!(f.preamble.onwire_len() as usize, expected);
        let trailing_nonempty = lens.iter().rposition(|l| *l > 0).map_or(1, |i| i + 1);
        assert_eq!(f.preamble.num_segments as usize, trailing_nonempty);
        for (i, seg) in f.segments.iter().enumerate() {
            assert_eq!(seg.len(), lens[i]);
            assert!(seg.iter().all(|b| *b == i as u8 + 1));
        }
    }
}

#[test]
fn wait_is_a_bare_preamble_and_message_frames_follow_the_captures() {
    let mut tx = TxQueue::default();
    Control::Wait.encode_frame(&mut tx);
    assert_eq!(tx.len(), 32);
    // A message without front is a 1-segment frame: 32 + 41 + 4 (captured mon_getmap).
    let mut tx = TxQueue::default();
    Message::new(5).encode_frame(&mut tx, 1, 0);
    assert_eq!(tx.len(), 77);
    // An empty middle before data is kept: 4 segments, the empty one's CRC is 0xffffffff.
    let mut tx = TxQueue::default();
    Message::new(42)
        .with_front(&b"f"[..])
        .with_data(&b"data"[..])
        .encode_frame(&mut tx, 1, 0);
    let wire = tx.take_all();
    let f = &decode_all(&wire, 3)[0];
    assert_eq!(f.preamble.num_segments, 4);
    assert_eq!(f.trailer.epilogue.unwrap().1[1], 0xffff_ffff);
}

#[test]
fn large_payloads_are_queued_by_reference_not_copied() {
    let data = Bytes::from(vec![9u8; 1 << 20]);
    let msg = Message::new(1).with_data(data.clone());
    let mut tx = TxQueue::default();
    msg.encode_frame(&mut tx, 1, 0);
    let same_buffer = tx
        .chunks()
        .any(|c| c.as_ptr() == data.as_ptr() && c.len() == data.len());
    assert!(
        same_buffer,
        "the 1 MiB data segment must be the caller's buffer"
    );
}

#[test]
fn decoder_reads_large_segments_in_place() {
    let msg = Message::new(1).with_data(vec![3u8; 100_000]);
    let mut tx = TxQueue::default();
    msg.encode_frame(&mut tx, 1, 0);
    let wire = tx.take_all();
    let mut dec = FrameDecoder::new(FrameLimits::default(), 0);
    let mut pos = 0;
    let mut frame = None;
    let mut lent_reads = 0;
    while frame.is_none() {
        if let ringwire::proto::frame::ReadHint::Segment(n) = dec.read_hint() {
            // What a transport does: receive into the lent buffer's spare room, hand it back.
            let (mut buf, want) = dec.lend_segment().expect("a large segment is lent");
            assert_eq!(want, n);
            let start = buf.as_ptr();
            let chunk = want.min(30_000).min(wire.len() - pos);
            buf.extend_from_slice(&wire[pos..pos + chunk]);
            assert_eq!(buf.as_ptr(), start, "received in place, never reallocated");
            pos += chunk;
            lent_reads += 1;
            frame = dec.return_segment(buf, chunk).unwrap();
        } else {
            let mut input = &wire[pos..(pos + 7).min(wire.len())];
            let before = input.len();
            frame = dec.feed(&mut input).unwrap();
            pos += before - input.len();
        }
    }
    assert_eq!(lent_reads, 4, "100 000 bytes in 30 000-byte receives");
    assert_eq!(pos, wire.len());
    let (_, back) = Message::from_frame(frame.unwrap()).unwrap();
    assert_eq!(back.data_contiguous(), msg.data_contiguous());
}

fn arb_addr() -> impl Strategy<Value = EntityAddr> {
    let v4 = (any::<[u8; 4]>(), any::<u16>())
        .prop_map(|(ip, port)| SocketAddr::from((Ipv4Addr::from(ip), port)));
    let v6 = (any::<[u8; 16]>(), any::<u16>(), any::<u32>(), any::<u32>()).prop_map(
        |(ip, port, flow, scope)| {
            SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(ip), port, flow, scope))
        },
    );
    (
        prop_oneof![
            Just(AddrType::Msgr2),
            Just(AddrType::Legacy),
            Just(AddrType::Any)
        ],
        any::<u32>(),
        prop::option::of(prop_oneof![v4, v6]),
    )
        .prop_map(|(ty, nonce, addr)| EntityAddr { ty, nonce, addr })
}

fn arb_addrvec() -> impl Strategy<Value = EntityAddrVec> {
    prop::collection::vec(arb_addr(), 0..4).prop_map(EntityAddrVec)
}

fn arb_control() -> impl Strategy<Value = Control> {
    let bytes = prop::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from);
    let u32s = prop::collection::vec(any::<u32>(), 0..5);
    prop_oneof![
        (any::<u8>(), arb_addr()).prop_map(|(t, a)| Control::Hello {
            entity_type: EntityType(t),
            peer_addr: a
        }),
        (any::<u32>(), u32s.clone(), bytes.clone()).prop_map(|(m, p, b)| Control::AuthRequest {
            method: m,
            preferred_modes: p,
            auth_payload: b
        }),
        (any::<u32>(), any::<i32>(), u32s.clone(), u32s).prop_map(|(m, r, a, b)| {
            Control::AuthBadMethod {
                method: m,
                result: r,
                allowed_methods: a,
                allowed_modes: b,
            }
        }),
        (any::<u64>(), any::<u32>(), bytes).prop_map(|(g, c, b)| Control::AuthDone {
            global_id: g,
            con_mode: c,
            auth_payload: b
        }),
        any::<[u8; 32]>().prop_map(|s| Control::AuthSignature { sha256: s }),
        (arb_addrvec(), arb_addr(), any::<[u64; 6]>()).prop_map(|(addrs, t, v)| {
            Control::ClientIdent(ClientIdent {
                addrs,
                target_addr: t,
                gid: v[0] as i64,
                global_seq: v[1],
                features_supported: v[2],
                features_required: v[3],
                flags: v[4],
                client_cookie: v[5],
            })
        }),
        (arb_addrvec(), any::<[u64; 6]>()).prop_map(|(addrs, v)| {
            Control::ServerIdent(ServerIdent {
                addrs,
                gid: v[0] as i64,
                global_seq: v[1],
                features_supported: v[2],
                features_required: v[3],
                flags: v[4],
                server_cookie: v[5],
            })
        }),
        (arb_addrvec(), any::<[u64; 5]>()).prop_map(|(addrs, v)| {
            Control::SessionReconnect(Reconnect {
                addrs,
                client_cookie: v[0],
                server_cookie: v[1],
                global_seq: v[2],
                connect_seq: v[3],
                msg_seq: v[4],
            })
        }),
        any::<bool>().prop_map(|full| Control::SessionReset { full }),
        any::<u64>().prop_map(|v| Control::SessionRetry { connect_seq: v }),
        any::<u64>().prop_map(|v| Control::SessionRetryGlobal { global_seq: v }),
        any::<u64>().prop_map(|v| Control::SessionReconnectOk { msg_seq: v }),
        any::<u64>().prop_map(|v| Control::IdentMissingFeatures { features: v }),
        Just(Control::Wait),
        (any::<u32>(), any::<u32>()).prop_map(|(s, n)| Control::Keepalive2 {
            stamp: UTime { sec: s, nsec: n }
        }),
        (any::<u32>(), any::<u32>()).prop_map(|(s, n)| Control::Keepalive2Ack {
            stamp: UTime { sec: s, nsec: n }
        }),
        any::<u64>().prop_map(|v| Control::Ack { seq: v }),
    ]
}

fn arb_message() -> impl Strategy<Value = Message> {
    let buf = |max| prop::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from);
    (
        any::<[u16; 4]>(),
        any::<u64>(),
        buf(3000),
        buf(300),
        prop::collection::vec(buf(5000), 0..4),
    )
        .prop_map(|(v, tid, front, middle, data)| Message {
            ty: v[0],
            priority: v[1],
            version: v[2],
            compat_version: v[3],
            tid,
            front,
            middle,
            data,
            ..Default::default()
        })
}

/// `back` (decoded) carries what `m` (encoded) did: header fields and every payload byte.
fn same_message(back: &Message, m: &Message) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        (
            back.ty,
            back.priority,
            back.version,
            back.compat_version,
            back.tid
        ),
        (m.ty, m.priority, m.version, m.compat_version, m.tid)
    );
    prop_assert_eq!(&back.front, &m.front);
    prop_assert_eq!(&back.middle, &m.middle);
    prop_assert_eq!(back.data_contiguous(), m.data_contiguous());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn control_frames_round_trip(c in arb_control(), split in 1usize..64) {
        let mut tx = TxQueue::default();
        let n = c.encode_frame(&mut tx);
        let wire = tx.take_all();
        prop_assert_eq!(n, wire.len());
        let frames = decode_all(&wire, split);
        prop_assert_eq!(frames.len(), 1);
        prop_assert_eq!(frames[0].preamble.onwire_len() as usize, wire.len());
        let back = Control::decode_frame(frames[0].tag(), frames[0].payload()).unwrap();
        prop_assert_eq!(back, c);
    }

    #[test]
    fn messages_round_trip(m in arb_message(), seq in 1u64.., ack in any::<u64>(), split in 1usize..5000) {
        let mut tx = TxQueue::default();
        m.encode_frame(&mut tx, seq, ack);
        let wire = tx.take_all();
        let frames = decode_all(&wire, split);
        prop_assert_eq!(frames.len(), 1);
        let (h, back) = Message::from_frame(frames[0].clone()).unwrap();
        prop_assert_eq!(h.seq, seq);
        prop_assert_eq!(h.ack_seq, ack);
        same_message(&back, &m)?;
    }

    #[test]
    fn back_to_back_frames_split_anywhere(ms in prop::collection::vec(arb_message(), 1..6), split in 1usize..700) {
        let mut tx = TxQueue::default();
        for (i, m) in ms.iter().enumerate() {
            m.encode_frame(&mut tx, i as u64 + 1, 0);
        }
        let wire = tx.take_all();
        let frames = decode_all(&wire, split);
        prop_assert_eq!(frames.len(), ms.len());
        for (i, (f, m)) in frames.into_iter().zip(&ms).enumerate() {
            let (h, back) = Message::from_frame(f).unwrap();
            prop_assert_eq!(h.seq, i as u64 + 1);
            same_message(&back, m)?;
        }
    }
}

/// Feeds `wire` whole and returns the one frame it holds.
fn decode_one(dec: &mut FrameDecoder, wire: &[u8]) -> ringwire::proto::Frame {
    let mut input = wire;
    let frame = dec.feed(&mut input).unwrap().expect("one whole frame");
    assert!(input.is_empty());
    frame
}

#[test]
fn small_segments_reuse_released_memory_and_never_overwrite_held_segments() {
    let mut dec = FrameDecoder::new(FrameLimits::default(), 0);
    // Frames of four small segments, each filled with its own frame and segment number.
    let wire_of = |n: u8| {
        let segs: Vec<Bytes> = (0..4).map(|i| segment(100 + i, n * 4 + i as u8)).collect();
        let refs: Vec<(&[Bytes], u16)> = segs
            .iter()
            .map(|s| (std::slice::from_ref(s), ALIGN_DEFAULT))
            .collect();
        let mut tx = TxQueue::default();
        encode_frame(&mut tx, Tag::Message, &refs);
        tx.take_all()
    };
    let first = decode_one(&mut dec, &wire_of(0));
    let first_ptr = first.segments[0].as_ptr();
    drop(first);
    // Enough frames to fill the decoder's small-segment memory several times over.
    let mut held = Vec::new();
    let mut reused = false;
    for n in 1..40u8 {
        let f = decode_one(&mut dec, &wire_of(n));
        reused |= f.segments[0].as_ptr() == first_ptr;
        if n % 3 == 0 {
            held.push((n, f));
        }
    }
    assert!(reused, "released segments' memory is used again");
    for (n, f) in &held {
        for (i, seg) in f.segments.iter().enumerate() {
            assert_eq!(seg.len(), 100 + i);
            assert!(
                seg.iter().all(|b| *b == n * 4 + i as u8),
                "frame {n} segment {i} was overwritten while held"
            );
        }
    }
}
