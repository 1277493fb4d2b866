//! Ferry control plane (in progress).

use std::future::Future;

/// Arguments of `ferry control`.
#[derive(clap::Args, Debug, Clone)]
pub struct ControlArgs {}

/// Runs `ferry control` until `shutdown`.
pub async fn run_cli(
    _args: ControlArgs,
    _shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    Err("ferry control is not built yet".into())
}
