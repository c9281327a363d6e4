//! The msgr2.1 protocol core, sans-IO: bytes and time in, bytes, timer deadlines and events
//! out. Nothing here touches a socket, a thread, a clock or a random source; the runtime (or a
//! deterministic simulation) drives it.
//!
//! Layers, bottom up: [`crc`] and [`wire`] (Ceph's encodings), [`cephx`] (keys and the cephx
//! messages) and [`secure`] (secure mode's cipher), [`frame`] (the frame codec, crc or secure),
//! [`control`] and [`message`] (frame payloads), [`policy`] and [`intercept`], and
//! [`endpoint`], the handshake and session state machines of one messenger.

pub mod cephx;
pub mod control;
pub mod crc;
pub mod endpoint;
pub mod frame;
pub mod hooks;
pub mod intercept;
pub mod message;
pub mod policy;
pub mod secure;
pub mod wire;

pub use control::{Control, ControlError};
pub use endpoint::{
    owner_of, AuthConfig, AuthMethod, ConnId, Endpoint, EndpointConfig, Event, FaultReason,
    FrameCounts, Handoff, Io, ModeName, Placement, Security, SessionId, Time, Tuning,
};
pub use frame::{Banner, Frame, FrameDecoder, FrameError, FrameLimits, Tag, TxQueue};
pub use intercept::{Action, Interceptor, Step};
pub use message::{Message, MsgHeader2};
pub use policy::Policy;
pub use wire::{AddrType, EntityAddr, EntityAddrVec, EntityName, EntityType, Fabric, WireError};
