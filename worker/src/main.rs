use clap::Parser;

use chatsys_worker::WorkerArgs;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = WorkerArgs::parse();
    chatsys_core::telemetry::init_logging(&args.backends.log_format);
    let _ = chatsys_api::metrics_handle();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // Waiting for a backing service is not a failure, but a SIGTERM then ends the wait.
    let worker = tokio::select! {
        worker = chatsys_worker::start(&args) => worker?,
        _ = tokio::signal::ctrl_c() => return Ok(()),
        _ = term.recv() => return Ok(()),
    };
    tracing::info!(health = %worker.addr, queue = %args.backends.queue, version = env!("CARGO_PKG_VERSION"), "chatsys worker started");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("SIGTERM: finishing the current batch");
    worker.stop().await;
    Ok(())
}
