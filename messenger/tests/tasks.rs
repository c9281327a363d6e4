//! Application tasks on a worker (`Connection::spawn`) and the `Mailbox` that hands them
//! replies: a real server and client `Messenger` on loopback, one worker each.

mod common;

use common::{echo_server, one_worker};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::Duration;

use ringwire::proto::{EntityType, Message, Policy};
use ringwire::{Connection, Dispatcher, Incoming, Mailbox, Messenger};

const TY: u16 = 0x4243;
const TIMEOUT: Duration = Duration::from_secs(30);

/// Hands every reply to a mailbox and records the thread dispatch ran on.
struct Replies {
    mailbox: Arc<Mailbox<Incoming>>,
    thread: Mutex<Option<ThreadId>>,
}

impl Dispatcher for Replies {
    fn dispatch(&self, _conn: &Connection, msg: Incoming) {
        *self.thread.lock().unwrap() = Some(std::thread::current().id());
        self.mailbox.put(msg);
    }
}

fn pair() -> (Messenger, Messenger, Arc<Replies>, Connection) {
    let server = echo_server(Policy::stateless_server());
    let replies = Arc::new(Replies {
        mailbox: Arc::new(Mailbox::new()),
        thread: Mutex::new(None),
    });
    let client = Messenger::builder("client.0".parse().unwrap())
        .default_policy(Policy::lossy_client())
        .options(one_worker())
        .start(replies.clone())
        .expect("io_uring available");
    let conn = client.connect(server.addrs().0[0], EntityType::OSD);
    conn.wait_ready(Duration::from_secs(5)).unwrap();
    (server, client, replies, conn)
}

fn numbered(i: u64) -> Message {
    Message::new(TY).with_front(i.to_le_bytes().to_vec())
}

#[test]
fn a_spawned_task_runs_request_reply_on_the_dispatch_thread_and_gets_every_reply_in_order() {
    let (_server, _client, replies, conn) = pair();
    const ROUNDS: u64 = 2_000;
    let done = Arc::new(Mailbox::new());
    let (c, mailbox, finished) = (conn.clone(), replies.mailbox.clone(), done.clone());
    conn.spawn(async move {
        let task_thread = std::thread::current().id();
        for i in 0..ROUNDS {
            c.send(numbered(i)).unwrap();
            let reply = mailbox.recv().await;
            assert_eq!(reply.front[..], i.to_le_bytes(), "reply {i} out of order");
        }
        finished.put(task_thread);
    });
    let task_thread = done.recv_timeout(TIMEOUT).expect("the task finished");
    assert_eq!(
        Some(task_thread),
        *replies.thread.lock().unwrap(),
        "the task ran on the thread that dispatches its connection's messages"
    );
    assert_ne!(task_thread, std::thread::current().id());
}

#[test]
fn a_blocking_thread_gets_replies_through_the_mailbox() {
    let (_server, _client, replies, conn) = pair();
    for i in 0..200u64 {
        conn.send(numbered(i)).unwrap();
        let reply = replies.mailbox.recv_timeout(TIMEOUT).expect("a reply");
        assert_eq!(reply.front[..], i.to_le_bytes());
    }
}

/// Sets its flag when dropped.
struct DropFlag(Arc<AtomicBool>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[test]
fn tasks_still_waiting_at_shutdown_are_dropped() {
    let (_server, client, _replies, conn) = pair();
    let dropped = Arc::new(AtomicBool::new(false));
    let polls = Arc::new(AtomicU64::new(0));
    let never = Arc::new(Mailbox::<()>::new());
    let (flag, p) = (DropFlag(dropped.clone()), polls.clone());
    conn.spawn(async move {
        let _flag = flag;
        p.fetch_add(1, Ordering::SeqCst);
        never.recv().await;
    });
    let deadline = std::time::Instant::now() + TIMEOUT;
    while polls.load(Ordering::SeqCst) == 0 {
        assert!(std::time::Instant::now() < deadline, "the task never ran");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(!dropped.load(Ordering::SeqCst));
    client.shutdown();
    client.wait();
    assert!(
        dropped.load(Ordering::SeqCst),
        "shutdown dropped the waiting task"
    );
}
