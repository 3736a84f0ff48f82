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
//! - [`error`]: every gateway-made error and its problem+json answer.

pub mod body;
pub mod cli;
pub mod config;
pub mod error;
pub mod plugins;
pub mod proxy;
pub mod router;
pub mod snapshot;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;

use arc_swap::ArcSwap;

/// Binds the listeners of `config` and serves `runtime` until `shutdown`
/// resolves, then drains for `server.shutdown_timeout`.
pub async fn run(
    config: &config::Config,
    runtime: snapshot::Runtime,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
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
    for l in &listeners {
        let address = l.listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(listener = %l.name, address = %address, "listening");
    }
    tracing::info!(
        routes = runtime.routes.len(),
        upstreams = runtime.upstreams.len(),
        "config loaded"
    );
    let handle = Arc::new(ArcSwap::from_pointee(runtime));
    proxy::server::serve(listeners, handle, shutdown, config.server.shutdown_timeout.0).await;
    Ok(())
}
