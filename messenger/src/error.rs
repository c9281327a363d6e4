//! Errors of the messenger API.

use std::net::SocketAddr;

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
}
