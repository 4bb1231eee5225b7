//! The HTTP API of `cairn serve`.
//!
//! `/health` answers without authentication (liveness). Everything else
//! needs `Authorization: Bearer TOKEN`; tokens are configured as BLAKE3
//! hashes and compared with `blake3::Hash`'s constant-time equality, every
//! configured token checked, so timing tells nothing. A missing or wrong
//! token gets a bare 401. Every request is logged (target `cairn::access`,
//! event `request`) with the token's name — never the token —, method,
//! route, query, status, duration and the peer's address.
//!
//! The status page (`GET /`, `page.rs`) is for browsers, which are given
//! the token once: `POST /login` (a form) checks it as [`authenticate`]
//! does and sets a session cookie (`page::session`); the session then
//! authorizes `GET` (and `HEAD`) requests only — never `POST /backups` or
//! `/checks`, so no other site can make a logged-in browser start work —
//! until `POST /logout`, its lifetime, or its token leaving the plan. `GET
//! /` without a token or session shows the login form. A request a session
//! authorized is logged with its token's name and `via=session`.
//!
//! The caller's mistakes get 4xx with a JSON body `{"error", "hint"}` and
//! start nothing: an unknown source in `POST /backups?source=…` is 400 (the
//! body lists the plan's sources in `sources`), an unreadable query string
//! 400, an unknown route 404. 5xx is left for what failed on this side.
//!
//! The server itself ([`serve`]) is an accept loop over hyper's HTTP/1
//! connection builder rather than `axum::serve`, because an unauthenticated
//! client must not be able to take what the backups need: every connection
//! gets a header-read timeout (which also bounds idle keep-alive), a small
//! read buffer, and a place in a bounded table of open connections — when
//! the table is full the oldest connection that is not inside a request is
//! closed to make room, or, if every one is inside a request, the new one is
//! closed at once. Request bodies are refused above [`MAX_BODY`] (only
//! `POST /login` takes one: a form holding the token). The limits are stated in `spec/plan.md`
//! ("HTTP server limits").

use super::page::{self, session, Page};
use super::{Daemon, Trigger};
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{ConnectInfo, Form, Query, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

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
    matching(tokens, presented).map(|t| t.name.clone())
}

/// The configured token `presented` matches, if any.
fn matching<'a>(tokens: &'a [TokenHash], presented: &str) -> Option<&'a TokenHash> {
    let h = blake3::hash(presented.as_bytes());
    let mut found = None;
    for t in tokens {
        // blake3::Hash compares in constant time; no early exit either.
        if t.hash == h {
            found = Some(t);
        }
    }
    found
}

#[derive(Clone)]
struct Ctx {
    daemon: Arc<Daemon>,
    page: Arc<Page>,
}

impl Ctx {
    fn tokens(&self) -> Vec<TokenHash> {
        let plan = self.daemon.plan.read().unwrap_or_else(|e| e.into_inner());
        tokens(&plan)
    }
}

/// Set on `GET /` requests: whether a token or session authorizes them.
#[derive(Clone, Copy)]
struct Viewer(bool);

/// Set by `POST /login` on its response, for the access log: the token
/// name it was given (or `invalid`).
#[derive(Clone)]
struct LoggedIn(String);

/// Who a request comes from: (token name, how it was shown).
fn identify(
    ctx: &Ctx,
    tokens: &[TokenHash],
    req: &Request,
) -> (Option<(String, &'static str)>, bool) {
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(p) = bearer {
        return (authenticate(tokens, p).map(|n| (n, "bearer")), true);
    }
    let from_session = req
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(session::from_header)
        .and_then(|v| ctx.page.sessions.token_of(v))
        // Only while its token is still configured.
        .and_then(|h| tokens.iter().find(|t| t.hash == h))
        .map(|t| (t.name.clone(), "session"));
    (from_session, false)
}

async fn access_log(State(ctx): State<Ctx>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let peer = req
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0);
    let tokens = ctx.tokens();
    let (who, presented) = identify(&ctx, &tokens, &req);
    // A session reads; only a token shown with the request may change anything.
    let safe = method == Method::GET || method == Method::HEAD;
    let authorized = match &who {
        Some((_, "session")) => safe,
        Some(_) => true,
        None => false,
    };
    let open = matches!(route.as_str(), "/health" | "/login" | "/logout")
        || (route == "/" && safe && !presented);
    req.extensions_mut().insert(Viewer(authorized));
    let resp = if open || authorized {
        next.run(req).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "unauthorized\n",
        )
            .into_response()
    };
    let logged_in = resp.extensions().get::<LoggedIn>().map(|l| l.0.clone());
    let (token, via) = match (&logged_in, &who) {
        (Some(name), _) => (name.as_str(), Some("login")),
        (None, Some((name, "session"))) => (name.as_str(), Some("session")),
        (None, Some((name, _))) => (name.as_str(), None),
        (None, None) if presented => ("invalid", None),
        (None, None) => ("none", None),
    };
    tracing::info!(
        target: "cairn::access",
        token,
        method = %method,
        route = %route,
        query = query.as_deref(),
        status = resp.status().as_u16(),
        duration_ms = started.elapsed().as_millis() as u64,
        peer = peer.map(tracing::field::display),
        via,
        "request"
    );
    resp
}

/// `GET /`: the status page, or the login form.
async fn index(State(ctx): State<Ctx>, req: Request) -> Response {
    let viewer = req.extensions().get::<Viewer>().is_some_and(|v| v.0);
    page::index(ctx.daemon.clone(), ctx.page.clone(), viewer).await
}

#[derive(serde::Deserialize)]
struct LoginForm {
    token: String,
}

/// `POST /login`: a valid token makes a session (cookie) and goes to `/`
/// (303); anything else gets the form again, 401, with a generic message.
async fn login(State(ctx): State<Ctx>, form: Result<Form<LoginForm>, FormRejection>) -> Response {
    let tokens = ctx.tokens();
    let found = form
        .ok()
        .and_then(|Form(f)| matching(&tokens, &f.token).cloned());
    let Some(t) = found else {
        let mut r = page::html_response(StatusCode::UNAUTHORIZED, page::login_form(true));
        r.extensions_mut().insert(LoggedIn("invalid".into()));
        return r;
    };
    let cookie = session::set_cookie(&ctx.page.sessions.create(t.hash));
    let mut r = (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/".to_string()),
            (header::SET_COOKIE, cookie),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
    )
        .into_response();
    r.extensions_mut().insert(LoggedIn(t.name));
    r
}

/// `POST /logout`: the session ends, the cookie is cleared, back to `/`.
async fn logout(State(ctx): State<Ctx>, req: Request) -> Response {
    for v in req
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(session::from_header)
    {
        ctx.page.sessions.end(v);
    }
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/".to_string()),
            (header::SET_COOKIE, session::clear_cookie()),
        ],
    )
        .into_response()
}

async fn health() -> &'static str {
    "ok\n"
}

async fn status(State(ctx): State<Ctx>) -> Response {
    Json(ctx.daemon.status()).into_response()
}

async fn metrics(State(ctx): State<Ctx>) -> Response {
    // Rendered from the status: a scrape reads nothing from the repository.
    let body = super::metrics::metrics(&ctx.daemon.status());
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
                        "errors": x.errors,
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

/// 400 for a query string that does not parse (`?wait=maybe`).
fn bad_query(e: QueryRejection) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({
            "error": e.body_text(),
            "hint": "the query parameters are wait=true|false and, for /backups, source=NAME[,NAME…]",
        })),
    )
        .into_response()
}

/// 404 for a route the API does not have.
async fn no_route(req: Request) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({
            "error": format!("no route {} {}", req.method(), req.uri().path()),
            "hint": "the routes are GET /health, / (the status page), /status, /metrics, /snapshots and POST /backups, /checks, /login, /logout",
        })),
    )
        .into_response()
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
                tracing::error!(
                    trigger = "api",
                    job = what,
                    error = e.to_string().as_str(),
                    "triggered job failed"
                );
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

async fn backups(
    State(ctx): State<Ctx>,
    q: Result<Query<BackupQuery>, QueryRejection>,
) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return bad_query(e),
    };
    let sources: Vec<String> = q
        .source
        .map(|s| s.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    // The caller's mistake: answered here, before any run starts, so it is
    // neither counted as a failed run nor alerted.
    if let Err(e) = ctx.daemon.check_source_names(&sources) {
        return (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({
                "error": e.to_string(),
                "hint": e.hint(),
                "sources": ctx.daemon.source_names(),
            })),
        )
            .into_response();
    }
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
async fn checks(State(ctx): State<Ctx>, q: Result<Query<CheckQuery>, QueryRejection>) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return bad_query(e),
    };
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
    let ctx = Ctx {
        daemon,
        page: Arc::new(Page::default()),
    };
    Router::new()
        .route("/", get(index))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/health", get(health))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/snapshots", get(snapshots))
        .route("/backups", post(backups))
        .route("/checks", post(checks))
        .fallback(no_route)
        // Inside the access log, so a refused body is logged too.
        .layer(tower_http::limit::RequestBodyLimitLayer::new(MAX_BODY))
        .layer(middleware::from_fn_with_state(ctx.clone(), access_log))
        .with_state(ctx)
}

/// Request bodies larger than this get 413 (only `POST /login` reads one,
/// a form with the token).
pub const MAX_BODY: usize = 4096;

/// The HTTP server's limits (`spec/plan.md`, "HTTP server limits").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once, at most.
    pub max_connections: usize,
    /// A request head (request line and headers) must arrive within this,
    /// counted from the connection's start or the end of its previous
    /// response: it is the idle keep-alive timeout too.
    pub header_read_timeout: Duration,
}

impl Limits {
    /// Limits for a process allowed `soft_nofile` open descriptors: at most
    /// a quarter of them (and never more than 256) go to API connections,
    /// the rest stay for backups, the repository and the index cache.
    pub fn for_nofile(soft_nofile: u64) -> Limits {
        Limits {
            max_connections: usize::try_from((soft_nofile / 4).clamp(8, 256)).unwrap_or(8),
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// One open connection in the table.
struct Conn {
    /// Requests of this connection being answered now.
    busy: Arc<AtomicUsize>,
    /// Notified to close the connection to make room.
    evict: Arc<Notify>,
}

/// The open connections, oldest first.
#[derive(Default)]
struct Conns {
    next: u64,
    open: BTreeMap<u64, Conn>,
}

impl Conns {
    /// Make room for a new connection and register it, or `None` when the
    /// table is full of connections that are all inside a request.
    fn admit(&mut self, max: usize) -> Option<(u64, Arc<AtomicUsize>, Arc<Notify>)> {
        if self.open.len() >= max {
            let idle = self
                .open
                .iter()
                .find(|(_, c)| c.busy.load(Ordering::SeqCst) == 0)
                .map(|(id, _)| *id)?;
            if let Some(c) = self.open.remove(&idle) {
                c.evict.notify_one();
            }
        }
        let id = self.next;
        self.next += 1;
        let busy = Arc::new(AtomicUsize::new(0));
        let evict = Arc::new(Notify::new());
        self.open.insert(
            id,
            Conn {
                busy: busy.clone(),
                evict: evict.clone(),
            },
        );
        Some((id, busy, evict))
    }
}

/// Counts a request as being answered while it lives.
struct InRequest(Arc<AtomicUsize>);

impl InRequest {
    fn enter(busy: &Arc<AtomicUsize>) -> InRequest {
        busy.fetch_add(1, Ordering::SeqCst);
        InRequest(busy.clone())
    }
}

impl Drop for InRequest {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serve `app` on `listener` within `limits` until the runtime stops.
pub async fn serve(listener: tokio::net::TcpListener, app: Router, limits: Limits) {
    let conns = Arc::new(Mutex::new(Conns::default()));
    let mut refused: u64 = 0;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning; the
                // connections holding descriptors time out meanwhile.
                tracing::warn!("accepting an API connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let admitted = conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(limits.max_connections);
        let Some((id, busy, evict)) = admitted else {
            refused += 1;
            // Logged at powers of two: a flood does not flood the log.
            if refused.is_power_of_two() {
                tracing::warn!(
                    %peer,
                    max = limits.max_connections,
                    refused,
                    "API connection closed at once: every connection is inside a request"
                );
            }
            drop(stream);
            continue;
        };
        let app = app.clone();
        let conns = conns.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
                // For the access log's `peer`.
                req.extensions_mut().insert(ConnectInfo(peer));
                let guard = InRequest::enter(&busy);
                let call = tower::ServiceExt::oneshot(app.clone(), req);
                async move {
                    let resp = call.await;
                    drop(guard);
                    resp
                }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(16 * 1024);
            let conn = http.serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            tokio::select! {
                r = conn => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, "API connection ended: {e}");
                    }
                }
                _ = evict.notified() => {
                    tracing::debug!(%peer, "idle API connection closed to make room for a new one");
                }
            }
            conns
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .open
                .remove(&id);
        });
    }
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

    #[test]
    fn a_full_table_evicts_the_oldest_idle_connection_or_refuses() {
        let mut c = Conns::default();
        let (a, busy_a, _) = c.admit(2).unwrap();
        let (b, _, evict_b) = c.admit(2).unwrap();
        busy_a.fetch_add(1, Ordering::SeqCst);
        // a is inside a request, b is idle: b makes room.
        let (n, busy_n, _) = c.admit(2).unwrap();
        assert!(c.open.contains_key(&a) && c.open.contains_key(&n));
        assert!(!c.open.contains_key(&b));
        // The eviction was signalled (a stored permit completes at once).
        assert!(futures::FutureExt::now_or_never(evict_b.notified()).is_some());
        // Both busy: the newcomer is refused.
        busy_n.fetch_add(1, Ordering::SeqCst);
        assert!(c.admit(2).is_none());
    }

    #[test]
    fn limits_leave_most_descriptors_to_backups() {
        assert_eq!(Limits::for_nofile(1024).max_connections, 256);
        assert_eq!(Limits::for_nofile(256).max_connections, 64);
        assert_eq!(Limits::for_nofile(65536).max_connections, 256);
        assert_eq!(Limits::for_nofile(0).max_connections, 8);
    }
}
