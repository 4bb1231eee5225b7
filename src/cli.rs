//! Command-line definitions only: flags, arguments and help text.
//! The work is done in `commands/`.

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "cairn",
    version,
    about = "Deduplicating, encrypted backups of files, streams, PostgreSQL and Kafka",
    after_help = crate::error::exit_codes_help()
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Repository location: a local directory, or s3://BUCKET/PREFIX (endpoint and
    /// credentials from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)
    #[arg(
        short = 'r',
        long = "repo",
        env = "CAIRN_REPOSITORY",
        global = true,
        value_name = "REPO"
    )]
    pub repo: Option<String>,
    /// Take the repository, its key and the cache directory from this plan
    /// (spec/plan.md); also CAIRN_PLAN, else /etc/cairn/plan.kdl when it
    /// exists and no repository is given. Given on the command line, it also
    /// makes snapshot, restore and forget do the plan's work
    #[arg(long, global = true, value_name = "FILE")]
    pub plan: Option<PathBuf>,
    /// Read the repository password from this file (first line)
    #[arg(long, env = "CAIRN_PASSWORD_FILE", global = true, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Open the repository with an age identity file instead of a password
    #[arg(long, env = "CAIRN_IDENTITY_FILE", global = true, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// Directory for the local index cache [default: $XDG_CACHE_HOME/cairn or ~/.cache/cairn]
    #[arg(long, env = "CAIRN_CACHE_DIR", global = true, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Use a throwaway index cache (and no key cache)
    #[arg(long, global = true)]
    pub no_cache: bool,
    /// Run the password's key derivation every time: do not read or write the
    /// unlocked-key cache (see `cairn key forget-cache`)
    #[arg(long, env = "CAIRN_NO_KEY_CACHE", global = true,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub no_key_cache: bool,
    /// More log output (-v info, -vv debug, -vvv trace)
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,
    /// No progress bars, only errors
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Format of log lines on stderr
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Machine-readable output on stdout
    #[arg(long, global = true)]
    pub json: bool,
}

pub use crate::logging::LogFormat;

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a new repository
    Init(InitArgs),
    /// Manage the keys that open the repository
    #[command(subcommand)]
    Key(KeyCommand),
    /// Back up files, standard input or a command's output
    #[command(after_help = "Examples:
  cairn snapshot /etc /srv/app --tag nightly
  pg_dumpall | cairn snapshot --stdin-name all.sql
  cairn snapshot --postgres postgres://backup@db/postgres [--physical]
  cairn snapshot --kafka broker1:9092 --topic 'events.*'
  cairn snapshot --plan /etc/cairn/plan.kdl          # the plan's sources, as the daemon runs them")]
    Snapshot(SnapshotArgs),
    /// List snapshots (restore points)
    Snapshots(SnapshotsArgs),
    /// Restore a snapshot
    #[command(after_help = "Examples:
  cairn restore latest --target /tmp/r [--include /etc/app]
  cairn restore --at '2026-11-24 02:00' --target /tmp/r
  cairn restore latest --to postgres://postgres@newdb/postgres
  cairn restore --at latest --source postgres --pgdata /srv/pg/restored --start-port 5433
  cairn restore --plan /etc/cairn/plan.kdl --at '2026-11-24 02:00' [--dry-run]")]
    Restore(RestoreArgs),
    /// Verify the repository's structure and, optionally, all data
    #[command(after_help = "Examples:
  cairn check                          # structure, indexes, WAL continuity
  cairn check --read-data-subset 10%   # and a tenth of the stored bytes
  cairn check --restore-test           # restore a snapshot into a scratch environment and prove it")]
    Check(CheckArgs),
    /// Remove snapshots according to a retention policy
    #[command(after_help = "Examples:
  cairn forget --keep-daily 30 --keep-weekly 8 --keep-monthly 12 --dry-run
  cairn forget --keep-within 1m --prune         # restic's units: 1m is a month
  cairn forget --plan /etc/cairn/plan.kdl       # the plan's retention, per source
  cairn forget 3f9c0a12                         # one snapshot by id")]
    Forget(ForgetArgs),
    /// Remove data no snapshot needs
    Prune(PruneArgs),
    /// Show repository statistics
    Stats,
    /// Print a repository file in plain text (for debugging)
    Cat(CatArgs),
    /// Remove stale locks
    Unlock(UnlockArgs),
    /// Rebuild repository metadata from the data itself
    #[command(subcommand)]
    Repair(RepairCommand),
    /// Run a plan unattended: schedules, retention, checks, alerts and the HTTP API
    Serve(ServeArgs),
    /// Work with plans: KDL files declaring sources, schedules, retention, alerts (spec/plan.md)
    #[command(subcommand)]
    Plan(PlanCommand),
    /// Archive a PostgreSQL WAL file (archive_command = 'cairn wal-push … %p')
    WalPush {
        /// Path of the WAL file (%p)
        path: PathBuf,
    },
    /// Fetch an archived WAL file (restore_command = 'cairn wal-fetch … %f %p')
    WalFetch {
        /// WAL file name (%f)
        name: String,
        /// Where to write it (%p)
        destination: PathBuf,
        /// Read this many following segments ahead, in the background, into
        /// the cache directory's `wal-prefetch/` while PostgreSQL replays (0: off)
        #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u32).range(0..=64))]
        prefetch: u32,
    },
    /// Print a completion script for SHELL (e.g. `cairn completions bash > /etc/bash_completion.d/cairn`)
    Completions {
        /// The shell to complete in
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page of cairn or of one command (roff), or write them all with --dir
    Man(ManArgs),
    /// The background half of `wal-fetch --prefetch` (started by wal-fetch itself)
    #[command(hide = true)]
    WalPrefetch {
        /// The segment PostgreSQL asked for last
        #[arg(long)]
        after: String,
        #[arg(long)]
        count: u32,
    },
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// The command whose page to print (e.g. `restore`, `key add`) [default: cairn's own]
    #[arg(value_name = "COMMAND", conflicts_with = "dir")]
    pub command: Vec<String>,
    /// Write cairn.1 and one cairn-COMMAND.1 per command into this directory (for packaging)
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// scrypt work factor (log2 N) for the password key; lower values only for tests
    #[arg(long, default_value_t = 18, value_parser = clap::value_parser!(u8).range(10..=22))]
    pub kdf_work_factor: u8,
    /// Average chunk size in bytes (advanced; min is a quarter, max four times it)
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u32).range(1024..=1048576))]
    pub chunk_size: Option<u32>,
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Add a key: a new password, or an age recipient
    Add(KeyAddArgs),
    /// List keys
    List,
    /// Remove a key (not the last one, not the one in use)
    Remove {
        /// Key id or unique prefix
        id: String,
    },
    /// Remove this user's cached unlocked key of the repository, so that the
    /// next command derives it from the password again
    ForgetCache {
        /// Of every repository, not only the one given
        #[arg(long)]
        all: bool,
    },
}

#[derive(Args, Debug)]
pub struct KeyAddArgs {
    /// File holding the new key's password
    #[arg(long, value_name = "FILE", conflicts_with_all = ["new_recipient", "new_identity", "generate_identity"])]
    pub new_password_file: Option<PathBuf>,
    /// age recipient (age1…) the new key is encrypted to
    #[arg(long, value_name = "RECIPIENT", conflicts_with_all = ["new_identity", "generate_identity"])]
    pub new_recipient: Option<String>,
    /// age identity file whose recipient the new key is encrypted to
    #[arg(long, value_name = "FILE", conflicts_with = "generate_identity")]
    pub new_identity: Option<PathBuf>,
    /// Create a new age identity in FILE (mode 0600; an existing file is
    /// never replaced) and add a key it opens: a host that must not store
    /// the password, e.g. a recovery host's restore_command, opens the
    /// repository with `--identity FILE` and derives no key from a password
    #[arg(long, value_name = "FILE")]
    pub generate_identity: Option<PathBuf>,
    /// scrypt work factor (log2 N) for a password key
    #[arg(long, default_value_t = 18, value_parser = clap::value_parser!(u8).range(10..=22))]
    pub kdf_work_factor: u8,
}

#[derive(Args, Debug)]
pub struct SnapshotArgs {
    /// Files and directories to back up
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Back up standard input, stored as a file of this name
    #[arg(long, value_name = "NAME")]
    pub stdin_name: Option<String>,
    /// Back up the standard output of the command given after `--`
    #[arg(long, requires = "command")]
    pub stdin_from_command: bool,
    /// The command for --stdin-from-command
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
    /// Back up a PostgreSQL server logically: globals plus one dump per database
    #[arg(long, value_name = "URL")]
    pub postgres: Option<String>,
    /// With --postgres: a physical base backup (BASE_BACKUP over a replication connection, as pg_basebackup takes it) instead of dumps
    #[arg(long, requires = "postgres", conflicts_with = "database")]
    pub physical: bool,
    /// With --physical: fail when the server has waited this long for the backup's WAL to be
    /// archived (archive_command failing), naming pg_stat_archiver's last failure
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "60s",
        requires = "physical"
    )]
    pub archive_timeout: String,
    /// With --postgres: only this database (repeatable; default all)
    #[arg(long, value_name = "NAME", requires = "postgres")]
    pub database: Vec<String>,
    /// Back up the sources of this plan (all, or those given with --source) into one snapshot
    #[arg(long, value_name = "FILE", conflicts_with_all = ["paths", "stdin_name", "stdin_from_command", "postgres", "kafka", "source_name"])]
    pub plan: Option<PathBuf>,
    /// With --plan: only this source (repeatable)
    #[arg(long, value_name = "NAME", requires = "plan")]
    pub source: Vec<String>,
    /// Back up a Kafka cluster: topics, configurations, group offsets and records (HOST:PORT[,...])
    #[arg(long, value_name = "BROKERS")]
    pub kafka: Option<String>,
    /// With --kafka: only this topic (a name or a regular expression matching whole names; repeatable)
    #[arg(long, value_name = "NAME|REGEX", requires = "kafka")]
    pub topic: Vec<String>,
    /// With --kafka: also internal topics (names starting with `__`)
    #[arg(long, requires = "kafka")]
    pub include_internal: bool,
    /// With --kafka: store metadata and group offsets, not records
    #[arg(long, requires = "kafka")]
    pub no_messages: bool,
    #[command(flatten)]
    pub kafka_conn: KafkaConnArgs,
    /// Name of the source in the snapshot [default: files, the stdin name, postgres or kafka]
    #[arg(long, value_name = "NAME")]
    pub source_name: Option<String>,
    /// Tag the snapshot (repeat or separate with commas)
    #[arg(long, value_delimiter = ',')]
    pub tag: Vec<String>,
    /// Host name recorded in the snapshot
    #[arg(long)]
    pub host: Option<String>,
    /// Compare files with this snapshot (id or prefix) instead of the newest
    /// one of this host over the same paths
    #[arg(long, value_name = "ID", conflicts_with = "force")]
    pub parent: Option<String>,
    /// Read every file, even those whose size, mtime, ctime and inode say
    /// they are unchanged since the parent snapshot
    #[arg(long)]
    pub force: bool,
}

/// How to reach Kafka brokers (snapshot --kafka, restore --to-brokers).
#[derive(Args, Debug, Clone)]
pub struct KafkaConnArgs {
    /// librdkafka properties for SASL/TLS, one `key=value` per line (never logged)
    #[arg(long, value_name = "FILE", env = "CAIRN_KAFKA_CONFIG")]
    pub kafka_config: Option<PathBuf>,
    /// Retries of a failing broker request, with exponential backoff
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub retries: u32,
    /// Wait before the first retry; doubled for each further one (e.g. 500ms, 2s)
    #[arg(long, value_name = "DURATION", default_value = "1s")]
    pub retry_delay: String,
    /// Timeout of one broker request
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    pub kafka_timeout: String,
}

#[derive(Args, Debug, Clone)]
pub struct FilterArgs {
    /// Only snapshots with this tag (repeatable)
    #[arg(long, value_delimiter = ',')]
    pub tag: Vec<String>,
    /// Only snapshots of this host (repeatable)
    #[arg(long)]
    pub host: Vec<String>,
}

#[derive(Args, Debug)]
pub struct SnapshotsArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("kafka_restore").args(["to_brokers", "plan"])))]
pub struct RestoreArgs {
    /// Snapshot id (or unique prefix), or `latest`
    #[arg(value_name = "SNAPSHOT", conflicts_with = "at")]
    pub snapshot: Option<String>,
    /// Restore the newest snapshot taken at or before this time (RFC 3339 or `YYYY-MM-DD HH:MM`, local time);
    /// with --pgdata (and for a plan's physical sources), the state at that time, or `latest`:
    /// the end of the archived WAL
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
    /// Restore everything this plan backs up, stopping and starting its services around it
    /// (without a snapshot or --at: list the plan's restore points)
    #[arg(long, value_name = "FILE", conflicts_with_all = ["target", "to", "to_brokers", "pgdata", "include", "source"])]
    pub plan: Option<PathBuf>,
    /// With --plan: print the ordered steps, do nothing
    #[arg(long, short = 'n', requires = "plan")]
    pub dry_run: bool,
    /// With --plan: restore files below this directory instead of their original paths
    #[arg(long, value_name = "DIR", requires = "plan")]
    pub target_root: Option<PathBuf>,
    /// Directory to restore files into
    #[arg(long, short = 't', value_name = "DIR", required_unless_present_any = ["to", "pgdata", "to_brokers", "plan"])]
    pub target: Option<PathBuf>,
    /// Restore a PostgreSQL source into the server at this URL
    #[arg(long, value_name = "URL", conflicts_with = "target")]
    pub to: Option<String>,
    /// With --to: replace the contents of non-empty target databases
    #[arg(long, requires = "to")]
    pub clean: bool,
    /// With --to: only this database (repeatable)
    #[arg(long, value_name = "NAME", requires = "to")]
    pub database: Vec<String>,
    /// With --to: parallel pg_restore jobs (the dump is spooled to disk; when one table holds
    /// 90% of a database's data, the dump is streamed, cairn loads that table on N
    /// connections at once, and indexes and constraints run in parallel, except with
    /// --clean); 0 streams everything into one pg_restore without spooling
    #[arg(long, value_name = "N", requires = "to")]
    pub jobs: Option<usize>,
    /// With --to: directory for spooled dumps [default: the temporary directory]
    #[arg(long, value_name = "DIR", requires = "to")]
    pub spool_dir: Option<PathBuf>,
    /// With --to: do not restore roles and tablespaces
    #[arg(long, requires = "to")]
    pub no_globals: bool,
    /// With --to: also compare every table's content checksum with the one
    /// taken at backup, not only its row count (reads every row once more;
    /// `cairn check --restore-test` always does)
    #[arg(long, requires = "to")]
    pub prove: bool,
    /// Point-in-time restore of a physical PostgreSQL source into this (new or empty) data directory; needs --at and --source
    #[arg(long, value_name = "DIR", conflicts_with_all = ["target", "to", "snapshot"], requires_all = ["at", "source"])]
    pub pgdata: Option<PathBuf>,
    /// With --pgdata: start the restored cluster on this port and wait until recovery reaches the target
    #[arg(long, value_name = "PORT", requires = "pgdata")]
    pub start_port: Option<u16>,
    /// With --start-port: how long to wait for recovery (e.g. 5m)
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "10m",
        requires = "start_port"
    )]
    pub recovery_timeout: String,
    /// Restore a Kafka source into these brokers (HOST:PORT[,...])
    #[arg(long, value_name = "BROKERS", conflicts_with_all = ["target", "to", "pgdata"])]
    pub to_brokers: Option<String>,
    /// With --to-brokers: restore topic OLD as NEW (repeatable)
    #[arg(long, value_name = "OLD=NEW", requires = "to_brokers")]
    pub topic_map: Vec<String>,
    /// With --to-brokers: create the topics only, without records or group offsets
    #[arg(long, requires = "to_brokers")]
    pub no_messages: bool,
    /// Also take snapshots marked corrupted by a failed restore test (with --at, `latest`);
    /// with --to-brokers or --plan: add records to topics that already exist
    /// (unless --recreate-topics)
    #[arg(long)]
    pub force: bool,
    /// With --to-brokers or --plan: delete the snapshot's topics that exist on the brokers
    /// (their target names) and create them again with the snapshot's partitions, settings,
    /// records and group offsets; refused, before anything is deleted, while a consumer group
    /// with live members has committed offsets on them
    #[arg(long, requires = "kafka_restore")]
    pub recreate_topics: bool,
    /// With --to-brokers or --plan: apply every recorded topic setting, not only those set on
    /// the topic (for brokers that report no config sources)
    #[arg(long, requires = "kafka_restore")]
    pub all_configs: bool,
    #[command(flatten)]
    pub kafka_conn: KafkaConnArgs,
    /// Only restore this path and what is below it (repeatable); a path that
    /// matches nothing stops the restore (exit 2)
    #[arg(long, value_name = "PATH")]
    pub include: Vec<String>,
    /// Files: what to do with a file or symlink already in the target. never: keep it
    /// (nothing in the target is lost; the default); if-changed: replace it if it differs
    /// (same size and time count as unchanged); always: replace it if its content
    /// differs; if-newer: replace it if the snapshot's is newer
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = crate::restorer::Overwrite::Never,
          conflicts_with_all = ["to", "to_brokers", "pgdata"])]
    pub overwrite: crate::restorer::Overwrite,
    /// Only restore this source of the snapshot (repeatable)
    #[arg(long, value_name = "NAME")]
    pub source: Vec<String>,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Also read, decrypt and verify every stored chunk
    #[arg(long)]
    pub read_data: bool,
    /// Read only a subset of packs: `N/M` (the N-th of M parts, cut by pack id, so `1/M` …
    /// `M/M` read every pack once) or `P%` (a random share)
    #[arg(long, value_name = "SUBSET", conflicts_with = "read_data")]
    pub read_data_subset: Option<String>,
    /// Prove sources restore: logical PostgreSQL into a scratch cluster (checksums compared),
    /// physical PostgreSQL recovered to a random time of its range in a scratch data
    /// directory (pg_amcheck), Kafka into a scratch broker (records compared)
    #[arg(long)]
    pub restore_test: bool,
    /// With --restore-test: the source to test [default: every PostgreSQL source, and every
    /// Kafka source when --scratch-brokers is given]
    #[arg(long, value_name = "NAME", requires = "restore_test")]
    pub source: Option<String>,
    /// With --restore-test: the snapshot to test [default: latest]
    #[arg(long, value_name = "ID", requires = "restore_test")]
    pub snapshot: Option<String>,
    /// With --restore-test: restore into this scratch server instead of a throwaway cluster
    /// (its databases of the snapshot's names are replaced)
    #[arg(long, value_name = "URL", requires = "restore_test")]
    pub scratch_url: Option<String>,
    /// With --restore-test: test Kafka sources by restoring them into this scratch broker
    /// (under new topic names `cairn-test-<snapshot>-<time>.<topic>`)
    #[arg(long, value_name = "BROKERS", requires = "restore_test")]
    pub scratch_brokers: Option<String>,
    /// With --restore-test: restore file sources into a fresh directory inside this one
    /// (removed afterwards; default: the system's temporary directory)
    #[arg(long, value_name = "DIR", requires = "restore_test")]
    pub scratch_dir: Option<std::path::PathBuf>,
    /// Tests only: recover physical sources to `end` (of their restorable range) or to
    /// this time instead of a random time of the range
    #[arg(long, value_name = "end|TIME", requires = "restore_test", hide = true)]
    pub restore_test_at: Option<String>,
}

#[derive(Args, Debug)]
pub struct ForgetArgs {
    /// Forget these snapshots (ids or unique prefixes), unreadable ones too,
    /// instead of applying keep rules
    #[arg(value_name = "SNAPSHOT")]
    pub snapshots: Vec<String>,
    /// Apply this plan's `retention` to the snapshots it made, per source,
    /// as `cairn serve` does (the repository and key come from the plan)
    #[arg(long, value_name = "FILE", conflicts_with_all = [
        "snapshots", "keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly",
        "keep_yearly", "keep_within", "keep_within_hourly", "keep_within_daily",
        "keep_within_weekly", "keep_within_monthly", "keep_within_yearly", "keep_tag",
        "group_by", "tag", "host",
    ])]
    pub plan: Option<PathBuf>,
    /// Keep the N newest snapshots (`unlimited` or -1: all)
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub keep_last: Option<String>,
    /// Keep the newest snapshot of each of the last N hours that have one (`unlimited`: every hour)
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub keep_hourly: Option<String>,
    /// Keep the newest snapshot of each of the last N days that have one (`unlimited`: every day)
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub keep_daily: Option<String>,
    /// Keep the newest snapshot of each of the last N ISO weeks that have one (`unlimited`: every week)
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub keep_weekly: Option<String>,
    /// Keep the newest snapshot of each of the last N months that have one (`unlimited`: every month)
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub keep_monthly: Option<String>,
    /// Keep the newest snapshot of each of the last N years that have one (`unlimited`: every year)
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub keep_yearly: Option<String>,
    /// Keep every snapshot taken within this of the newest one: restic's
    /// y, m (calendar months), w, d, h, e.g. 1y6m, 1m, 30d, 36h
    #[arg(long, value_name = "DURATION")]
    pub keep_within: Option<String>,
    /// Keep the newest snapshot of each hour within this of the newest one
    #[arg(long, value_name = "DURATION")]
    pub keep_within_hourly: Option<String>,
    /// Keep the newest snapshot of each day within this of the newest one
    #[arg(long, value_name = "DURATION")]
    pub keep_within_daily: Option<String>,
    /// Keep the newest snapshot of each ISO week within this of the newest one
    #[arg(long, value_name = "DURATION")]
    pub keep_within_weekly: Option<String>,
    /// Keep the newest snapshot of each month within this of the newest one
    #[arg(long, value_name = "DURATION")]
    pub keep_within_monthly: Option<String>,
    /// Keep the newest snapshot of each year within this of the newest one
    #[arg(long, value_name = "DURATION")]
    pub keep_within_yearly: Option<String>,
    /// Keep snapshots that have all these tags (repeat the flag: any of the
    /// groups; '' = snapshots without tags)
    #[arg(long, value_name = "TAG[,TAG...]")]
    pub keep_tag: Vec<String>,
    /// Group snapshots by these fields before applying the policy
    #[arg(long, default_value = "host,paths", value_name = "FIELDS")]
    pub group_by: String,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Show what would be removed, remove nothing
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Run `prune` afterwards
    #[arg(long)]
    pub prune: bool,
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Show what would be removed, remove nothing
    #[arg(long, short = 'n')]
    pub dry_run: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CatKind {
    Config,
    Snapshot,
    Index,
    Pack,
    Key,
}

#[derive(Args, Debug)]
pub struct CatArgs {
    #[arg(value_enum)]
    pub kind: CatKind,
    /// File id (or unique prefix); `latest` for snapshots
    pub id: Option<String>,
}

#[derive(Args, Debug)]
pub struct UnlockArgs {
    /// Remove all locks, not only stale ones
    #[arg(long)]
    pub remove_all: bool,
}

#[derive(Subcommand, Debug)]
pub enum RepairCommand {
    /// Index packs that no index file lists (after an index file was lost)
    Index,
    /// Replace damaged packs by what can be read back of them; the chunks that cannot are
    /// dropped from the index, so the next backup of the same data stores them again
    Packs {
        /// Only these packs (ids or unique prefixes, as `check --read-data` names them)
        /// [default: read every pack]
        #[arg(value_name = "PACK")]
        packs: Vec<String>,
        /// Say what would be done, change nothing
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum PlanCommand {
    /// Check a plan and report every problem (with --json: print the plan, defaults filled in)
    Check {
        /// The plan file (plan.kdl)
        file: PathBuf,
    },
    /// Send a test alert through every channel of the plan's `alerts` node (e-mail, webhook)
    #[command(
        after_help = "Exit codes: 0 delivered (through at least one channel), 1 every channel failed, \
2 the plan has problems or configures no alert channel."
    )]
    TestAlert {
        /// The plan file (plan.kdl)
        file: PathBuf,
        /// Send a sample alert of this kind instead of a plain test (to see how it looks)
        #[arg(long, value_enum, default_value_t = crate::daemon::alerts::AlertKind::Test)]
        kind: crate::daemon::alerts::AlertKind,
    },
    /// Make a new API token: prints the secret once and the `token` line for the plan
    Token {
        /// The token's name (shown in the access log)
        name: String,
    },
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The plan to run
    #[arg(long, value_name = "FILE")]
    pub plan: PathBuf,
    /// Listen here instead of the plan's `api { listen }` (port 0 picks a free one)
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// Where the daemon keeps its state [default: the cache directory's `serve/`]
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// How often to check for missed backups and storage use
    #[arg(long, value_name = "DURATION", default_value = "60s")]
    pub check_every: String,
}
