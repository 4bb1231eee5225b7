//! The status page, `GET /` on `cairn serve`: server-side HTML for a person
//! (the API's JSON is for programs) — per source the history of runs with
//! size, bytes added and duration charts and the failures; the runs; the
//! retention calendar (which rule keeps each snapshot, which go next);
//! the proofs and corrupted snapshots; the WAL archive and restorable
//! window; storage against its thresholds; the alerts.
//!
//! Who may see it is decided in `api.rs` (an API token, or a session made
//! by `POST /login` — see `session.rs`); this module renders. A load reads
//! only what is new in the repository (`cache.rs`), builds a bounded view
//! (`view.rs`) and writes it with maud (`html.rs`, `chart.rs`), which
//! escapes every value. The page carries no script and forbids any with
//! its Content-Security-Policy.

mod cache;
mod chart;
mod html;
pub mod session;
#[cfg(test)]
mod tests;
mod view;

use super::Daemon;
use crate::error::Result;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::{Arc, Mutex};

/// The status page's state in the daemon: sessions and the cache of what
/// was read from the repository.
#[derive(Default)]
pub struct Page {
    pub sessions: session::Sessions,
    cache: Mutex<cache::RepoCache>,
}

/// Headers of every page: no caching (it shows private data), no framing,
/// no script, forms only to this server.
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

/// An HTML response with the page's headers.
pub fn html_response(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    for (k, v) in [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    r
}

/// The login form (`failed`: after a refused token).
pub fn login_form(failed: bool) -> String {
    html::login(failed).into_string()
}

impl Page {
    /// The page as the daemon knows it now. Blocking (reads the repository).
    pub fn render(&self, daemon: &Daemon) -> Result<String> {
        let plan = daemon
            .plan
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let repo = daemon.open_repo()?;
        let physical = super::archive::physical_sources(&plan);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.refresh(&repo, !physical.is_empty())?;
        let status = daemon.status();
        let snapshots = cache.snapshots();
        let wal = wal_windows(&repo, &plan, &status, &cache, &snapshots, &physical);
        let v = view::build(view::Input {
            plan: &plan,
            status,
            proofs: cache.newest_proofs(),
            damaged: cache
                .damaged()
                .iter()
                .map(|(id, e)| (*id, e.clone()))
                .collect(),
            snapshots,
            wal,
            now: crate::clock::now(),
            tz: jiff::tz::TimeZone::system(),
        });
        Ok(html::page(&v).into_string())
    }
}

/// Each physical source's WAL archive as the daemon last checked it, and
/// its restorable window: from the end of its oldest base backup in the
/// plan's snapshots to how far its newest one reaches through the archived
/// WAL (reading a segment only for entries of an older cairn).
fn wal_windows(
    repo: &crate::repository::Repository,
    plan: &crate::plan::Plan,
    status: &super::status::Status,
    cache: &cache::RepoCache,
    snapshots: &[(crate::repo::SnapshotId, &cache::Cached)],
    physical: &[(String, String)],
) -> Vec<view::Wal> {
    if physical.is_empty() {
        return Vec::new();
    }
    let archive = crate::source::pg::WalArchive::new(&cache.wal_entries());
    physical
        .iter()
        .map(|(name, _)| {
            let bases: Vec<_> = snapshots
                .iter()
                .filter(|(_, c)| plan.made(&c.snapshot))
                .flat_map(|(_, c)| c.physical.iter())
                .filter(|(n, _)| n == name)
                .map(|(_, m)| m)
                .collect();
            let mut w = view::Wal {
                source: name.clone(),
                archive: status.archives.get(name).cloned(),
                ..Default::default()
            };
            if let (Some(oldest), Some(newest)) = (bases.first(), bases.last()) {
                if let Some(r) = crate::source::pg::reach(repo, &archive, newest) {
                    w.window = Some((oldest.stop_time, r.time));
                    w.gap = r.gap.map(|g| archive.size.name(g));
                    w.approximate = r.approximate;
                }
            }
            w
        })
        .collect()
}

/// `GET /`: the page for an authenticated viewer, else the login form.
pub async fn index(daemon: Arc<Daemon>, page: Arc<Page>, viewer: bool) -> Response {
    if !viewer {
        return html_response(StatusCode::OK, login_form(false));
    }
    let r = tokio::task::spawn_blocking(move || page.render(&daemon)).await;
    match r {
        Ok(Ok(body)) => html_response(StatusCode::OK, body),
        Ok(Err(e)) => {
            tracing::error!(error = e.to_string().as_str(), "status page failed");
            html_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                html::failure(&e.to_string(), e.hint()).into_string(),
            )
        }
        Err(e) => html_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            html::failure(&e.to_string(), None).into_string(),
        ),
    }
}
