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
        global: g.clone(),
        state_dir,
        check_every: super::parse_duration("--check-every", &a.check_every)?,
        listen: a.listen.clone(),
    };
    let daemon = Daemon::new(opts)?;
    // The repository must open before the daemon claims to be up.
    daemon.open_repo()?;
    let listen = a.listen.clone().or_else(|| {
        daemon
            .plan
            .read()
            .ok()
            .and_then(|p| p.api.as_ref().map(|x| x.listen.clone()))
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
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
        runtime.spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("the HTTP API stopped: {e}");
            }
        });
    } else {
        println!("cairn serve: no api node in the plan; running without the HTTP API");
        let _ = std::io::stdout().flush();
    }
    let r = daemon.run_scheduler();
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    r
}
