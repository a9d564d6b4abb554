//! Startup: wires the store, the provider clients, the daemon's services and
//! the admin server (zero-to-production's `startup.rs`). The only module that
//! knows all of them, so that none of them needs to know another.

use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::admin::AdminServer;
use crate::config::{ProviderSettings, Settings};
use crate::daemon::Daemon;
use crate::instance::{Instance, Instances, MakeProvider, Registry};
use crate::provider::{wawp, WawpClient};
use crate::store::Store;
use crate::webhooks::processor::{self, ProcessorConfig};
use crate::webhooks::Receiver;

/// Builds the Wawp client of an instance from the table (the token read
/// from the variable or file it names, in this process), all of them over
/// one HTTP client built at the first.
pub fn wawp_maker(provider: &ProviderSettings) -> MakeProvider<WawpClient> {
    let provider = provider.clone();
    let http = std::sync::OnceLock::new();
    Arc::new(move |name, cfg| {
        let http = match http.get() {
            Some(h) => h,
            None => {
                let built = wawp::http_client(&provider)
                    .map_err(|e| format!("cannot build HTTP client: {e}"))?;
                http.get_or_init(|| built)
            }
        };
        WawpClient::sharing(name, cfg, http).map_err(|e| e.to_string())
    })
}

/// Every instance an operator command run without a daemon can use
/// (`statusd delete`): the file's, and the table's as this process can
/// build them.
pub async fn wawp_registry<S: Store>(
    settings: &Settings,
    store: &S,
) -> anyhow::Result<Arc<Registry<WawpClient>>> {
    let registry = Registry::new(wawp_instances(settings)?);
    let table = store
        .instance_table()
        .await
        .context("reading the instance table")?;
    registry.apply(&table, &wawp_maker(&settings.provider));
    Ok(Arc::new(registry))
}

/// Builds the Wawp clients of every configured instance.
pub fn wawp_instances(settings: &Settings) -> anyhow::Result<Vec<Instance<WawpClient>>> {
    if settings.instances.is_empty() {
        return Ok(Vec::new());
    }
    // One HTTP client (pool, TLS set-up) for all of them.
    let http = wawp::http_client(&settings.provider)
        .map_err(|e| anyhow::anyhow!("cannot build HTTP client: {e}"))?;
    settings
        .instances
        .iter()
        .map(|(name, inst)| {
            let client = WawpClient::sharing(name, inst, &http)
                .with_context(|| format!("instances.{name}"))?;
            Ok(Instance::new(name, client, inst.rate_per_sec, inst.burst)
                .with_max_in_flight(inst.max_in_flight))
        })
        .collect()
}

/// The configured instances by name, for operator actions run without a
/// daemon (`statusd delete`).
pub fn wawp_instance_map(settings: &Settings) -> anyhow::Result<Arc<Instances<WawpClient>>> {
    Ok(Arc::new(
        wawp_instances(settings)?
            .into_iter()
            .map(|i| (i.name.clone(), Arc::new(i)))
            .collect(),
    ))
}

/// `statusd run`: the daemon and its admin server over `store`.
pub async fn run<S: Store>(
    store: S,
    settings: Settings,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let receiver = Arc::new(Receiver::from_settings(&settings)?);
    let daemon = Daemon::new(
        store.clone(),
        wawp_instances(&settings)?,
        settings.daemon.clone(),
    );
    // The table's instances: read once before the services start (a row
    // of a table instance is then never judged by a view without it), then
    // kept in step until shutdown.
    let ctx = daemon.ctx();
    let make = wawp_maker(&settings.provider);
    ctx.instances.expect_table();
    if let Err(e) = crate::instance::refresh(&store, &ctx.instances, &make).await {
        tracing::warn!(error = %e, "reading the instance table failed; starting with the file's instances and retrying");
    }
    let registry = tokio::spawn(crate::instance::keep_in_step(
        store.clone(),
        ctx.instances.clone(),
        make,
        ctx.work.clone(),
        std::time::Duration::from_millis(settings.daemon.fallback_poll_ms),
        shutdown.clone(),
    ));
    // The webhook processor runs even without a receiving server here:
    // another replica's server may fill the inbox.
    crate::webhooks::describe_metrics();
    let processor = tokio::spawn(processor::run(
        store.clone(),
        receiver.wake.clone(),
        ProcessorConfig::new(&settings),
        shutdown.clone(),
    ));
    let admin = if settings.admin.enabled {
        let server = AdminServer::bind(&settings.admin, daemon.operator())
            .await
            .context("starting the admin HTTP server")?;
        // Always: an instance of the table may name a webhook secret later.
        let server = server.with_webhooks(store.clone(), receiver.clone());
        tracing::info!(addr = %server.local_addr(), "admin HTTP listening");
        Some(tokio::spawn(server.serve(shutdown.clone())))
    } else {
        None
    };
    let result = daemon.run(shutdown.clone()).await;
    shutdown.cancel();
    let _ = registry.await;
    if let Some(a) = admin {
        let _ = a.await;
    }
    let _ = processor.await;
    result
}

/// The webhook routes alone on `addr`, with the processor draining what they
/// accept, until `shutdown` (the demo; `statusd run` serves them on the admin
/// server). Returns the bound address.
pub async fn serve_webhooks<S: Store>(
    store: S,
    receiver: Arc<Receiver>,
    processor_config: ProcessorConfig,
    addr: std::net::SocketAddr,
    shutdown: CancellationToken,
) -> anyhow::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the webhook receiver on {addr}"))?;
    let local = listener.local_addr()?;
    crate::webhooks::describe_metrics();
    let app = crate::admin::webhooks::router(store.clone(), receiver.clone());
    let stop = shutdown.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
    });
    tokio::spawn(processor::run(
        store,
        receiver.wake.clone(),
        processor_config,
        shutdown,
    ));
    Ok(local)
}
