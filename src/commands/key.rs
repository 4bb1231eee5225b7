use super::{open_repo, print_json};
use crate::backend::FileRef;
use crate::cli::{GlobalArgs, KeyAddArgs, KeyCommand};
use crate::crypto;
use crate::error::{Error, Result};
use crate::lock::with_lock;
use crate::ops::key_cache;
use crate::repo::{FileKind, KeyId, KeyKind};
use crate::repository::{local_key_files, make_key_file, write_key_file, NewKey};

pub fn run(g: &GlobalArgs, cmd: KeyCommand) -> Result<()> {
    match cmd {
        KeyCommand::Add(a) => add(g, &a),
        KeyCommand::List => list(g),
        KeyCommand::Remove { id } => remove(g, &id),
        KeyCommand::ForgetCache { all } => forget_cache(g, all),
    }
}

/// `key forget-cache`: needs no key, only the repository's id (its config).
fn forget_cache(g: &GlobalArgs, all: bool) -> Result<()> {
    let a = super::access(g);
    let Some(dir) = a.cache_dir() else {
        return Err(Error::usage("no cache directory")
            .with_hint("give --cache-dir DIR (or CAIRN_CACHE_DIR), or set HOME"));
    };
    let repo = if all {
        None
    } else {
        let backend = crate::backend::open(&a.location()?)?;
        Some(crate::repository::Repository::read_config(backend.as_ref())?.id)
    };
    let removed = key_cache::forget(&dir, repo)?;
    if g.json {
        return print_json(&serde_json::json!({ "removed": removed }));
    }
    match removed.len() {
        0 => println!("no cached key to forget in {}", dir.display()),
        n => {
            for f in &removed {
                println!("removed {}", f.display());
            }
            println!("forgot {n} cached key(s)");
        }
    }
    Ok(())
}

fn add(g: &GlobalArgs, a: &KeyAddArgs) -> Result<()> {
    // `None`: a new identity, made once the repository has opened, so that
    // a wrong password leaves no identity file behind.
    let new = if let Some(f) = &a.new_password_file {
        Some(NewKey::Password {
            password: crate::ops::access::read_password_file(f)?,
            log_n: a.kdf_work_factor,
        })
    } else if let Some(r) = &a.new_recipient {
        Some(NewKey::Recipient(r.clone()))
    } else if let Some(f) = &a.new_identity {
        let ids = crypto::read_identity_file(f)?;
        Some(NewKey::Recipient(ids[0].to_public().to_string()))
    } else if a.generate_identity.is_some() {
        None
    } else {
        return Err(Error::usage("no new key given").with_hint(
            "pass --new-password-file FILE, --new-recipient age1…, --new-identity FILE \
             or --generate-identity FILE",
        ));
    };
    let repo = open_repo(g)?;
    let new = match (new, &a.generate_identity) {
        (Some(new), _) => new,
        (None, Some(f)) => NewKey::Recipient(crypto::generate_identity_file(f)?.to_string()),
        (None, None) => unreachable!("checked above"),
    };
    let written = make_key_file(&repo.key, repo.config.id, &new)
        .and_then(|kf| Ok((write_key_file(repo.backend.as_ref(), &kf)?, kf)));
    let (id, kf) = match written {
        Ok(w) => w,
        Err(e) => {
            // An identity no key names opens nothing, and would block a
            // retry with the same path ("never replaced"): take it back.
            if let Some(f) = &a.generate_identity {
                let _ = std::fs::remove_file(f);
            }
            return Err(e);
        }
    };
    if g.json {
        print_json(&serde_json::json!({ "id": id, "kind": kf.kind }))
    } else {
        println!("added key {}", id.short());
        Ok(())
    }
}

fn list(g: &GlobalArgs) -> Result<()> {
    let repo = open_repo(g)?;
    let keys = local_key_files(repo.backend.as_ref())?;
    if g.json {
        let v: Vec<_> = keys
            .iter()
            .map(|(id, k)| {
                serde_json::json!({
                    "id": id, "current": *id == repo.key_id, "kind": k.kind,
                    "created": k.created, "host": k.host, "username": k.username,
                    "recipient": k.recipient,
                })
            })
            .collect();
        return print_json(&v);
    }
    println!(
        "{:<2}{:<10} {:<9} {:<20} {:<24} recipient",
        "", "ID", "KIND", "CREATED", "USER@HOST"
    );
    for (id, k) in &keys {
        println!(
            "{:<2}{:<10} {:<9} {:<20} {:<24} {}",
            if *id == repo.key_id { "*" } else { "" },
            id.short(),
            match k.kind {
                KeyKind::Password => "password",
                KeyKind::Identity => "identity",
            },
            super::local_time(k.created),
            format!("{}@{}", k.username, k.host),
            k.recipient.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}

fn remove(g: &GlobalArgs, spec: &str) -> Result<()> {
    let repo = open_repo(g)?;
    with_lock(&repo, true, "key remove", || {
        let keys = local_key_files(repo.backend.as_ref())?;
        let lower = spec.to_ascii_lowercase();
        // A key file that cannot be read opens nothing: it can always go.
        let damaged: Vec<KeyId> = repo
            .backend
            .list(FileKind::Key)?
            .into_iter()
            .filter_map(|(n, _)| KeyId::parse(&n))
            .filter(|id| id.to_hex().starts_with(&lower) && !keys.iter().any(|(k, _)| k == id))
            .collect();
        let matches: Vec<_> = keys
            .iter()
            .filter(|(id, _)| id.to_hex().starts_with(&lower))
            .collect();
        if let ([], [id]) = (matches.as_slice(), damaged.as_slice()) {
            repo.backend.remove(&FileRef::of(*id))?;
            println!("removed damaged key file {}", id.short());
            return Ok(());
        }
        if !damaged.is_empty() {
            return Err(
                Error::usage(format!("several keys match {spec:?}")).with_hint("give more digits")
            );
        }
        let (id, _) = match matches.as_slice() {
            [one] => *one,
            [] => {
                return Err(Error::usage(format!("no key matches {spec:?}"))
                    .with_hint("`cairn key list` shows the keys"))
            }
            _ => {
                return Err(Error::usage(format!("several keys match {spec:?}"))
                    .with_hint("give more digits"))
            }
        };
        if keys.len() == 1 {
            return Err(Error::usage(
                "refusing to remove the last key: the repository could never be opened again",
            )
            .with_hint("add another key first with `cairn key add`"));
        }
        if *id == repo.key_id {
            return Err(
                Error::usage("refusing to remove the key this command was opened with")
                    .with_hint("open the repository with another key to remove this one"),
            );
        }
        repo.backend.remove(&FileRef::of(*id))?;
        println!("removed key {}", id.short());
        Ok(())
    })
}
