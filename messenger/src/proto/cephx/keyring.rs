//! Ceph keyring files (`ceph-authtool` writes them): INI sections named by entity, each with a
//! `key = BASE64` line whose bytes are an encoded [`CryptoKey`]. Other settings (`caps ...`)
//! are skipped; they matter to a monitor's database, not to a keyring's user.

use std::path::Path;

use base64::Engine;

use super::key::CryptoKey;
use super::CephxError;
use crate::proto::wire::{EntityName, Reader};

/// Why a keyring could not be read. Messages name the file and line, never a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    #[error("cannot read keyring {path}: {reason}")]
    Io { path: String, reason: String },
    #[error("keyring line {line}: {what}")]
    Syntax { line: usize, what: String },
    #[error("keyring line {line}: the key of {entity} is unusable: {source}")]
    BadKey {
        line: usize,
        entity: String,
        source: CephxError,
    },
    #[error("no key for {entity} in keyring {path}")]
    NoEntry { entity: String, path: String },
}

/// The entries of a keyring file, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keyring {
    entries: Vec<(EntityName, CryptoKey)>,
}

/// A keyring's `key =` value: base64 of an encoded `CryptoKey`.
pub fn key_from_base64(text: &str) -> Result<CryptoKey, CephxError> {
    let raw = zeroize::Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| CephxError::BadBase64)?,
    );
    let mut r = Reader::new(&raw);
    let key = CryptoKey::decode(&mut r)?;
    r.finish()?;
    Ok(key)
}

/// The inverse of [`key_from_base64`]: a keyring's `key =` value for `key`. The caller holds
/// the text: it is a secret.
pub fn key_to_base64(key: &CryptoKey) -> zeroize::Zeroizing<String> {
    let mut raw = zeroize::Zeroizing::new(Vec::with_capacity(28));
    key.encode(&mut *raw);
    zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&*raw))
}

impl Keyring {
    pub fn parse(text: &str) -> Result<Keyring, KeyringError> {
        let mut entries = Vec::new();
        let mut section: Option<EntityName> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let l = raw.trim();
            if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
                continue;
            }
            if let Some(name) = l.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                let name = name
                    .trim()
                    .parse::<EntityName>()
                    .map_err(|what| KeyringError::Syntax { line, what })?;
                section = Some(name);
                continue;
            }
            let Some((k, v)) = l.split_once('=') else {
                return Err(KeyringError::Syntax {
                    line,
                    what: "neither [entity] nor name = value".into(),
                });
            };
            if k.trim() != "key" {
                continue;
            }
            let Some(entity) = section.clone() else {
                return Err(KeyringError::Syntax {
                    line,
                    what: "a key before any [entity] section".into(),
                });
            };
            let key = key_from_base64(v).map_err(|source| KeyringError::BadKey {
                line,
                entity: entity.to_string(),
                source,
            })?;
            entries.push((entity, key));
        }
        Ok(Keyring { entries })
    }

    pub fn load(path: &Path) -> Result<Keyring, KeyringError> {
        let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            KeyringError::Io {
                path: path.display().to_string(),
                reason: e.to_string(),
            }
        })?);
        Keyring::parse(&text)
    }

    /// The key of `entity` (the last one, if the file names it twice, as Ceph reads it).
    pub fn get(&self, entity: &EntityName) -> Option<&CryptoKey> {
        self.entries
            .iter()
            .rev()
            .find(|(e, _)| e == entity)
            .map(|(_, k)| k)
    }

    /// [`Keyring::load`] and [`Keyring::get`] together, for a caller that needs one key.
    pub fn load_key(path: &Path, entity: &EntityName) -> Result<CryptoKey, KeyringError> {
        Keyring::load(path)?
            .get(entity)
            .cloned()
            .ok_or_else(|| KeyringError::NoEntry {
                entity: entity.to_string(),
                path: path.display().to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::cephx::key::KeyType;
    use crate::proto::wire::EntityType;

    /// The fixtures' `client.admin.keyring` as ceph-authtool wrote it, and the secret its
    /// README lists for it.
    #[test]
    fn a_keyring_from_ceph_authtool_gives_the_listed_secret() {
        let text = "[client.admin]\n\tkey = AQD7eQ9rfHEnHxAAhkY81mHWFP2qDwHj8lgDLA==\n\
                    \tcaps mgr = \"allow *\"\n\tcaps mon = \"allow *\"\n";
        let k = Keyring::parse(text).unwrap();
        let key = k
            .get(&EntityName::new(EntityType::CLIENT, "admin"))
            .unwrap();
        assert_eq!(key.ty, KeyType::Aes);
        let hex: String = key
            .secret()
            .expose()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, "86463cd661d614fdaa0f01e3f258032c");
        assert!(k
            .get(&EntityName::new(EntityType::CLIENT, "other"))
            .is_none());
        let mon =
            Keyring::parse("[mon.]\nkey = AQD7eQ9rnyH+HRAAa0R+Yfm1CjmT6dIqlQXryg==\n").unwrap();
        assert!(mon.get(&EntityName::new(EntityType::MON, "")).is_some());
    }

    #[test]
    fn bad_keyrings_name_the_line_and_never_the_key() {
        let cases: [(&str, usize); 4] = [
            ("key = AQD7eQ9rfHEnHxAAhkY81mHWFP2qDwHj8lgDLA==\n", 1),
            ("[client.admin]\nkey = not base64!\n", 2),
            ("[client.admin]\n# fine\nkey = AQD7eQ9r\n", 3),
            ("[nonsense]\n", 1),
        ];
        for (text, line) in cases {
            let e = Keyring::parse(text).unwrap_err();
            let shown = e.to_string();
            assert!(
                shown.starts_with(&format!("keyring line {line}:")),
                "{shown}"
            );
            assert!(!shown.contains("AQD7"), "{shown}");
        }
    }
}
