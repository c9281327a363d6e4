//! When io_uring cannot be set up, starting a messenger fails with an error that names the
//! cause and the sysctl. This flips `kernel.io_uring_disabled` (root, as in CI) and restores it;
//! it is its own test binary so that no other test runs while io_uring is off.

use std::sync::Arc;

use ringwire::proto::{EntityName, EntityType};
use ringwire::{Connection, Dispatcher, Incoming, Messenger, Options};

const SYSCTL: &str = "/proc/sys/kernel/io_uring_disabled";

struct Restore(String);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = std::fs::write(SYSCTL, &self.0);
    }
}

struct Nothing;
impl Dispatcher for Nothing {
    fn dispatch(&self, _: &Connection, _: Incoming) {}
}

#[test]
fn disabled_io_uring_is_reported_with_the_sysctl_to_change() {
    let before = std::fs::read_to_string(SYSCTL)
        .unwrap_or_else(|e| panic!("{SYSCTL}: {e} (this kernel lacks the sysctl?)"));
    let _restore = Restore(before.trim().to_string());
    std::fs::write(SYSCTL, "2")
        .unwrap_or_else(|e| panic!("cannot write {SYSCTL} (run as root): {e}"));
    let err = Messenger::builder(EntityName::new(EntityType::CLIENT, "x"))
        .options(Options {
            workers: 1,
            ..Options::default()
        })
        .start(Arc::new(Nothing))
        .err()
        .expect("start must fail while io_uring is disabled");
    let text = err.to_string();
    assert!(text.starts_with("io_uring is unavailable"), "{text}");
    assert!(text.contains("kernel.io_uring_disabled=2"), "{text}");
    assert!(text.contains("set it to 0"), "{text}");
}
