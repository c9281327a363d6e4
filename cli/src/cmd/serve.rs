//! `ringwire serve`: an echo server. Every message comes back on its connection, same type,
//! same payload.

use std::sync::Arc;

use ringwire::proto::{EntityAddr, EntityName, EntityType, Policy};
use ringwire::{Connection, Dispatcher, Incoming, Messenger, Options};

struct Echo;

impl Dispatcher for Echo {
    fn dispatch(&self, conn: &Connection, msg: Incoming) {
        let _ = conn.send(msg);
    }
    fn on_accept(&self, conn: &Connection) {
        if let (Some(peer), Some(addrs), Some(security)) =
            (conn.peer(), conn.peer_addrs(), conn.security())
        {
            tracing::info!(%peer, %addrs, auth = security.method.name(), mode = security.mode.name(), "session accepted");
        }
    }
}

pub fn run(
    name: EntityName,
    bind: Vec<EntityAddr>,
    workers: Option<usize>,
    nonce: u32,
    keyring: Option<std::path::PathBuf>,
    metrics: Option<std::net::SocketAddr>,
) -> Result<(), String> {
    let mut options = Options {
        nonce: Some(nonce),
        keyring,
        ..Options::default()
    };
    if let Some(w) = workers {
        options.workers = w;
    }
    let mut b = Messenger::builder(name.clone())
        .default_policy(Policy::stateless_server())
        .policy(EntityType::OSD, Policy::lossless_peer())
        .policy(EntityType::CLIENT, Policy::stateful_server())
        .options(options);
    for a in bind {
        b = b.bind(a);
    }
    let m = b.start(Arc::new(Echo)).map_err(|e| e.to_string())?;
    println!("{name} listening on {}", m.addrs());
    if let Some(addr) = metrics {
        let at = m
            .serve_metrics(addr)
            .map_err(|e| format!("metrics on {addr}: {e}"))?;
        println!("metrics at http://{at}/metrics");
    }
    m.wait();
    Ok(())
}
