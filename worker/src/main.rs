use clap::Parser;

use chatsys_worker::WorkerArgs;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = WorkerArgs::parse();
    chatsys_core::telemetry::init_logging(&args.backends.log_format);
    let _ = chatsys_api::metrics_handle();
    let worker = chatsys_worker::start(&args).await?;
    tracing::info!(health = %worker.addr, queue = %args.backends.queue, version = env!("CARGO_PKG_VERSION"), "chatsys worker started");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("SIGTERM: finishing the current batch");
    worker.stop().await;
    Ok(())
}
