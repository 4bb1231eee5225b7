//! A base backup taken over PostgreSQL's replication protocol by cairn
//! itself: `BASE_BACKUP` on a replication connection, the archive read
//! straight from the socket into the chunker.
//!
//! `pg_basebackup -D - -Ft` sends the same command; between it and cairn the
//! archive crossed a pipe, so every byte was copied three more times (out of
//! libpq's buffer, into the pipe, out of the pipe) by a second process. On a
//! 2-core machine those copies competed with hashing and compression for the
//! CPU (spec/postgres.md, "Physical snapshots"). The result is the tar
//! `pg_basebackup -D - -Ft -X fetch` writes: the server's `base.tar` (WAL
//! included) with `backup_manifest` added as its last member.
//!
//! Only what a physical snapshot needs is implemented: PostgreSQL 15 or
//! later (one CopyOut stream, terminated tar archives), no tablespaces
//! besides the default ones, TCP or a Unix socket without TLS, and trust,
//! password, md5 or SCRAM-SHA-256 authentication. Anything else answers
//! [`Start::Unsupported`] and the caller runs `pg_basebackup` instead.

use super::conn::Target;
use crate::error::{Error, Result};
use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use std::io::{BufReader, Read, Write};
use std::time::Duration;

use crate::chunk::{tar_padded, TAR_BLOCK as BLOCK};

/// The longest protocol message accepted: PostgreSQL allocates nothing
/// larger (MaxAllocSize), so no server sends more in one message.
const MAX_MESSAGE: usize = 1 << 30;

/// What [`start`] found.
pub enum Start {
    Started(Box<BaseBackup>),
    /// The built-in client cannot take this backup; why, for the log.
    Unsupported(String),
}

/// The socket, whichever kind.
enum Stream {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Stream {
    /// Bound every read (`None`: wait as long as it takes).
    fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Unix(s) => s.set_read_timeout(t),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Where the reader is in the server's CopyOut stream.
#[derive(Debug, PartialEq)]
enum Phase {
    /// In the base archive.
    Archive,
    /// The archive's end-of-archive blocks were seen; what is left is read
    /// by [`BaseBackup::finish_protocol`].
    Ended,
    /// Everything was read; `tail` holds the last bytes to hand out.
    Done,
}

/// The base archive as a byte stream (`Read`), then the manifest member and
/// the end-of-archive blocks. The start and stop positions are known once
/// the stream has been read to its end.
pub struct BaseBackup {
    conn: BufReader<Stream>,
    shown: String,
    phase: Phase,
    /// Bytes of archive data left in the current CopyData message.
    in_message: usize,
    /// Bytes of the archive before its next tar header.
    to_header: u64,
    tail: Vec<u8>,
    tail_at: usize,
    pub start_lsn: String,
    pub stop_lsn: String,
    pub timeline: u32,
}

/// Connect to `target` as a replication client and start `BASE_BACKUP`.
pub fn start(target: &Target) -> Result<Start> {
    let config = target.config();
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let timeout = target.connect_timeout();
    let stream = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => {
            let addrs = std::net::ToSocketAddrs::to_socket_addrs(&(h.as_str(), port))
                .map_err(|e| target.unreachable(format!("cannot resolve {h}: {e}")))?;
            let mut last = None;
            let mut found = None;
            for a in addrs {
                match std::net::TcpStream::connect_timeout(&a, timeout) {
                    Ok(s) => {
                        found = Some(s);
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            match found {
                Some(s) => {
                    // A host that vanishes mid-backup must not leave the read
                    // waiting for ever (libpq turns keepalives on too).
                    let keepalive = socket2::TcpKeepalive::new()
                        .with_time(Duration::from_secs(60))
                        .with_interval(Duration::from_secs(10));
                    let _ = socket2::SockRef::from(&s).set_tcp_keepalive(&keepalive);
                    Stream::Tcp(s)
                }
                None => {
                    return Err(target.unreachable(format!(
                        "cannot connect to {}: {}",
                        target.shown(),
                        last.map(|e| e.to_string()).unwrap_or_default()
                    )))
                }
            }
        }
        Some(postgres::config::Host::Unix(dir)) => {
            let path = dir.join(format!(".s.PGSQL.{port}"));
            Stream::Unix(std::os::unix::net::UnixStream::connect(&path).map_err(|e| {
                target.unreachable(format!("cannot connect to {}: {e}", path.display()))
            })?)
        }
        None => return Ok(Start::Unsupported("the URL names no host".into())),
    };
    let user = config.get_user().unwrap_or("postgres").to_string();
    let password = config
        .get_password()
        .map(|p| p.to_vec())
        .or_else(|| std::env::var_os("PGPASSWORD").map(|p| p.into_encoded_bytes()));
    let mut bb = BaseBackup::new(stream, target.shown().to_string());
    // Like PGCONNECT_TIMEOUT for the tool: the server must answer the
    // start-up and authentication within it. The backup itself may be
    // silent for long (a checkpoint, waiting for WAL to be archived).
    bb.conn
        .get_ref()
        .set_read_timeout(Some(timeout))
        .map_err(|e| bb.io_err(e))?;
    bb.send_with(|b| {
        frontend::startup_message(
            [
                ("user", user.as_str()),
                ("replication", "true"),
                ("application_name", "cairn"),
            ],
            b,
        )
    })?;
    if let Some(why) = bb.authenticate(&user, password.as_deref())? {
        return Ok(Start::Unsupported(why));
    }
    // Parameter reports until the server is ready.
    let mut major = 0u32;
    loop {
        match bb.message()? {
            Message::ParameterStatus(p) => {
                if p.name().ok() == Some("server_version") {
                    let v = p.value().unwrap_or("");
                    major = v
                        .split(|c: char| !c.is_ascii_digit())
                        .next()
                        .and_then(|m| m.parse().ok())
                        .unwrap_or(0);
                }
            }
            Message::ReadyForQuery(_) => break,
            Message::BackendKeyData(_) | Message::NoticeResponse(_) => {}
            other => return Err(bb.unexpected(&other, "while starting")),
        }
    }
    if major < 15 {
        return Ok(Start::Unsupported(format!(
            "the server is PostgreSQL {major}, the built-in client needs 15 or later"
        )));
    }
    bb.conn
        .get_ref()
        .set_read_timeout(None)
        .map_err(|e| bb.io_err(e))?;
    bb.send_with(|b| {
        frontend::query(
            // WAIT false: the caller waits for the archive itself, at a finer
            // step than the server's one second (physical::wait_archived).
            "BASE_BACKUP (LABEL 'cairn', CHECKPOINT 'fast', WAL true, WAIT false, \
             MANIFEST 'yes', MANIFEST_CHECKSUMS 'CRC32C')",
            b,
        )
    })?;
    // The start position, then the tablespaces, then the CopyOut stream.
    let mut sets = 0;
    loop {
        match bb.message()? {
            Message::RowDescription(_) => {}
            Message::DataRow(row) => {
                let fields = row_fields(&row)?;
                if sets == 0 {
                    bb.start_lsn = fields.first().cloned().flatten().unwrap_or_default();
                    bb.timeline = fields
                        .get(1)
                        .cloned()
                        .flatten()
                        .and_then(|t| t.parse().ok())
                        .unwrap_or(0);
                } else if fields.first().is_some_and(|oid| oid.is_some()) {
                    // Like `pg_basebackup -D -`, which can write one archive only.
                    return Err(Error::failure(format!(
                        "{} has tablespaces outside the data directory; a physical snapshot holds the main one only",
                        bb.shown
                    ))
                    .with_hint("move the tablespaces into pg_default, or back the cluster up with a logical snapshot"));
                }
            }
            Message::CommandComplete(_) => sets += 1,
            Message::CopyOutResponse(_) => break,
            Message::NoticeResponse(n) => log_notice(&n),
            Message::ParameterStatus(_) => {}
            other => return Err(bb.unexpected(&other, "while the backup started")),
        }
    }
    Ok(Start::Started(Box::new(bb)))
}

/// Read a server's CopyOut stream of a base backup from `socket`, as
/// [`BaseBackup`] does once `BASE_BACKUP` has started: the archive (handed
/// to `sink`), then the manifest and the stop position, which it returns.
/// For the fuzz tests (through `crate::testing`): the bytes a server sends
/// are untrusted input.
#[cfg(feature = "testing")]
pub fn read_copy_out(
    socket: std::os::unix::net::UnixStream,
    mut sink: impl Write,
) -> Result<String> {
    let mut bb = BaseBackup::new(Stream::Unix(socket), "the fuzzed server".into());
    std::io::copy(&mut bb, &mut sink)
        .map_err(|e| Error::failure(format!("reading the fuzzed stream: {e}")))?;
    Ok(bb.stop_lsn)
}

impl BaseBackup {
    /// A base backup about to be read from `stream` (the server named
    /// `shown` in messages), at the start of its archive.
    fn new(stream: Stream, shown: String) -> BaseBackup {
        BaseBackup {
            conn: BufReader::with_capacity(256 << 10, stream),
            shown,
            phase: Phase::Archive,
            in_message: 0,
            to_header: 0,
            tail: Vec::new(),
            tail_at: 0,
            start_lsn: String::new(),
            stop_lsn: String::new(),
            timeline: 0,
        }
    }

    /// Build a frontend message with `build` and send it.
    fn send_with(
        &mut self,
        build: impl FnOnce(&mut BytesMut) -> std::io::Result<()>,
    ) -> Result<()> {
        let mut buf = BytesMut::new();
        build(&mut buf).map_err(|e| Error::failure(format!("a message to {}: {e}", self.shown)))?;
        self.conn
            .get_mut()
            .write_all(&buf)
            .map_err(|e| Error::failure(format!("writing to {}: {e}", self.shown)))
    }

    fn io_err(&self, e: std::io::Error) -> Error {
        Error::failure(format!("reading the base backup from {}: {e}", self.shown))
    }

    /// Read one whole message (not for archive data, which [`Read`] takes
    /// straight from the socket).
    fn message(&mut self) -> Result<Message> {
        let mut head = [0u8; 5];
        self.conn
            .read_exact(&mut head)
            .map_err(|e| self.io_err(e))?;
        self.rest_of_message(head)
    }

    /// The message whose tag and length are `head`, its body read now. The
    /// server's ErrorResponse becomes an error carrying its words.
    fn rest_of_message(&mut self, head: [u8; 5]) -> Result<Message> {
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        self.check_length(len)?;
        // Read, not allocated up front: a length of 1 GiB in a stream that
        // then ends must not cost 1 GiB (found by the fuzz target
        // replication_copy_out).
        let mut body = head.to_vec();
        self.read_body(len - 4, &mut body)?;
        let mut buf = BytesMut::from(&body[..]);
        let message = Message::parse(&mut buf)
            .map_err(|e| Error::failure(format!("a message from {}: {e}", self.shown)))?
            .ok_or_else(|| Error::failure(format!("a short message from {}", self.shown)))?;
        if let Message::ErrorResponse(e) = &message {
            return Err(server_error(&self.shown, e.fields()));
        }
        Ok(message)
    }

    /// A message length (its own four bytes included) that can be read:
    /// at least 4, and at most [`MAX_MESSAGE`] so that a broken peer cannot
    /// make cairn allocate gigabytes.
    fn check_length(&self, len: usize) -> Result<()> {
        if !(4..=MAX_MESSAGE).contains(&len) {
            return Err(Error::failure(format!(
                "{} sent a message of impossible length {len}",
                self.shown
            )));
        }
        Ok(())
    }

    /// Append the next `len` bytes from the server to `out`, which grows
    /// as they arrive; an error when the stream ends first.
    fn read_body(&mut self, len: usize, out: &mut Vec<u8>) -> Result<()> {
        let got = (&mut self.conn)
            .take(len as u64)
            .read_to_end(out)
            .map_err(|e| self.io_err(e))?;
        if got < len {
            return Err(self.io_err(std::io::ErrorKind::UnexpectedEof.into()));
        }
        Ok(())
    }

    fn unexpected(&self, m: &Message, when: &str) -> Error {
        let name = match m {
            Message::CopyData(_) => "CopyData",
            Message::CopyDone => "CopyDone",
            Message::DataRow(_) => "DataRow",
            Message::RowDescription(_) => "RowDescription",
            Message::CommandComplete(_) => "CommandComplete",
            Message::ReadyForQuery(_) => "ReadyForQuery",
            _ => "another message",
        };
        Error::failure(format!(
            "{} sent {name} {when}, which the replication protocol does not allow there",
            self.shown
        ))
    }

    /// Answer the server's authentication request; `Some(why)` when the
    /// built-in client cannot.
    fn authenticate(&mut self, user: &str, password: Option<&[u8]>) -> Result<Option<String>> {
        let need_password = |what: &str| {
            format!("the server asks for {what} and the URL and PGPASSWORD give none (pg_basebackup may find one in PGPASSFILE)")
        };
        loop {
            match self.message()? {
                Message::AuthenticationOk => return Ok(None),
                Message::AuthenticationCleartextPassword => {
                    let Some(pw) = password else {
                        return Ok(Some(need_password("a password")));
                    };
                    self.send_with(|b| frontend::password_message(pw, b))?;
                }
                Message::AuthenticationMd5Password(m) => {
                    let Some(pw) = password else {
                        return Ok(Some(need_password("an md5 password")));
                    };
                    let hash =
                        postgres_protocol::authentication::md5_hash(user.as_bytes(), pw, m.salt());
                    self.send_with(|b| frontend::password_message(hash.as_bytes(), b))?;
                }
                Message::AuthenticationSasl(b) => {
                    let mut offered = b.mechanisms();
                    let mut scram = false;
                    while let Some(m) = offered.next().map_err(|e| self.io_err(e))? {
                        scram |= m == SCRAM_SHA_256;
                    }
                    if !scram {
                        return Ok(Some("the server offers no SASL mechanism but SCRAM-SHA-256-PLUS (channel binding needs TLS)".into()));
                    }
                    let Some(pw) = password else {
                        return Ok(Some(need_password("a SCRAM password")));
                    };
                    let mut scram = ScramSha256::new(pw, ChannelBinding::unsupported());
                    self.send_with(|b| {
                        frontend::sasl_initial_response(SCRAM_SHA_256, scram.message(), b)
                    })?;
                    let Message::AuthenticationSaslContinue(c) = self.message()? else {
                        return Err(self.auth_err("no SASLContinue after the first SCRAM message"));
                    };
                    scram.update(c.data()).map_err(|e| self.auth_err(e))?;
                    self.send_with(|b| frontend::sasl_response(scram.message(), b))?;
                    let Message::AuthenticationSaslFinal(f) = self.message()? else {
                        return Err(self.auth_err("no SASLFinal after the second SCRAM message"));
                    };
                    scram.finish(f.data()).map_err(|e| self.auth_err(e))?;
                }
                _ => {
                    return Ok(Some(
                        "the server asks for an authentication method the built-in client lacks"
                            .into(),
                    ))
                }
            }
        }
    }

    fn auth_err(&self, e: impl std::fmt::Display) -> Error {
        Error::failure(format!("authenticating to {}: {e}", self.shown))
    }

    /// Move to the next CopyData message of archive data (skipping progress
    /// reports and asynchronous messages). Anything else before the archive's
    /// end-of-archive blocks is an error: the server's own, or a stream that
    /// ended early.
    fn next_data(&mut self) -> Result<()> {
        loop {
            let mut head = [0u8; 5];
            self.conn
                .read_exact(&mut head)
                .map_err(|e| self.io_err(e))?;
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            if head[0] != b'd' || len < 5 {
                // Not CopyData: an error, or the stream ending early.
                match self.rest_of_message(head)? {
                    // Asynchronous messages may come at any time.
                    Message::NoticeResponse(n) => {
                        log_notice(&n);
                        continue;
                    }
                    Message::ParameterStatus(_) => continue,
                    _ => {
                        return Err(Error::failure(format!(
                            "{} ended the base archive without its end-of-archive blocks (message {:?}, {} bytes before the next header)",
                            self.shown, head[0] as char, self.to_header
                        )))
                    }
                }
            }
            self.check_length(len)?;
            let mut kind = [0u8; 1];
            self.conn
                .read_exact(&mut kind)
                .map_err(|e| self.io_err(e))?;
            let body = len - 5;
            match kind[0] {
                b'd' => {
                    self.in_message = body;
                    return Ok(());
                }
                b'n' => {
                    let mut rest = Vec::new();
                    self.read_body(body, &mut rest)?;
                    let name = rest.split(|b| *b == 0).next().unwrap_or_default();
                    if name != b"base.tar" {
                        return Err(Error::failure(format!(
                            "{} sent archive {:?}, but a physical snapshot holds base.tar only",
                            self.shown,
                            String::from_utf8_lossy(name)
                        )));
                    }
                }
                _ => {
                    // Progress reports ('p') and anything newer: skipped.
                    self.read_body(body, &mut Vec::new())?;
                    if kind[0] == b'm' {
                        return Err(Error::failure(format!(
                            "{} sent the manifest before the base archive ended",
                            self.shown
                        )));
                    }
                }
            }
        }
    }

    /// Read exactly `out.len()` bytes of archive data.
    fn archive_exact(&mut self, out: &mut [u8]) -> Result<()> {
        let mut got = 0;
        while got < out.len() {
            if self.in_message == 0 {
                self.next_data()?;
                continue;
            }
            let n = (out.len() - got).min(self.in_message);
            self.conn
                .read_exact(&mut out[got..got + n])
                .map_err(|e| self.io_err(e))?;
            self.in_message -= n;
            got += n;
        }
        Ok(())
    }

    /// After the end-of-archive blocks: skip what is left of the archive,
    /// read the manifest and the stop position, and queue the manifest
    /// member and the end-of-archive blocks.
    fn finish_protocol(&mut self) -> Result<()> {
        // The rest of this message and any padding after the terminator.
        self.read_body(self.in_message, &mut Vec::new())?;
        self.in_message = 0;
        let mut manifest: Option<Vec<u8>> = None;
        let mut copying = true;
        loop {
            match self.message()? {
                Message::CopyData(d) if copying => {
                    let data = d.data();
                    match (data.first(), manifest.as_mut()) {
                        (Some(b'm'), None) => manifest = Some(Vec::new()),
                        (Some(b'd'), Some(m)) => m.extend_from_slice(&data[1..]),
                        (Some(b'n'), _) => {
                            return Err(Error::failure(format!(
                                "{} sent a second archive; a physical snapshot holds base.tar only",
                                self.shown
                            )))
                        }
                        _ => {} // the terminator's padding, progress
                    }
                }
                Message::CopyDone => copying = false,
                Message::RowDescription(_) | Message::CommandComplete(_) => {}
                Message::DataRow(row) => {
                    let fields = row_fields(&row)?;
                    self.stop_lsn = fields.first().cloned().flatten().unwrap_or_default();
                }
                Message::NoticeResponse(n) => log_notice(&n),
                // E.g. in_hot_standby, when a standby is promoted meanwhile.
                Message::ParameterStatus(_) => {}
                Message::ReadyForQuery(_) => break,
                other => return Err(self.unexpected(&other, "after the base archive")),
            }
        }
        let _ = self.send_with(|b| {
            frontend::terminate(b);
            Ok(())
        });
        let manifest = manifest
            .ok_or_else(|| Error::failure(format!("{} sent no backup manifest", self.shown)))?;
        if self.stop_lsn.is_empty() {
            return Err(Error::failure(format!(
                "{} sent no stop position",
                self.shown
            )));
        }
        let mut header = tar::Header::new_ustar();
        header
            .set_path("backup_manifest")
            .map_err(|e| Error::failure(format!("manifest header: {e}")))?;
        header.set_size(manifest.len() as u64);
        header.set_mode(0o600);
        header.set_mtime(jiff::Timestamp::now().as_second().max(0) as u64);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        self.tail.clear();
        self.tail_at = 0;
        self.tail.extend_from_slice(header.as_bytes());
        self.tail.extend_from_slice(&manifest);
        let padded = tar_padded(manifest.len() as u64) as usize;
        self.tail.resize(BLOCK + padded + 2 * BLOCK, 0);
        self.phase = Phase::Done;
        Ok(())
    }
}

impl Read for BaseBackup {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let to_io = |e: Error| std::io::Error::other(e.to_string());
        loop {
            if self.tail_at < self.tail.len() || self.phase == Phase::Done {
                let n = out.len().min(self.tail.len() - self.tail_at);
                out[..n].copy_from_slice(&self.tail[self.tail_at..self.tail_at + n]);
                self.tail_at += n;
                return Ok(n);
            }
            match self.phase {
                Phase::Done => unreachable!("handled above"),
                Phase::Ended => self.finish_protocol().map_err(to_io)?,
                Phase::Archive if out.is_empty() => return Ok(0),
                Phase::Archive if self.to_header == 0 => {
                    // A member's header, or the end of the archive.
                    let mut block = [0u8; BLOCK];
                    self.archive_exact(&mut block).map_err(to_io)?;
                    if block.iter().all(|b| *b == 0) {
                        // The first end-of-archive block; the second is skipped.
                        self.archive_exact(&mut block).map_err(to_io)?;
                        self.phase = Phase::Ended;
                        continue;
                    }
                    let data = crate::chunk::tar_data_len(&block).ok_or_else(|| {
                        std::io::Error::other(format!(
                            "{} sent a tar header cairn cannot read",
                            self.shown
                        ))
                    })?;
                    self.to_header = tar_padded(data);
                    // One per file: handed over through `tail` like the end.
                    self.tail.clear();
                    self.tail.extend_from_slice(&block);
                    self.tail_at = 0;
                }
                Phase::Archive => {
                    if self.in_message == 0 {
                        self.next_data().map_err(to_io)?;
                        continue;
                    }
                    let want = (out.len() as u64)
                        .min(self.to_header)
                        .min(self.in_message as u64) as usize;
                    // Straight from the socket into the chunker's buffer.
                    let n = self.conn.read(&mut out[..want])?;
                    if n == 0 {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            format!("{} closed the connection mid-archive", self.shown),
                        ));
                    }
                    self.in_message -= n;
                    self.to_header -= n as u64;
                    return Ok(n);
                }
            }
        }
    }
}

/// The text fields of a data row (`None` for NULL).
fn row_fields(
    row: &postgres_protocol::message::backend::DataRowBody,
) -> Result<Vec<Option<String>>> {
    let buf = row.buffer();
    row.ranges()
        .map(|r| Ok(r.map(|r| String::from_utf8_lossy(&buf[r]).into_owned())))
        .collect()
        .map_err(|e| Error::failure(format!("a data row: {e}")))
}

fn server_error(
    shown: &str,
    mut fields: postgres_protocol::message::backend::ErrorFields,
) -> Error {
    let (mut message, mut detail, mut hint) = (String::new(), None, None);
    while let Ok(Some(f)) = fields.next() {
        match f.type_() {
            b'M' => message = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            b'D' => detail = Some(String::from_utf8_lossy(f.value_bytes()).into_owned()),
            b'H' => hint = Some(String::from_utf8_lossy(f.value_bytes()).into_owned()),
            _ => {}
        }
    }
    let mut e = Error::failure(match detail {
        Some(d) => format!("{shown}: {message} ({d})"),
        None => format!("{shown}: {message}"),
    });
    if let Some(h) = hint {
        e = e.with_hint(h);
    }
    e
}

fn log_notice(n: &postgres_protocol::message::backend::NoticeResponseBody) {
    let mut fields = n.fields();
    while let Ok(Some(f)) = fields.next() {
        if f.type_() == b'M' {
            tracing::info!(notice = %String::from_utf8_lossy(f.value_bytes()), "server notice during the base backup");
        }
    }
}
