//! Arbitrary bytes, split at arbitrary points, through the frame decoder and every payload
//! decoder. Small limits make the size checks reachable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringwire::decode::decode_stream;
use ringwire::proto::{Control, FrameDecoder, FrameLimits, Message, Tag};

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let limits = FrameLimits {
        max_segment: 1 << 16,
        max_frame: 1 << 17,
        max_control: 4096,
    };
    let mut dec = FrameDecoder::new(limits, 0);
    let step = 1 + split as usize;
    for chunk in rest.chunks(step) {
        let mut input = chunk;
        loop {
            match dec.feed(&mut input) {
                Ok(Some(frame)) => {
                    if frame.tag() == Tag::Message {
                        let _ = Message::from_frame(frame);
                    } else {
                        let _ = Control::decode_frame(frame.tag(), frame.payload());
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
            if input.is_empty() {
                break;
            }
        }
    }
    let _ = dec.finish();
    let _ = decode_stream(rest, limits);
});
