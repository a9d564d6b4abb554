//! Startup: wires the store, the provider clients, the daemon's services and
//! the admin server (zero-to-production's `startup.rs`). The only module that
//! knows all of them, so that none of them needs to know another.

use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::admin::AdminServer;
use crate::config::Settings;
use crate::daemon::Daemon;
use crate::instance::{Instance, Instances};
use crate::provider::WawpClient;
use crate::store::Store;

/// Builds the Wawp clients of every configured instance.
pub fn wawp_instances(settings: &Settings) -> anyhow::Result<Vec<Instance<WawpClient>>> {
    settings
        .instances
        .iter()
        .map(|(name, inst)| {
            let client = WawpClient::new(name, inst, &settings.provider)
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
    let daemon = Daemon::new(store, wawp_instances(&settings)?, settings.daemon.clone());
    let admin = if settings.admin.enabled {
        let server = AdminServer::bind(&settings.admin, daemon.operator())
            .await
            .context("starting the admin HTTP server")?;
        tracing::info!(addr = %server.local_addr(), "admin HTTP listening");
        Some(tokio::spawn(server.serve(shutdown.clone())))
    } else {
        None
    };
    let result = daemon.run(shutdown.clone()).await;
    shutdown.cancel();
    if let Some(a) = admin {
        let _ = a.await;
    }
    result
}
