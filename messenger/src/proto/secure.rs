//! msgr2.1 secure mode's cipher (Ceph `crypto_onwire.cc`; msgr2-auth.md §2): one AES-128-GCM
//! stream per direction, keyed and seeded by the 64-byte connection secret that auth
//! produced. A leaf: the frame codec ([`frame`](super::frame)) lays frames out around it.
//!
//! Nonces are `{le32 fixed, le64 counter}`; the counter advances by one per GCM operation,
//! from the secret's bytes, and may wrap, but a stream that comes back to its first nonce is
//! out of nonces (msgr2.1; msgr2.0 counted in the fixed part, CVE-2020-1759).

use std::fmt;

use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_128_GCM};

/// Bytes of a GCM tag, after each operation's ciphertext.
pub const TAG_LEN: usize = 16;
/// Bytes of the connection secret secure mode needs (`get_connection_secret_length`).
pub const SECRET_LEN: usize = 64;
/// How far back a failed first operation is tried again, to name a replay as one.
const REPLAY_WINDOW: u64 = 64;

/// Why a secure-mode operation failed. Each is fatal for the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecureError {
    #[error("out of nonces: this connection did 2^64 GCM operations with one secret")]
    OutOfNonces,
    #[error(
        "GCM tag mismatch on the {op}: the frame was altered, truncated or not sealed by our peer"
    )]
    BadTag { op: &'static str },
    #[error("replayed frame: it was sealed {behind} GCM operations ago")]
    Replayed { behind: u64 },
    #[error("connection secret of {0} bytes; secure mode needs {SECRET_LEN}")]
    BadSecret(usize),
}

/// One direction of a secure connection.
pub struct GcmStream {
    key: LessSafeKey,
    fixed: [u8; 4],
    counter: u64,
    initial: u64,
    used_initial: bool,
}

impl fmt::Debug for GcmStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The counter is on the wire's nonce anyway; the key never shows.
        write!(f, "GcmStream {{ counter: {:#x} }}", self.counter)
    }
}

/// The (send, receive) streams of a connection from its secret: key = bytes 0..16; the
/// connecting side receives with the nonce at 16..28 and sends with 28..40, the accepting
/// side the other way round ("crossed").
pub fn streams(secret: &[u8], acceptor: bool) -> Result<(GcmStream, GcmStream), SecureError> {
    if secret.len() != SECRET_LEN {
        return Err(SecureError::BadSecret(secret.len()));
    }
    let (a, b) = (&secret[16..28], &secret[28..40]);
    let (tx, rx) = if acceptor { (a, b) } else { (b, a) };
    Ok((
        GcmStream::new(&secret[..16], tx),
        GcmStream::new(&secret[..16], rx),
    ))
}

impl GcmStream {
    fn new(key: &[u8], nonce: &[u8]) -> GcmStream {
        let key = UnboundKey::new(&AES_128_GCM, key).expect("16-byte AES-128 key");
        let counter = u64::from_le_bytes(nonce[4..12].try_into().expect("12-byte nonce"));
        GcmStream {
            key: LessSafeKey::new(key),
            fixed: nonce[..4].try_into().expect("12-byte nonce"),
            counter,
            initial: counter,
            used_initial: false,
        }
    }

    fn nonce_at(&self, counter: u64) -> Nonce {
        let mut n = [0u8; 12];
        n[..4].copy_from_slice(&self.fixed);
        n[4..].copy_from_slice(&counter.to_le_bytes());
        Nonce::assume_unique_for_key(n)
    }

    /// The nonce for the next operation; the counter wraps, a second use of the first one
    /// is refused.
    fn next_nonce(&mut self) -> Result<Nonce, SecureError> {
        if self.counter == self.initial {
            if self.used_initial {
                return Err(SecureError::OutOfNonces);
            }
            self.used_initial = true;
        }
        let n = self.nonce_at(self.counter);
        self.counter = self.counter.wrapping_add(1);
        Ok(n)
    }

    /// A stream with `ops` operations left before its nonces run out (tests of the frame
    /// codec's handling of that).
    #[cfg(test)]
    pub(crate) fn with_ops_left(mut self, ops: u64) -> GcmStream {
        self.used_initial = true;
        self.counter = self.initial.wrapping_sub(ops);
        self
    }

    /// Encrypts `buf` in place; returns the tag that follows it on the wire.
    pub fn seal(&mut self, buf: &mut [u8]) -> Result<[u8; TAG_LEN], SecureError> {
        let nonce = self.next_nonce()?;
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::empty(), buf)
            .expect("within GCM's length limit: frames are far below 64 GiB");
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Decrypts one operation in place: `ct_and_tag` is the ciphertext followed by its tag;
    /// on success its first `len - TAG_LEN` bytes are the plaintext. `op` names the part of
    /// the frame for the error.
    pub fn open(&mut self, ct_and_tag: &mut [u8], op: &'static str) -> Result<(), SecureError> {
        let Some(ct_len) = ct_and_tag.len().checked_sub(TAG_LEN) else {
            return Err(SecureError::BadTag { op });
        };
        let nonce = self.next_nonce()?;
        let (ct, tag) = ct_and_tag.split_at_mut(ct_len);
        let tag = Tag::from(<[u8; TAG_LEN]>::try_from(&*tag).expect("TAG_LEN bytes"));
        self.key
            .open_in_place_separate_tag(nonce, Aad::empty(), tag, ct, 0..)
            .map(|_| ())
            .map_err(|_| SecureError::BadTag { op })
    }

    /// [`open`](Self::open) for a frame's first operation, which a replayed frame fails:
    /// on a mismatch, tries the nonces of the last few operations to tell a replay from
    /// an alteration (a failing connection's cost only).
    pub fn open_first(
        &mut self,
        ct_and_tag: &mut [u8],
        op: &'static str,
    ) -> Result<(), SecureError> {
        let copy = ct_and_tag.to_vec();
        let err = match self.open(ct_and_tag, op) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        // `counter` is one past the operation that failed.
        for behind in 1..=REPLAY_WINDOW {
            let Some(back) = self.counter.checked_sub(1 + behind) else {
                break;
            };
            let mut trial = copy.clone();
            let (ct, tag) = trial.split_at_mut(copy.len() - TAG_LEN);
            let tag = Tag::from(<[u8; TAG_LEN]>::try_from(&*tag).expect("TAG_LEN bytes"));
            let opened = self.key.open_in_place_separate_tag(
                self.nonce_at(back),
                Aad::empty(),
                tag,
                ct,
                0..,
            );
            if opened.is_ok() {
                return Err(SecureError::Replayed { behind });
            }
        }
        Err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Vec<u8> {
        (0..64).collect()
    }

    #[test]
    fn the_acceptor_receives_what_the_connector_sends_and_back() {
        let (mut ctx, mut crx) = streams(&secret(), false).unwrap();
        let (mut stx, mut srx) = streams(&secret(), true).unwrap();
        for _ in 0..3 {
            let mut buf = *b"sixteen bytes!!!";
            let tag = ctx.seal(&mut buf).unwrap();
            let mut wire = [&buf[..], &tag[..]].concat();
            srx.open(&mut wire, "test").unwrap();
            assert_eq!(&wire[..16], b"sixteen bytes!!!");
            let mut back = *b"and the way back";
            let tag = stx.seal(&mut back).unwrap();
            let mut wire = [&back[..], &tag[..]].concat();
            crx.open(&mut wire, "test").unwrap();
            assert_eq!(&wire[..16], b"and the way back");
        }
        assert!(matches!(
            streams(&secret()[..40], false),
            Err(SecureError::BadSecret(40))
        ));
    }

    /// A counter one short of its start has one operation left: after it, the next would
    /// reuse the first nonce.
    #[test]
    fn a_stream_about_to_wrap_does_one_more_operation_then_is_out_of_nonces() {
        let (mut tx, _) = streams(&secret(), false).unwrap();
        tx.seal(&mut [0u8; 16]).unwrap();
        let mut tx = tx.with_ops_left(1);
        tx.seal(&mut [0u8; 16]).unwrap();
        assert_eq!(tx.seal(&mut [0u8; 16]), Err(SecureError::OutOfNonces));
        let (_, mut rx) = streams(&secret(), true).unwrap();
        rx.used_initial = true;
        assert_eq!(rx.open(&mut [0u8; 32], "x"), Err(SecureError::OutOfNonces));
    }

    #[test]
    fn altered_replayed_and_short_input_each_fail_their_own_way() {
        let (mut tx, _) = streams(&secret(), false).unwrap();
        let (_, mut rx) = streams(&secret(), true).unwrap();
        let seal = |tx: &mut GcmStream| {
            let mut b = [7u8; 80];
            let t = tx.seal(&mut b).unwrap();
            [&b[..], &t[..]].concat()
        };
        let first = seal(&mut tx);
        let mut ok = first.clone();
        rx.open_first(&mut ok, "preamble").unwrap();
        // The same frame again: sealed one operation before the one expected.
        let mut again = first.clone();
        assert_eq!(
            rx.open_first(&mut again, "preamble"),
            Err(SecureError::Replayed { behind: 1 })
        );
        for flip in [0usize, 79, 80, 95] {
            let (mut tx, _) = streams(&secret(), false).unwrap();
            let (_, mut rx) = streams(&secret(), true).unwrap();
            let mut bad = seal(&mut tx);
            bad[flip] ^= 1;
            assert_eq!(
                rx.open_first(&mut bad, "preamble"),
                Err(SecureError::BadTag { op: "preamble" }),
                "bit flipped at {flip}"
            );
        }
        assert_eq!(
            rx.open(&mut [0u8; 15], "tail"),
            Err(SecureError::BadTag { op: "tail" })
        );
    }
}
