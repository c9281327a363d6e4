//! cephx, Ceph's shared-secret authentication (msgr2-auth.md §1), as leaf modules that import
//! nothing of the endpoint: [`key`] (keys, Ceph's AES-CBC envelopes, the challenge fold,
//! HMAC signatures), [`keyring`] (keyring files), [`msgs`] (the cephx messages' codecs),
//! [`client`] and [`server`] (each side's steps of the monitor exchange), [`renewal`] (new
//! tickets on an established monitor session).
//!
//! Secrets live in [`Secret`]s: zeroed on drop, never printed.

pub mod client;
pub mod key;
pub mod keyring;
pub mod msgs;
pub mod renewal;
pub mod server;

pub use key::{CryptoKey, KeyType, Secret};
pub use keyring::{Keyring, KeyringError};

use crate::proto::wire::WireError;

/// Everything that can be wrong with a cephx exchange. Each is fatal for the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CephxError {
    #[error("key type {0} is not supported (1 = AES; 2 = aes256k is not implemented yet)")]
    UnsupportedKeyType(u16),
    #[error("an {ty} key must be {want} bytes, this one is {got}")]
    BadKeyLength {
        ty: &'static str,
        want: usize,
        got: usize,
    },
    #[error(
        "decryption failed (bad length or padding): the key is not the one this was encrypted with"
    )]
    Decrypt,
    #[error(
        "decrypted envelope has magic {0:#018x}: the key is not the one this was encrypted with"
    )]
    BadMagic(u64),
    #[error("a key is not valid base64")]
    BadBase64,
    #[error("the monitor sent a ticket encrypted under an old one, which we never asked for")]
    EncryptedTicket,
    #[error("malformed cephx payload: {0}")]
    Wire(#[from] WireError),
    #[error("cephx reply for request type {got:#06x}, expected {want:#06x}")]
    UnexpectedReply { got: u16, want: u16 },
    #[error("the monitor answered status {0}")]
    Status(i32),
    #[error("the monitor's reply holds no auth ticket")]
    NoAuthTicket,
    #[error("the service's reply to our authorizer does not carry our nonce + 1: it could not read our ticket")]
    BadNonce,
    #[error("an authorizer for service {got:#x} reached a {want:#x}")]
    WrongService { got: u8, want: u8 },
    #[error("a ticket under secret {0}, which this service does not hold (a keyring entry TYPE. is secret -1)")]
    NoServiceSecret(u64),
    #[error("the ticket expired {ago} s ago: its holder must renew it with a monitor")]
    TicketExpired { ago: u64 },
    #[error("a ticket record of version {0}, which this server does not issue")]
    UnsupportedTicket(u8),
    #[error("the authorizer's global_id is not its ticket's")]
    GlobalIdMismatch,
    #[error("the answer to our challenge is wrong")]
    BadChallengeAnswer,
}
