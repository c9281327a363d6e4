//! A second, independent msgr2 implementation: the `rados` crate (rados-rs), whose client
//! authenticates with cephx and runs secure mode against a Ringwire monitor, with 4 MiB data
//! segments both ways and every byte checked.
//!
//! The other direction (a Ringwire client against rados-rs's server) is not tested: rados-rs
//! 0.1.4's `CephXServerHandler` checks the client's proof as an encryption of
//! `server_challenge + 1`, not as Ceph's folded `CephXChallengeBlob` (which its own client
//! and Ceph's send, and which the captures in shared/fixtures/msgr2-cephx confirm), so no
//! Ceph-compatible client can authenticate to it.

#[path = "../../messenger/tests/common/mod.rs"]
mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use ringwire::proto::cephx::keyring::key_to_base64;
use ringwire::proto::cephx::{CryptoKey, KeyType, Secret};
use ringwire::proto::{EntityType, Message, ModeName, Policy};
use ringwire::{Connection, Dispatcher, Incoming, Messenger, Options};

use rados::auth::MonitorAuthProvider;
use rados::msgr2::{Connection as RadosConnection, ConnectionConfig, ConnectionMode};

const T: Duration = Duration::from_secs(20);
const MSG_TYPE: u16 = 0x5150;

/// A fresh AES key as a keyring's `key =` value.
fn fresh_key() -> String {
    let mut b = vec![0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .unwrap();
    let key = CryptoKey::new(KeyType::Aes, (0, 0), Secret::new(b)).unwrap();
    key_to_base64(&key).to_string()
}

/// 4 MiB whose bytes depend on `salt` and their position.
fn payload(salt: u8) -> Bytes {
    (0..4u32 << 20)
        .map(|i| (i ^ (i >> 11)).wrapping_mul(31) as u8 ^ salt)
        .collect()
}

fn keyring_file(name: &str, key: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "ringwire-rados-{}-{name}.keyring",
        std::process::id()
    ));
    std::fs::write(&path, format!("[client.admin]\n\tkey = {key}\n")).unwrap();
    path
}

/// Answers each message with its front and its data reversed, and keeps what it got.
#[derive(Default)]
struct Reverser {
    got: Mutex<Vec<(String, String, Bytes)>>,
}

impl Dispatcher for Reverser {
    fn dispatch(&self, conn: &Connection, msg: Incoming) {
        let data = msg.data_contiguous();
        let back: Bytes = data.iter().rev().copied().collect();
        let reply = Message::new(msg.ty + 1)
            .with_front(msg.front.clone())
            .with_data(back);
        let _ = conn.send(reply);
        let who = conn.peer().map(|p| p.to_string()).unwrap_or_default();
        let how = conn.security().map(|s| s.to_string()).unwrap_or_default();
        self.got.lock().unwrap().push((who, how, data));
    }
}

fn rados_client_config(key: &str) -> ConnectionConfig {
    let mut auth = MonitorAuthProvider::new("client.admin").unwrap();
    auth.set_secret_key_from_base64(key).unwrap();
    let mut config = ConnectionConfig::with_auth_provider(Box::new(auth));
    config.preferred_modes = vec![ConnectionMode::Secure];
    config
}

/// rados-rs's client authenticates with cephx to a Ringwire monitor holding its key, in
/// secure mode, and a 4 MiB message goes each way, intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rados_client_to_a_ringwire_monitor_in_cephx_secure_mode() {
    init_tracing();
    let key = fresh_key();
    let keyring = keyring_file("server", &key);
    let rec = Arc::new(Reverser::default());
    let server = Messenger::builder(name(EntityType::MON, "a"))
        .bind(loopback())
        .policy(EntityType::CLIENT, Policy::stateless_server())
        .options(Options {
            workers: 1,
            keyring: Some(keyring.clone()),
            ms_mon_service_mode: vec![ModeName::Secure],
            ..Options::default()
        })
        .start(rec.clone())
        .unwrap();
    let _ = std::fs::remove_file(&keyring);
    let addr = server.addrs().0[0].addr.unwrap();
    let mut conn = RadosConnection::connect(addr, rados_client_config(&key))
        .await
        .unwrap();
    conn.establish_session().await.unwrap();
    let sent = payload(1);
    let mut msg = rados::msgr2::Message::new(MSG_TYPE, Bytes::from_static(b"hello"));
    msg.data = sent.clone();
    conn.send_message(msg).await.unwrap();
    let echo = tokio::time::timeout(T, conn.recv_message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echo.header.get_msg_type(), MSG_TYPE + 1);
    assert_eq!(&echo.front[..], b"hello");
    let back: Vec<u8> = sent.iter().rev().copied().collect();
    assert!(echo.data == back, "4 MiB back intact");
    let got = rec.got.lock().unwrap();
    assert_eq!(got.len(), 1);
    let (who, how, data) = &got[0];
    assert_eq!(
        (who.as_str(), how.as_str()),
        ("client.admin", "cephx/secure")
    );
    assert!(*data == sent, "4 MiB arrived intact");
}
