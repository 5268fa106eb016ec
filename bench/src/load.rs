//! Load generators over many keep-alive connections: message creation (closed or open loop), page reads,
//! and watchers that see when created messages appear in their chat's list.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use tokio::time::Instant;

use crate::client::{Connection, listed_numbers, messages_path};
use crate::raw::filler;

/// A chat that load is sent to.
#[derive(Debug, Clone)]
pub struct ChatTarget {
    pub token: Arc<str>,
    pub chat: u64,
}

impl ChatTarget {
    pub fn messages_path(&self) -> String {
        messages_path(&self.token, self.chat)
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// Each connection sends its next request as soon as the previous one is answered, until `within` has
    /// passed or `max_created` messages got a 201.
    Closed { within: Duration, max_created: u64 },
    /// Requests are due at a fixed rate; latency counts from when a request was due, so a stall shows up in
    /// it instead of lowering the offered rate.
    Open { rate: f64, within: Duration },
}

/// A message that got its 201.
#[derive(Debug, Clone, Copy)]
pub struct Created {
    pub target: usize,
    pub number: u64,
    pub at: Instant,
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub ok: u64,
    /// Count of each failure: an HTTP status or `transport`.
    pub failures: BTreeMap<String, u64>,
    pub latencies: Vec<Duration>,
    pub elapsed: Duration,
    pub created: Vec<Created>,
    pub response_bytes: u64,
}

impl Outcome {
    pub fn errors(&self) -> u64 {
        self.failures.values().sum()
    }

    fn merge(&mut self, other: Outcome) {
        self.ok += other.ok;
        for (failure, count) in other.failures {
            *self.failures.entry(failure).or_default() += count;
        }
        self.latencies.extend(other.latencies);
        self.created.extend(other.created);
        self.response_bytes += other.response_bytes;
    }

    fn record_failure(&mut self, failure: String) {
        *self.failures.entry(failure).or_default() += 1;
    }
}

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Creates messages with bodies of `body_len` bytes in randomly chosen `targets`, each with a fresh
/// `Idempotency-Key` when `keyed`.
pub async fn create_messages(
    addr: SocketAddr,
    targets: Arc<Vec<ChatTarget>>,
    connections: usize,
    body_len: usize,
    keyed: bool,
    pace: Pace,
) -> Outcome {
    let paths: Arc<Vec<String>> = Arc::new(targets.iter().map(ChatTarget::messages_path).collect());
    let body = Bytes::from(
        serde_json::to_vec(&serde_json::json!({ "body": filler(body_len) })).expect("json"),
    );
    let started = Instant::now();
    let created_count = Arc::new(AtomicU64::new(0));
    let next_slot = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (paths, body, created_count, next_slot) = (
            paths.clone(),
            body.clone(),
            created_count.clone(),
            next_slot.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut connection = Connection::new(addr, REQUEST_TIMEOUT);
            let mut outcome = Outcome::default();
            loop {
                let due = match pace {
                    Pace::Closed {
                        within,
                        max_created,
                    } => {
                        if started.elapsed() >= within
                            || created_count.load(Ordering::Relaxed) >= max_created
                        {
                            break;
                        }
                        Instant::now()
                    }
                    Pace::Open { rate, within } => {
                        let slot = next_slot.fetch_add(1, Ordering::Relaxed);
                        let offset = Duration::from_secs_f64(slot as f64 / rate);
                        if offset >= within {
                            break;
                        }
                        tokio::time::sleep_until(started + offset).await;
                        started + offset
                    }
                };
                let target = rand::random_range(0..paths.len());
                let key = keyed.then(|| format!("{:032x}", rand::random::<u128>()));
                let header = key.as_deref().map(|key| ("idempotency-key", key));
                let response = connection
                    .send_with(
                        Method::POST,
                        &paths[target],
                        Some(body.clone()),
                        header.as_slice(),
                    )
                    .await;
                let answered = Instant::now();
                match response {
                    Ok(response) if response.status == StatusCode::CREATED => {
                        match response.number() {
                            Ok(number) => {
                                outcome.ok += 1;
                                created_count.fetch_add(1, Ordering::Relaxed);
                                outcome.latencies.push(answered - due);
                                outcome.created.push(Created {
                                    target,
                                    number,
                                    at: answered,
                                });
                            }
                            Err(_) => outcome.record_failure("201 without a number".to_owned()),
                        }
                    }
                    // Held by its application's rate limit: waits as it is told, as a client would.
                    Ok(response) if response.status == StatusCode::TOO_MANY_REQUESTS => {
                        outcome.record_failure("429".to_owned());
                        tokio::time::sleep(response.retry_after()).await;
                    }
                    Ok(response) => outcome.record_failure(response.status.as_u16().to_string()),
                    Err(_) => {
                        outcome.record_failure("transport".to_owned());
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            outcome
        }));
    }
    collect(tasks, started).await
}

/// GETs `paths`: at random for `within` when `repeat`, otherwise each once in order until `within`.
pub async fn read_pages(
    addr: SocketAddr,
    paths: Arc<Vec<String>>,
    connections: usize,
    within: Duration,
    repeat: bool,
) -> Outcome {
    let started = Instant::now();
    let next_path = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (paths, next_path) = (paths.clone(), next_path.clone());
        tasks.push(tokio::spawn(async move {
            let mut connection = Connection::new(addr, REQUEST_TIMEOUT);
            let mut outcome = Outcome::default();
            while started.elapsed() < within && !paths.is_empty() {
                let index = if repeat {
                    rand::random_range(0..paths.len())
                } else {
                    match usize::try_from(next_path.fetch_add(1, Ordering::Relaxed)) {
                        Ok(index) if index < paths.len() => index,
                        _ => break,
                    }
                };
                let sent = Instant::now();
                match connection.get(&paths[index]).await {
                    Ok(response) if response.status == StatusCode::OK => {
                        outcome.ok += 1;
                        outcome.latencies.push(sent.elapsed());
                        outcome.response_bytes += response.body.len() as u64;
                    }
                    Ok(response) => outcome.record_failure(response.status.as_u16().to_string()),
                    Err(_) => outcome.record_failure("transport".to_owned()),
                }
            }
            outcome
        }));
    }
    collect(tasks, started).await
}

async fn collect(tasks: Vec<tokio::task::JoinHandle<Outcome>>, started: Instant) -> Outcome {
    let mut total = Outcome::default();
    for task in tasks {
        match task.await {
            Ok(outcome) => total.merge(outcome),
            Err(error) => total.record_failure(format!("load task failed: {error}")),
        }
    }
    total.elapsed = started.elapsed();
    total
}

/// When each message number of each watched chat first appeared in its list.
pub type Sightings = Arc<Mutex<HashMap<(usize, u64), Instant>>>;

/// Polls the list of each target chat for numbers above `floors[i]` until `stop` is set.
pub fn watch_lists(
    addr: SocketAddr,
    targets: Arc<Vec<ChatTarget>>,
    floors: Vec<u64>,
    interval: Duration,
    stop: Arc<AtomicBool>,
) -> (Sightings, Vec<tokio::task::JoinHandle<u64>>) {
    let sightings: Sightings = Arc::default();
    let mut tasks = Vec::new();
    for (index, mut floor) in floors.into_iter().enumerate() {
        let (targets, sightings, stop) = (targets.clone(), sightings.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut connection = Connection::new(addr, REQUEST_TIMEOUT);
            let mut errors = 0u64;
            let base = targets[index].messages_path();
            while !stop.load(Ordering::Relaxed) {
                let path = format!("{base}?after={floor}&limit=1000");
                match connection.get(&path).await {
                    Ok(response) if response.status == StatusCode::OK => {
                        let seen_at = Instant::now();
                        let numbers = listed_numbers(&response.body).unwrap_or_default();
                        let mut sightings = sightings.lock().expect("sightings lock");
                        for number in numbers {
                            sightings.entry((index, number)).or_insert(seen_at);
                        }
                        while sightings.contains_key(&(index, floor + 1)) {
                            floor += 1;
                        }
                    }
                    _ => errors += 1,
                }
                tokio::time::sleep(interval).await;
            }
            errors
        }));
    }
    (sightings, tasks)
}
