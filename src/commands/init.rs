use super::{print_json, repo_location};
use crate::backend;
use crate::cli::{GlobalArgs, InitArgs};
use crate::crypto::Secret;
use crate::error::{Error, Result};
use crate::repository::{NewKey, Repository};

pub fn run(g: &GlobalArgs, a: &InitArgs) -> Result<()> {
    let location = repo_location(g)?;
    let backend = backend::open(&location)?;
    // The password file as it is before it is read: the key cache is
    // filled only if the file read is the one stamped (as `open` does).
    let access = super::access(g);
    let cache = match (access.key_cache_dir(), &access.password_file) {
        (Some(dir), Some(f)) if access.identity.is_none() => {
            crate::ops::key_cache::stamp(f).map(|st| (dir, f.clone(), st))
        }
        _ => None,
    };
    let new = match super::secret(g)? {
        Secret::Password(password) => NewKey::Password {
            password,
            log_n: a.kdf_work_factor,
        },
        Secret::Identities(ids) => {
            let first = ids
                .first()
                .ok_or_else(|| Error::usage("the identity file holds no identity"))?;
            NewKey::Recipient(first.to_public().to_string())
        }
    };
    let chunker = match a.chunk_size {
        // FastCDC needs even sizes, each within its own range.
        Some(avg) => {
            let p = crate::repo::ChunkerParams {
                min: (avg / 4) & !1,
                avg: avg & !1,
                max: avg.saturating_mul(4) & !1,
            };
            p.validate().map_err(|problem| {
                Error::usage(format!("--chunk-size {avg}: {problem}")).with_hint(
                    "give an average chunk size from 256 to 4194304 bytes \
                     (the minimum is a quarter of it, the maximum four times it)",
                )
            })?;
            p
        }
        None => crate::repo::CHUNKER_DEFAULT,
    };
    let (config, key_id, key) = Repository::init_with(backend.as_ref(), &new, chunker)?;
    // The first command after `init` need not derive the key again.
    if let Some((dir, file, st)) = cache {
        if crate::ops::key_cache::stamp(&file).is_some_and(|now| now == st) {
            crate::ops::key_cache::store(&dir, config.id, key_id, &key, st);
        }
    }
    if g.json {
        print_json(&serde_json::json!({
            "repository": location,
            "id": config.id,
            "key": key_id,
        }))?;
    } else {
        println!(
            "created repository {} at {location} (key {})",
            config.id.short(),
            key_id.short()
        );
        println!("keep the password or identity safe: without it the data cannot be read");
    }
    Ok(())
}
