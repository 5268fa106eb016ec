//! chatsys-worker: consumes the command queue with the ingest loop (store a batch, cache and index it,
//! then acknowledge), and repairs drifted counts now and then. Its wiring, start-up and health server
//! are `chatsys-runtime`'s: this crate is the worker's role and its binary.

use chatsys_runtime::Running;
use chatsys_runtime::boot::{Role, boot};
use chatsys_settings::WorkerArgs;

/// Starts the worker: it listens at once, waits for each backing service (see
/// [`chatsys_runtime::startup`]), then consumes. The returned address is that of its health and
/// metrics endpoints.
pub async fn start(args: &WorkerArgs) -> anyhow::Result<Running> {
    boot(Role::Worker(args)).await
}
