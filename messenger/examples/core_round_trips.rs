//! Round trips through the protocol core alone: a client and a server `Endpoint` joined by
//! the in-memory `Pipe`, a 64-byte message each way per round trip on one lossless session
//! (framing, CRCs, sequence numbers and ACKs; no sockets, no threads). Run under callgrind for
//! a noise-free count of the core's instructions per round trip:
//!
//! ```text
//! cargo build --release -p ringwire --example core_round_trips
//! valgrind --tool=callgrind target/release/examples/core_round_trips 1000
//! valgrind --tool=callgrind target/release/examples/core_round_trips 11000
//! ```
//!
//! The difference of the two totals over 10 000 is the cost of one round trip, set-up excluded.

use bytes::Bytes;
use ringwire::pipe::{Pipe, CLIENT, SERVER};
use ringwire::proto::{
    EndpointConfig, EntityAddr, EntityAddrVec, EntityName, EntityType, Event, Message, Policy,
};

fn config(server: bool) -> EndpointConfig {
    let addr = EntityAddr::msgr2("127.0.0.1:6800".parse().unwrap(), 7);
    let (name, addrs, policy) = if server {
        (
            "osd.0",
            EntityAddrVec(vec![addr]),
            Policy::stateful_server(),
        )
    } else {
        (
            "client.1",
            EntityAddrVec::default(),
            Policy::lossless_client(),
        )
    };
    let mut c = EndpointConfig::new(name.parse::<EntityName>().unwrap(), addrs);
    c.default_policy = policy;
    c
}

/// The message the side received last, dropping the other events.
fn take_message(p: &mut Pipe, side: usize) -> Option<(ringwire::proto::SessionId, Message)> {
    let mut found = None;
    for ev in p.events[side].drain(..) {
        if let Event::Message { session, msg } = ev {
            found = Some((session, msg));
        }
    }
    found
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .expect("usage: core_round_trips ROUND_TRIPS");
    let mut p = Pipe::new(config(false), config(true));
    let addr = EntityAddr::msgr2("127.0.0.1:6800".parse().unwrap(), 7);
    let now = p.now;
    let sid = p.eps[CLIENT].connect(now, addr, EntityType::OSD);
    assert!(p.run(100), "the handshake settles");
    p.events = Default::default();
    let front = Bytes::from_static(&[0x5a; 64]);
    for i in 0..n {
        let now = p.now;
        p.eps[CLIENT]
            .send(now, sid, Message::new(0x4242).with_front(front.clone()))
            .expect("the session is open");
        assert!(p.run(100));
        let (session, msg) = take_message(&mut p, SERVER).expect("the server got the ping");
        let now = p.now;
        p.eps[SERVER]
            .send(now, session, msg)
            .expect("the session is open");
        assert!(p.run(100));
        let (_, echo) = take_message(&mut p, CLIENT).expect("the client got the echo");
        assert_eq!(echo.front, front, "echo {i}");
    }
    println!("{n} round trips");
}
