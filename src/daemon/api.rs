//! The HTTP API of `cairn serve`.
//!
//! `/health` answers without authentication (liveness). Everything else
//! needs `Authorization: Bearer TOKEN`; tokens are configured as BLAKE3
//! hashes and compared with `blake3::Hash`'s constant-time equality, every
//! configured token checked, so timing tells nothing. A missing or wrong
//! token gets a bare 401. Every request is logged (target `cairn::access`)
//! with the token's name, method, route, status and duration.

use super::{Daemon, Trigger};
use axum::extract::{Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::Arc;
use std::time::Instant;

/// A configured token: its name and the BLAKE3 hash of its secret.
#[derive(Clone)]
pub struct TokenHash {
    pub name: String,
    pub hash: blake3::Hash,
}

/// Tokens of the plan's `api` node (inline and from `token-file`).
pub fn tokens(plan: &crate::plan::Plan) -> Vec<TokenHash> {
    let Some(api) = &plan.api else {
        return Vec::new();
    };
    let mut all = api.tokens.clone();
    if let Some(f) = &api.token_file {
        match crate::plan::read_token_file(f) {
            Ok(t) => all.extend(t),
            Err(e) => tracing::error!("token file {}: {e}", f.display()),
        }
    }
    all.into_iter()
        .filter_map(|t| {
            let hex = t.hash.strip_prefix("blake3:")?;
            Some(TokenHash {
                name: t.name,
                hash: blake3::Hash::from_hex(hex).ok()?,
            })
        })
        .collect()
}

/// The name of the token `presented` matches, if any.
pub fn authenticate(tokens: &[TokenHash], presented: &str) -> Option<String> {
    let h = blake3::hash(presented.as_bytes());
    let mut found = None;
    for t in tokens {
        // blake3::Hash compares in constant time; no early exit either.
        if t.hash == h {
            found = Some(t.name.clone());
        }
    }
    found
}

#[derive(Clone)]
struct Ctx {
    daemon: Arc<Daemon>,
}

async fn access_log(State(ctx): State<Ctx>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = req.uri().path().to_string();
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let tokens = {
        let plan = ctx.daemon.plan.read().unwrap_or_else(|e| e.into_inner());
        tokens(&plan)
    };
    let who = presented.as_deref().and_then(|p| authenticate(&tokens, p));
    let open = route == "/health";
    let resp = if open || who.is_some() {
        next.run(req).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "unauthorized\n",
        )
            .into_response()
    };
    tracing::info!(
        target: "cairn::access",
        token = who.as_deref().unwrap_or(if presented.is_some() { "invalid" } else { "none" }),
        method = %method,
        route = %route,
        status = resp.status().as_u16(),
        duration_ms = started.elapsed().as_millis() as u64,
        "request"
    );
    resp
}

async fn health() -> &'static str {
    "ok\n"
}

async fn status(State(ctx): State<Ctx>) -> Response {
    Json(ctx.daemon.status()).into_response()
}

async fn metrics(State(ctx): State<Ctx>) -> Response {
    let body = super::status::metrics(&ctx.daemon.status());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn snapshots(State(ctx): State<Ctx>) -> Response {
    let d = ctx.daemon.clone();
    let r = tokio::task::spawn_blocking(move || -> crate::error::Result<serde_json::Value> {
        let repo = d.open_repo()?;
        let list: Vec<_> = repo
            .snapshots()?
            .into_iter()
            .map(|(id, s)| {
                serde_json::json!({
                    "id": id, "short_id": id.short(), "time": s.time, "tags": s.tags,
                    "plan": s.plan, "complete": s.is_complete(), "size": s.size(),
                    "bytes_added": s.summary.bytes_added, "duration_ms": s.summary.duration_ms,
                    "sources": s.sources.iter().map(|x| serde_json::json!({
                        "name": x.name, "kind": x.kind, "status": x.status, "size": x.size,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        Ok(serde_json::Value::Array(list))
    })
    .await;
    match r {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

#[derive(serde::Deserialize)]
struct BackupQuery {
    /// Wait for the run to finish and answer with its outcome.
    #[serde(default)]
    wait: bool,
    /// Only this source (repeat as `source=a&source=b` is not supported; comma-separate).
    source: Option<String>,
}

fn json_error(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    (status, Json(serde_json::json!({"error": msg.to_string()}))).into_response()
}

/// Start `run` (a backup or a restore test) unless one is going on: 202 at
/// once, or with `wait` its outcome via `done` (200), 409 when busy, 500 on
/// failure. `what` names the job in the log.
async fn trigger<T, R>(
    ctx: &Ctx,
    wait: bool,
    busy: &'static str,
    what: &'static str,
    run: R,
    done: fn(T) -> Response,
) -> Response
where
    T: Send + 'static,
    R: FnOnce() -> crate::error::Result<Option<T>> + Send + 'static,
{
    if ctx.daemon.status().running.is_some() {
        return json_error(StatusCode::CONFLICT, busy);
    }
    if !wait {
        std::thread::spawn(move || {
            if let Err(e) = run() {
                tracing::error!("{what} (api) failed: {e}");
            }
        });
        return (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({"accepted": true})),
        )
            .into_response();
    }
    match tokio::task::spawn_blocking(run).await {
        Ok(Ok(Some(v))) => done(v),
        Ok(Ok(None)) => json_error(StatusCode::CONFLICT, busy),
        Ok(Err(e)) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn backups(State(ctx): State<Ctx>, Query(q): Query<BackupQuery>) -> Response {
    let sources: Vec<String> = q
        .source
        .map(|s| s.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    let d = ctx.daemon.clone();
    let run = move || d.run_backup(Trigger::Api, &sources, &[]);
    let done = |id: String| Json(serde_json::json!({"snapshot": id})).into_response();
    trigger(
        &ctx,
        q.wait,
        "a backup run is already going on",
        "backup run",
        run,
        done,
    )
    .await
}

#[derive(serde::Deserialize)]
struct CheckQuery {
    #[serde(default)]
    wait: bool,
}

/// Trigger a restore test of a random snapshot (as the `verify` schedule does).
async fn checks(State(ctx): State<Ctx>, Query(q): Query<CheckQuery>) -> Response {
    let d = ctx.daemon.clone();
    let run = move || d.run_restore_test(Trigger::Api);
    let done = |p: super::LastProof| Json(p).into_response();
    trigger(
        &ctx,
        q.wait,
        "a run is already going on",
        "restore test",
        run,
        done,
    )
    .await
}

pub fn router(daemon: Arc<Daemon>) -> Router {
    let ctx = Ctx { daemon };
    Router::new()
        .route("/health", get(health))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/snapshots", get(snapshots))
        .route("/backups", post(backups))
        .route("/checks", post(checks))
        .layer(middleware::from_fn_with_state(ctx.clone(), access_log))
        .with_state(ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_by_hash_only() {
        let t = vec![
            TokenHash {
                name: "ops".into(),
                hash: blake3::hash(b"s3cret"),
            },
            TokenHash {
                name: "ci".into(),
                hash: blake3::hash(b"other"),
            },
        ];
        assert_eq!(authenticate(&t, "s3cret").as_deref(), Some("ops"));
        assert_eq!(authenticate(&t, "other").as_deref(), Some("ci"));
        assert_eq!(authenticate(&t, "s3cre"), None);
        assert_eq!(authenticate(&t, ""), None);
    }
}
