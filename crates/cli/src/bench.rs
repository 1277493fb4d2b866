//! `ferry bench`: a load tester (placeholder until the client SDK lands).

/// Arguments of `ferry bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {}

/// Runs `ferry bench`.
pub async fn run(_args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("ferry bench is not built yet")
}
