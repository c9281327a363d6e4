//! msgr2.1 secure mode's cipher (Ceph `crypto_onwire.cc`; msgr2-auth.md §2): one AES-128-GCM
//! stream per direction, keyed and seeded by the 64-byte connection secret that auth
//! produced. A leaf: the frame codec ([`frame`](super::frame)) lays frames out around it.
//!
//! Nonces are `{le32 fixed, le64 counter}`; the counter advances by one per GCM operation,
//! from the secret's bytes, and may wrap, but a stream that comes back to its first nonce is
//! out of nonces (msgr2.1; msgr2.0 counted in the fixed part, CVE-2020-1759).
//!
//! Two libraries run the one cipher, each where it measured faster (docs/benchmarks.md, "The
//! cost of security"): ring for every operation in place (opening, sealing small frames),
//! aws-lc's EVP interface for sealing large ones out of place, from the caller's buffers
//! straight into the send buffer, which ring cannot do.

use std::ffi::c_int;
use std::fmt;
use std::ptr::{self, NonNull};

use bytes::BytesMut;
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
    /// The same key, for sealing out of place.
    evp: EvpGcm,
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
        let evp = EvpGcm::new(key.try_into().expect("16-byte AES-128 key"));
        let key = UnboundKey::new(&AES_128_GCM, key).expect("16-byte AES-128 key");
        let counter = u64::from_le_bytes(nonce[4..12].try_into().expect("12-byte nonce"));
        GcmStream {
            key: LessSafeKey::new(key),
            evp,
            fixed: nonce[..4].try_into().expect("12-byte nonce"),
            counter,
            initial: counter,
            used_initial: false,
        }
    }

    fn nonce_bytes(&self, counter: u64) -> [u8; NONCE_LEN] {
        let mut n = [0u8; NONCE_LEN];
        n[..4].copy_from_slice(&self.fixed);
        n[4..].copy_from_slice(&counter.to_le_bytes());
        n
    }

    fn nonce_at(&self, counter: u64) -> Nonce {
        Nonce::assume_unique_for_key(self.nonce_bytes(counter))
    }

    /// The nonce for the next operation; the counter wraps, a second use of the first one
    /// is refused.
    fn next_nonce_bytes(&mut self) -> Result<[u8; NONCE_LEN], SecureError> {
        if self.counter == self.initial {
            if self.used_initial {
                return Err(SecureError::OutOfNonces);
            }
            self.used_initial = true;
        }
        let n = self.nonce_bytes(self.counter);
        self.counter = self.counter.wrapping_add(1);
        Ok(n)
    }

    fn next_nonce(&mut self) -> Result<Nonce, SecureError> {
        self.next_nonce_bytes().map(Nonce::assume_unique_for_key)
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

    /// Starts sealing one operation whose plaintext is given in pieces, each encrypted from
    /// where it is into the end of `out` (no copy of it first); the tag follows at
    /// [`SealInto::finish`].
    pub fn seal_into<'a>(&'a mut self, out: &'a mut BytesMut) -> Result<SealInto<'a>, SecureError> {
        let nonce = self.next_nonce_bytes()?;
        self.evp.start(&nonce);
        Ok(SealInto {
            evp: &mut self.evp,
            out,
        })
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

/// One GCM operation being sealed out of place ([`GcmStream::seal_into`]).
pub struct SealInto<'a> {
    evp: &'a mut EvpGcm,
    out: &'a mut BytesMut,
}

impl SealInto<'_> {
    /// Appends the ciphertext of the next `plain` bytes.
    pub fn push(&mut self, plain: &[u8]) {
        self.evp.update(plain, self.out);
    }

    /// Appends the ciphertext of `n` zero bytes (padding).
    pub fn push_zeros(&mut self, n: usize) {
        const ZEROS: [u8; 64] = [0; 64];
        let mut left = n;
        while left > 0 {
            let k = left.min(ZEROS.len());
            self.push(&ZEROS[..k]);
            left -= k;
        }
    }

    /// Ends the operation: appends its tag.
    pub fn finish(self) {
        let tag = self.evp.finish();
        self.out.extend_from_slice(&tag);
    }
}

/// Bytes of a GCM nonce.
const NONCE_LEN: usize = 12;

/// AES-128-GCM sealing through aws-lc's EVP cipher interface, which takes the plaintext in
/// pieces and writes the ciphertext elsewhere. A safe wrapper: the context is owned, every
/// call's result is checked, and output is written only into reserved room.
struct EvpGcm(NonNull<aws_lc_sys::EVP_CIPHER_CTX>);

// SAFETY: the context is used by one owner at a time (every call takes `&mut self`) and
// holds no thread-local state.
unsafe impl Send for EvpGcm {}

impl EvpGcm {
    fn new(key: &[u8; 16]) -> EvpGcm {
        // SAFETY: plain allocation; a null result is checked.
        let ctx = NonNull::new(unsafe { aws_lc_sys::EVP_CIPHER_CTX_new() })
            .expect("allocating an EVP_CIPHER_CTX");
        let ctx = EvpGcm(ctx);
        // SAFETY: a fresh context, a static cipher, a 16-byte key; no nonce yet.
        let ok = unsafe {
            aws_lc_sys::EVP_EncryptInit_ex(
                ctx.0.as_ptr(),
                aws_lc_sys::EVP_aes_128_gcm(),
                ptr::null_mut(),
                key.as_ptr(),
                ptr::null(),
            )
        };
        assert_eq!(ok, 1, "EVP_EncryptInit_ex with an AES-128 key");
        ctx
    }

    /// Starts an operation under `nonce` (the default 12-byte GCM nonce length); the key
    /// schedule is kept.
    fn start(&mut self, nonce: &[u8; NONCE_LEN]) {
        // SAFETY: an initialised context and a 12-byte nonce.
        let ok = unsafe {
            aws_lc_sys::EVP_EncryptInit_ex(
                self.0.as_ptr(),
                ptr::null(),
                ptr::null_mut(),
                ptr::null(),
                nonce.as_ptr(),
            )
        };
        assert_eq!(ok, 1, "EVP_EncryptInit_ex with a nonce");
    }

    /// Appends the ciphertext of `plain` to `out`. GCM is a stream mode: each call writes
    /// exactly as many bytes as it reads.
    fn update(&mut self, plain: &[u8], out: &mut BytesMut) {
        // The length is a C int: frames are far smaller, but stay within it anyway.
        for piece in plain.chunks(1 << 30) {
            out.reserve(piece.len());
            let dst = out.spare_capacity_mut();
            let mut written: c_int = 0;
            // SAFETY: `dst` has room for `piece.len()` bytes and does not overlap `piece`
            // (a shared borrow); GCM writes exactly `piece.len()` bytes.
            let ok = unsafe {
                aws_lc_sys::EVP_EncryptUpdate(
                    self.0.as_ptr(),
                    dst.as_mut_ptr().cast(),
                    &mut written,
                    piece.as_ptr(),
                    piece.len() as c_int,
                )
            };
            assert!(
                ok == 1 && written as usize == piece.len(),
                "EVP_EncryptUpdate wrote {written} of {} bytes",
                piece.len()
            );
            // SAFETY: those bytes were just written.
            unsafe { out.set_len(out.len() + piece.len()) };
        }
    }

    /// Ends the operation; returns its tag.
    fn finish(&mut self) -> [u8; TAG_LEN] {
        let mut none = [0u8; 16];
        let mut written: c_int = 0;
        let mut tag = [0u8; TAG_LEN];
        // SAFETY: GCM's final step writes no bytes (`none` has room for a block anyway);
        // the tag is TAG_LEN bytes into `tag`.
        let ok = unsafe {
            aws_lc_sys::EVP_EncryptFinal_ex(self.0.as_ptr(), none.as_mut_ptr(), &mut written) == 1
                && aws_lc_sys::EVP_CIPHER_CTX_ctrl(
                    self.0.as_ptr(),
                    aws_lc_sys::EVP_CTRL_GCM_GET_TAG,
                    TAG_LEN as c_int,
                    tag.as_mut_ptr().cast(),
                ) == 1
        };
        assert!(ok && written == 0, "EVP_EncryptFinal_ex and the GCM tag");
        tag
    }
}

impl Drop for EvpGcm {
    fn drop(&mut self) {
        // SAFETY: owned, freed once. aws-lc zeroes the key schedule as it frees it.
        unsafe { aws_lc_sys::EVP_CIPHER_CTX_free(self.0.as_ptr()) }
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

    /// Out of place, in pieces (zeros among them), the bytes are those sealing in place
    /// gives, operation after operation, so the two can take turns on one stream; and the
    /// nonces run out the same way.
    #[test]
    fn sealing_out_of_place_in_pieces_matches_sealing_in_place() {
        let (mut in_place, _) = streams(&secret(), false).unwrap();
        let (mut pieces, _) = streams(&secret(), false).unwrap();
        let (_, mut rx) = streams(&secret(), true).unwrap();
        let plain: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        for len in [0, 1, 16, 100, 5000] {
            let mut expected = plain[..len].to_vec();
            expected.resize(len + 100, 0);
            let tag = in_place.seal(&mut expected).unwrap();
            expected.extend_from_slice(&tag);
            let mut out = BytesMut::from(&b"queued"[..]);
            let mut op = pieces.seal_into(&mut out).unwrap();
            op.push(&plain[..len / 3]);
            op.push(&plain[len / 3..len]);
            op.push_zeros(100);
            op.finish();
            assert_eq!(&out[..6], b"queued");
            assert_eq!(&out[6..], &expected[..], "{len} bytes");
            rx.open(&mut out[6..], "test").unwrap();
            assert_eq!(&out[6..6 + len], &plain[..len]);
        }
        let mut out = BytesMut::new();
        let mut last = pieces.with_ops_left(1);
        last.seal_into(&mut out).unwrap().finish();
        assert!(matches!(
            last.seal_into(&mut out),
            Err(SecureError::OutOfNonces)
        ));
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
