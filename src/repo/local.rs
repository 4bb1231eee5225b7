//! Files cairn keeps outside the repository, on the machine that runs it:
//! the unlocked-key cache (spec/repository.md §9).

use super::{KeyId, KeyMaterial, RepoId};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Version of [`KeyCacheEntry`]; an entry of another version is ignored.
pub const KEY_CACHE_VERSION: u32 = 1;

/// `<cache dir>/keys/<repository id>.json` (mode 0600, directory 0700): the
/// master key a password file opened, so that the next command of the same
/// user need not run scrypt again. Valid only while the password file is the
/// same file with the same content (its [`PasswordFileStamp`]) and the key
/// file that opened it is still in the repository.
#[derive(Clone, Serialize, Deserialize)]
pub struct KeyCacheEntry {
    pub version: u32,
    pub repo_id: RepoId,
    /// The key file the password opened.
    pub key_id: KeyId,
    pub password_file: PasswordFileStamp,
    pub created: Timestamp,
    pub material: KeyMaterial,
}

/// What identifies a password file and its content without holding (or
/// hashing) the password: any write to the file changes its ctime.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswordFileStamp {
    /// The canonical path.
    pub path: String,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}
