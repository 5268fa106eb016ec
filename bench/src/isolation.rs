//! One application's large writes against another's small ones: how long a small message of one
//! application takes to become searchable while another writes its largest bodies, and how long short
//! searches over a chat of large bodies take when many run at once. Both are bounded by what one index
//! commit and one search request may do, not by the other application's load.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use http::StatusCode;
use serde::Serialize;
use tokio::time::Instant;

use crate::client::{Connection, create_application, create_chat_number, create_message};
use crate::load::{self, ChatTarget, Pace};
use crate::stats::LatencySummary;

/// The largest body the API takes.
const LARGE_BODY_BYTES: usize = 64 * 1024;
/// How long a small message may take to become searchable before the probe gives up on it.
const PROBE_LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Serialize)]
pub struct IsolationFigures {
    /// Bodies of 64 KiB the large application wrote.
    pub large_created: u64,
    /// From a small message's 201 to its first appearance in a search, before the large writes start.
    pub small_searchable_alone: LatencySummary,
    /// From a small message's 201 to its first appearance in a search, while the large ones are stored.
    pub small_searchable: LatencySummary,
    pub small_never_seen: usize,
    /// Concurrent one-character searches over the large application's chat, each followed to its end.
    pub short_searches: LatencySummary,
    pub short_search_pages: usize,
}

pub async fn measure(
    addr: std::net::SocketAddr,
    large_messages: u64,
    probes: usize,
    concurrent_searches: usize,
) -> anyhow::Result<IsolationFigures> {
    let mut connection = Connection::new(addr, Duration::from_secs(30));
    let large_token = create_application(&mut connection, "bench-large").await?;
    let large_chat = create_chat_number(&mut connection, &large_token).await?;
    let small_token = create_application(&mut connection, "bench-small").await?;
    let small_chat = create_chat_number(&mut connection, &small_token).await?;
    let (alone, _) = probe(&mut connection, &small_token, small_chat, probes).await?;

    let large = tokio::spawn(load::create_messages(
        addr,
        Arc::new(vec![ChatTarget {
            token: Arc::from(large_token.as_str()),
            chat: large_chat,
        }]),
        8,
        LARGE_BODY_BYTES,
        false,
        Pace::Closed {
            within: Duration::from_secs(120),
            max_created: large_messages,
        },
    ));
    // Let the large writes start reaching the worker before the first probe.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (latencies, never_seen) = probe(&mut connection, &small_token, small_chat, probes).await?;
    let outcome = large.await.context("the large writes")?;

    let path =
        format!("/applications/{large_token}/chats/{large_chat}/messages/search?q=a&limit=1000");
    let searches: Vec<_> = (0..concurrent_searches)
        .map(|_| {
            let path = path.clone();
            tokio::spawn(async move {
                let mut connection = Connection::new(addr, Duration::from_secs(60));
                let started = Instant::now();
                let pages = follow(&mut connection, &path).await?;
                anyhow::Ok((started.elapsed(), pages))
            })
        })
        .collect();
    let mut search_times = Vec::new();
    let mut pages = 0;
    for search in searches {
        let (elapsed, walked) = search.await??;
        search_times.push(elapsed);
        pages += walked;
    }
    Ok(IsolationFigures {
        large_created: outcome.ok,
        small_searchable_alone: LatencySummary::of(alone),
        small_searchable: LatencySummary::of(latencies),
        small_never_seen: never_seen,
        short_searches: LatencySummary::of(search_times),
        short_search_pages: pages,
    })
}

/// Creates `probes` small messages one at a time, each timed from its 201 until a search finds it: the
/// times, and how many were never found.
async fn probe(
    connection: &mut Connection,
    token: &str,
    chat: u64,
    probes: usize,
) -> anyhow::Result<(Vec<Duration>, usize)> {
    let mut latencies = Vec::new();
    let mut never_seen = 0;
    for probe in 0..probes {
        let word = format!("probe{probe}x{}", rand::random::<u32>());
        let created = create_message(connection, token, chat, &word, None).await?;
        if created.status != StatusCode::CREATED {
            bail!("a small message was answered {}", created.status);
        }
        let at = Instant::now();
        let path = format!("/applications/{token}/chats/{chat}/messages/search?q={word}");
        match searchable(connection, &path, at + PROBE_LIMIT).await? {
            true => latencies.push(at.elapsed()),
            false => never_seen += 1,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok((latencies, never_seen))
}

/// Polls a search until it finds something or the deadline passes.
async fn searchable(
    connection: &mut Connection,
    path: &str,
    deadline: Instant,
) -> anyhow::Result<bool> {
    while Instant::now() < deadline {
        let response = connection.get(path).await?;
        if response.status == StatusCode::OK && response.body.as_ref() != b"[]" {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(false)
}

/// Follows a search's `Link` pages to the end; returns how many pages it took.
async fn follow(connection: &mut Connection, first: &str) -> anyhow::Result<usize> {
    let mut path = first.to_string();
    let mut pages = 0;
    loop {
        let response = connection.get(&path).await?;
        if response.status != StatusCode::OK {
            bail!("{path} answered {}", response.status);
        }
        pages += 1;
        let next = response
            .headers
            .get(http::header::LINK)
            .and_then(|v| v.to_str().ok())
            .and_then(|link| link.strip_prefix('<'))
            .and_then(|link| link.split_once('>'))
            .map(|(next, _)| next.to_string());
        match next {
            Some(next) => path = next,
            None => return Ok(pages),
        }
    }
}
