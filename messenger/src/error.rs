//! Errors of the messenger API.

use std::net::SocketAddr;

use crate::proto::cephx::KeyringError;
use crate::proto::EntityAddr;

/// Why a messenger could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("io_uring is unavailable: {source}{hint}")]
    IoUring {
        source: std::io::Error,
        hint: String,
    },
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start worker thread: {0}")]
    Thread(std::io::Error),
    #[error("address {0} has no socket address")]
    NoSocketAddr(EntityAddr),
    #[error("RDMA is unavailable: {0}")]
    Rdma(String),
    #[error("{0}")]
    Keyring(#[from] KeyringError),
    #[error("auth_client_required = cephx needs our key: set Options::keyring (-k) to a keyring holding {0}")]
    NoKey(crate::proto::EntityName),
    #[error("auth_service_required / auth_cluster_required = cephx needs the keys of the peers to admit: set Options::keyring (-k)")]
    NoKeyring,
    #[error("no randomness for cephx keys: getrandom failed: {0}")]
    Random(std::io::Error),
}
