//! Plans: one KDL file, kept in git, that declares what cairn backs up,
//! where, when, how long it keeps it, whom it alerts, which services it
//! stops around a restore and how it proves its backups (`spec/plan.md`).
//!
//! [`Plan::load`] reads and checks a plan and returns it with every default
//! filled in, or *every* problem found ([`Diagnostics`]), each with its
//! position in the file and a hint — a plan is edited by hand and checked
//! in CI, so one round trip should show everything that is wrong.
//!
//! The types here are the resolved plan: relative paths are already made
//! absolute against the plan's directory, and defaults are explicit, so
//! `snapshot --plan`, `restore --plan` and `serve --plan` never need to know
//! what the defaults are.

mod diagnostic;
mod graph;
mod limits;
mod parse;
mod reader;
pub mod values;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

pub use diagnostic::{Diagnostic, Diagnostics};
pub use graph::find_cycles;
pub use values::{Percent, Size};

use values::{serialize_duration, serialize_opt_duration};

/// A checked plan with defaults filled in.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Plan {
    /// The plan file it was read from.
    pub file: PathBuf,
    /// The top-level `name`: what the plan's snapshots record as their plan
    /// (without it, the canonical path of the plan file).
    pub name: Option<String>,
    /// The plan file's canonical path (absolute, symlinks resolved), taken
    /// when the plan was read; its absolute path when it cannot be resolved.
    #[serde(skip)]
    pub canonical_file: PathBuf,
    pub repository: Repository,
    pub sources: Vec<Source>,
    /// Never empty: without `schedule` nodes there is one, "nightly".
    pub schedules: Vec<Schedule>,
    pub retention: Retention,
    pub alerts: Alerts,
    pub services: Vec<Service>,
    pub verify: Verify,
    /// The HTTP API of `cairn serve`; `None` when the plan has no `api` node.
    pub api: Option<Api>,
}

impl Plan {
    /// Read and check the plan at `path`. Relative paths in it are taken
    /// relative to the plan's directory.
    pub fn load(path: &Path) -> Result<Plan, Diagnostics> {
        let text = limits::read(path).map_err(|d| Diagnostics(vec![d]))?;
        let dir = path.parent().unwrap_or(Path::new(""));
        let dir = std::path::absolute(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })
        .unwrap_or_else(|_| dir.to_path_buf());
        Plan::parse(&text, path, &dir)
    }

    /// Check the plan text `text`, read from `file`; relative paths are
    /// resolved against `dir`.
    pub fn parse(text: &str, file: &Path, dir: &Path) -> Result<Plan, Diagnostics> {
        parse::parse(text, file, dir)
    }

    pub fn source(&self, name: &str) -> Option<&Source> {
        self.sources.iter().find(|s| s.name == name)
    }

    /// What the snapshots of this plan record as their plan: the declared
    /// `name`, else the plan file's canonical path — the same from any
    /// directory (`spec/plan.md`, "Which snapshots a plan made").
    pub fn identity(&self) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None => self.canonical_file.display().to_string(),
        }
    }

    /// Whether `snap` was made with this plan: it records this plan's name
    /// or the canonical path of its file, or a path that resolves to the
    /// plan file (snapshots of an older cairn record the path as typed,
    /// which is resolved from the current directory). Every place that
    /// matches snapshots to a plan asks this.
    pub fn made(&self, snap: &crate::repo::Snapshot) -> bool {
        let Some(recorded) = snap.plan.as_deref() else {
            return false;
        };
        if self.name.as_deref() == Some(recorded) || Path::new(recorded) == self.canonical_file {
            return true;
        }
        std::fs::canonicalize(recorded).is_ok_and(|p| p == self.canonical_file)
    }
}

/// `file` made absolute with symlinks resolved, or only absolute when it
/// cannot be resolved (it does not exist).
pub(crate) fn canonical(file: &Path) -> PathBuf {
    std::fs::canonicalize(file)
        .or_else(|_| std::path::absolute(file))
        .unwrap_or_else(|_| file.to_path_buf())
}

/// Where backups go and how to open the repository.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Repository {
    /// A local directory (made absolute) or a URL such as `s3://bucket/prefix`.
    pub location: String,
    /// Exactly one of `password_file` and `identity` is set.
    pub password_file: Option<PathBuf>,
    pub identity: Option<PathBuf>,
    pub cache_dir: Option<PathBuf>,
}

/// One thing to back up: a name (unique in the plan, used in snapshots and
/// alerts) and its kind-specific settings.
#[derive(Clone, Debug, Serialize)]
pub struct Source {
    pub name: String,
    #[serde(flatten)]
    pub settings: SourceSettings,
}

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SourceSettings {
    Files(FilesSource),
    Postgres(PostgresSource),
    Kafka(KafkaSource),
    Command(CommandSource),
}

impl SourceSettings {
    /// The `kind=` value of this source.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceSettings::Files(_) => "files",
            SourceSettings::Postgres(_) => "postgres",
            SourceSettings::Kafka(_) => "kafka",
            SourceSettings::Command(_) => "command",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct FilesSource {
    /// At least one; absolute.
    pub paths: Vec<PathBuf>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PostgresSource {
    /// `postgres://USER@HOST:PORT/DB`, never with a password (that comes
    /// from PGPASSFILE, so it stays out of the plan and out of argv).
    pub url: String,
    /// Empty: every database.
    pub databases: Vec<String>,
    /// `pg_basebackup` instead of logical dumps.
    pub physical: bool,
    /// How long a physical backup waits for its WAL to be archived.
    #[serde(serialize_with = "serialize_duration")]
    pub archive_timeout: Duration,
    /// `restore --plan`: the data directory a physical backup is restored
    /// into (absolute); `None`: the plan cannot restore one.
    pub pgdata: Option<PathBuf>,
    /// `restore --plan`: what to do with `pgdata` when it is not empty
    /// (`--force` raises it to moving it aside).
    pub restore_existing_pgdata: crate::source::pg::ExistingPgdata,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct KafkaSource {
    /// `HOST:PORT[,HOST:PORT…]`.
    pub brokers: String,
    /// Names or regular expressions matching whole names; empty: every non-internal topic.
    pub topics: Vec<String>,
    pub include_internal: bool,
    pub no_messages: bool,
    /// librdkafka properties for SASL/TLS (never logged).
    pub kafka_config: Option<PathBuf>,
    pub retries: u32,
    #[serde(serialize_with = "serialize_duration")]
    pub retry_delay: Duration,
    /// `restore --plan`: what to do with the snapshot's topics that exist
    /// on the brokers (`--force`, `--recreate-topics` raise it).
    pub restore_existing_topics: crate::source::kafka::ExistingTopics,
    /// `restore --plan`: apply every recorded topic setting, not only those
    /// set on the topic (`--all-configs` turns it on too).
    pub restore_all_configs: bool,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct CommandSource {
    /// Program and arguments; its standard output is stored.
    pub command: Vec<String>,
    /// Name of the stored file; defaults to the source name.
    pub file_name: String,
}

/// When to back up which sources.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Schedule {
    pub name: String,
    /// 5-field cron expression (checked with [`values::parse_cron`]).
    pub cron: String,
    /// IANA time zone name; `None`: the machine's.
    pub timezone: Option<String>,
    /// Names of the sources it backs up; every source when the plan names none.
    pub sources: Vec<String>,
    /// Tags of the snapshots it makes.
    pub tags: Vec<String>,
    /// Slow-backup alert above it; `None`: `alerts.slow-factor` × the
    /// median of recent runs.
    #[serde(serialize_with = "serialize_opt_duration")]
    pub expected_duration: Option<Duration>,
    /// A source this schedule backs up is alerted after this long without
    /// a complete copy; `None`: `alerts.missed-backup`. A source of several
    /// schedules takes the shortest.
    #[serde(serialize_with = "serialize_opt_duration")]
    pub missed_backup: Option<Duration>,
}

impl Schedule {
    pub const DEFAULT_CRON: &'static str = "0 2 * * *";

    /// The schedule a plan without `schedule` nodes gets: every source at 02:00.
    pub fn nightly(sources: Vec<String>) -> Schedule {
        Schedule {
            name: "nightly".into(),
            cron: Self::DEFAULT_CRON.into(),
            timezone: None,
            sources,
            tags: Vec::new(),
            expected_duration: None,
            missed_backup: None,
        }
    }

    /// The time zone its cron expression is read in.
    pub fn time_zone(&self) -> jiff::tz::TimeZone {
        self.timezone
            .as_deref()
            .and_then(|name| jiff::tz::TimeZone::get(name).ok())
            .unwrap_or_else(jiff::tz::TimeZone::system)
    }
}

/// Which snapshots to keep (the rules: `spec/retention.md`).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Retention {
    /// The keep rules (`keep-*` nodes).
    #[serde(flatten)]
    pub rules: crate::retention::Policy,
    /// Below this much free space, the oldest snapshots are removed first.
    pub critical_free: Percent,
}

impl Default for Retention {
    /// A month of dailies: what a plan without keep rules gets.
    fn default() -> Self {
        Retention {
            rules: crate::retention::Policy {
                keep_daily: Some(crate::retention::Count::Limit(30)),
                ..crate::retention::Policy::default()
            },
            critical_free: Percent(5.0),
        }
    }
}

impl Retention {
    /// The keep rules as a retention policy for `forget`.
    pub fn policy(&self) -> crate::retention::Policy {
        self.rules.clone()
    }
}

/// Whom to tell, and when.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Alerts {
    pub email: Option<Email>,
    /// Receives a POST with a JSON body.
    pub webhook: Option<String>,
    /// Alert when a schedule has not produced a snapshot for this long.
    #[serde(serialize_with = "serialize_duration")]
    pub missed_backup: Duration,
    /// Alert when the repository's storage is fuller than this.
    pub storage_warning: Percent,
    /// Object storage: usage is measured against it.
    pub quota: Option<Size>,
    /// A run is slow above this × the median of recent runs (when its
    /// schedule has no `expected-duration`).
    pub slow_factor: f64,
    /// Identical alerts are sent at most this often.
    #[serde(serialize_with = "serialize_duration")]
    pub repeat_every: Duration,
    /// Alert when a WAL file of a physical source has waited this long to be archived.
    #[serde(serialize_with = "serialize_duration")]
    pub archive_lag: Duration,
}

impl Default for Alerts {
    fn default() -> Self {
        Alerts {
            email: None,
            webhook: None,
            missed_backup: Duration::from_secs(25 * 3600),
            storage_warning: Percent(80.0),
            quota: None,
            slow_factor: 2.0,
            repeat_every: Duration::from_secs(6 * 3600),
            archive_lag: Duration::from_secs(5 * 60),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Email {
    /// SMTP server host.
    pub smtp: String,
    /// Defaults by `security`: 25 plain, 587 starttls, 465 tls.
    pub port: u16,
    pub security: SmtpSecurity,
    /// Set together with `password_file`, or neither.
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub from: String,
    /// At least one.
    pub to: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    Plain,
    Starttls,
    Tls,
}

impl SmtpSecurity {
    pub fn default_port(self) -> u16 {
        match self {
            SmtpSecurity::Plain => 25,
            SmtpSecurity::Starttls => 587,
            SmtpSecurity::Tls => 465,
        }
    }
}

/// A service stopped before a restore and started after it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Service {
    pub name: String,
    /// Shell commands.
    pub stop: String,
    pub start: String,
    /// Exit 0 = ready (after `start`).
    pub ready: Option<Probe>,
    /// Exit 0 = stopped (after `stop`).
    pub stopped: Option<Probe>,
    /// Services that must be running before this one starts (no cycles).
    pub depends_on: Vec<String>,
    /// Sources this service uses: restored while it is stopped.
    pub sources: Vec<String>,
}

/// A shell command polled until it exits 0, for at most `timeout`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Probe {
    pub command: String,
    #[serde(serialize_with = "serialize_duration")]
    pub timeout: Duration,
}

impl Probe {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
}

/// Proven restores: when and where to restore-test the backups.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Verify {
    pub cron: String,
    /// Where PostgreSQL sources are restored for the test; `None`: a
    /// throwaway cluster (initdb).
    pub postgres_scratch: Option<String>,
    /// Where Kafka sources are restored for the test; `None`: Kafka sources
    /// are skipped (and count as skipped tests).
    pub kafka_scratch: Option<String>,
    /// Alert after this many skipped tests in a row.
    pub skip_alert_after: u32,
    /// Which stored data each test reads and checks (`read-data`).
    pub read_data: ReadData,
}

/// How much of the stored data each restore test reads (`verify {
/// read-data … }`): every pack read back, its frames decrypted and every
/// chunk's id checked, as `cairn check --read-data` does. A restore test
/// proves one snapshot; this finds damage in any of them (spec/plan.md,
/// "Restore tests").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadData {
    /// Every pack at every test (the default).
    All,
    /// One of `n` parts of the packs at each test, the next part each time:
    /// every pack within `n` tests.
    Parts(u32),
    /// None: only the tested snapshot's data is read.
    Off,
}

impl ReadData {
    /// `"all"`, `"off"` or `"1/N"`.
    pub fn parse(s: &str) -> Result<ReadData, String> {
        let s = s.trim();
        match s {
            "all" => return Ok(ReadData::All),
            "off" => return Ok(ReadData::Off),
            _ => {}
        }
        let n = s
            .strip_prefix("1/")
            .and_then(|n| n.trim().parse::<u32>().ok())
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| {
                format!("{s:?} is not \"all\", \"off\" or \"1/N\" (N from 1 to 1000)")
            })?;
        Ok(if n == 1 {
            ReadData::All
        } else {
            ReadData::Parts(n)
        })
    }
}

impl Serialize for ReadData {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl std::fmt::Display for ReadData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadData::All => f.write_str("all"),
            ReadData::Parts(n) => write!(f, "1/{n}"),
            ReadData::Off => f.write_str("off"),
        }
    }
}

impl Default for Verify {
    /// Weekly, Sunday 04:00.
    fn default() -> Self {
        Verify {
            cron: "0 4 * * 0".into(),
            postgres_scratch: None,
            kafka_scratch: None,
            skip_alert_after: 3,
            read_data: ReadData::All,
        }
    }
}

/// The HTTP API of `cairn serve`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Api {
    /// `HOST:PORT`.
    pub listen: String,
    /// Tokens written in the plan.
    pub tokens: Vec<Token>,
    /// More tokens, one `NAME blake3:HEX` per line (read again when used, so
    /// tokens can change without editing the plan).
    pub token_file: Option<PathBuf>,
}

/// An API token: a name (for logs) and the BLAKE3 hash of the secret, so the
/// plan never holds the secret itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Token {
    pub name: String,
    /// `blake3:` followed by 64 lowercase hex digits.
    pub hash: String,
}

impl Token {
    /// Check the `blake3:HEX` form of a token hash.
    pub fn check_hash(hash: &str) -> Result<(), String> {
        let Some(hex) = hash.strip_prefix("blake3:") else {
            return Err(format!(
                "token hash {hash:?} does not start with \"blake3:\""
            ));
        };
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "token hash {hash:?}: after \"blake3:\" come 64 hex digits, found {:?}",
                hex
            ));
        }
        Ok(())
    }
}

/// Read a token file: one `NAME blake3:HEX` per line; empty lines and lines
/// starting with `#` are ignored. Errors name the line.
pub fn read_token_file(path: &Path) -> Result<Vec<Token>, String> {
    let text = crate::fsutil::read_small_text(path, crate::fsutil::MAX_SECRET_FILE)
        .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
    let mut tokens = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [name, hash] = fields[..] else {
            return Err(format!(
                "token file {} line {}: expected \"NAME blake3:HEX\"",
                path.display(),
                i + 1
            ));
        };
        Token::check_hash(hash)
            .map_err(|e| format!("token file {} line {}: {e}", path.display(), i + 1))?;
        tokens.push(Token {
            name: name.into(),
            hash: hash.to_ascii_lowercase(),
        });
    }
    Ok(tokens)
}

/// The job sources for a run of `plan`: every source, or those `names`
/// (a usage error names an unknown one and lists the plan's sources).
pub fn job_sources(
    plan: &Plan,
    names: &[String],
) -> crate::error::Result<Vec<crate::job::NamedSource>> {
    use crate::job::{NamedSource, SourceSpec};
    for n in names {
        if plan.source(n).is_none() {
            let known: Vec<&str> = plan.sources.iter().map(|s| s.name.as_str()).collect();
            return Err(
                crate::error::Error::usage(format!("the plan has no source {n:?}"))
                    .with_hint(format!("its sources are: {}", known.join(", "))),
            );
        }
    }
    let mut out = Vec::new();
    for s in plan
        .sources
        .iter()
        .filter(|s| names.is_empty() || names.contains(&s.name))
    {
        let spec = match &s.settings {
            SourceSettings::Files(f) => SourceSpec::Files(f.paths.clone()),
            SourceSettings::Postgres(p) => SourceSpec::Postgres {
                url: p.url.clone(),
                databases: p.databases.clone(),
                physical: p.physical,
                archive_timeout: p.archive_timeout,
            },
            SourceSettings::Kafka(k) => {
                let mut options = crate::source::kafka::KafkaOptions::new(&k.brokers)?;
                options.retry = crate::source::kafka::RetryPolicy {
                    retries: k.retries,
                    base: k.retry_delay,
                };
                if let Some(f) = &k.kafka_config {
                    options.load_properties(f)?;
                }
                SourceSpec::Kafka {
                    options,
                    backup: crate::source::kafka::BackupOptions {
                        topics: k.topics.clone(),
                        include_internal: k.include_internal,
                        no_messages: k.no_messages,
                    },
                }
            }
            SourceSettings::Command(c) => SourceSpec::Command {
                file_name: c.file_name.clone(),
                argv: c.command.clone(),
            },
        };
        out.push(NamedSource {
            name: s.name.clone(),
            spec,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plan file in a new directory, and that directory.
    fn plan_file(body: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("password"), "pw\n").expect("write");
        let file = dir.path().join("plan.kdl");
        std::fs::write(
            &file,
            format!("repository \"/tmp/repo\" {{\n    password-file \"password\"\n}}\n{body}"),
        )
        .expect("write");
        (dir, file)
    }

    fn recorded(plan: Option<&str>) -> crate::repo::Snapshot {
        crate::repo::Snapshot {
            version: 1,
            time: jiff::Timestamp::UNIX_EPOCH,
            host: "h".into(),
            username: "u".into(),
            tags: vec![],
            paths: vec![],
            plan: plan.map(str::to_string),
            sources: vec![],
            summary: Default::default(),
            program: "cairn".into(),
        }
    }

    #[test]
    fn a_plan_is_known_by_its_canonical_path_or_its_name() {
        let (dir, file) = plan_file("");
        let plan = Plan::load(&file).expect("valid plan");
        let canonical = std::fs::canonicalize(&file).expect("exists");
        assert_eq!(plan.identity(), canonical.display().to_string());
        assert!(plan.made(&recorded(Some(&plan.identity()))));
        // The same file by another path: through a symlinked directory,
        // and relative to the current directory (an older cairn's record).
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path(), &link).expect("symlink");
        assert!(plan.made(&recorded(link.join("plan.kdl").to_str())));
        let cwd = std::env::current_dir().expect("cwd");
        let up = "../".repeat(cwd.components().count() - 1);
        let relative = format!(
            "{up}{}",
            canonical.display().to_string().trim_start_matches('/')
        );
        assert!(plan.made(&recorded(Some(&relative))), "{relative}");
        assert!(!plan.made(&recorded(Some("/elsewhere/plan.kdl"))));
        assert!(!plan.made(&recorded(None)));

        let (_dir, file) = plan_file("name \"billing\"\n");
        let named = Plan::load(&file).expect("valid plan");
        assert_eq!(named.identity(), "billing");
        assert!(named.made(&recorded(Some("billing"))));
        assert!(!plan.made(&recorded(Some("billing"))));
        // Recorded by path before the plan had a name: still its own.
        let canonical = std::fs::canonicalize(&file).expect("exists");
        assert!(named.made(&recorded(canonical.to_str())));
    }
}
