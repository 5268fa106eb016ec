//! The worker's loop, shared by the worker binary (RabbitMQ) and standalone mode (the SQLite queue):
//! take a batch, apply it in one transaction, refresh the cache and index what it stored, then acknowledge.
//! A crash anywhere before the acknowledgement means redelivery, and applying again changes nothing.

use crate::telemetry;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use tokio::sync::{mpsc, watch};

use crate::command::Command;
use crate::domain::{AppId, ChatEvent, Message};
use crate::envelope;
use crate::error::{CoreError, CoreResult};
use crate::index_queue::IndexQueue;
use crate::plan::{ChatKey, MessageKey};
use crate::ports::{
    Announcer, Applied, BatchLimits, Cache, CommandSource, Delivery, IndexRefusal, ListScope,
    Search, Store,
};

/// The prefetch that holds at most `bytes` of deliveries of the largest commands, and at most `count`.
pub fn prefetch_within(count: u16, bytes: u64) -> u16 {
    let fitting = bytes / crate::command::MAX_COMMAND_BYTES as u64;
    count.min(u16::try_from(fitting).unwrap_or(u16::MAX)).max(1)
}

#[derive(Debug, Clone)]
pub struct IngestSettings {
    pub batch: BatchLimits,
    /// Tries of a command the store refuses before it goes to the dead-letter queue.
    pub max_attempts: u32,
}

#[derive(Clone)]
pub struct IngestPorts {
    pub store: Arc<dyn Store>,
    pub search: Arc<dyn Search>,
    pub cache: Arc<dyn Cache>,
    /// Tells the API processes' live streams what each batch changed.
    pub announcer: Arc<dyn Announcer>,
}

/// Whether the loop is keeping up; `/readyz` reports it (the details go to the logs).
#[derive(Debug, Clone, Default)]
pub struct IngestHealth {
    /// Why the last batch could not be stored, until one is.
    pub last_error: Option<String>,
    /// Why stored messages could not be indexed, until they are: search is behind the store.
    pub search_error: Option<String>,
}

const MAX_DELAY: Duration = Duration::from_secs(5);

/// The one policy for a backing service the worker cannot use: the first retry soon (a deadlock clears
/// in milliseconds), doubling to every 5 s while it stays down, with jitter so workers do not retry in
/// step. Each failure is retried in exactly one place: a store's in `retry_transient`, the index's in
/// `index_until_done`, the command source's in `run`; the adapters themselves never retry.
fn backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(10))
        .with_max_delay(MAX_DELAY)
        .with_jitter()
        .without_max_times()
}

/// A retry's pause, cut short when the worker is asked to stop.
fn pause_unless_stopped(
    shutdown: &watch::Receiver<bool>,
) -> impl Fn(Duration) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + use<> {
    let shutdown = shutdown.clone();
    move |delay| {
        let mut shutdown = shutdown.clone();
        Box::pin(async move {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.wait_for(|stop| *stop) => {}
            }
        })
    }
}

/// Runs until `shutdown` turns true, then finishes what is in flight and acknowledges it.
///
/// Two stages run side by side: this loop takes a batch and applies it in one transaction, then hands it
/// to the index-and-cache stage; that stage takes everything handed to it since it last ran, refreshes
/// the cache and indexes it in slices of bounded size shared fairly among applications (one index
/// commit each), and hands each batch's deliveries back, in order, once all its messages are indexed.
/// So the next transaction runs while the previous batches are cached and indexed, and nothing is
/// acknowledged before it is stored, cached and indexed: a batch the index has not taken holds back
/// every later acknowledgement too, since an acknowledgement covers all earlier deliveries.
pub async fn run(
    source: &mut dyn CommandSource,
    ports: &IngestPorts,
    settings: &IngestSettings,
    mut shutdown: watch::Receiver<bool>,
    health: watch::Sender<IngestHealth>,
) {
    let (to_index, stored_batches) = mpsc::channel::<Stored>(STORED_AWAITING_INDEX);
    let (indexed_tx, mut indexed) = mpsc::unbounded_channel::<Indexed>();
    let health = std::sync::Arc::new(health);
    let index_stage = tokio::spawn(index_and_cache_stage(
        ports.clone(),
        stored_batches,
        indexed_tx,
        shutdown.clone(),
        health.clone(),
    ));
    let mut to_index = Some(to_index);
    let mut delays = backoff().build();
    loop {
        tokio::select! {
            biased;
            done = indexed.recv() => match done {
                Some(done) => settle(source, done).await,
                None => break,
            },
            _ = shutdown.changed(), if to_index.is_some() => {
                // No new batches; the index-and-cache stage finishes what it has, then closes `indexed`.
                to_index = None;
            }
            batch = source.next_batch(&settings.batch), if to_index.is_some() => {
                let outcome = match batch {
                    Ok(batch) => store_batch(source, ports, settings, batch, &mut shutdown).await,
                    Err(e) => Err(e),
                };
                match outcome {
                    Ok(stored) => {
                        delays = backoff().build();
                        health.send_if_modified(|h| h.last_error.take().is_some());
                        if let (Some(stored), Some(sender)) = (stored, &to_index) {
                            let _ = sender.send(stored).await;
                        }
                    }
                    Err(e) => {
                        let delay = delays.next().unwrap_or(MAX_DELAY);
                        tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "ingest interrupted; unacknowledged commands will be redelivered");
                        health.send_modify(|h| h.last_error = Some(e.to_string()));
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {},
                            _ = shutdown.changed() => to_index = None,
                        }
                    }
                }
            }
        }
    }
    let _ = index_stage.await;
    tracing::info!("ingest stopped");
}

/// Batches applied but not yet indexed, at most; beyond that the loop waits for the index stage.
const STORED_AWAITING_INDEX: usize = 8;

/// A batch stored in the database, waiting to be cached and indexed, then acknowledged.
struct Stored {
    applied: Applied,
    deliveries: Vec<Delivery>,
    /// The messages the batch's commands wrote, each with the index of the delivery that carried it.
    keys: Vec<(usize, MessageKey)>,
}

/// A stored batch waiting for its messages to be indexed: what to acknowledge, and what to announce.
struct Waiting {
    deliveries: Vec<Delivery>,
    keys: Vec<(usize, MessageKey)>,
    events: Vec<ChatEvent>,
}

/// A batch whose messages are indexed, or refused for good by the search engine: those go to the
/// dead-letter queue (each as a command with the index of its delivery, and the reason), then every
/// delivery is acknowledged.
struct Indexed {
    deliveries: Vec<Delivery>,
    refused: Vec<(usize, Vec<u8>, String)>,
}

/// Sets aside what the index refused, then acknowledges the batch's deliveries.
async fn settle(source: &mut dyn CommandSource, done: Indexed) {
    for (index, command, reason) in &done.refused {
        if let Err(e) = set_aside(source, &done.deliveries[*index], command, reason).await {
            tracing::warn!(error = %e, "dead-lettering failed; those commands will be redelivered");
            return;
        }
    }
    if let Err(e) = source.ack(&done.deliveries).await {
        tracing::warn!(error = %e, "acknowledgement failed; those commands will be redelivered");
    }
}

/// Index commits take at most this much text (bodies and a per-message allowance), shared in turn
/// among the applications with messages waiting: a commit's time is bounded, and a small message of one
/// application waits for at most one slice of another's large ones.
const INDEX_SLICE_BYTES: usize = 4 << 20;

async fn index_and_cache_stage(
    ports: IngestPorts,
    mut queue: mpsc::Receiver<Stored>,
    indexed: mpsc::UnboundedSender<Indexed>,
    mut shutdown: watch::Receiver<bool>,
    health: std::sync::Arc<watch::Sender<IngestHealth>>,
) {
    let mut waiting: IndexQueue<Waiting> = IndexQueue::default();
    loop {
        // Take every batch stored meanwhile; wait for one only when there is nothing to index.
        let mut changed = Applied::default();
        if !waiting.has_work() {
            match queue.recv().await {
                Some(stored) => take(&mut waiting, &mut changed, stored),
                None => return,
            }
        }
        while let Ok(stored) = queue.try_recv() {
            take(&mut waiting, &mut changed, stored);
        }
        let slice = waiting.next_slice(INDEX_SLICE_BYTES);
        let cached = async {
            let started = Instant::now();
            refresh_cache(ports.cache.as_ref(), &changed, &slice.messages).await;
            metrics::histogram!(telemetry::WORKER_STAGE.name, "stage" => "cache")
                .record(started.elapsed().as_secs_f64());
        };
        let index = async {
            let started = Instant::now();
            // Deleted chats and applications leave the index before the batches that deleted them
            // are acknowledged, as their messages were stored before theirs were.
            let forgotten = forget_until_done(
                ports.search.as_ref(),
                &changed.deleted_chats,
                &changed.purged_applications,
                &mut shutdown,
                &health,
            )
            .await;
            let result = match forgotten {
                Some(()) => {
                    index_until_done(
                        ports.search.as_ref(),
                        &slice.messages,
                        &mut shutdown,
                        &health,
                    )
                    .await
                }
                None => None,
            };
            metrics::histogram!(telemetry::WORKER_STAGE.name, "stage" => "index")
                .record(started.elapsed().as_secs_f64());
            result
        };
        let ((), refusals) = tokio::join!(cached, index);
        let Some(refusals) = refusals else {
            // Stopping before the index took the slice: neither its batches nor any after them are
            // acknowledged, so the broker redelivers them all.
            tracing::info!("indexing stopped at shutdown; unindexed commands will be redelivered");
            return;
        };
        waiting.indexed(slice, &refusals);
        let mut settled = Vec::new();
        let mut events = Vec::new();
        while let Some(done) = waiting.pop_done() {
            let Waiting {
                deliveries,
                keys,
                events: changes,
            } = done.batch;
            events.extend(changes);
            settled.push(set_aside_refused(deliveries, &keys, &done.refused));
        }
        // Announced before acknowledging: a change is never announced before it is stored, cached and
        // indexed, and an announcement lost in a crash is read from the store by the streams.
        if !events.is_empty()
            && let Err(e) = ports.announcer.announce(&events).await
        {
            tracing::warn!(error = %e, "announcing changes failed; live streams read them from the store");
        }
        for done in settled {
            if indexed.send(done).is_err() {
                return;
            }
        }
    }
}

/// Queues a stored batch's messages for indexing, and adds what it changed to what the cache forgets.
fn take(waiting: &mut IndexQueue<Waiting>, changed: &mut Applied, stored: Stored) {
    let Applied {
        chats,
        stored_chats,
        applications,
        messages,
        events,
        deleted_chats,
        purged_applications,
    } = stored.applied;
    changed.chats.extend(chats);
    changed.stored_chats.extend(stored_chats);
    changed.applications.extend(applications);
    changed.deleted_chats.extend(deleted_chats);
    changed.purged_applications.extend(purged_applications);
    waiting.push(
        Waiting {
            deliveries: stored.deliveries,
            keys: stored.keys,
            events,
        },
        messages,
    );
}

/// Indexes the messages, retrying every failure until the index takes them or the worker stops (`None`).
/// A failure of the whole call is never one document's fault (the search port returns those as
/// refusals), so it is retried whatever its kind, and `/readyz` says search is behind meanwhile.
async fn index_until_done(
    search: &dyn Search,
    messages: &[Message],
    shutdown: &mut watch::Receiver<bool>,
    health: &watch::Sender<IngestHealth>,
) -> Option<Vec<IndexRefusal>> {
    if *shutdown.borrow() {
        return None;
    }
    let indexed = (|| search.index(messages))
        .retry(backoff())
        .sleep(pause_unless_stopped(shutdown))
        .when(|_| !*shutdown.borrow())
        .notify(|e, delay| {
            tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "indexing failed; retrying");
            metrics::counter!(telemetry::WORKER_INDEX_FAILURES.name).increment(1);
            health.send_modify(|h| h.search_error = Some(e.to_string()));
        })
        .await;
    match indexed {
        Ok(refused) => {
            health.send_if_modified(|h| h.search_error.take().is_some());
            Some(refused)
        }
        Err(_) => None,
    }
}

/// Removes deleted chats and applications from the index, retrying as [`index_until_done`] does.
async fn forget_until_done(
    search: &dyn Search,
    chats: &[ChatKey],
    applications: &[AppId],
    shutdown: &mut watch::Receiver<bool>,
    health: &watch::Sender<IngestHealth>,
) -> Option<()> {
    if chats.is_empty() && applications.is_empty() {
        return Some(());
    }
    if *shutdown.borrow() {
        return None;
    }
    (|| search.forget(chats, applications))
        .retry(backoff())
        .sleep(pause_unless_stopped(shutdown))
        .when(|_| !*shutdown.borrow())
        .notify(|e, delay| {
            tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "removing deleted chats from the index failed; retrying");
            metrics::counter!(telemetry::WORKER_INDEX_FAILURES.name).increment(1);
            health.send_modify(|h| h.search_error = Some(e.to_string()));
        })
        .await
        .ok()
}

/// Pairs each message the index refused with a command that restores its stored state (the
/// deliveries' own payloads were dropped once applied): replaying it from the dead-letter queue stores
/// nothing new and indexes the message again.
fn set_aside_refused(
    deliveries: Vec<Delivery>,
    keys: &[(usize, MessageKey)],
    refused: &[(IndexRefusal, Message)],
) -> Indexed {
    let mut set_aside = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (index, key) in keys {
        // The latest stored state of the message, once, when several of its states were refused.
        if let Some((refusal, message)) = refused.iter().rev().find(|(r, _)| r.key == *key)
            && seen.insert(*key)
        {
            let reason = format!("stored but not searchable: {}", refusal.reason);
            set_aside.push((*index, Command::restoring(message).encode(), reason));
        }
    }
    Indexed {
        deliveries,
        refused: set_aside,
    }
}

/// Opens and decodes one batch's deliveries, setting aside what cannot be a command (a broken envelope
/// whole, a bad command of a sound one alone), applies the commands, and returns what is left to cache,
/// index and acknowledge: every delivery, since everything each holds is now stored or set aside.
async fn store_batch(
    source: &mut dyn CommandSource,
    ports: &IngestPorts,
    settings: &IngestSettings,
    batch: Vec<Delivery>,
    shutdown: &mut watch::Receiver<bool>,
) -> CoreResult<Option<Stored>> {
    if batch.is_empty() {
        return Ok(None);
    }
    let started = Instant::now();
    let (commands, carriers) = open_deliveries(source, &batch).await?;
    let (applied, refused) = apply(
        ports.store.as_ref(),
        &commands,
        settings.max_attempts,
        shutdown,
    )
    .await?;
    for (index, reason) in &refused {
        let carrier = &batch[carriers[*index]];
        set_aside(source, carrier, &commands[*index].encode(), reason).await?;
    }
    purge(ports.store.as_ref(), &applied, shutdown).await?;
    // The batch's own time ends here: caching and indexing belong to the index-and-cache stage.
    let seconds = started.elapsed().as_secs_f64();
    metrics::histogram!(telemetry::WORKER_STAGE.name, "stage" => "apply").record(seconds);
    let refused: std::collections::HashSet<usize> = refused.iter().map(|(i, _)| *i).collect();
    let keys: Vec<(usize, MessageKey)> = commands
        .iter()
        .zip(&carriers)
        .enumerate()
        .filter(|(i, _)| !refused.contains(i))
        .filter_map(|(_, (command, carrier))| Some((*carrier, command.message_key()?)))
        .collect();
    let applied_count = commands.len() - refused.len();
    // Only the tags are needed from here on: dropping the payloads keeps a worker holding `prefetch`
    // deliveries at one copy of each body, whether it waits to be applied or to be acknowledged.
    let deliveries: Vec<Delivery> = batch
        .into_iter()
        .map(|delivery| Delivery {
            payload: Vec::new(),
            ..delivery
        })
        .collect();
    metrics::counter!(telemetry::WORKER_COMMANDS.name, "result" => "applied")
        .increment(applied_count as u64);
    metrics::histogram!(telemetry::WORKER_BATCH.name).record(seconds);
    metrics::histogram!(telemetry::WORKER_BATCH_SIZE.name).record(applied_count as f64);
    Ok(Some(Stored {
        applied,
        deliveries,
        keys,
    }))
}

/// The commands the deliveries hold, each with the index of the delivery that carried it; what cannot
/// be a command is set aside (a broken envelope whole, a bad command of a sound one alone).
async fn open_deliveries(
    source: &mut dyn CommandSource,
    deliveries: &[Delivery],
) -> CoreResult<(Vec<Command>, Vec<usize>)> {
    let mut commands = Vec::with_capacity(deliveries.len());
    let mut carriers = Vec::with_capacity(deliveries.len());
    for (index, delivery) in deliveries.iter().enumerate() {
        let parts = match envelope::open(&delivery.payload) {
            Ok(parts) => parts,
            Err(reason) => {
                let reason = format!("undecodable envelope: {reason}");
                set_aside(source, delivery, &delivery.payload, &reason).await?;
                continue;
            }
        };
        for part in parts {
            match Command::decode(part) {
                Ok(command) => {
                    commands.push(command);
                    carriers.push(index);
                }
                Err(e) => set_aside(source, delivery, part, &e.to_string()).await?,
            }
        }
    }
    Ok((commands, carriers))
}

async fn set_aside(
    source: &mut dyn CommandSource,
    delivery: &Delivery,
    command: &[u8],
    reason: &str,
) -> CoreResult<()> {
    tracing::error!(
        reason,
        tag = delivery.tag,
        "command moved to the dead-letter queue"
    );
    metrics::counter!(telemetry::WORKER_COMMANDS.name, "result" => "dead_lettered").increment(1);
    source.set_aside(delivery, command, reason).await
}

/// Removes what the batch deleted from the store: the messages of its deleted chats, and whatever its
/// deleted applications hold. Idempotent, so a redelivered batch purges again.
async fn purge(
    store: &dyn Store,
    applied: &Applied,
    shutdown: &mut watch::Receiver<bool>,
) -> CoreResult<()> {
    for (app, chat) in &applied.deleted_chats {
        retry_transient(shutdown, || store.purge_chat(*app, *chat)).await?;
    }
    for app in &applied.purged_applications {
        retry_transient(shutdown, || store.purge_application(*app)).await?;
    }
    Ok(())
}

/// Applies the batch (nothing for none); when the store refuses it, applies the commands one by one so
/// that only the refused ones (returned with their index and reason) are set aside.
async fn apply(
    store: &dyn Store,
    commands: &[Command],
    max_attempts: u32,
    shutdown: &mut watch::Receiver<bool>,
) -> CoreResult<(Applied, Vec<(usize, String)>)> {
    if commands.is_empty() {
        return Ok((Applied::default(), Vec::new()));
    }
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
async fn retry_transient<T, F, Fut>(shutdown: &watch::Receiver<bool>, op: F) -> CoreResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = CoreResult<T>>,
{
    op.retry(backoff())
        .sleep(pause_unless_stopped(shutdown))
        .when(|e| e.is_transient() && !*shutdown.borrow())
        .notify(|e, delay| {
            tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "backing service unavailable; retrying");
        })
        .await
}

/// Write-through of the chats changed and of the messages about to be indexed (each kept only when
/// fresher than what the cache holds), and invalidation of the applications and lists that changed.
/// A message as its create left it is not written: the API remembered that very state when it took
/// the create, and nothing the cache can hold is older. A cache failure only costs freshness until the
/// entries expire, so it is logged, not retried.
async fn refresh_cache(cache: &dyn Cache, changed: &Applied, messages: &[Message]) {
    let changed_since_created: Vec<Message> = messages
        .iter()
        .filter(|m| m.version > 0 || m.deleted)
        .cloned()
        .collect();
    let mut scopes: Vec<ListScope> = changed
        .chats
        .iter()
        .map(|(app, chat)| ListScope::Messages(*app, *chat))
        .collect();
    // Every chat the batch touched changes its application's chat list (a new chat, or its counts).
    scopes.extend(changed.chats.iter().map(|(app, _)| ListScope::Chats(*app)));
    scopes.sort();
    scopes.dedup();
    // Each step on its own: one failing (say, on an entry an earlier release wrote) does not keep the
    // others from freshening what they can. The chats are written before their lists move on, so that
    // a client who reads a new page of a chat's messages then finds the chat as of that page.
    let chats_then_lists = async {
        let chats = cache.put_chats(&changed.stored_chats).await;
        (chats, cache.bump_lists(&scopes).await)
    };
    let ((chats, lists), applications, written) = tokio::join!(
        chats_then_lists,
        cache.forget_applications(&changed.applications),
        cache.put_messages(&changed_since_created),
    );
    for result in [chats, applications, lists, written] {
        if let Err(e) = result {
            tracing::warn!(error = %e, "cache refresh failed; entries stay stale until they expire");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::MAX_COMMAND_BYTES;

    #[test]
    fn the_prefetch_holds_no_more_bytes_of_the_largest_commands_than_allowed() {
        let bytes = 256 << 20;
        let prefetch = prefetch_within(8000, bytes);
        assert!(u64::from(prefetch) * MAX_COMMAND_BYTES as u64 <= bytes);
        assert!(u64::from(prefetch + 1) * MAX_COMMAND_BYTES as u64 > bytes);
        assert_eq!(prefetch_within(500, bytes), 500, "the count still bounds");
        assert_eq!(
            prefetch_within(8000, 0),
            1,
            "one delivery at a time at least"
        );
    }
}
