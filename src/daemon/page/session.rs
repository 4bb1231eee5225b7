//! Sessions of the status page: "the token once, never in the URL".
//!
//! `POST /login` with a valid API token makes a session: 32 random bytes,
//! sent to the browser once as the cookie [`COOKIE`] (hex) and kept here
//! only as their BLAKE3 hash, so this table (or a dump of the process)
//! holds nothing a client could present. A session remembers the hash of
//! the token it was made with: it lasts [`LIFETIME`] and only while that
//! token is still configured (a plan reload that removes or rotates the
//! token ends it). The table is bounded ([`MAX_SESSIONS`]); a new session
//! beyond that replaces the one that would expire first. What a session
//! may do — `GET` only — is decided by the API's access check (`api.rs`).

use rand::RngCore;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The cookie's name.
pub const COOKIE: &str = "cairn_session";

/// How long a session lasts from its login (no sliding renewal).
pub const LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);

/// Sessions kept at once.
pub const MAX_SESSIONS: usize = 64;

struct Session {
    /// BLAKE3 of the token the session was made with.
    token: blake3::Hash,
    expires: Instant,
}

/// The open sessions, by the hash of their secret.
#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<blake3::Hash, Session>>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<blake3::Hash, Session>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new session for the token whose hash is `token`: the cookie value
    /// to hand out (64 hex digits). Expired sessions are dropped first; a
    /// full table loses the session closest to its end.
    pub fn create(&self, token: blake3::Hash) -> String {
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let now = Instant::now();
        let mut open = self.lock();
        open.retain(|_, s| s.expires > now);
        while open.len() >= MAX_SESSIONS {
            let Some(first) = open.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| *k) else {
                break;
            };
            open.remove(&first);
        }
        open.insert(
            blake3::hash(&secret),
            Session {
                token,
                expires: now + LIFETIME,
            },
        );
        hex::encode(secret)
    }

    /// The token hash of the live session whose cookie value is `value`.
    pub fn token_of(&self, value: &str) -> Option<blake3::Hash> {
        let secret = decode(value)?;
        let key = blake3::hash(&secret);
        let mut open = self.lock();
        match open.get(&key) {
            Some(s) if s.expires > Instant::now() => Some(s.token),
            Some(_) => {
                open.remove(&key);
                None
            }
            None => None,
        }
    }

    /// End the session whose cookie value is `value`, if there is one.
    pub fn end(&self, value: &str) {
        if let Some(secret) = decode(value) {
            self.lock().remove(&blake3::hash(&secret));
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().len()
    }
}

fn decode(value: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(value, &mut out).ok()?;
    Some(out)
}

/// The value of cookie [`COOKIE`] in a `Cookie` request header.
pub fn from_header(cookie_header: &str) -> Option<&str> {
    cookie_header
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim_matches('"'))
}

/// The `Set-Cookie` value that hands out session `value`.
pub fn set_cookie(value: &str) -> String {
    format!(
        "{COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        LIFETIME.as_secs()
    )
}

/// The `Set-Cookie` value that makes a browser forget its session.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_cookie_only_and_ends() {
        let s = Sessions::default();
        let t = blake3::hash(b"token");
        let v = s.create(t);
        assert_eq!(v.len(), 64);
        assert_eq!(s.token_of(&v), Some(t));
        assert_eq!(s.token_of(&"0".repeat(64)), None);
        assert_eq!(s.token_of("not hex"), None);
        // Only the hash of the secret is kept.
        assert!(!s.lock().keys().any(|k| k.to_hex().as_str() == v));
        s.end(&v);
        assert_eq!(s.token_of(&v), None);
    }

    #[test]
    fn the_table_is_bounded() {
        let s = Sessions::default();
        let first = s.create(blake3::hash(b"a"));
        for _ in 0..MAX_SESSIONS + 5 {
            s.create(blake3::hash(b"a"));
        }
        assert_eq!(s.len(), MAX_SESSIONS);
        assert_eq!(s.token_of(&first), None, "the oldest went");
    }

    #[test]
    fn the_cookie_is_read_among_others_and_set_strictly() {
        assert_eq!(from_header("a=1; cairn_session=abc; b=2"), Some("abc"));
        assert_eq!(from_header("cairn_sessionx=abc"), None);
        let c = set_cookie("abc");
        for part in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
            assert!(c.contains(part), "{c}");
        }
    }
}
