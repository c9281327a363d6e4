//! Ringwire: a Linux-native messenger for storage servers, speaking Ceph's msgr2.1.
//!
//! The heart is [`proto`], the msgr2.1 wire protocol as a pure state machine that every
//! transport drives. [`decode`] turns a captured msgr2 byte stream into a frame-by-frame
//! report (the `ringwire decode` command).
//!
//! ```
//! use bytes::Bytes;
//! use ringwire::proto::{FrameDecoder, FrameLimits, Message, TxQueue};
//!
//! // Encode a message frame, then decode it again in two arbitrary pieces.
//! let msg = Message::new(42).with_front(Bytes::from_static(b"hello")).with_data(vec![7u8; 5000]);
//! let mut tx = TxQueue::default();
//! msg.encode_frame(&mut tx, 1, 0);
//! let wire = tx.take_all();
//! let mut dec = FrameDecoder::new(FrameLimits::default(), 0);
//! let (a, b) = wire.split_at(50);
//! assert!(dec.feed(&mut &a[..]).unwrap().is_none());
//! let frame = dec.feed(&mut &b[..]).unwrap().expect("one whole frame");
//! let (header, back) = Message::from_frame(frame).unwrap();
//! assert_eq!(header.seq, 1);
//! assert_eq!(back.front, msg.front);
//! assert_eq!(back.data_contiguous(), msg.data_contiguous());
//! ```

pub mod decode;
mod error;
mod mailbox;
pub mod messenger;
#[cfg(feature = "metrics")]
pub mod metrics;
mod options;
pub mod pipe;
pub mod proto;
mod runtime;
mod stats;

pub use error::Error;
pub use mailbox::Mailbox;
pub use messenger::{Messenger, MessengerBuilder};
pub use options::{Options, RdmaOptions};
pub use proto::FaultReason;
pub use runtime::{
    ArenaBuf, Connection, Dispatcher, Incoming, MessengerInterceptor, NotReady, SendError,
};
pub use stats::Stats;
