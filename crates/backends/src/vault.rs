//! # The credential vault (feature `vault`)
//!
//! Provider credentials (a user's or project's Hetzner API token) are stored sealed:
//! AES-256-GCM with a fresh random 96-bit nonce per secret, under a key from the server's
//! configuration. A sealed secret is self-describing, so keys can rotate:
//!
//! ```text
//! byte 0      format version (1)
//! bytes 1..5  key id: the first 4 bytes of SHA-256(key)
//! bytes 5..17 nonce
//! bytes 17..  ciphertext and 16-byte tag (the version and key id are authenticated too)
//! ```
//!
//! ## Intended use
//!
//! When a user saves a token through the API, the server checks it against the provider
//! (`HetznerProvider::verify_token`), stores `vault.seal(token)` and `hint(token)` in its
//! store, and never returns the token again — only the hint (its last 4 characters). When a
//! node must be created for that user, the server opens the sealed token and builds a
//! provider with it; the plaintext lives only in memory. [`Vault::needs_reseal`] tells which
//! stored secrets were sealed under a previous key, so they can be re-sealed after a
//! rotation. (Storing the sealed bytes and the API to set them belong to the server.)
//!
//! ## Settings
//!
//! | setting | variable | default | meaning |
//! |---|---|---|---|
//! | `key` | `KILN_VAULT_KEY` | none | the key: 32 bytes, base64 (standard or URL-safe) or 64 hex digits |
//! | `key_file` | `KILN_VAULT_KEY_FILE` | `{KILN_DATA_DIR}/vault.key` | used when `key` is unset: read, or created with a random key (mode 0600) on first start |
//! | `previous_keys` | `KILN_VAULT_PREVIOUS_KEYS` | none | comma-separated older keys, still accepted by `open` |
//!
//! ```
//! use kiln_backends::vault::{hint, Vault, VaultKey};
//!
//! let vault = Vault::new(VaultKey::generate());
//! let sealed = vault.seal(b"hetzner-api-token-abcd");
//! assert_eq!(vault.open(&sealed).unwrap(), b"hetzner-api-token-abcd");
//! assert_eq!(hint("hetzner-api-token-abcd"), "…abcd");
//! ```

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, Generate, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine as _;
use sha2::{Digest, Sha256};

const VERSION: u8 = 1;
const KEY_ID_LEN: usize = 4;
const NONCE_LEN: usize = 12;
const HEADER_LEN: usize = 1 + KEY_ID_LEN;
const TAG_LEN: usize = 16;

/// What went wrong sealing, opening or loading keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// A configured key is not 32 bytes of base64 or hex.
    #[error("vault key is not valid: {0}")]
    InvalidKey(String),
    /// The key file could not be read or created.
    #[error("vault key file {path}: {message}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What happened.
        message: String,
    },
    /// The bytes are too short or of an unknown format version.
    #[error("sealed secret is malformed")]
    Malformed,
    /// The secret was sealed under a key this vault does not hold.
    #[error("sealed secret uses unknown key {0}")]
    UnknownKey(String),
    /// Authentication failed: the bytes were changed, or the key is wrong.
    #[error("sealed secret failed authentication (tampered or wrong key)")]
    Tampered,
}

/// A 256-bit vault key. Its `Debug` shows only the key id.
#[derive(Clone, PartialEq, Eq)]
pub struct VaultKey([u8; 32]);

impl fmt::Debug for VaultKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VaultKey({})", hex(&self.id()))
    }
}

impl VaultKey {
    /// A random key from the operating system's generator.
    #[must_use]
    pub fn generate() -> Self {
        Self(Key::<Aes256Gcm>::generate().into())
    }

    /// The key with these bytes.
    #[must_use]
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Parses 32 bytes written as base64 (standard or URL-safe, padded or not) or as 64
    /// hex digits.
    ///
    /// # Errors
    /// [`VaultError::InvalidKey`] for anything else.
    pub fn parse(text: &str) -> Result<Self, VaultError> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|e| VaultError::InvalidKey(e.to_string()))?
        } else {
            use base64::engine::general_purpose::{
                STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD,
            };
            [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
                .iter()
                .find_map(|engine| engine.decode(text).ok())
                .ok_or_else(|| VaultError::InvalidKey("neither base64 nor 64 hex digits".into()))?
        };
        let bytes: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            VaultError::InvalidKey(format!("{} bytes instead of 32", b.len()))
        })?;
        Ok(Self(bytes))
    }

    /// The key as standard base64 (what a generated key file holds).
    #[must_use]
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    /// Its id: the first 4 bytes of SHA-256 of the key (not secret).
    #[must_use]
    pub fn id(&self) -> [u8; KEY_ID_LEN] {
        let digest = Sha256::digest(self.0);
        [digest[0], digest[1], digest[2], digest[3]]
    }

    /// Reads the key in `path`, or — when the file does not exist — creates it with a
    /// random key, readable by the owner only (mode 0600).
    ///
    /// # Errors
    /// [`VaultError::KeyFile`] when it cannot be read or created, [`VaultError::InvalidKey`]
    /// when it holds no valid key.
    pub fn load_or_create(path: &Path) -> Result<Self, VaultError> {
        let file_error = |e: std::io::Error| VaultError::KeyFile {
            path: path.to_owned(),
            message: e.to_string(),
        };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                warn_if_readable_by_others(path);
                return Self::parse(&text);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(file_error(e)),
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(file_error)?;
        }
        let key = Self::generate();
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(path) {
            Ok(mut file) => {
                writeln!(file, "{}", key.to_base64()).map_err(file_error)?;
                file.sync_all().map_err(file_error)?;
                tracing::info!(path = %path.display(), key_id = %hex(&key.id()), "created a new vault key");
                Ok(key)
            }
            // Another process created it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Self::parse(&std::fs::read_to_string(path).map_err(file_error)?)
            }
            Err(e) => Err(file_error(e)),
        }
    }
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "vault key file is readable by others; chmod 600 it");
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

/// Where the vault key comes from (see the [module documentation](self)).
#[derive(Clone, PartialEq, Eq)]
pub struct VaultSettings {
    /// The key itself (`KILN_VAULT_KEY`); wins over `key_file`.
    pub key: Option<String>,
    /// The key file (`KILN_VAULT_KEY_FILE`, default `{data dir}/vault.key`).
    pub key_file: PathBuf,
    /// Older keys `open` still accepts (`KILN_VAULT_PREVIOUS_KEYS`, comma-separated).
    pub previous_keys: Vec<String>,
}

impl fmt::Debug for VaultSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultSettings")
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("key_file", &self.key_file)
            .field("previous_keys", &self.previous_keys.len())
            .finish()
    }
}

impl VaultSettings {
    /// The defaults for a server whose data directory is `data_dir`.
    #[must_use]
    pub fn new(data_dir: &Path) -> Self {
        Self {
            key: None,
            key_file: data_dir.join("vault.key"),
            previous_keys: Vec::new(),
        }
    }

    /// The settings from the process environment, with the key file defaulting into
    /// `data_dir` (the server's `KILN_DATA_DIR`).
    #[must_use]
    pub fn from_env(data_dir: &Path) -> Self {
        Self::from_vars(std::env::vars(), data_dir)
    }

    /// The settings from `vars` (the process environment in production), with the key
    /// file defaulting into `data_dir`.
    #[must_use]
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>, data_dir: &Path) -> Self {
        let mut settings = Self::new(data_dir);
        for (name, value) in vars {
            let value = value.trim().to_owned();
            if value.is_empty() {
                continue;
            }
            match name.as_str() {
                "KILN_VAULT_KEY" => settings.key = Some(value),
                "KILN_VAULT_KEY_FILE" => settings.key_file = PathBuf::from(value),
                "KILN_VAULT_PREVIOUS_KEYS" => {
                    settings.previous_keys = value
                        .split(',')
                        .map(str::trim)
                        .filter(|k| !k.is_empty())
                        .map(str::to_owned)
                        .collect();
                }
                _ => {}
            }
        }
        settings
    }
}

/// Seals and opens secrets (see the [module documentation](self)).
#[derive(Clone)]
pub struct Vault {
    current: ([u8; KEY_ID_LEN], Aes256Gcm),
    previous: Vec<([u8; KEY_ID_LEN], Aes256Gcm)>,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("key_id", &hex(&self.current.0))
            .field("previous_keys", &self.previous.len())
            .finish()
    }
}

impl Vault {
    /// A vault sealing with `key`.
    #[must_use]
    pub fn new(key: VaultKey) -> Self {
        Self {
            current: entry(&key),
            previous: Vec::new(),
        }
    }

    /// Also opens secrets sealed with `key` (a key being rotated out).
    #[must_use]
    pub fn with_previous_key(mut self, key: VaultKey) -> Self {
        if key.id() != self.current.0 {
            self.previous.push(entry(&key));
        }
        self
    }

    /// The vault `settings` describe: the configured key, else the key file (created on
    /// first start), plus the previous keys.
    ///
    /// # Errors
    /// An invalid key, or a key file that cannot be read or created.
    pub fn from_settings(settings: &VaultSettings) -> Result<Self, VaultError> {
        let key = match &settings.key {
            Some(text) => VaultKey::parse(text)?,
            None => VaultKey::load_or_create(&settings.key_file)?,
        };
        settings
            .previous_keys
            .iter()
            .try_fold(Self::new(key), |vault, text| {
                Ok(vault.with_previous_key(VaultKey::parse(text)?))
            })
    }

    /// The id of the key new secrets are sealed with, in hex.
    #[must_use]
    pub fn key_id(&self) -> String {
        hex(&self.current.0)
    }

    /// Seals `plaintext` under the current key with a fresh random nonce.
    #[must_use]
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let (key_id, cipher) = &self.current;
        let mut out = Vec::with_capacity(HEADER_LEN + NONCE_LEN + plaintext.len() + TAG_LEN);
        out.push(VERSION);
        out.extend_from_slice(key_id);
        let nonce = Nonce::generate();
        let ciphertext = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: &out[..HEADER_LEN],
                },
            )
            // Fails only beyond GCM's 64 GiB message limit, which no credential approaches.
            .expect("AES-GCM encryption of a credential-sized message");
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        out
    }

    /// Opens bytes made by [`seal`](Self::seal) (under the current or a previous key).
    ///
    /// # Errors
    /// [`VaultError::Malformed`], [`VaultError::UnknownKey`], or [`VaultError::Tampered`]
    /// when authentication fails.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, VaultError> {
        if sealed.len() < HEADER_LEN + NONCE_LEN + TAG_LEN || sealed[0] != VERSION {
            return Err(VaultError::Malformed);
        }
        let (header, rest) = sealed.split_at(HEADER_LEN);
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let cipher = self.cipher_for(&header[1..])?;
        let nonce = Nonce::try_from(nonce).map_err(|_| VaultError::Malformed)?;
        cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: ciphertext,
                    aad: header,
                },
            )
            .map_err(|_| VaultError::Tampered)
    }

    /// Opens a sealed text secret (an API token).
    ///
    /// # Errors
    /// As [`open`](Self::open); [`VaultError::Malformed`] when the plaintext is not UTF-8.
    pub fn open_string(&self, sealed: &[u8]) -> Result<String, VaultError> {
        String::from_utf8(self.open(sealed)?).map_err(|_| VaultError::Malformed)
    }

    /// Whether `sealed` was sealed under a previous key (re-seal it with the current one).
    #[must_use]
    pub fn needs_reseal(&self, sealed: &[u8]) -> bool {
        sealed
            .get(1..HEADER_LEN)
            .is_some_and(|id| id != self.current.0)
    }

    fn cipher_for(&self, key_id: &[u8]) -> Result<&Aes256Gcm, VaultError> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|(id, _)| id == key_id)
            .map(|(_, cipher)| cipher)
            .ok_or_else(|| VaultError::UnknownKey(hex(key_id)))
    }
}

fn entry(key: &VaultKey) -> ([u8; KEY_ID_LEN], Aes256Gcm) {
    (key.id(), Aes256Gcm::new(&Key::<Aes256Gcm>::from(key.0)))
}

/// What may be shown of a stored secret: `…` and its last 4 characters, or only `…` for a
/// secret shorter than 12 characters (whose last 4 would give away too much).
#[must_use]
pub fn hint(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() < 12 {
        "…".to_owned()
    } else {
        std::iter::once('…')
            .chain(chars[chars.len() - 4..].iter().copied())
            .collect()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn seal_then_open_round_trips_with_a_fresh_nonce_each_time() {
        let vault = Vault::new(VaultKey::generate());
        let a = vault.seal(b"token");
        let b = vault.seal(b"token");
        assert_ne!(a, b, "each seal draws a new nonce");
        assert_eq!(vault.open(&a).unwrap(), b"token");
        assert_eq!(vault.open_string(&b).unwrap(), "token");
        assert_eq!(
            vault.open_string(&vault.seal(&[0xff, 0xfe])),
            Err(VaultError::Malformed)
        );
        assert_eq!(a.len(), HEADER_LEN + NONCE_LEN + 5 + TAG_LEN);
    }

    #[test]
    fn every_tampered_byte_is_detected() {
        let vault = Vault::new(VaultKey::generate());
        let sealed = vault.seal(b"hetzner-token");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            let error = vault.open(&bad).unwrap_err();
            let expected = match i {
                0 => VaultError::Malformed,
                1..HEADER_LEN => VaultError::UnknownKey(hex(&bad[1..HEADER_LEN])),
                _ => VaultError::Tampered,
            };
            assert_eq!(error, expected, "byte {i}");
        }
        assert_eq!(vault.open(&sealed[..10]), Err(VaultError::Malformed));
    }

    #[test]
    fn a_different_key_cannot_open_and_rotation_keeps_old_secrets_readable() {
        let old = VaultKey::generate();
        let new = VaultKey::generate();
        let sealed_old = Vault::new(old.clone()).seal(b"s");
        assert_eq!(
            Vault::new(new.clone()).open(&sealed_old),
            Err(VaultError::UnknownKey(hex(&old.id())))
        );
        let rotated = Vault::new(new).with_previous_key(old);
        assert_eq!(rotated.open(&sealed_old).unwrap(), b"s");
        assert!(rotated.needs_reseal(&sealed_old));
        assert!(!rotated.needs_reseal(&rotated.seal(b"s")));
    }

    #[test]
    fn keys_parse_from_base64_and_hex() {
        let key = VaultKey::generate();
        assert_eq!(VaultKey::parse(&key.to_base64()).unwrap(), key);
        let as_hex = hex(&key.0);
        assert_eq!(VaultKey::parse(&as_hex.to_uppercase()).unwrap(), key);
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.0);
        assert_eq!(VaultKey::parse(&url).unwrap(), key);
        assert!(
            matches!(VaultKey::parse("c2hvcnQ="), Err(VaultError::InvalidKey(m)) if m.contains("5 bytes"))
        );
        assert!(VaultKey::parse("not a key!").is_err());
        assert!(
            !format!("{key:?}").contains(&key.to_base64()),
            "Debug never shows the key"
        );
    }

    #[test]
    fn the_key_file_is_created_once_with_mode_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let settings = VaultSettings::from_vars(
            [("KILN_VAULT_KEY_FILE".to_owned(), String::new())],
            &dir.path().join("data"),
        );
        assert_eq!(settings.key_file, dir.path().join("data/vault.key"));
        let first = Vault::from_settings(&settings).unwrap();
        let sealed = first.seal(b"kept across restarts");
        let second = Vault::from_settings(&settings).unwrap();
        assert_eq!(second.open(&sealed).unwrap(), b"kept across restarts");
        assert_eq!(first.key_id(), second.key_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&settings.key_file)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_configured_key_wins_and_previous_keys_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let (key, old) = (VaultKey::generate(), VaultKey::generate());
        let settings = VaultSettings::from_vars(
            [
                ("KILN_VAULT_KEY".to_owned(), key.to_base64()),
                (
                    "KILN_VAULT_PREVIOUS_KEYS".to_owned(),
                    format!("{}, ", old.to_base64()),
                ),
            ],
            dir.path(),
        );
        let vault = Vault::from_settings(&settings).unwrap();
        assert_eq!(vault.key_id(), hex(&key.id()));
        assert_eq!(vault.open(&Vault::new(old).seal(b"x")).unwrap(), b"x");
        assert!(
            !settings.key_file.exists(),
            "no key file when the key is configured"
        );
        assert!(!format!("{settings:?}").contains(&key.to_base64()));
    }

    #[test]
    fn hints_show_at_most_the_last_four_characters() {
        assert_eq!(hint("0123456789abcdefWXYZ"), "…WXYZ");
        assert_eq!(hint("short"), "…");
        assert_eq!(hint("ünïcödé-tökèn-ßß"), "…n-ßß");
    }

    proptest! {
        #[test]
        fn any_secret_round_trips(secret in proptest::collection::vec(any::<u8>(), 0..512)) {
            let vault = Vault::new(VaultKey::from_bytes([7; 32]));
            let sealed = vault.seal(&secret);
            prop_assert_eq!(vault.open(&sealed).unwrap(), secret);
        }
    }
}
