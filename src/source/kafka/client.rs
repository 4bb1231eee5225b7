//! Connecting to Kafka: client properties, request timeouts and the retry
//! policy every broker request goes through.

use crate::error::{Error, Kind, Result};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::ClientConfig;
use std::path::Path;
use std::time::Duration;

/// Exponential backoff: `retries` more attempts after the first, waiting
/// `base`, 2×`base`, 4×`base`, … between them.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub retries: u32,
    pub base: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retries: 3,
            base: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `n` (1-based).
    pub fn delay(&self, n: u32) -> Duration {
        self.base.saturating_mul(1u32 << (n - 1).min(16))
    }
}

/// Where the brokers are and how to talk to them.
#[derive(Clone, Debug)]
pub struct KafkaOptions {
    /// `bootstrap.servers`, as given.
    pub brokers: String,
    /// librdkafka properties (SASL, TLS, …) from `--kafka-config`; never logged.
    pub properties: Vec<(String, String)>,
    pub retry: RetryPolicy,
    /// Timeout of one request (metadata, offsets, admin operations).
    pub timeout: Duration,
}

impl KafkaOptions {
    pub fn new(brokers: &str) -> Result<KafkaOptions> {
        let b = brokers.trim();
        if b.is_empty() || b.split(',').any(|h| h.trim().is_empty()) {
            return Err(Error::usage(format!("broker list {brokers:?} is empty"))
                .with_hint("give HOST:PORT[,HOST:PORT...], e.g. --kafka localhost:9092"));
        }
        for h in b.split(',') {
            let h = h.trim();
            let port = h.rsplit_once(':').map(|(_, p)| p);
            if port.is_none_or(|p| p.parse::<u16>().is_err()) {
                return Err(Error::usage(format!("broker {h:?} has no valid port"))
                    .with_hint("give HOST:PORT, e.g. localhost:9092"));
            }
        }
        Ok(KafkaOptions {
            brokers: b.to_string(),
            properties: Vec::new(),
            retry: RetryPolicy::default(),
            timeout: Duration::from_secs(10),
        })
    }

    /// Read librdkafka properties (`key=value` lines, `#` comments) from a file.
    pub fn load_properties(&mut self, path: &Path) -> Result<()> {
        let text = crate::fsutil::read_small_text(path, 16 << 20).map_err(|e| {
            Error::usage(format!(
                "cannot read Kafka properties {}: {e}",
                path.display()
            ))
            .with_hint("check the path given by --kafka-config (or kafka-config in the plan)")
        })?;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                return Err(Error::usage(format!(
                    "{}:{}: expected key=value",
                    path.display(),
                    i + 1
                ))
                .with_hint("one librdkafka property per line, e.g. security.protocol=SASL_SSL"));
            };
            let k = k.trim();
            if k == "bootstrap.servers" {
                return Err(Error::usage(format!(
                    "{}:{}: bootstrap.servers belongs on the command line",
                    path.display(),
                    i + 1
                )));
            }
            self.properties.push((k.to_string(), v.trim().to_string()));
        }
        Ok(())
    }

    /// A client configuration with the brokers and the user's properties.
    pub fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", "cairn")
            .set("socket.timeout.ms", self.timeout.as_millis().to_string())
            .set("log.connection.close", "false");
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
}

/// Whether an error may go away by itself (broker restarting, leader moving).
pub fn is_transient(e: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::BrokerTransportFailure
                | C::Resolve
                | C::AllBrokersDown
                | C::OperationTimedOut
                | C::RequestTimedOut
                | C::NetworkException
                | C::BrokerNotAvailable
                | C::LeaderNotAvailable
                | C::NotLeaderForPartition
                | C::NotCoordinator
                | C::CoordinatorNotAvailable
                | C::CoordinatorLoadInProgress
        )
    )
}

/// Run `f` under the retry policy; transient errors are retried with
/// growing delays, each failed attempt logged. After the last retry the error
/// is [`Kind::Unavailable`] and names the brokers.
pub fn retry<T>(
    opts: &KafkaOptions,
    what: &str,
    mut f: impl FnMut() -> std::result::Result<T, KafkaError>,
) -> Result<T> {
    let attempts = opts.retry.retries + 1;
    for attempt in 1..=attempts {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if !is_transient(&e) => {
                return Err(Error::failure(format!(
                    "{what} on Kafka brokers {}: {e}",
                    opts.brokers
                )))
            }
            Err(e) if attempt < attempts => {
                crate::interrupt::check()?;
                let delay = opts.retry.delay(attempt);
                tracing::warn!(
                    attempt,
                    of = attempts,
                    delay_ms = delay.as_millis() as u64,
                    brokers = %opts.brokers,
                    "{what} failed: {e}; retrying in {}",
                    humantime::format_duration(delay)
                );
                std::thread::sleep(delay);
            }
            Err(e) => {
                tracing::error!(attempt, of = attempts, brokers = %opts.brokers, "{what} failed: {e}; giving up");
                return Err(Error::new(
                    Kind::Unavailable,
                    format!(
                        "cannot reach the Kafka brokers {}: {what} failed {attempts} times: {e}",
                        opts.brokers
                    ),
                )
                .with_hint("check that the brokers run and the address is right; --retries and --retry-delay set the retry policy"));
            }
        }
    }
    unreachable!("the loop returns on the last attempt")
}

/// librdkafka's client-level errors, logged at the right level: a partition
/// reaching its end is how reading stops, not an error.
pub struct Quiet;

impl rdkafka::ClientContext for Quiet {
    fn error(&self, error: KafkaError, reason: &str) {
        let eof = matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF);
        if eof {
            tracing::debug!("librdkafka: {reason}");
        } else {
            tracing::warn!("librdkafka: {error}: {reason}");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for Quiet {}

/// The consumer cairn uses everywhere.
pub type KafkaConsumer = rdkafka::consumer::BaseConsumer<Quiet>;

/// Wait for an rdkafka admin future on this thread.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    futures::executor::block_on(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double() {
        let p = RetryPolicy {
            retries: 3,
            base: Duration::from_millis(100),
        };
        let d: Vec<u64> = (1..=3).map(|n| p.delay(n).as_millis() as u64).collect();
        assert_eq!(d, vec![100, 200, 400]);
    }

    #[test]
    fn broker_lists_are_checked() {
        assert!(KafkaOptions::new("localhost:9092,other:9093").is_ok());
        for bad in ["", "localhost", "a:9092,", "host:port"] {
            let e = KafkaOptions::new(bad).unwrap_err();
            assert_eq!(e.kind(), Kind::Usage, "{bad}");
        }
    }
}
