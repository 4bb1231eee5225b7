//! PostgreSQL's WAL archive in the repository: continuous archiving
//! (`archive_command = 'cairn wal-push %p'`) stores every WAL file, and
//! recovery (`restore_command = 'cairn wal-fetch %f %p'`) reads them back.
//! A WAL name holds one content: a claim, written create-if-absent, says
//! which, also when two pushes race.

use crate::backend::FileRef;
use crate::error::{Error, Kind, Result};
use crate::progress::Progress;
use crate::repo::{FileKind, Id, Node, WalClaim, WalEntry};
use crate::repository::Repository;
use std::path::Path;

use super::wal_chain::WalName;
use super::wal_records::scan_segment;

/// Is this a WAL file name PostgreSQL archives (segment, history, backup, partial)?
fn valid_wal_name(name: &str) -> bool {
    let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    let base = name
        .strip_suffix(".history")
        .or_else(|| name.strip_suffix(".partial"))
        .unwrap_or(name);
    let base = base.split('.').next().unwrap_or("");
    (base.len() == 24 || (name.ends_with(".history") && base.len() == 8))
        && hex(base)
        && !name.contains('/')
}

/// WAL is cut into chunks of this size, not by content (spec/postgres.md,
/// "Cost per segment"): 64 chunks per 16 MiB segment instead of ~2,000.
const WAL_CHUNK: u32 = 256 << 10;

/// Archived WAL entry files of WAL name `name` (`NAME.ID`), by file name.
fn wal_files(repo: &Repository, name: &str) -> Result<Vec<String>> {
    let prefix = format!("{name}.");
    let mut v: Vec<String> = repo
        .backend
        .list_prefix(FileKind::Wal, &prefix)?
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| n.starts_with(&prefix) && n.len() == prefix.len() + 64)
        .collect();
    v.sort();
    Ok(v)
}

/// The entry in file `file` (`NAME.ID`), checked against its name.
pub fn read_wal_entry(repo: &Repository, file: &str) -> Result<WalEntry> {
    let f = FileRef::new(FileKind::Wal, file);
    let bytes = repo.backend.read(&f)?;
    let id = file.rsplit('.').next().unwrap_or("");
    if Id::of_bytes(&bytes).to_hex() != id {
        return Err(Error::integrity(format!(
            "{f} is damaged: its content does not match its name"
        )));
    }
    let entry: WalEntry = repo.key.unseal(&bytes, &f)?;
    if !file.starts_with(&format!("{}.", entry.name)) {
        return Err(Error::integrity(format!(
            "{f} holds WAL file {}, not the one its name says",
            entry.name
        )));
    }
    Ok(entry)
}

/// All archived WAL entries (for prune, check and listings).
pub fn wal_entries(repo: &Repository) -> Result<Vec<WalEntry>> {
    let mut out = Vec::new();
    for (n, _) in repo.backend.list(FileKind::Wal)? {
        out.push(read_wal_entry(repo, &n)?);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The claim file of WAL name `name`: `wal/NAME`, beside its entries.
fn claim_file(name: &str) -> FileRef {
    FileRef::new(FileKind::Wal, name)
}

/// The claim on WAL name `name`, if a push has made one.
pub fn read_wal_claim(repo: &Repository, name: &str) -> Result<Option<WalClaim>> {
    let f = claim_file(name);
    if !repo.backend.exists(&f)? {
        return Ok(None);
    }
    let claim: WalClaim = repo.key.unseal(&repo.backend.read(&f)?, &f)?;
    if claim.name != name {
        return Err(Error::integrity(format!(
            "{f} is damaged: it claims WAL file {}",
            claim.name
        )));
    }
    Ok(Some(claim))
}

/// The refusal of a second content under one WAL name.
fn conflict(name: &str) -> Error {
    Error::failure(format!(
        "WAL file {name} is already archived with different content: refusing to overwrite it"
    ))
    .with_hint("two clusters may be archiving into one repository, or the cluster was restored without a new timeline; investigate before anything else")
}

/// What earlier pushes of `name` decide for content `digest`: `Some` when
/// that content is archived already, an error when other content holds the
/// name, `None` when this content is to be stored.
fn settled(repo: &Repository, name: &str, digest: Id) -> Result<Option<&'static str>> {
    let entries = wal_files(repo, name)?
        .iter()
        .map(|f| read_wal_entry(repo, f))
        .collect::<Result<Vec<_>>>()?;
    match read_wal_claim(repo, name)? {
        Some(c) if c.digest != digest => return Err(conflict(name)),
        Some(_) => {}
        // Entries without a claim: archived before claims existed.
        None if entries.iter().any(|e| e.digest != digest) => return Err(conflict(name)),
        None => {}
    }
    Ok(entries
        .iter()
        .any(|e| e.digest == digest)
        .then_some("already archived"))
}

/// What a segment's records say for its entry: how many were read and the
/// time of the last transaction end. Only segments are read; WAL cairn
/// cannot read is logged (debug) and stored as not read, never a failed push.
fn read_records(name: &str, data: &[u8]) -> (Option<u64>, Option<jiff::Timestamp>) {
    if !matches!(WalName::parse(name), Some(WalName::Segment(..))) {
        return (None, None);
    }
    match scan_segment(data) {
        Ok(s) => (Some(s.records as u64), s.last_xact_time),
        Err(e) => {
            tracing::debug!(wal = %name, "not reading its records: {e}");
            (None, None)
        }
    }
}

/// `archive_command`: store one WAL file. Pushing identical content again
/// succeeds; different content under an archived name is refused, also
/// when the two pushes run at the same time: the content is stored first,
/// then the name is claimed with a create-if-absent write (one of racing
/// claims wins), then the entry is written. A push that finds the name
/// claimed for its own content writes its entry too, so that it never
/// reports success for WAL that is not in the repository.
pub fn wal_push(repo: &Repository, path: &Path) -> Result<&'static str> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| valid_wal_name(n))
        .ok_or_else(|| {
            Error::usage(format!("{} is not a WAL file name", path.display()))
                .with_hint("use archive_command = 'cairn wal-push … %p'")
        })?
        .to_string();
    let data =
        std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let digest = repo.key.digest(&data);
    if let Some(done) = settled(repo, &name, digest)? {
        tracing::info!(wal = %name, "already archived with the same content");
        return Ok(done);
    }
    let (content, stored, _) = crate::archiver::with_packer(repo, |p| {
        p.set_chunking(Some(crate::chunk::Chunking::Fixed(WAL_CHUNK)));
        p.add_stream(&data[..], &Progress::hidden())
            .map(|(ids, _)| ids)
            .map_err(|e| e.into_error("reading WAL"))
    })?;
    if !stored.packs.is_empty() {
        repo.write_index(stored.packs)?;
    }
    let claim = WalClaim {
        name: name.clone(),
        digest,
    };
    if !repo
        .backend
        .write_new(&claim_file(&name), &repo.key.seal(&claim)?)?
    {
        // Another push claimed the name first. Its data stays unused until
        // prune, if it is other content.
        match read_wal_claim(repo, &name)? {
            Some(c) if c.digest == digest => {}
            _ => return Err(conflict(&name)),
        }
    }
    let (records, last_xact_time) = read_records(&name, &data);
    let entry = WalEntry {
        name: name.clone(),
        size: data.len() as u64,
        digest,
        content,
        archived: crate::clock::now(),
        host: crate::repository::host_name(),
        records,
        last_xact_time,
    };
    let bytes = repo.key.seal(&entry)?;
    let id = Id::of_bytes(&bytes);
    repo.backend.write(
        &FileRef::new(FileKind::Wal, format!("{name}.{}", id.to_hex())),
        &bytes,
    )?;
    Ok("archived")
}

/// The entry of WAL name `name` to restore: the one its claim names, or,
/// for names archived before claims existed, the only content there is.
/// The index cache, loaded when the repository was opened, is brought up
/// to date when it lacks the entry's content: the entry was listed after
/// it, and a push writes its index file before its entry (spec/repository.md
/// §3, "Read order"), so a segment pushed in between is found, not refused.
fn entry_to_fetch(repo: &Repository, name: &str) -> Result<WalEntry> {
    let e = claimed_entry(repo, name)?;
    let index = repo.cache.reader()?;
    for c in &e.content {
        if index.get(c)?.is_none() {
            repo.sync_index()?;
            break;
        }
    }
    Ok(e)
}

fn claimed_entry(repo: &Repository, name: &str) -> Result<WalEntry> {
    let mut entries = Vec::new();
    for f in wal_files(repo, name)? {
        match read_wal_entry(repo, &f) {
            Ok(e) => entries.push(e),
            Err(e) => tracing::warn!("skipping {f}: {e}; run `cairn check`"),
        }
    }
    if entries.is_empty() {
        return Err(Error::new(
            Kind::Failure,
            format!("WAL file {name} is not in the archive"),
        ));
    }
    let want = match read_wal_claim(repo, name)? {
        Some(c) => c.digest,
        None if entries.iter().all(|e| e.digest == entries[0].digest) => entries[0].digest,
        None => {
            return Err(Error::integrity(format!(
                "WAL file {name} is archived {} times with different content, and nothing says which the cluster wrote",
                entries.len()
            ))
            .with_hint("run `cairn check`; recover to a time before this WAL file, or from a base backup taken after it"))
        }
    };
    entries
        .into_iter()
        .find(|e| e.digest == want)
        .ok_or_else(|| {
            Error::integrity(format!(
                "WAL file {name}: no entry holds the content its claim names"
            ))
            .with_hint("run `cairn check`")
        })
}

/// The content of archived WAL file `name`, in memory (a segment is 16 MiB
/// by default).
pub(super) fn read_wal_segment(repo: &Repository, name: &str) -> Result<Vec<u8>> {
    let e = entry_to_fetch(repo, name)?;
    let mut out = Vec::with_capacity(e.size as usize);
    repo.copy_file(&Node::stream(name, e.size, e.content), &mut out)?;
    Ok(out)
}

/// `restore_command`: write WAL file `name` to `dest`. A missing file is an
/// error PostgreSQL expects (exit 1): it ends recovery cleanly.
pub fn wal_fetch(repo: &Repository, name: &str, dest: &Path) -> Result<()> {
    let e = entry_to_fetch(repo, name)?;
    let node = Node::stream(name, e.size, e.content);
    let tmp = dest.with_extension("cairn-tmp");
    {
        let mut f = std::fs::File::create(&tmp)
            .map_err(|err| Error::io(format!("creating {}", tmp.display()), err))?;
        repo.copy_file(&node, &mut f)?;
        f.sync_all()
            .map_err(|err| Error::io(format!("writing {}", tmp.display()), err))?;
    }
    std::fs::rename(&tmp, dest)
        .map_err(|err| Error::io(format!("writing {}", dest.display()), err))?;
    Ok(())
}

/// Problems of the WAL archive for `check`: damaged entry or claim files,
/// and names archived with more than one content (two pushes that raced
/// before claims existed, or files planted by hand).
pub fn check_wal(repo: &Repository) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let mut by_name: std::collections::BTreeMap<String, Vec<Id>> = Default::default();
    for (file, _) in repo.backend.list(FileKind::Wal)? {
        match read_wal_entry(repo, &file) {
            Ok(e) => by_name.entry(e.name).or_default().push(e.digest),
            Err(e) => problems.push(e.to_string()),
        }
    }
    for (name, digests) in &by_name {
        let claim = match read_wal_claim(repo, name) {
            Ok(c) => c,
            Err(e) => {
                problems.push(e.to_string());
                None
            }
        };
        let distinct: std::collections::BTreeSet<&Id> = digests.iter().collect();
        let stray = claim
            .as_ref()
            .is_some_and(|c| distinct.iter().any(|d| **d != c.digest));
        let fetched = match &claim {
            Some(_) => "wal-fetch uses the content its claim names",
            None => "wal-fetch refuses it: nothing says which the cluster wrote",
        };
        if distinct.len() > 1 {
            problems.push(format!(
                "WAL file {name} is archived {} times with {} different contents; {fetched}",
                digests.len(),
                distinct.len(),
            ));
        } else if stray {
            problems.push(format!(
                "WAL file {name} is archived with different content than its claim names"
            ));
        }
    }
    Ok(problems)
}
