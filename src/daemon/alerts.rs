//! Alerts of `cairn serve`: e-mail (SMTP through `lettre`) and a webhook
//! (a JSON POST through `ureq`), with identical alerts rate-limited.
//!
//! An [`Alert`] has a kind, a subject, a body and a *key* — what makes two
//! alerts of the same kind "identical" (usually a source or schedule name).
//! [`Alerter::send`] tries every configured channel (a failing channel is
//! logged and reported, the others are still tried) and fails only when
//! every channel failed. An alert identical to one sent less than
//! `alerts.repeat-every` ago is suppressed; the send times are kept in memory
//! and, when the alerter has a state file, written there (JSON, atomically)
//! so a restarted daemon does not repeat an alert at once. `spec/plan.md`
//! ("Alerts") documents the behaviour and the webhook body.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::notice::Details;
use crate::error::{Error, Result};
use crate::plan::{Alerts, Email, SmtpSecurity};

/// How long one delivery attempt (SMTP dialogue or webhook request) may take.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// What an alert is about.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum AlertKind {
    BackupFailed,
    StorageHigh,
    StorageCritical,
    MissedBackup,
    SlowBackup,
    RestoreTestFailed,
    RestoreTestSkipped,
    /// PostgreSQL's archive_command fails, or WAL waits longer than `archive-lag`.
    WalArchive,
    /// Sent on request (`cairn plan test-alert`); never rate-limited.
    Test,
}

impl AlertKind {
    #[cfg(test)]
    pub const ALL: [AlertKind; 9] = [
        AlertKind::BackupFailed,
        AlertKind::StorageHigh,
        AlertKind::StorageCritical,
        AlertKind::MissedBackup,
        AlertKind::SlowBackup,
        AlertKind::RestoreTestFailed,
        AlertKind::RestoreTestSkipped,
        AlertKind::WalArchive,
        AlertKind::Test,
    ];

    /// The kebab-case name (as in JSON and on the command line).
    pub fn name(self) -> &'static str {
        match self {
            AlertKind::BackupFailed => "backup-failed",
            AlertKind::StorageHigh => "storage-high",
            AlertKind::StorageCritical => "storage-critical",
            AlertKind::MissedBackup => "missed-backup",
            AlertKind::SlowBackup => "slow-backup",
            AlertKind::RestoreTestFailed => "restore-test-failed",
            AlertKind::RestoreTestSkipped => "restore-test-skipped",
            AlertKind::WalArchive => "wal-archive",
            AlertKind::Test => "test",
        }
    }

    /// Words for subject lines: "backup failed".
    pub fn title(self) -> &'static str {
        match self {
            AlertKind::BackupFailed => "backup failed",
            AlertKind::StorageHigh => "storage high",
            AlertKind::StorageCritical => "storage critical",
            AlertKind::MissedBackup => "missed backup",
            AlertKind::SlowBackup => "slow backup",
            AlertKind::RestoreTestFailed => "restore test failed",
            AlertKind::RestoreTestSkipped => "restore test skipped",
            AlertKind::WalArchive => "WAL archive",
            AlertKind::Test => "test alert",
        }
    }
}

impl AlertKind {
    /// What to try, for any alert of this kind (the daemon adds more
    /// specific advice before it).
    pub fn hint(self) -> &'static str {
        match self {
            AlertKind::BackupFailed => {
                "fix what the error names (a server down, credentials, permissions, disk \
                 space); the next scheduled run tries again"
            }
            AlertKind::StorageHigh => {
                "give the repository more space, or keep fewer snapshots (the plan's \
                 `retention` node; `cairn forget --dry-run` shows what rules would keep)"
            }
            AlertKind::StorageCritical => {
                "give the repository more space now: below `critical-free` cairn removes \
                 the oldest snapshots by itself"
            }
            AlertKind::MissedBackup => {
                "check that `cairn serve` runs and read its log (`journalctl -u cairn`) for \
                 failed or skipped runs; `POST /backups` makes a backup now"
            }
            AlertKind::SlowBackup => {
                "compare each source's `duration_ms` in the daemon's log (`source backed up` \
                 lines) with earlier runs; if the data grew, raise the schedule's \
                 `expected-duration` or `alerts { slow-factor }`"
            }
            AlertKind::RestoreTestFailed => {
                "run `cairn check --read-data` to find damaged data, and restore from \
                 another snapshot (`cairn snapshots`) until the cause is fixed"
            }
            AlertKind::RestoreTestSkipped => {
                "check the plan's `verify` node: its scratch PostgreSQL and Kafka must be \
                 reachable from this host"
            }
            AlertKind::WalArchive => {
                "read the PostgreSQL server's log for the archive_command's error \
                 (`SELECT * FROM pg_stat_archiver` shows the last failure); run the command \
                 by hand as the server's user; `cairn check` shows gaps in the archive"
            }
            AlertKind::Test => "nothing: this is a test",
        }
    }
}

impl fmt::Display for AlertKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One alert. The [`Alerter`] prefixes the subject with `[cairn HOST] `.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Alert {
    pub kind: AlertKind,
    /// Without the `[cairn HOST]` prefix, e.g. "backup failed: db".
    pub subject: String,
    /// Plain text.
    pub body: String,
    /// What makes two alerts of one kind identical for rate limiting, e.g.
    /// the source name.
    pub key: String,
}

impl Alert {
    /// An alert whose subject is the kind's title, followed by `: what`
    /// unless `what` is empty ("backup failed: db").
    pub fn new(
        kind: AlertKind,
        key: impl Into<String>,
        what: &str,
        body: impl Into<String>,
    ) -> Alert {
        let subject = if what.is_empty() {
            kind.title().to_string()
        } else {
            format!("{}: {what}", kind.title())
        };
        Alert {
            kind,
            subject,
            body: body.into(),
            key: key.into(),
        }
    }

    /// A sample alert of `kind`, as `cairn plan test-alert` sends it: shaped
    /// like the real one, with a body that says it is a test.
    pub fn example(kind: AlertKind) -> Alert {
        let note = "This is a test sent by `cairn plan test-alert`; nothing is wrong.";
        let (what, text) = match kind {
            AlertKind::BackupFailed => (
                "example-source",
                "The backup of source \"example-source\" failed: (example error).",
            ),
            AlertKind::StorageHigh => (
                "repository",
                "The repository's storage is 85% full (warning at 80%).",
            ),
            AlertKind::StorageCritical => (
                "repository",
                "The repository's storage is 97% full; the oldest snapshots are being removed.",
            ),
            AlertKind::MissedBackup => (
                "example-source, none for 25h",
                "There has been no successful backup of source example-source for 25h.",
            ),
            AlertKind::SlowBackup => (
                "example-schedule",
                "The run of schedule \"example-schedule\" took 1h 10m (expected 30m).",
            ),
            AlertKind::RestoreTestFailed => (
                "example-source",
                "The restore test of source \"example-source\" failed: (example error).",
            ),
            AlertKind::RestoreTestSkipped => (
                "example-source",
                "The restore test of source \"example-source\" was skipped 3 times in a row.",
            ),
            AlertKind::WalArchive => (
                "example-source, archiving fails at 000000010000000000000042",
                "PostgreSQL's archive_command fails: the last attempt failed on WAL file \
                 000000010000000000000042.",
            ),
            AlertKind::Test => ("", "The alert channels of this plan work."),
        };
        let mut d = Details::new(format!("{text}\n\n{note}"));
        if kind != AlertKind::Test {
            d.hints.push(kind.hint().to_string());
        }
        Alert::new(kind, "test-alert", what, d.body())
    }
}

/// An alert channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Channel {
    Email,
    Webhook,
}

impl Channel {
    /// `e-mail` or `webhook`.
    pub fn name(self) -> &'static str {
        match self {
            Channel::Email => "e-mail",
            Channel::Webhook => "webhook",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How one channel fared.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ChannelResult {
    pub channel: Channel,
    /// Where it went: "a@example.org, b@example.org via smtp.example.org:587
    /// (starttls)", or the webhook's scheme and host (its path may hold a
    /// secret and is never shown).
    pub target: String,
    /// `None`: delivered.
    pub error: Option<String>,
}

impl ChannelResult {
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
}

/// What [`Alerter::send`] did.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum Delivery {
    /// Delivered through at least one channel; `channels` lists every
    /// configured channel, failed ones with their error.
    Sent {
        subject: String,
        channels: Vec<ChannelResult>,
    },
    /// An identical alert (same kind and key) was sent at `last_sent`, less
    /// than `repeat-every` ago; nothing was sent.
    #[serde(rename_all = "kebab-case")]
    Suppressed {
        last_sent: Timestamp,
        next_allowed: Timestamp,
    },
    /// The plan configures no alert channel.
    NoChannels,
}

impl Delivery {
    #[cfg(test)]
    pub fn is_sent(&self) -> bool {
        matches!(self, Delivery::Sent { .. })
    }
}

/// Sends alerts through the channels of a plan's `alerts` node.
pub struct Alerter {
    alerts: Alerts,
    host: String,
    limiter: RateLimiter,
}

impl Alerter {
    /// An alerter for `alerts`; `host` goes into the subject prefix
    /// (`[cairn HOST]`) and the webhook body. With `state_file`, the times
    /// alerts were sent are loaded from it (a missing file is an empty
    /// state; an unreadable one is logged and ignored) and saved to it after
    /// every alert sent.
    pub fn new(alerts: &Alerts, host: impl Into<String>, state_file: Option<PathBuf>) -> Alerter {
        Alerter {
            alerts: alerts.clone(),
            host: host.into(),
            limiter: RateLimiter::new(alerts.repeat_every, state_file),
        }
    }

    /// Whether any channel (e-mail, webhook) is configured.
    pub fn has_channels(&self) -> bool {
        self.alerts.email.is_some() || self.alerts.webhook.is_some()
    }

    #[cfg(test)]
    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    /// The subject as sent: `[cairn HOST] SUBJECT`.
    pub fn subject(&self, alert: &Alert) -> String {
        format!("[cairn {}] {}", self.host, alert.subject)
    }

    /// Send `alert` through every configured channel, unless an identical
    /// alert was sent less than `repeat-every` ago. Fails only when every
    /// configured channel failed (the error names each channel's failure).
    pub fn send(&self, alert: &Alert) -> Result<Delivery> {
        self.send_at(alert, crate::clock::now())
    }

    /// [`Alerter::send`] with the time taken as `now` (for rate limiting
    /// and the webhook body).
    pub fn send_at(&self, alert: &Alert, now: Timestamp) -> Result<Delivery> {
        if !self.has_channels() {
            tracing::debug!(
                kind = alert.kind.name(),
                key = alert.key.as_str(),
                "no alert channel configured"
            );
            return Ok(Delivery::NoChannels);
        }
        let limited = alert.kind != AlertKind::Test;
        let previous = if limited {
            match self.limiter.reserve(alert.kind, &alert.key, now) {
                Ok(previous) => previous,
                Err(last_sent) => {
                    let next_allowed = add(last_sent, self.limiter.repeat_every);
                    // An identical one was sent less than repeat-every ago.
                    tracing::info!(
                        kind = alert.kind.name(), key = alert.key.as_str(), %last_sent,
                        subject = alert.subject.as_str(), "alert suppressed"
                    );
                    return Ok(Delivery::Suppressed {
                        last_sent,
                        next_allowed,
                    });
                }
            }
        } else {
            None
        };

        let subject = self.subject(alert);
        let mut channels = Vec::new();
        if let Some(email) = &self.alerts.email {
            let target = format!(
                "{} via {}:{} ({})",
                email.to.join(", "),
                email.smtp,
                email.port,
                security_name(email.security)
            );
            let error = send_email(email, &subject, &alert.body).err();
            channels.push(ChannelResult {
                channel: Channel::Email,
                target,
                error,
            });
        }
        if let Some(url) = &self.alerts.webhook {
            let error = send_webhook(url, alert, &subject, &self.host, now).err();
            channels.push(ChannelResult {
                channel: Channel::Webhook,
                target: redact_url(url),
                error,
            });
        }
        let recipients = self.alerts.email.as_ref().map_or(0, |e| e.to.len());
        for c in &channels {
            // E-mail names how many it went to; a webhook is one receiver.
            let recipients = if c.channel == Channel::Email {
                recipients
            } else {
                1
            };
            let (kind, key, channel) = (alert.kind.name(), alert.key.as_str(), c.channel.name());
            match &c.error {
                None => tracing::info!(
                    kind,
                    key,
                    channel,
                    target = c.target.as_str(),
                    recipients,
                    subject = subject.as_str(),
                    "alert sent"
                ),
                Some(e) => tracing::error!(
                    kind,
                    key,
                    channel,
                    target = c.target.as_str(),
                    recipients,
                    subject = subject.as_str(),
                    error = e.as_str(),
                    "alert not sent"
                ),
            }
        }

        if channels.iter().any(ChannelResult::ok) {
            if limited {
                self.limiter.confirm();
            }
            return Ok(Delivery::Sent { subject, channels });
        }
        if limited {
            self.limiter.release(alert.kind, &alert.key, previous);
        }
        let failures: Vec<String> = channels
            .iter()
            .map(|c| {
                let to = if c.channel == Channel::Email {
                    " to"
                } else {
                    ""
                };
                format!(
                    "{}{to} {}: {}",
                    c.channel,
                    c.target,
                    c.error.as_deref().unwrap_or_default()
                )
            })
            .collect();
        let auth_failed = channels.iter().any(|c| {
            c.channel == Channel::Email
                && c.error
                    .as_deref()
                    .is_some_and(|e| e.contains("535") || e.contains("uthentication"))
        });
        Err(Error::failure(format!(
            "alert {:?} was not delivered: {}",
            subject,
            failures.join("; ")
        ))
        .with_hint(if auth_failed {
            "check alerts.email's username and password-file"
        } else {
            "check the alerts node of the plan and that the servers it names are reachable"
        }))
    }
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    jiff::SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

fn security_name(s: SmtpSecurity) -> &'static str {
    match s {
        SmtpSecurity::Plain => "plain",
        SmtpSecurity::Starttls => "starttls",
        SmtpSecurity::Tls => "tls",
    }
}

/// The first line of the SMTP password file. Never logged.
fn read_smtp_password(path: &Path) -> std::result::Result<String, String> {
    let text = crate::fsutil::read_small_text(path, crate::fsutil::MAX_SECRET_FILE)
        .map_err(|e| format!("cannot read the SMTP password file {}: {e}", path.display()))?;
    let pw = text.lines().next().unwrap_or("").to_string();
    if pw.is_empty() {
        return Err(format!(
            "the SMTP password file {} is empty",
            path.display()
        ));
    }
    Ok(pw)
}

/// Send one e-mail to every recipient. The error is the SMTP client's (the
/// caller names the server).
fn send_email(email: &Email, subject: &str, body: &str) -> std::result::Result<(), String> {
    use lettre::message::{header::ContentType, Mailbox};
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Tls, TlsParameters};
    use lettre::transport::smtp::extension::ClientId;
    use lettre::{Message, SmtpTransport, Transport};

    let server = format!("{}:{}", email.smtp, email.port);
    let from: Mailbox = email
        .from
        .parse()
        .map_err(|e| format!("from address {:?}: {e}", email.from))?;
    let mut message = Message::builder()
        .from(from)
        .subject(subject)
        .header(ContentType::TEXT_PLAIN);
    for to in &email.to {
        let to: Mailbox = to.parse().map_err(|e| format!("to address {to:?}: {e}"))?;
        message = message.to(to);
    }
    let message = message
        .body(body.to_string())
        .map_err(|e| format!("cannot build the message: {e}"))?;

    let tls = || {
        TlsParameters::new(email.smtp.clone()).map_err(|e| format!("TLS setup for {server}: {e}"))
    };
    let mut builder = SmtpTransport::builder_dangerous(email.smtp.as_str())
        .port(email.port)
        .timeout(Some(SEND_TIMEOUT))
        .hello_name(ClientId::Domain(
            gethostname::gethostname().to_string_lossy().into_owned(),
        ));
    builder = match email.security {
        SmtpSecurity::Plain => builder.tls(Tls::None),
        SmtpSecurity::Starttls => builder.tls(Tls::Required(tls()?)),
        SmtpSecurity::Tls => builder.tls(Tls::Wrapper(tls()?)),
    };
    if let (Some(user), Some(file)) = (&email.username, &email.password_file) {
        let password = read_smtp_password(file)?;
        builder = builder.credentials(Credentials::new(user.clone(), password));
    }
    builder
        .build()
        .send(&message)
        .map(|_| ())
        .map_err(|e| error_chain(&e))
}

/// An error and its causes, joined with ": " (skipping repeats).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s
}

/// The JSON body POSTed to the webhook.
#[derive(Serialize)]
struct WebhookBody<'a> {
    kind: AlertKind,
    subject: &'a str,
    body: &'a str,
    key: &'a str,
    host: &'a str,
    time: Timestamp,
}

fn send_webhook(
    url: &str,
    alert: &Alert,
    subject: &str,
    host: &str,
    now: Timestamp,
) -> std::result::Result<(), String> {
    use ureq::tls::{RootCerts, TlsConfig};
    let body = serde_json::to_vec(&WebhookBody {
        kind: alert.kind,
        subject,
        body: &alert.body,
        key: &alert.key,
        host,
        time: now,
    })
    .map_err(|e| e.to_string())?;
    let tls = TlsConfig::builder()
        .root_certs(RootCerts::PlatformVerifier)
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .build();
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .timeout_global(Some(SEND_TIMEOUT))
            .http_status_as_error(true)
            .user_agent(concat!("cairn/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls)
            .build(),
    );
    agent
        .post(url)
        .header("Content-Type", "application/json")
        .send(&body[..])
        .map(|_| ())
        .map_err(|e| error_chain(&e))
}

/// `https://user:pw@host:port/secret/path?x` → `https://host:port/…`: a
/// webhook's path and credentials may be secrets, so only scheme and host
/// are shown.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(webhook)".into();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let more = if rest[end..].trim_matches('/').is_empty() {
        ""
    } else {
        "/…"
    };
    format!("{scheme}://{authority}{more}")
}

/// When each (kind, key) was last sent, in memory and optionally in a state
/// file, to send identical alerts at most once per `repeat_every`.
pub struct RateLimiter {
    repeat_every: Duration,
    state_file: Option<PathBuf>,
    sent: Mutex<HashMap<(AlertKind, String), Timestamp>>,
}

/// The state file: `{"version": 1, "sent": [{"kind", "key", "time"}]}`.
#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    sent: Vec<SentEntry>,
}

#[derive(Serialize, Deserialize)]
struct SentEntry {
    kind: AlertKind,
    key: String,
    time: Timestamp,
}

impl RateLimiter {
    /// A limiter; with `state_file`, the times recorded there are loaded (a
    /// missing file is empty; a damaged one is logged and ignored).
    pub fn new(repeat_every: Duration, state_file: Option<PathBuf>) -> RateLimiter {
        let mut sent = HashMap::new();
        if let Some(path) = &state_file {
            match std::fs::read(path) {
                Ok(bytes) => match serde_json::from_slice::<StateFile>(&bytes) {
                    Ok(state) => {
                        for e in state.sent {
                            sent.insert((e.kind, e.key), e.time);
                        }
                    }
                    Err(e) => {
                        tracing::warn!("ignoring the alert state file {}: {e}", path.display())
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!("cannot read the alert state file {}: {e}", path.display())
                }
            }
        }
        RateLimiter {
            repeat_every,
            state_file,
            sent: Mutex::new(sent),
        }
    }

    /// When an alert of this kind and key was last sent (or is being sent).
    #[cfg(test)]
    pub fn last_sent(&self, kind: AlertKind, key: &str) -> Option<Timestamp> {
        self.lock().get(&(kind, key.to_string())).copied()
    }

    /// Claim the right to send (kind, key) at `now`: `Err(last_sent)` when it
    /// was sent less than `repeat_every` before `now`; otherwise `now` is
    /// recorded (so a concurrent identical alert is suppressed) and the
    /// previous time returned, for [`RateLimiter::release`] when sending
    /// fails. A last time after `now` (the clock went back) does not limit.
    pub fn reserve(
        &self,
        kind: AlertKind,
        key: &str,
        now: Timestamp,
    ) -> std::result::Result<Option<Timestamp>, Timestamp> {
        let mut sent = self.lock();
        let k = (kind, key.to_string());
        let previous = sent.get(&k).copied();
        if let Some(last) = previous {
            if last <= now && now < add(last, self.repeat_every) {
                return Err(last);
            }
        }
        sent.insert(k, now);
        Ok(previous)
    }

    /// Undo a [`RateLimiter::reserve`] whose alert could not be sent.
    pub fn release(&self, kind: AlertKind, key: &str, previous: Option<Timestamp>) {
        let mut sent = self.lock();
        let k = (kind, key.to_string());
        match previous {
            Some(t) => sent.insert(k, t),
            None => sent.remove(&k),
        };
    }

    /// The reserved alert was sent: save the state file (failures are logged).
    pub fn confirm(&self) {
        let sent = self.lock();
        let Some(path) = &self.state_file else {
            return;
        };
        let mut entries: Vec<SentEntry> = sent
            .iter()
            .map(|((kind, key), time)| SentEntry {
                kind: *kind,
                key: key.clone(),
                time: *time,
            })
            .collect();
        entries.sort_by(|a, b| (a.kind, &a.key).cmp(&(b.kind, &b.key)));
        let state = StateFile {
            version: 1,
            sent: entries,
        };
        if let Err(e) = write_atomically(path, &state) {
            tracing::warn!(
                "cannot save the alert state file {}: {e} (a restarted daemon may repeat alerts)",
                path.display()
            );
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(AlertKind, String), Timestamp>> {
        self.sent.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Write `value` as JSON over `path`, atomically.
fn write_atomically(path: &Path, value: &impl Serialize) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    crate::fsutil::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn identical_alerts_within_repeat_every_are_suppressed() {
        let l = RateLimiter::new(6 * HOUR, None);
        let k = AlertKind::BackupFailed;
        assert_eq!(l.reserve(k, "db", t("2026-01-01T00:00:00Z")), Ok(None));
        l.confirm();
        assert_eq!(
            l.reserve(k, "db", t("2026-01-01T05:59:59Z")),
            Err(t("2026-01-01T00:00:00Z"))
        );
        // Another key, another kind: not identical.
        assert_eq!(l.reserve(k, "etc", t("2026-01-01T01:00:00Z")), Ok(None));
        assert_eq!(
            l.reserve(AlertKind::SlowBackup, "db", t("2026-01-01T01:00:00Z")),
            Ok(None)
        );
        // repeat-every later: sent again.
        assert_eq!(
            l.reserve(k, "db", t("2026-01-01T06:00:00Z")),
            Ok(Some(t("2026-01-01T00:00:00Z")))
        );
    }

    #[test]
    fn a_failed_send_does_not_count() {
        let l = RateLimiter::new(HOUR, None);
        let k = AlertKind::MissedBackup;
        let prev = l.reserve(k, "nightly", t("2026-01-01T00:00:00Z")).unwrap();
        l.release(k, "nightly", prev);
        assert_eq!(l.last_sent(k, "nightly"), None);
        assert!(l.reserve(k, "nightly", t("2026-01-01T00:01:00Z")).is_ok());
    }

    #[test]
    fn a_clock_that_went_back_does_not_suppress() {
        let l = RateLimiter::new(HOUR, None);
        let k = AlertKind::StorageHigh;
        l.reserve(k, "repo", t("2026-01-02T00:00:00Z")).unwrap();
        assert!(l.reserve(k, "repo", t("2026-01-01T23:30:00Z")).is_ok());
    }

    #[test]
    fn the_state_file_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state").join("alerts.json");
        let k = AlertKind::BackupFailed;
        {
            let l = RateLimiter::new(6 * HOUR, Some(file.clone()));
            l.reserve(k, "db", t("2026-01-01T00:00:00Z")).unwrap();
            l.confirm();
        }
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains("\"backup-failed\""), "{text}");
        let l = RateLimiter::new(6 * HOUR, Some(file.clone()));
        assert_eq!(
            l.reserve(k, "db", t("2026-01-01T03:00:00Z")),
            Err(t("2026-01-01T00:00:00Z"))
        );
        assert!(l.reserve(k, "other", t("2026-01-01T03:00:00Z")).is_ok());
        // No temporary files left behind.
        let names: Vec<_> = std::fs::read_dir(file.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("alerts.json")]);
    }

    #[test]
    fn a_damaged_state_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("alerts.json");
        std::fs::write(&file, "{not json").unwrap();
        let l = RateLimiter::new(HOUR, Some(file));
        assert!(l
            .reserve(AlertKind::BackupFailed, "db", t("2026-01-01T00:00:00Z"))
            .is_ok());
    }

    #[test]
    fn urls_are_shown_without_path_or_credentials() {
        assert_eq!(
            redact_url("https://hooks.example.org/services/T0/B0/secret"),
            "https://hooks.example.org/…"
        );
        assert_eq!(
            redact_url("http://u:pw@127.0.0.1:8080/x?y"),
            "http://127.0.0.1:8080/…"
        );
        assert_eq!(redact_url("http://h:1/"), "http://h:1");
    }

    #[test]
    fn kind_names_match_serde() {
        for k in AlertKind::ALL {
            assert_eq!(serde_json::to_value(k).unwrap(), k.name());
            use clap::ValueEnum;
            assert_eq!(k.to_possible_value().unwrap().get_name(), k.name());
        }
    }

    /// A webhook receiver answering 200 to `n` requests; returns their bodies.
    fn webhook(n: usize) -> (String, std::thread::JoinHandle<Vec<serde_json::Value>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook/secret", listener.local_addr().unwrap());
        let h = std::thread::spawn(move || {
            let mut bodies = Vec::new();
            for _ in 0..n {
                let (stream, _) = listener.accept().unwrap();
                let mut r = BufReader::new(stream.try_clone().unwrap());
                let mut len = 0;
                loop {
                    let mut line = String::new();
                    r.read_line(&mut line).unwrap();
                    if line == "\r\n" || line.is_empty() {
                        break;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; len];
                r.read_exact(&mut body).unwrap();
                bodies.push(serde_json::from_slice(&body).unwrap());
                let mut w = stream;
                w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .unwrap();
            }
            bodies
        });
        (url, h)
    }

    #[test]
    fn alerter_suppresses_repeats_and_sends_other_keys() {
        let (url, server) = webhook(2);
        let alerts = Alerts {
            webhook: Some(url),
            ..Alerts::default()
        };
        let alerter = Alerter::new(&alerts, "host1", None);
        let now = t("2026-01-01T00:00:00Z");
        let a = Alert::new(AlertKind::BackupFailed, "db", "db", "it broke");
        let d = alerter.send_at(&a, now).unwrap();
        let Delivery::Sent { subject, channels } = &d else {
            panic!("{d:?}")
        };
        assert_eq!(subject, "[cairn host1] backup failed: db");
        assert_eq!(channels.len(), 1);
        assert!(channels[0].ok());
        assert!(!channels[0].target.contains("secret"));

        let later = t("2026-01-01T01:00:00Z");
        let d = alerter.send_at(&a, later).unwrap();
        assert!(
            matches!(d, Delivery::Suppressed { last_sent, .. } if last_sent == now),
            "{d:?}"
        );
        let b = Alert::new(AlertKind::BackupFailed, "etc", "etc", "it broke too");
        assert!(alerter.send_at(&b, later).unwrap().is_sent());

        let bodies = server.join().unwrap();
        assert_eq!(bodies[0]["kind"], "backup-failed");
        assert_eq!(bodies[0]["subject"], "[cairn host1] backup failed: db");
        assert_eq!(bodies[0]["body"], "it broke");
        assert_eq!(bodies[0]["host"], "host1");
        assert_eq!(bodies[0]["key"], "db");
        assert_eq!(bodies[0]["time"], "2026-01-01T00:00:00Z");
        assert_eq!(bodies[1]["key"], "etc");
    }

    #[test]
    fn alerter_without_channels_sends_nothing() {
        let alerter = Alerter::new(&Alerts::default(), "h", None);
        let a = Alert::example(AlertKind::Test);
        assert!(matches!(alerter.send(&a).unwrap(), Delivery::NoChannels));
    }

    #[test]
    fn a_failed_alert_is_retried_next_time() {
        // Nothing listens on this port (bound, then dropped).
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let alerts = Alerts {
            webhook: Some(format!("http://127.0.0.1:{port}/x")),
            ..Alerts::default()
        };
        let alerter = Alerter::new(&alerts, "h", None);
        let a = Alert::new(AlertKind::StorageHigh, "repo", "repo", "full");
        let e = alerter.send(&a).unwrap_err();
        assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
        assert_eq!(alerter.limiter().last_sent(a.kind, &a.key), None);
    }
}
