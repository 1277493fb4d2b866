//! `ferry call`: one request through an endpoint (placeholder until the client SDK lands).

/// Arguments of `ferry call`.
#[derive(clap::Args, Debug)]
pub struct CallArgs {}

/// Runs `ferry call`.
pub async fn run(_args: CallArgs) -> anyhow::Result<()> {
    anyhow::bail!("ferry call is not built yet")
}
