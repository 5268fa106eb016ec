//! The worker's loop, shared by the worker binary (RabbitMQ) and standalone mode (the SQLite queue):
//! take a batch, apply it in one transaction, refresh the cache and index what it stored, then acknowledge.
//! A crash anywhere before the acknowledgement means redelivery, and applying again changes nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::command::Command;
use crate::error::{CoreError, CoreResult};
use crate::ports::{Applied, Cache, CommandSource, Delivery, ListScope, Search, Store};

#[derive(Debug, Clone)]
pub struct IngestSettings {
    pub batch_size: usize,
    pub batch_wait: Duration,
    /// Tries of a command the store refuses before it goes to the dead-letter queue.
    pub max_attempts: u32,
}

#[derive(Clone)]
pub struct IngestPorts {
    pub store: Arc<dyn Store>,
    pub search: Arc<dyn Search>,
    pub cache: Arc<dyn Cache>,
}

/// Whether the loop is keeping up; the worker's `/readyz` reports it.
#[derive(Debug, Clone, Default)]
pub struct IngestHealth {
    pub last_error: Option<String>,
}

const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Runs until `shutdown` turns true, then finishes what is in flight and acknowledges it.
///
/// Two stages run side by side: this loop takes a batch and applies it in one transaction, then hands it
/// to the publish stage; the publish stage takes everything handed to it since it last ran, refreshes the
/// cache and indexes it (one index commit) at the same time, and hands the deliveries back to be
/// acknowledged. So the next transaction runs while the previous batches are cached and indexed, one
/// index commit covers as many batches as arrived meanwhile, and nothing is acknowledged before it is
/// stored, cached and indexed.
pub async fn run(
    source: &mut dyn CommandSource,
    ports: &IngestPorts,
    settings: &IngestSettings,
    mut shutdown: watch::Receiver<bool>,
    health: watch::Sender<IngestHealth>,
) {
    let (to_publish, publish_queue) = mpsc::channel::<Stored>(PUBLISH_QUEUE);
    let (published_tx, mut published) = mpsc::unbounded_channel::<Vec<Delivery>>();
    let publisher = tokio::spawn(publish_stage(
        ports.clone(),
        publish_queue,
        published_tx,
        shutdown.clone(),
    ));
    let mut to_publish = Some(to_publish);
    let mut backoff = Duration::from_millis(100);
    loop {
        tokio::select! {
            biased;
            done = published.recv() => match done {
                Some(deliveries) => {
                    if let Err(e) = source.ack(&deliveries).await {
                        tracing::warn!(error = %e, "acknowledgement failed; those commands will be redelivered");
                    }
                }
                None => break,
            },
            _ = shutdown.changed(), if to_publish.is_some() => {
                // No new batches; the publish stage finishes what it has, then closes `published`.
                to_publish = None;
            }
            batch = source.next_batch(settings.batch_size, settings.batch_wait), if to_publish.is_some() => {
                let outcome = match batch {
                    Ok(batch) => store_batch(source, ports, settings, batch, &mut shutdown).await,
                    Err(e) => Err(e),
                };
                match outcome {
                    Ok(stored) => {
                        backoff = Duration::from_millis(100);
                        health.send_if_modified(|h| h.last_error.take().is_some());
                        if let (Some(stored), Some(sender)) = (stored, &to_publish) {
                            let _ = sender.send(stored).await;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "ingest interrupted; unacknowledged commands will be redelivered");
                        health.send_replace(IngestHealth { last_error: Some(e.to_string()) });
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {},
                            _ = shutdown.changed() => to_publish = None,
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
        }
    }
    let _ = publisher.await;
    tracing::info!("ingest stopped");
}

/// Batches applied but not yet published, at most; beyond that the loop waits for the publish stage.
const PUBLISH_QUEUE: usize = 8;

/// A batch stored in the database, waiting to be cached and indexed, then acknowledged.
struct Stored {
    applied: Applied,
    deliveries: Vec<Delivery>,
}

async fn publish_stage(
    ports: IngestPorts,
    mut queue: mpsc::Receiver<Stored>,
    published: mpsc::UnboundedSender<Vec<Delivery>>,
    mut shutdown: watch::Receiver<bool>,
) {
    while let Some(first) = queue.recv().await {
        let mut applied = first.applied;
        let mut deliveries = first.deliveries;
        while let Ok(next) = queue.try_recv() {
            applied.absorb(next.applied);
            deliveries.extend(next.deliveries);
        }
        let cached = async {
            let started = Instant::now();
            refresh_cache(ports.cache.as_ref(), &applied).await;
            metrics::histogram!("chatsys_worker_stage_seconds", "stage" => "cache")
                .record(started.elapsed().as_secs_f64());
        };
        let indexed = async {
            let started = Instant::now();
            let result =
                retry_transient(&mut shutdown, || ports.search.index(&applied.messages)).await;
            metrics::histogram!("chatsys_worker_stage_seconds", "stage" => "index")
                .record(started.elapsed().as_secs_f64());
            result
        };
        let ((), indexed) = tokio::join!(cached, indexed);
        if let Err(e) = indexed {
            tracing::warn!(error = %e, "indexing stopped at shutdown; those commands will be redelivered");
            continue;
        }
        if published.send(deliveries).is_err() {
            return;
        }
    }
}

/// Decodes and applies one batch; returns what is left to cache, index and acknowledge.
async fn store_batch(
    source: &mut dyn CommandSource,
    ports: &IngestPorts,
    settings: &IngestSettings,
    batch: Vec<Delivery>,
    shutdown: &mut watch::Receiver<bool>,
) -> CoreResult<Option<Stored>> {
    let started = Instant::now();
    let mut commands = Vec::with_capacity(batch.len());
    let mut accepted = Vec::with_capacity(batch.len());
    for delivery in batch {
        match Command::decode(&delivery.payload) {
            Ok(command) => {
                commands.push(command);
                accepted.push(delivery);
            }
            Err(e) => dead_letter(source, &delivery, &e.to_string()).await?,
        }
    }
    if commands.is_empty() {
        return Ok(None);
    }
    let (applied, refused) = apply(
        ports.store.as_ref(),
        &commands,
        settings.max_attempts,
        shutdown,
    )
    .await?;
    for (index, reason) in &refused {
        dead_letter(source, &accepted[*index], reason).await?;
    }
    // The batch's own time ends here: caching and indexing belong to the publish stage.
    let seconds = started.elapsed().as_secs_f64();
    metrics::histogram!("chatsys_worker_stage_seconds", "stage" => "apply").record(seconds);
    let refused: std::collections::HashSet<usize> = refused.iter().map(|(i, _)| *i).collect();
    // Only the tags are needed from here on: dropping the payloads keeps a worker holding `prefetch`
    // deliveries at one copy of each body, whether it waits to be applied or to be acknowledged.
    let deliveries: Vec<Delivery> = accepted
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !refused.contains(i))
        .map(|(_, delivery)| Delivery {
            payload: Vec::new(),
            ..delivery
        })
        .collect();
    metrics::counter!("chatsys_worker_commands_total", "result" => "applied")
        .increment(deliveries.len() as u64);
    metrics::histogram!("chatsys_worker_batch_seconds").record(seconds);
    metrics::histogram!("chatsys_worker_batch_size").record(deliveries.len() as f64);
    Ok(Some(Stored {
        applied,
        deliveries,
    }))
}

async fn dead_letter(
    source: &mut dyn CommandSource,
    delivery: &Delivery,
    reason: &str,
) -> CoreResult<()> {
    tracing::error!(
        reason,
        tag = delivery.tag,
        "command moved to the dead-letter queue"
    );
    metrics::counter!("chatsys_worker_commands_total", "result" => "dead_lettered").increment(1);
    source.dead_letter(delivery, reason).await
}

/// Applies the batch; when the store refuses it, applies the commands one by one so that only the
/// refused ones (returned with their index and reason) are set aside.
async fn apply(
    store: &dyn Store,
    commands: &[Command],
    max_attempts: u32,
    shutdown: &mut watch::Receiver<bool>,
) -> CoreResult<(Applied, Vec<(usize, String)>)> {
    match retry_transient(shutdown, || store.apply(commands)).await {
        Ok(applied) => return Ok((applied, Vec::new())),
        Err(CoreError::Rejected(reason)) => {
            tracing::warn!(reason, "batch refused; applying its commands one by one")
        }
        Err(e) => return Err(e),
    }
    let mut applied = Applied::default();
    let mut refused = Vec::new();
    for (index, command) in commands.iter().enumerate() {
        let mut attempt = 1;
        loop {
            match retry_transient(shutdown, || store.apply(std::slice::from_ref(command))).await {
                Ok(one) => {
                    applied.absorb(one);
                    break;
                }
                Err(CoreError::Rejected(reason)) if attempt >= max_attempts => {
                    refused.push((index, format!("refused {attempt} times: {reason}")));
                    break;
                }
                Err(CoreError::Rejected(_)) => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }
    Ok((applied, refused))
}

/// Retries an operation while it fails for a transient reason (a backing service down), with backoff,
/// until it succeeds, fails for good, or the worker is asked to stop.
async fn retry_transient<T, F, Fut>(
    shutdown: &mut watch::Receiver<bool>,
    mut op: F,
) -> CoreResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = CoreResult<T>>,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        match op().await {
            Err(e) if e.is_transient() && !*shutdown.borrow() => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "backing service unavailable; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {},
                    _ = shutdown.changed() => return Err(e),
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            other => return other,
        }
    }
}

/// Write-through of the stored messages, and invalidation of everything whose counts or lists changed.
/// A cache failure only costs freshness until the entries expire, so it is logged, not retried.
async fn refresh_cache(cache: &dyn Cache, applied: &Applied) {
    let mut scopes: Vec<ListScope> = applied
        .chats
        .iter()
        .map(|(app, chat)| ListScope::Messages(*app, *chat))
        .collect();
    // Every chat the batch touched changes its application's chat list (a new chat, or its counts).
    scopes.extend(applied.chats.iter().map(|(app, _)| ListScope::Chats(*app)));
    scopes.sort();
    scopes.dedup();
    let mut result = cache.forget_chats(&applied.chats).await;
    if result.is_ok() {
        result = cache.forget_applications(&applied.applications).await;
    }
    if result.is_ok() {
        result = cache.bump_lists(&scopes).await;
    }
    if result.is_ok() {
        result = cache.put_messages(&applied.messages).await;
    }
    if let Err(e) = result {
        tracing::warn!(error = %e, "cache refresh failed; entries stay stale until they expire");
    }
}
