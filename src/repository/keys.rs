//! Key files: how a new key wraps the master key, reading and writing key
//! files, and finding the key file a secret opens.

use super::Repository;
use crate::backend::{Backend, FileRef};
use crate::crypto::{self, MasterKey, Secret};
use crate::error::{Error, Kind, Result};
use crate::repo::{Config, FileKind, KeyFile, KeyId, KeyKind, RepoId, FORMAT_VERSION};

/// How a new key file protects the master key.
pub enum NewKey {
    Password { password: String, log_n: u8 },
    Recipient(String),
}

pub const DEFAULT_SCRYPT_LOG_N: u8 = 18;

pub fn host_name() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

pub fn user_name() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| format!("uid{}", rustix::process::getuid().as_raw()))
}

/// Build a key file wrapping `material` as `new` says.
pub fn make_key_file(key: &MasterKey, repo_id: RepoId, new: &NewKey) -> Result<KeyFile> {
    let material = key.material(repo_id);
    let (kind, data, recipient) = match new {
        NewKey::Password { password, log_n } => (
            KeyKind::Password,
            crypto::wrap_with_password(&material, password, *log_n)?,
            None,
        ),
        NewKey::Recipient(r) => (
            KeyKind::Identity,
            crypto::wrap_to_recipient(&material, r)?,
            Some(r.clone()),
        ),
    };
    Ok(KeyFile {
        version: FORMAT_VERSION,
        kind,
        created: jiff::Timestamp::now(),
        host: host_name(),
        username: user_name(),
        recipient,
        data: hex::encode(data),
    })
}

/// Store a key file under the hash of its bytes.
pub fn write_key_file(backend: &dyn Backend, kf: &KeyFile) -> Result<KeyId> {
    let bytes = crate::repo::encode::key_file_json(kf);
    let id = KeyId::of_bytes(&bytes);
    backend.write(&FileRef::of(id), &bytes)?;
    Ok(id)
}

pub fn read_key_file(backend: &dyn Backend, name: &str) -> Result<KeyFile> {
    let f = FileRef::new(FileKind::Key, name);
    let bytes = backend.read(&f)?;
    serde_json::from_slice(&bytes).map_err(|e| Error::integrity(format!("{f} is not valid: {e}")))
}

/// All key files with their ids.
pub fn local_key_files(backend: &dyn Backend) -> Result<Vec<(KeyId, KeyFile)>> {
    let mut out = Vec::new();
    for (name, _) in backend.list(FileKind::Key)? {
        if let Some(id) = KeyId::parse(&name) {
            match read_key_file(backend, &name) {
                Ok(kf) => out.push((id, kf)),
                Err(e) if e.kind() == Kind::Integrity => {
                    tracing::warn!("skipping key {name}: it is damaged ({e})")
                }
                Err(e) => return Err(e),
            }
        }
    }
    out.sort_by_key(|(_, k)| k.created);
    Ok(out)
}

impl Repository {
    /// The master key from the first key file `secret` opens. A damaged key
    /// file (empty, cut short, garbage) is skipped with a warning naming it,
    /// so that it does not lock out the holders of every other key; only
    /// when no key opens is it an error.
    pub(super) fn unlock(
        backend: &dyn Backend,
        config: &Config,
        secret: &Secret,
    ) -> Result<(MasterKey, KeyId)> {
        let keys = backend.list(FileKind::Key)?;
        let mut damaged = Vec::new();
        let mut skip = |name: &str, e: Error| {
            tracing::warn!("skipping key {name}: it is damaged ({e}); trying the other keys");
            damaged.push(name.to_string());
        };
        for (name, _) in &keys {
            let kf = match read_key_file(backend, name) {
                Ok(kf) => kf,
                Err(e) if e.kind() == Kind::Integrity => {
                    skip(name, e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let matches_kind = matches!(
                (kf.kind, secret),
                (KeyKind::Password, Secret::Password(_))
                    | (KeyKind::Identity, Secret::Identities(_))
            );
            if !matches_kind {
                continue;
            }
            let data = match hex::decode(&kf.data) {
                Ok(d) => d,
                Err(e) => {
                    skip(
                        name,
                        Error::integrity(format!("key {name} is not valid: {e}")),
                    );
                    continue;
                }
            };
            if kf.kind == KeyKind::Password {
                tracing::debug!("deriving the key of key file {name} from the password (scrypt)");
            }
            let material = match crypto::unwrap_key(&data, secret) {
                Ok(m) => m,
                // Not age data any more, or its content is not key material.
                Err(e) if matches!(e.kind(), Kind::Integrity | Kind::WrongKey) => {
                    skip(name, e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if let Some(material) = material {
                if material.repo_id != config.id {
                    return Err(Error::integrity(format!(
                        "key {name} belongs to another repository ({})",
                        material.repo_id.short()
                    )));
                }
                let id = KeyId::parse(name).unwrap_or_default();
                return Ok((MasterKey::from_material(&material)?, id));
            }
        }
        let what = match secret {
            Secret::Password(_) => "password",
            Secret::Identities(_) => "identity",
        };
        let skipped = if damaged.is_empty() {
            String::new()
        } else {
            format!(
                " ({} damaged key file(s) skipped: {})",
                damaged.len(),
                damaged.join(", ")
            )
        };
        Err(Error::new(
            Kind::WrongKey,
            format!(
                "no key of the repository at {} opens with the given {what}{skipped}",
                backend.location()
            ),
        )
        .with_hint(
            "check --password-file / CAIRN_PASSWORD / --identity; `cairn key list` shows the keys",
        ))
    }
}
