//! The messenger over real loopback sockets: every policy pair end to end.

mod common;

use std::time::Duration;

use common::*;
use ringwire::proto::{EntityType, Message, Policy};
use ringwire::{Messenger, Options};

fn options(workers: usize) -> Options {
    Options {
        workers,
        ..Options::default()
    }
}

#[test]
fn lossless_client_to_stateful_server_echo() {
    let server_rec = Recorder::echoing(0x11);
    let server = Messenger::builder(name(EntityType::OSD, "0"))
        .bind(loopback())
        .policy(EntityType::CLIENT, Policy::stateful_server())
        .options(options(2))
        .start(server_rec.clone())
        .unwrap();
    let client_rec = std::sync::Arc::new(Recorder::default());
    let client = Messenger::builder(name(EntityType::CLIENT, "1"))
        .policy(EntityType::OSD, Policy::lossless_client())
        .options(options(2))
        .start(client_rec.clone())
        .unwrap();
    let target = server.addrs().0[0];
    let conn = client.connect(target, EntityType::OSD);
    const N: usize = 2000;
    for i in 0..N {
        let mut m = Message::new(0x10).with_front((i as u32).to_le_bytes().to_vec());
        if i % 100 == 0 {
            m = m.with_data(vec![i as u8; 300_000]);
        }
        conn.send(m).unwrap();
    }
    client_rec.wait_for(Duration::from_secs(20), "echoes", |s| {
        s.iter()
            .filter(|x| matches!(x, Seen::Message { .. }))
            .count()
            == N
    });
    let got = client_rec.messages();
    for (i, (_, seq, front)) in got.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1);
        assert_eq!(front, &(i as u32).to_le_bytes().to_vec());
    }
    assert!(conn.is_connected());
    assert_eq!(conn.peer().unwrap().ty, EntityType::OSD);
    let on_server = server_rec.messages();
    assert_eq!(on_server.len(), N);
    drop(client);
    drop(server);
}
