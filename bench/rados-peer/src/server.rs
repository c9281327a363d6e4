//! rados-rs's server side (`Connection::accept` + `accept_session`): one task per accepted
//! connection on a single-threaded runtime of its own thread, as Ringwire's server messenger
//! has one worker. It answers as Ringwire's benchmark server does: pings echoed (the same
//! front), stream messages acknowledged by an empty message, and records the sizes it saw.

use std::sync::Arc;

use bytes::Bytes;
use rados::msgr2::{Connection, Message};
use ringwire_bench::wire::{self, Seen};

use crate::config;

/// Starts serving on `listener`; returns at once.
pub fn start(listener: std::net::TcpListener, seen: Arc<Seen>) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("rados-server".into())
        .spawn(move || {
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("in a runtime");
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let seen = seen.clone();
                    tokio::spawn(async move {
                        if let Err(e) = echo(stream, &seen).await {
                            eprintln!("rados-peer: server connection: {e}");
                        }
                    });
                }
            })
        })?;
    Ok(())
}

async fn echo(stream: tokio::net::TcpStream, seen: &Seen) -> rados::msgr2::Result<()> {
    stream.set_nodelay(true)?;
    let mut conn = Connection::accept(stream, config(false), None).await?;
    conn.accept_session().await?;
    loop {
        let m = conn.recv_message().await?;
        let ty = m.msg_type();
        seen.record(ty, m.front.len() + m.middle.len() + m.data.len());
        let reply = match ty {
            wire::PING => Message::new(wire::PONG, m.front),
            wire::DATA => Message::new(wire::DATA_ACK, Bytes::new()),
            wire::MANY_PING => Message::new(wire::MANY_PONG, m.front),
            _ => continue,
        };
        conn.send_message(reply).await?;
    }
}
