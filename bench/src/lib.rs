//! Shared code of the `bench` and `faults` binaries: they drive chatsys as a black box over HTTP, start its
//! processes on fresh resources, and talk to MariaDB, Redis and RabbitMQ directly for the raw limits and checks.

pub mod client;
pub mod cpu;
pub mod events;
pub mod isolation;
pub mod ledger;
pub mod load;
pub mod raw;
pub mod services;
pub mod stats;
pub mod system;

/// Runs a binary's work on a multi-threaded runtime, then leaves at most 5 s for its threads: the
/// work is done and reported by then, and a client library's thread stuck in its own locks (lapin
/// 4.12 can deadlock when a connection fails with deliveries in flight) must not hold the exit.
pub fn run_to_end<T>(work: impl std::future::Future<Output = T>) -> anyhow::Result<T> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(work);
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    Ok(outcome)
}
