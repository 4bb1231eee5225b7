//! PostgreSQL physical backups, WAL archiving and point-in-time restore.
//!
//! A physical snapshot is `pg_basebackup -Ft -X fetch` streamed into the
//! repository as one tar (with its `backup_manifest`), so it is restorable on
//! its own; continuous archiving (`archive_command = 'cairn wal-push %p'`)
//! adds every WAL file, and a restore to a time replays them through
//! `restore_command = 'cairn wal-fetch %f %p'`. The restored cluster never
//! archives: it must not write into the production repository.

use super::conn::Target;
use super::tools::{is_root, pg_command, pg_tool};
use crate::archiver::tail_lines;
use crate::archiver::{Packer, SourceOutcome};
use crate::backend::FileRef;
use crate::error::{Error, Kind, Result};
use crate::progress::Progress;
use crate::repo::{FileKind, Id, Node, Snapshot, WalClaim, WalEntry};
use crate::repository::Repository;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::process::Command;

/// Metadata of a physical snapshot source.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PhysicalMeta {
    pub kind: String,
    pub server_version: String,
    pub system_identifier: String,
    pub timeline: u32,
    pub start_lsn: String,
    pub stop_lsn: String,
    /// Server clock before the backup started.
    pub start_time: jiff::Timestamp,
    /// Server clock after it ended: the earliest time it can be restored to.
    pub stop_time: jiff::Timestamp,
    /// Node holding the tar stream.
    pub base: String,
}

fn server_now(client: &mut postgres::Client) -> Result<jiff::Timestamp> {
    let s: String = client
        .query_one(
            "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
            &[],
        )
        .map_err(|e| Error::failure(format!("reading the server clock: {e}")))?
        .get(0);
    s.parse()
        .map_err(|e| Error::failure(format!("server clock {s:?}: {e}")))
}

/// `pg_basebackup` into the repository as node `base.tar`.
pub fn archive_physical(
    packer: &mut Packer,
    source_name: &str,
    url: &str,
    quiet: bool,
) -> Result<SourceOutcome> {
    let target = Target::parse(url)?;
    let db = target.maintenance_db();
    let mut client = target.connect(&db)?;
    let row = client
        .query_one(
            "SELECT current_setting('server_version'), (SELECT system_identifier::text FROM pg_control_system())",
            &[],
        )
        .map_err(|e| Error::failure(format!("{}: {e}", target.shown())))?;
    let (server_version, system_identifier): (String, String) = (row.get(0), row.get(1));
    let start_time = server_now(&mut client)?;
    let progress = Progress::bytes(0, quiet, "base backup");
    // Cut by the tar's members, so that an unchanged extent of a relation
    // file is the same chunk in every base backup (crate::chunk).
    packer.set_chunking(Some(crate::chunk::Chunking::Tar));
    let taken = take_base_backup(packer, &target, &db, &progress);
    packer.set_chunking(None);
    let taken = taken?;
    progress.finish();
    let stop_time = server_now(&mut client)?;
    let meta = PhysicalMeta {
        kind: "physical".into(),
        server_version,
        system_identifier,
        timeline: taken.timeline,
        start_lsn: taken.start_lsn,
        stop_lsn: taken.stop_lsn,
        start_time,
        stop_time,
        base: "base.tar".into(),
    };
    tracing::info!(bytes = taken.size, start = %meta.start_lsn, stop = %meta.stop_lsn, via = taken.via, "base backup stored");
    let node = Node {
        mtime_ns: stop_time.as_nanosecond() as i64,
        ..Node::stream(meta.base.clone(), taken.size, taken.content)
    };
    let meta = serde_json::to_value(&meta).map_err(|e| Error::failure(e.to_string()))?;
    crate::archiver::source_from_nodes(packer, source_name, "postgres", vec![node], meta)
}

/// A base backup stored as one tar, and where it starts and stops.
struct Taken {
    content: Vec<Id>,
    size: u64,
    start_lsn: String,
    stop_lsn: String,
    timeline: u32,
    /// `"replication protocol"` or `"pg_basebackup"`.
    via: &'static str,
}

/// Take the base backup with cairn's own replication client, or with
/// `pg_basebackup` where that client cannot (see `replication`) or
/// `CAIRN_PG_BASEBACKUP=pg_basebackup` asks for the tool.
fn take_base_backup(
    packer: &mut Packer,
    target: &Target,
    db: &str,
    progress: &Progress,
) -> Result<Taken> {
    let forced = std::env::var("CAIRN_PG_BASEBACKUP").ok();
    match forced.as_deref() {
        None | Some("") | Some("builtin") => {}
        Some("pg_basebackup") => return run_pg_basebackup(packer, target, db, progress),
        Some(other) => {
            return Err(Error::usage(format!(
                "CAIRN_PG_BASEBACKUP={other:?} is neither builtin nor pg_basebackup"
            )))
        }
    }
    let mut backup = match super::replication::start(target)? {
        super::replication::Start::Started(b) => b,
        super::replication::Start::Unsupported(why) => {
            tracing::info!(reason = %why, "taking the base backup with pg_basebackup");
            return run_pg_basebackup(packer, target, db, progress);
        }
    };
    let (content, size) = packer
        .add_stream(&mut *backup, progress)
        .map_err(|e| e.into_error("taking the base backup"))?;
    Ok(Taken {
        content,
        size,
        start_lsn: std::mem::take(&mut backup.start_lsn),
        stop_lsn: std::mem::take(&mut backup.stop_lsn),
        timeline: backup.timeline,
        via: "replication protocol",
    })
}

/// `pg_basebackup -D - -Ft -X fetch` into the repository; the positions
/// come from its `-v` output.
fn run_pg_basebackup(
    packer: &mut Packer,
    target: &Target,
    db: &str,
    progress: &Progress,
) -> Result<Taken> {
    let mut cmd = Command::new(pg_tool("pg_basebackup"));
    cmd.envs(target.tool_env(db))
        .args([
            "-D",
            "-",
            "-Ft",
            "-X",
            "fetch",
            "--checkpoint=fast",
            "--no-password",
            "-v",
        ])
        .arg("--manifest-checksums=CRC32C");
    let out = crate::archiver::store_command_output(packer, &mut cmd, "pg_basebackup", progress)
        .map_err(|e| {
            e.with_hint("set CAIRN_PG_BIN to PostgreSQL's bin directory if it is not found")
        })?;
    let (mut start_lsn, mut stop_lsn, mut timeline) = (String::new(), String::new(), 0u32);
    for line in out.stderr.lines() {
        if let Some(rest) = line.split("write-ahead log start point: ").nth(1) {
            let mut parts = rest.split(" on timeline ");
            start_lsn = parts.next().unwrap_or("").trim().to_string();
            timeline = parts
                .next()
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or(0);
        }
        if let Some(rest) = line.split("write-ahead log end point: ").nth(1) {
            stop_lsn = rest.trim().to_string();
        }
    }
    Ok(Taken {
        content: out.content,
        size: out.size,
        start_lsn,
        stop_lsn,
        timeline,
        via: "pg_basebackup",
    })
}

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

/// Archived WAL entry files of WAL name `name` (`NAME.ID`), by file name.
fn wal_files(repo: &Repository, name: &str) -> Result<Vec<String>> {
    let prefix = format!("{name}.");
    let mut v: Vec<String> = repo
        .backend
        .list(FileKind::Wal)?
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| n.starts_with(&prefix) && n.len() == prefix.len() + 64)
        .collect();
    v.sort();
    Ok(v)
}

fn read_wal_entry(repo: &Repository, file: &str) -> Result<WalEntry> {
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
    let digest = repo.key.chunk_id(&data);
    if let Some(done) = settled(repo, &name, digest)? {
        tracing::info!(wal = %name, "already archived with the same content");
        return Ok(done);
    }
    let (content, stored, _) = crate::archiver::with_packer(repo, |p| {
        p.add_stream(&data[..], &Progress::hidden())
            .map(|(ids, _)| ids)
            .map_err(|e| e.into_error("reading WAL"))
    })?;
    crate::job::commit_index(repo, stored.packs)?;
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
    let entry = WalEntry {
        name: name.clone(),
        size: data.len() as u64,
        digest,
        content,
        archived: jiff::Timestamp::now(),
        host: crate::repository::host_name(),
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
fn entry_to_fetch(repo: &Repository, name: &str) -> Result<WalEntry> {
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

/// The newest physical backup of `source` that ended at or before `at`.
pub fn choose_base(
    repo: &Repository,
    source: &str,
    at: jiff::Timestamp,
) -> Result<(Id, Snapshot, PhysicalMeta)> {
    let mut best: Option<(Id, Snapshot, PhysicalMeta)> = None;
    let mut earliest: Option<jiff::Timestamp> = None;
    for (id, snap) in repo.snapshots()? {
        for s in snap
            .sources
            .iter()
            .filter(|s| s.name == source && s.kind == "postgres")
        {
            let Ok(meta) = serde_json::from_value::<PhysicalMeta>(s.metadata.clone()) else {
                continue;
            };
            if meta.kind != "physical" {
                continue;
            }
            earliest =
                Some(earliest.map_or(meta.stop_time, |e: jiff::Timestamp| e.min(meta.stop_time)));
            if meta.stop_time <= at && best.as_ref().is_none_or(|b| b.2.stop_time < meta.stop_time)
            {
                best = Some((id, snap.clone(), meta));
            }
        }
    }
    best.ok_or_else(|| match earliest {
        Some(e) => Error::failure(format!(
            "no physical backup of {source} had ended by {at}: the earliest time it can be restored to is {e}"
        ))
        .with_hint("choose a later --at, or restore a logical snapshot"),
        None => Error::usage(format!("no physical backup of source {source:?} exists"))
            .with_hint("take one with `cairn snapshot --postgres URL --physical`"),
    })
}

/// How to restore a cluster to a point in time.
pub struct PitrOptions {
    pub pgdata: std::path::PathBuf,
    pub at: jiff::Timestamp,
    /// `restore_command` without ` %f %p`, e.g. `cairn wal-fetch -r … --password-file …`.
    pub fetch_command: String,
    /// Start the restored cluster on this port and wait for the target.
    pub start_port: Option<u16>,
    pub timeout: std::time::Duration,
}

#[derive(Debug, Serialize)]
pub struct PitrReport {
    pub snapshot: Id,
    pub base_stop_time: jiff::Timestamp,
    pub target: jiff::Timestamp,
    pub pgdata: std::path::PathBuf,
    pub verified_with_pg_verifybackup: bool,
    pub started: bool,
    /// Commit time of the last transaction replayed, when started.
    pub reached: Option<String>,
}

fn chown_postgres(dir: &Path) -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    let out = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(dir)
        .output()
        .map_err(|e| Error::io("running chown", e))?;
    if !out.status.success() {
        return Err(Error::failure(format!(
            "chown {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

/// Restore a physical backup into `pgdata` and configure recovery to `at`.
pub fn restore_pitr(repo: &Repository, source: &str, opts: &PitrOptions) -> Result<PitrReport> {
    let (id, snap, meta) = choose_base(repo, source, opts.at)?;
    let newest_wal = wal_entries(repo)?.into_iter().map(|w| w.archived).max();
    match newest_wal {
        Some(t) if t >= opts.at => {}
        Some(t) => {
            return Err(Error::failure(format!(
                "{} is after the last archived WAL (archived at {t}); recovery cannot reach it",
                opts.at
            ))
            .with_hint(
                "check that archive_command runs `cairn wal-push`, or choose an earlier --at",
            ))
        }
        None if opts.at <= meta.stop_time => {}
        None => {
            return Err(Error::failure(format!(
                "no WAL is archived, so {} after the base backup's end ({}) cannot be reached",
                opts.at, meta.stop_time
            ))
            .with_hint("set archive_command = 'cairn wal-push … %p' on the server"))
        }
    }
    if opts.pgdata.exists()
        && std::fs::read_dir(&opts.pgdata)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(
            Error::usage(format!("{} is not empty", opts.pgdata.display()))
                .with_hint("restore into a new or empty directory; nothing was written"),
        );
    }
    let source_rec = snap
        .sources
        .iter()
        .find(|s| s.name == source)
        .ok_or_else(|| Error::integrity("source vanished"))?;
    let nodes = repo.read_tree(source_rec)?;
    let base = nodes
        .iter()
        .find(|n| n.path == meta.base)
        .ok_or_else(|| Error::integrity(format!("snapshot {} lacks {}", id.short(), meta.base)))?;
    crate::restorer::verify_before_restore(repo, std::slice::from_ref(base))?;

    std::fs::create_dir_all(&opts.pgdata)
        .map_err(|e| Error::io(format!("creating {}", opts.pgdata.display()), e))?;
    let reader = repo.open_file(base)?;
    tar::Archive::new(reader)
        .unpack(&opts.pgdata)
        .map_err(|e| {
            Error::io(
                format!("unpacking the base backup into {}", opts.pgdata.display()),
                e,
            )
        })?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&opts.pgdata, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io("setting permissions", e))?;

    // Check the files against the backup's own manifest before we change any.
    let verify = pg_tool("pg_verifybackup");
    let verified = verify.exists();
    if verified {
        let out = Command::new(&verify)
            .arg(&opts.pgdata)
            .output()
            .map_err(|e| Error::io("running pg_verifybackup", e))?;
        if !out.status.success() {
            return Err(Error::integrity(format!(
                "pg_verifybackup rejects the restored base backup: {}",
                tail_lines(&String::from_utf8_lossy(&out.stderr), 5)
            )));
        }
    }

    let target = opts.at.strftime("%Y-%m-%d %H:%M:%S%.6f+00").to_string();
    let settings = format!(
        "\n# Added by cairn restore: point-in-time recovery from the cairn repository.\n\
         restore_command = '{} %f %p'\n\
         recovery_target_time = '{target}'\n\
         recovery_target_action = 'promote'\n\
         # Never archive from a restored cluster into the production repository.\n\
         archive_mode = 'off'\n\
         archive_command = ''\n",
        opts.fetch_command.replace('\'', "''")
    );
    let auto = opts.pgdata.join("postgresql.auto.conf");
    let mut conf = std::fs::read_to_string(&auto).unwrap_or_default();
    conf.push_str(&settings);
    std::fs::write(&auto, conf).map_err(|e| Error::io(format!("writing {}", auto.display()), e))?;
    std::fs::write(opts.pgdata.join("recovery.signal"), "")
        .map_err(|e| Error::io("writing recovery.signal", e))?;
    chown_postgres(&opts.pgdata)?;

    let mut report = PitrReport {
        snapshot: id,
        base_stop_time: meta.stop_time,
        target: opts.at,
        pgdata: opts.pgdata.clone(),
        verified_with_pg_verifybackup: verified,
        started: false,
        reached: None,
    };
    if let Some(port) = opts.start_port {
        report.reached = Some(start_and_wait(&opts.pgdata, port, opts.timeout)?);
        report.started = true;
    }
    Ok(report)
}

/// Start the restored cluster, wait until recovery ends, return the commit
/// time of the last transaction replayed.
fn start_and_wait(pgdata: &Path, port: u16, timeout: std::time::Duration) -> Result<String> {
    let log = pgdata.join("cairn-restore.log");
    let mut c = pg_command("pg_ctl");
    c.arg("-D")
        .arg(pgdata)
        .arg("-l")
        .arg(&log)
        .arg("-o")
        .arg(format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1",
            pgdata.display()
        ))
        .arg("start");
    let out = c
        .output()
        .map_err(|e| Error::io("running pg_ctl start", e))?;
    if !out.status.success() {
        return Err(Error::failure(format!(
            "the restored cluster did not start: {}",
            tail_lines(&std::fs::read_to_string(&log).unwrap_or_default(), 5)
        )));
    }
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let deadline = std::time::Instant::now() + timeout;
    loop {
        crate::interrupt::check()?;
        if std::time::Instant::now() > deadline {
            return Err(Error::failure(format!(
                "recovery did not finish within {}s",
                timeout.as_secs()
            ))
            .with_hint(format!("see {}", log.display())));
        }
        let logtext = std::fs::read_to_string(&log).unwrap_or_default();
        if logtext.contains("FATAL") && !logtext.contains("the database system is starting up") {
            let fatal: Vec<&str> = logtext.lines().filter(|l| l.contains("FATAL")).collect();
            return Err(Error::failure(format!(
                "recovery failed: {}",
                fatal.join(" | ")
            )));
        }
        if let Ok(mut client) = url
            .parse::<postgres::Config>()
            .and_then(|c| c.connect(postgres::NoTls))
        {
            if let Ok(row) = client.query_one(
                "SELECT pg_is_in_recovery(), coalesce(to_char(pg_last_xact_replay_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), '')",
                &[],
            ) {
                let (in_recovery, reached): (bool, String) = (row.get(0), row.get(1));
                if !in_recovery {
                    return Ok(reached);
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
