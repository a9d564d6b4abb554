//! The pipeline services (DESIGN.md §5), started and stopped together.

use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::store::Store;

/// Runs the daemon until `shutdown` is cancelled.
pub async fn run<S: Store>(
    _store: S,
    _settings: Settings,
    _shutdown: CancellationToken,
) -> anyhow::Result<()> {
    anyhow::bail!("the daemon is being built")
}
