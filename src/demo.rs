//! `statusd demo` (DESIGN.md §8).

/// Options of `statusd demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub statuses: usize,
    pub database: Option<String>,
    pub seed: Option<u64>,
}

pub async fn run(_opts: DemoOptions) -> anyhow::Result<()> {
    anyhow::bail!("the demo is being built")
}
