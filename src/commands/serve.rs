//! `cairn serve --plan FILE`: the daemon (see `crate::daemon`).

use crate::cli::{GlobalArgs, ServeArgs};
use crate::daemon::{api, Daemon, Options};
use crate::error::{Error, Result};
use std::io::Write;

pub fn run(g: &GlobalArgs, a: &ServeArgs) -> Result<()> {
    let state_dir = match &a.state_dir {
        Some(d) => d.clone(),
        None => super::cache_dir(g)
            .map(|c| c.join("serve"))
            .ok_or_else(|| Error::usage("no state directory").with_hint("give --state-dir DIR"))?,
    };
    let opts = Options {
        plan_file: a.plan.clone(),
        access: super::access(g),
        state_dir,
        check_every: super::parse_duration("--check-every", &a.check_every)?,
    };
    let nofile = raise_nofile_limit();
    let plan = super::plan::load(&opts.plan_file)?;
    let daemon = Daemon::new(opts, plan)?;
    // The repository must open before the daemon claims to be up.
    daemon.open_repo()?;
    // What /status and /metrics show from the first request on.
    daemon.observe_at_start();
    let listen = a.listen.clone().or_else(|| {
        daemon
            .plan
            .read()
            .ok()
            .and_then(|p| p.api.as_ref().map(|x| x.listen.clone()))
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Repository work of API requests (listing snapshots, a triggered
        // run) runs here; one run at a time, so a few threads are plenty
        // and a burst of requests queues instead of starting hundreds.
        .max_blocking_threads(8)
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the HTTP runtime", e))?;
    if let Some(addr) = listen {
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(&addr))
            .map_err(|e| {
                Error::io(format!("listening on {addr}"), e)
                    .with_hint("is another process using the port?")
            })?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::io("reading the listen address", e))?;
        tracing::info!(%local, "API listening");
        println!("cairn serve: API listening on http://{local}");
        let _ = std::io::stdout().flush();
        let app = api::router(daemon.clone());
        let limits = api::Limits::for_nofile(nofile);
        tracing::info!(
            max_connections = limits.max_connections,
            header_read_timeout_s = limits.header_read_timeout.as_secs(),
            max_body = api::MAX_BODY,
            "API limits"
        );
        runtime.spawn(api::serve(listener, app, limits));
    } else {
        println!("cairn serve: no api node in the plan; running without the HTTP API");
        let _ = std::io::stdout().flush();
    }
    let r = daemon.run_scheduler();
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    r
}

/// Raise the soft limit of open descriptors to the hard limit (a unit's
/// `LimitNOFILE`, or what the shell allowed), log both, and return the soft
/// limit now in force: the API takes at most a quarter of it.
fn raise_nofile_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let before = getrlimit(Resource::Nofile);
    // An unlimited hard limit cannot be the soft one for descriptors;
    // 2^20 is Linux's default ceiling (fs.nr_open).
    let want = before.maximum.unwrap_or(1 << 20);
    let soft = before.current.unwrap_or(u64::MAX);
    if soft >= want {
        // No `hard` field: the hard limit is unlimited.
        tracing::info!(soft, hard = before.maximum, "open-file limit");
        return soft;
    }
    let raised = Rlimit {
        current: Some(want),
        maximum: before.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => {
            tracing::info!(
                from = soft,
                to = want,
                "open-file soft limit raised to the hard limit"
            );
            want
        }
        Err(e) => {
            tracing::warn!(
                soft,
                want,
                error = e.to_string().as_str(),
                "cannot raise the open-file soft limit"
            );
            soft
        }
    }
}
