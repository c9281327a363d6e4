//! What a fuzzed peer sends: the banner, then the input read as a list of control frames
//! (tag, length, payload) framed with valid CRCs, so the fuzzer reaches the logic behind the
//! frame decoder; an unknown tag sends its payload as raw bytes.

use ringwire::proto::frame::{encode_control_frame, Banner};
use ringwire::proto::{Tag, TxQueue};

pub fn peer_bytes(mut input: &[u8]) -> Vec<u8> {
    let mut wire = TxQueue::default();
    wire.push_small(&Banner::RINGWIRE.encode());
    while let [tag, len, tail @ ..] = input {
        let len = (*len as usize).min(tail.len());
        let (payload, tail) = tail.split_at(len);
        match Tag::from_u8(*tag) {
            Some(t) => {
                encode_control_frame(&mut wire, t, payload);
            }
            None => wire.push_small(payload),
        }
        input = tail;
    }
    wire.take_all()
}
