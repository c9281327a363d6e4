//! cephx keys and what is done with them (Ceph `src/auth/Crypto.cc`, `CephxProtocol.h`):
//! `CryptoKey` encoding, AES-128-CBC with Ceph's fixed IV and PKCS#7 padding, the
//! `{u8 1, le64 magic}` envelope of every encrypted cephx structure, the XOR fold of the
//! challenge proof, and HMAC-SHA256 signatures.

use std::fmt;

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use bytes::BufMut;
use zeroize::Zeroizing;

use super::CephxError;
use crate::proto::wire::Reader;

/// Ceph's fixed CBC initialisation vector (`CEPH_AES_IV`).
const CEPH_AES_IV: &[u8; 16] = b"cephsageyudagreg";
/// `AUTH_ENC_MAGIC`: follows the version byte in every decrypted envelope.
pub const AUTH_ENC_MAGIC: u64 = 0xff00_9cad_8826_aa55;

/// Bytes that must not outlive their use: zeroed on drop, shown only by length.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Secret {
        Secret(Zeroizing::new(bytes))
    }
    pub fn from_slice(bytes: &[u8]) -> Secret {
        Secret::new(bytes.to_vec())
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// `CryptoKey::type`: which cipher a key is for. aes256k (2: krb5 aes256-cts-hmac-sha384-192,
/// newer Ceph and Linux 7.0) would be a second variant with its own arms below.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// `CEPH_CRYPTO_AES`: AES-128-CBC, 16-byte secrets.
    Aes,
}

impl KeyType {
    pub fn from_wire(v: u16) -> Result<KeyType, CephxError> {
        match v {
            1 => Ok(KeyType::Aes),
            other => Err(CephxError::UnsupportedKeyType(other)),
        }
    }
    pub fn to_wire(self) -> u16 {
        match self {
            KeyType::Aes => 1,
        }
    }
    fn secret_len(self) -> usize {
        match self {
            KeyType::Aes => 16,
        }
    }
    fn name(self) -> &'static str {
        match self {
            KeyType::Aes => "AES",
        }
    }
}

/// A cephx key: type, creation time and secret (`CryptoKey`).
#[derive(Clone, PartialEq, Eq)]
pub struct CryptoKey {
    pub ty: KeyType,
    /// `created` as (seconds, nanoseconds).
    pub created: (u32, u32),
    secret: Secret,
}

impl fmt::Debug for CryptoKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CryptoKey")
            .field("ty", &self.ty)
            .field("created", &self.created)
            .field("secret", &self.secret)
            .finish()
    }
}

type CbcEnc = cbc::Encryptor<aes::Aes128>;
type CbcDec = cbc::Decryptor<aes::Aes128>;

impl CryptoKey {
    pub fn new(ty: KeyType, created: (u32, u32), secret: Secret) -> Result<CryptoKey, CephxError> {
        if secret.len() != ty.secret_len() {
            return Err(CephxError::BadKeyLength {
                ty: ty.name(),
                want: ty.secret_len(),
                got: secret.len(),
            });
        }
        Ok(CryptoKey {
            ty,
            created,
            secret,
        })
    }

    pub fn secret(&self) -> &Secret {
        &self.secret
    }

    /// `CryptoKey::decode`: le16 type, utime created, le16 length, secret.
    pub fn decode(r: &mut Reader<'_>) -> Result<CryptoKey, CephxError> {
        let ty = KeyType::from_wire(r.u16("key type")?)?;
        let created = (r.u32("key created")?, r.u32("key created")?);
        let len = r.u16("key length")? as usize;
        let secret = Secret::from_slice(r.take(len, "key secret")?);
        CryptoKey::new(ty, created, secret)
    }

    pub fn encode(&self, out: &mut impl BufMut) {
        out.put_u16_le(self.ty.to_wire());
        out.put_u32_le(self.created.0);
        out.put_u32_le(self.created.1);
        out.put_u16_le(self.secret.len() as u16);
        out.put_slice(self.secret.expose());
    }

    /// `CryptoKey::encrypt`: the whole ciphertext, padding included.
    pub fn encrypt(&self, plain: &[u8]) -> Vec<u8> {
        match self.ty {
            KeyType::Aes => CbcEnc::new(self.secret.expose().into(), CEPH_AES_IV.into())
                .encrypt_padded_vec_mut::<Pkcs7>(plain),
        }
    }

    /// `CryptoKey::decrypt`: fails on a length that is not whole blocks or bad padding.
    pub fn decrypt(&self, cipher: &[u8]) -> Result<Secret, CephxError> {
        match self.ty {
            KeyType::Aes => CbcDec::new(self.secret.expose().into(), CEPH_AES_IV.into())
                .decrypt_padded_vec_mut::<Pkcs7>(cipher)
                .map(Secret::new)
                .map_err(|_| CephxError::Decrypt),
        }
    }

    /// `encode_encrypt_enc_bl`: the envelope `{u8 1, le64 AUTH_ENC_MAGIC}` and `payload`,
    /// encrypted (no length prefix).
    pub fn seal_envelope(&self, payload: &[u8]) -> Vec<u8> {
        let mut plain = Zeroizing::new(Vec::with_capacity(9 + payload.len()));
        plain.put_u8(1);
        plain.put_u64_le(AUTH_ENC_MAGIC);
        plain.put_slice(payload);
        self.encrypt(&plain)
    }

    /// `encode_encrypt`: [`seal_envelope`](Self::seal_envelope) as a bufferlist (le32 length
    /// and the ciphertext).
    pub fn seal_envelope_bl(&self, payload: &[u8], out: &mut impl BufMut) {
        let ct = self.seal_envelope(payload);
        out.put_u32_le(ct.len() as u32);
        out.put_slice(&ct);
    }

    /// `decode_decrypt_enc_bl`: decrypts and checks the envelope; returns what follows it.
    pub fn open_envelope(&self, cipher: &[u8]) -> Result<Secret, CephxError> {
        let plain = self.decrypt(cipher)?;
        let mut r = Reader::new(plain.expose());
        let _struct_v = r.u8("envelope version")?;
        let magic = r.u64("envelope magic")?;
        if magic != AUTH_ENC_MAGIC {
            return Err(CephxError::BadMagic(magic));
        }
        Ok(Secret::from_slice(&plain.expose()[9..]))
    }

    /// `cephx_calc_client_server_challenge`: the client's proof that it holds this key.
    /// The encrypted `CephXChallengeBlob` as a bufferlist (le32 length + ciphertext) is
    /// XOR-folded into a u64 over its whole 8-byte words; a trailing part word is ignored.
    pub fn challenge_proof(&self, server_challenge: u64, client_challenge: u64) -> u64 {
        // `CephXChallengeBlob` has no version byte of its own.
        let mut blob = [0u8; 16];
        blob[..8].copy_from_slice(&server_challenge.to_le_bytes());
        blob[8..].copy_from_slice(&client_challenge.to_le_bytes());
        let mut bl = Vec::with_capacity(64);
        self.seal_envelope_bl(&blob, &mut bl);
        bl.chunks_exact(8)
            .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
            .fold(0, |a, w| a ^ w)
    }

    /// HMAC-SHA256 keyed with the secret (`CryptoKey::hmac_sha256`): AUTH_SIGNATURE.
    pub fn hmac_sha256(&self, data: &[u8]) -> [u8; 32] {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, self.secret.expose());
        let mut out = [0u8; 32];
        out.copy_from_slice(ring::hmac::sign(&key, data).as_ref());
        out
    }

    /// Whether `sig` is the HMAC of `data`, compared in constant time.
    pub fn verify_hmac_sha256(&self, data: &[u8], sig: &[u8; 32]) -> bool {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, self.secret.expose());
        ring::hmac::verify(&key, data, sig).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len() / 2)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    }

    fn aes(secret: &str) -> CryptoKey {
        CryptoKey::new(KeyType::Aes, (0, 0), Secret::new(hex(secret))).unwrap()
    }

    /// Ceph's `src/test/crypto.cc` (AES.Encrypt / AES.Decrypt): one block of plaintext
    /// becomes two (PKCS#7 pads a whole block), with Ceph's fixed IV.
    #[test]
    fn aes_cbc_matches_cephs_own_test_vector() {
        let key = aes("000102030405060708090a0b0c0d0e0f");
        let plain = hex("00112233445566778899aabbccddeeff");
        let want = hex("b38f5bc9354cf8c61315666f37d7793a11907be9d83c3570587b979b03d2a501");
        assert_eq!(key.encrypt(&plain), want);
        assert_eq!(key.decrypt(&want).unwrap().expose(), &plain[..]);
    }

    /// Worked example of the fixtures (`cephx-crc`, stream 0): the client key, the two
    /// challenges on the wire and the proof the client sent (which the monitor accepted).
    #[test]
    fn the_challenge_proof_is_the_one_on_the_wire() {
        let key = aes("86463cd661d614fdaa0f01e3f258032c");
        assert_eq!(
            key.challenge_proof(0xb509710ba99656b6, 0x7848e761937b8a4e),
            0xe324f8f892120838
        );
    }

    #[test]
    fn envelopes_round_trip_and_a_wrong_key_is_refused() {
        let key = aes("86463cd661d614fdaa0f01e3f258032c");
        let other = aes("b9114bf3178da3a0f20b01de0b070e0f");
        let ct = key.seal_envelope(b"payload");
        assert_eq!(key.open_envelope(&ct).unwrap().expose(), b"payload");
        assert!(matches!(
            other.open_envelope(&ct),
            Err(CephxError::Decrypt | CephxError::BadMagic(_))
        ));
        assert_eq!(key.open_envelope(&ct[..15]), Err(CephxError::Decrypt));
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let key = aes("86463cd661d614fdaa0f01e3f258032c");
        let shown = format!("{key:?}");
        assert!(shown.contains("Secret(16 bytes)"), "{shown}");
        assert!(!shown.contains("86") && !shown.contains("134"), "{shown}");
    }

    #[test]
    fn keys_of_other_types_and_lengths_are_refused() {
        let bytes = [2u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0];
        assert_eq!(
            CryptoKey::decode(&mut Reader::new(&bytes)),
            Err(CephxError::UnsupportedKeyType(2))
        );
        assert!(matches!(
            CryptoKey::new(KeyType::Aes, (0, 0), Secret::new(vec![0; 15])),
            Err(CephxError::BadKeyLength { got: 15, .. })
        ));
    }
}
