//! A started process part (the API, standalone, or the worker), and how it stops.

use std::net::SocketAddr;

use anyhow::Context;
use axum::Router;
use chatsys_settings::HttpSettings;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::server;

/// The address a started part listens on, and how to stop it.
pub struct Running {
    pub addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    pub fn new(
        addr: SocketAddr,
        shutdown: watch::Sender<bool>,
        tasks: Vec<JoinHandle<()>>,
    ) -> Self {
        Running {
            addr,
            shutdown,
            tasks,
        }
    }

    /// Stops accepting, finishes requests in flight and the batches being written, then returns.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Listens on `listen` at once, before anything else is ready, so probes get an answer from the start.
pub async fn bind(listen: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))
}

/// Serves `router` on `listener` (see [`server::serve`]) until `shutdown` turns true.
pub fn spawn_server(
    listener: tokio::net::TcpListener,
    router: Router,
    settings: &HttpSettings,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let settings = settings.clone();
    tokio::spawn(async move {
        server::serve(listener, router, &settings, shutdown).await;
    })
}

/// Resolves on SIGTERM (Kubernetes) or Ctrl-C.
pub async fn terminated() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
