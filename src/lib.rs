//! Portcullis: an API gateway.
//!
//! A request flows listener → router → plugin phases → upstream → response
//! phases, and the modules follow it:
//!
//! - [`config`]: the config file, parsed into typed structs and validated.
//! - [`snapshot`]: compiles a config into an immutable [`snapshot::Runtime`]
//!   (route table, plugin pipelines, upstream pools), swapped atomically.
//! - [`proxy`]: listeners, connections, and the per-request handler.
//! - [`router`]: route lookup over a segment trie; path normalization.
//! - [`plugins`]: the phase-ordered plugin pipeline and the plugins.
//! - [`upstream`]: targets, load balancing and connection pools.
//! - [`redis_client`]: the shared Redis connections (phantom tokens, nonces).
//! - [`error`]: every gateway-made error and its problem+json answer.
//! - [`control`]: the control plane: reloads (file, `SIGHUP`, admin API)
//!   swapped in atomically, and the admin API.
//! - [`telemetry`]: Prometheus metrics, the access log, OTLP traces.
//! - [`yielding`]: long background work (reloads) that yields to requests.
//! - [`outline`]: rare branches of the request path, polled out of line.

pub mod body;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod demo;
pub mod error;
pub mod explain;
pub mod hex;
pub mod http1;
pub mod outline;
pub mod plugins;
pub mod proxy;
pub mod redis_client;
pub mod router;
pub mod snapshot;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod yielding;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;

/// A config file read, validated and compiled: what `run` starts from.
pub struct Startup {
    pub file: PathBuf,
    /// Reload when the file changes on disk.
    pub watch: bool,
    pub state: control::State,
    pub runtime: snapshot::Runtime,
}

impl Startup {
    pub fn load(file: PathBuf) -> Result<Startup, config::ConfigErrors> {
        let text = config::read_file(&file)?;
        let source = file.display().to_string();
        let raw = config::parse_document(&text, &source)?;
        let loaded = config::load_document(&raw, &source, &|n| std::env::var(n).ok())?;
        let runtime = snapshot::compile(&loaded.config, None).map_err(|e| loaded.locate(e))?;
        Ok(Startup {
            file,
            watch: true,
            state: control::State {
                raw,
                loaded,
                version: control::version_of(&text),
            },
            runtime,
        })
    }
}

/// Binds the listeners (and the admin API) of the config and serves until
/// `shutdown` resolves, then drains for `server.shutdown_timeout`. The
/// config file is watched, and reloaded on `SIGHUP`. `listening` runs once,
/// when every listener is bound: from then on a connection is accepted.
pub async fn run(
    startup: Startup,
    listening: impl FnOnce(),
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    let config = &startup.state.loaded.config;
    let specs: Vec<_> = config
        .server
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| {
            (
                l.name.clone().unwrap_or_else(|| format!("listener-{i}")),
                l.address,
            )
        })
        .collect();
    let listeners = proxy::server::bind(&specs).await?;
    let admin_listener = match &config.admin {
        Some(admin) => Some(control::admin::bind(admin.address).await?),
        None => None,
    };
    for l in &listeners {
        let address = l.listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(listener = %l.name, address = %address, "listening");
    }
    if let Some(l) = &admin_listener {
        let address = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(address = %address, "admin API listening");
        if config
            .admin
            .as_ref()
            .and_then(|a| a.token.as_deref())
            .is_none_or(str::is_empty)
        {
            tracing::warn!(
                "admin.token is not set: the admin API answers 401 to everything but /healthz and /readyz"
            );
        }
    }
    tracing::info!(
        routes = startup.runtime.routes.len(),
        upstreams = startup.runtime.upstreams.len(),
        "config loaded"
    );
    listening();
    telemetry::on_runtime(&startup.runtime);
    startup.runtime.start();
    let handle = Arc::new(ArcSwap::from_pointee(startup.runtime));
    let control = Arc::new(control::Control::new(
        handle.clone(),
        startup.state,
        Some(startup.file.clone()),
    ));
    control::watch::spawn_sighup(control.clone());
    let _watcher = startup
        .watch
        .then(|| control::watch::spawn_file_watch(control.clone(), &startup.file));
    let (stop_admin, stop_rx) = tokio::sync::watch::channel(false);
    if let Some(l) = admin_listener {
        tokio::spawn(control::admin::serve(l, control.clone(), stop_rx));
    }
    proxy::server::serve(listeners, handle.clone(), shutdown).await;
    let _ = stop_admin.send(true);
    // The last lines of the access log are written before the process exits.
    let rt = handle.load();
    if let Some(log) = &rt.settings.access_log {
        log.flush(std::time::Duration::from_secs(2));
    }
    if let Some(tracer) = &rt.settings.tracer {
        tracer.flush();
    }
    Ok(())
}
