use clap::Parser;

use chatsys_runtime::telemetry;
use chatsys_runtime::terminated;
use chatsys_settings::WorkerArgs;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = WorkerArgs::parse();
    telemetry::init_logging(&args.backends.log_format);
    // Waiting for a backing service is not a failure, but a SIGTERM then ends the wait.
    let worker = tokio::select! {
        worker = chatsys_worker::start(&args) => worker?,
        () = terminated() => return Ok(()),
    };
    tracing::info!(health = %worker.addr, queue = %args.backends.queue, version = env!("CARGO_PKG_VERSION"), "chatsys worker started");
    terminated().await;
    worker.stop().await;
    Ok(())
}
