//! Alerts that no channel took, sent again until one does.
//!
//! An alert raised while the SMTP server (and the webhook, if any) is down
//! used to be logged as `alert not delivered` and lost: a failed backup at
//! 02:00 during a mail outage reached nobody unless it failed again later
//! (found by `scripts/timelapse`, spec/timelapse.md). The daemon keeps such
//! alerts here and offers them again at every periodic check
//! (`--check-every`) until a channel takes them; the resent mail says when
//! it was first raised. They are kept in memory: a restart loses them
//! (its start-up checks raise what is still true, such as a missed backup).

use super::alerts::{Alert, Alerter, Delivery};
use jiff::Timestamp;
use std::sync::Mutex;

/// At most this many alerts wait; beyond, the oldest is dropped (logged).
const CAPACITY: usize = 100;

struct Waiting {
    alert: Alert,
    raised: Timestamp,
    tries: u32,
}

/// The alerts waiting for a channel.
#[derive(Default)]
pub struct Outbox {
    waiting: Mutex<Vec<Waiting>>,
}

impl Outbox {
    /// Keep `alert`, which every channel refused at `raised`. A newer alert
    /// of the same kind and key replaces an older one still waiting.
    pub fn keep(&self, alert: Alert, raised: Timestamp) {
        let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        w.retain(|x| !(x.alert.kind == alert.kind && x.alert.key == alert.key));
        if w.len() >= CAPACITY {
            let dropped = w.remove(0);
            tracing::error!(
                kind = dropped.alert.kind.name(),
                key = dropped.alert.key.as_str(),
                subject = dropped.alert.subject.as_str(),
                "undelivered alert dropped: too many are waiting"
            );
        }
        w.push(Waiting {
            alert,
            raised,
            tries: 1,
        });
    }

    /// Offer every waiting alert to `alerter` again; returns the subjects of
    /// those delivered now. One an identical alert has since gone out for
    /// (rate-limited) is dropped: its news arrived.
    pub fn retry(&self, alerter: &Alerter) -> Vec<String> {
        let waiting = std::mem::take(&mut *self.waiting.lock().unwrap_or_else(|e| e.into_inner()));
        let mut delivered = Vec::new();
        let mut still = Vec::new();
        for mut w in waiting {
            let mut late = w.alert.clone();
            late.body = format!(
                "This alert was raised at {} and could not be delivered then; it is sent again now.\n\n{}",
                w.raised.strftime("%Y-%m-%d %H:%M:%S UTC"),
                w.alert.body
            );
            match alerter.send(&late) {
                Ok(Delivery::Sent { subject, .. }) => {
                    tracing::info!(
                        kind = w.alert.kind.name(),
                        key = w.alert.key.as_str(),
                        raised = %w.raised,
                        tries = w.tries + 1,
                        "undelivered alert sent"
                    );
                    delivered.push(subject);
                }
                Ok(_) => {}
                Err(_) => {
                    w.tries += 1;
                    still.push(w);
                }
            }
        }
        // Alerts kept while this ran go after the older ones.
        let mut now = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let newer = std::mem::take(&mut *now);
        *now = still;
        drop(now);
        for w in newer {
            self.keep(w.alert, w.raised);
        }
        delivered
    }
}
