//! Growth (issue 27): what a list page, a search and a delete cost once the data has grown, on the
//! standalone server. It fills one chat with `--messages` messages and an application with `--chats`
//! chats (each other chat with `NOTES_PER_CHAT` messages), then times list pages from the oldest end,
//! the newest end and the middle, first pages of searches of the whole application, and deletes of
//! messages. List pages are never cached here (`CHATSYS_CACHE_MAX_PAGE_BYTES=0`), so every read is the
//! store's: what a page costs the first time.

use std::time::Duration;

use anyhow::{Context, bail};
use chatsys_bench::client::{
    Connection, chats_path, create_application, create_chat_number, create_message, messages_path,
};
use chatsys_bench::stats::{LatencySummary, Rate};
use chatsys_bench::system::Standalone;
use clap::Parser;
use futures::future::try_join_all;
use http::StatusCode;
use serde::Serialize;
use tokio::time::Instant;

#[derive(Debug, Parser)]
#[command(name = "growth")]
struct Args {
    /// Tiny sizes (CI keeps the benchmark working with it).
    #[arg(long)]
    smoke: bool,
    /// Messages of the long chat.
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Chats of the application (the long one among them).
    #[arg(long, default_value_t = 100)]
    chats: u64,
    /// Reads timed per kind of page, one after another.
    #[arg(long, default_value_t = 300)]
    reads: usize,
    /// Items per page.
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Connections the messages are posted on.
    #[arg(long, default_value_t = 64)]
    connections: u64,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// Messages in each chat but the long one: a word in each ("needle") is what the rare search finds.
const NOTES_PER_CHAT: u64 = 10;

#[derive(Debug, Serialize)]
struct Report {
    messages: u64,
    chats: u64,
    limit: u32,
    filled: Rate,
    pages: Vec<(String, LatencySummary)>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    chatsys_bench::run_to_end(run(args))?
}

async fn run(mut args: Args) -> anyhow::Result<()> {
    if args.smoke {
        (args.messages, args.chats, args.reads) = (300, 3, 10);
    }
    if args.chats == 0 || args.messages < u64::from(args.limit) * 2 {
        bail!("--chats must be positive and --messages at least two pages");
    }
    let server = Standalone::start(vec![(
        "CHATSYS_CACHE_MAX_PAGE_BYTES".to_owned(),
        "0".to_owned(),
    )])
    .await?;
    let addr = server.addr;
    let connect = || Connection::new(addr, Duration::from_secs(30));
    let mut control = connect();
    let token = create_application(&mut control, "growth").await?;
    for _ in 0..args.chats {
        create_chat_number(&mut control, &token).await?;
    }

    let started = Instant::now();
    let per_connection = args.messages.div_ceil(args.connections);
    let writers = (0..args.connections).map(|writer| {
        let token = token.clone();
        let mut connection = connect();
        let count = per_connection.min(args.messages.saturating_sub(writer * per_connection));
        async move {
            for n in 0..count {
                let body = format!("message {writer}-{n} of a long chat");
                let created = create_message(&mut connection, &token, 1, &body, None).await?;
                if created.status != StatusCode::CREATED {
                    bail!("a create answered {}", created.status);
                }
            }
            anyhow::Ok(())
        }
    });
    try_join_all(writers).await?;
    for chat in 2..=args.chats {
        for n in 1..=NOTES_PER_CHAT {
            let body = format!("note {n} of chat {chat}, with a needle in it");
            create_message(&mut control, &token, chat, &body, None).await?;
        }
    }
    wait_until_stored(&mut control, &token, 1, args.messages).await?;
    if args.chats > 1 {
        wait_until_stored(&mut control, &token, args.chats, NOTES_PER_CHAT).await?;
    }
    let filled = Rate::new(args.messages, started.elapsed());
    println!(
        "filled chat 1 with {} messages in {:.1} s ({:.0}/s, stored)",
        args.messages,
        started.elapsed().as_secs_f64(),
        filled.per_second
    );

    let limit = args.limit;
    let messages = messages_path(&token, 1);
    let middle = args.messages / 2;
    let kinds = [
        (
            "messages, oldest first",
            format!("{messages}?limit={limit}"),
        ),
        (
            "messages, newest first",
            format!("{messages}?order=desc&limit={limit}"),
        ),
        (
            "messages, newest first, from the middle",
            format!("{messages}?order=desc&limit={limit}&before={middle}"),
        ),
        (
            "chats, newest first",
            format!("{}?order=desc&limit={limit}", chats_path(&token)),
        ),
        (
            "search the application: a word in every message",
            format!("/applications/{token}/messages/search?q=message&limit={limit}"),
        ),
        (
            "search the application: a rare word",
            format!("/applications/{token}/messages/search?q=needle&limit={limit}"),
        ),
        (
            "search the application: two words, by relevance",
            format!(
                "/applications/{token}/messages/search?q=needle%20chat&order=relevance&limit={limit}"
            ),
        ),
        (
            "search the long chat, newest first",
            format!("{messages}/search?q=long%20chat&limit={limit}"),
        ),
    ];
    let rare = format!("/applications/{token}/messages/search?q=needle&limit=1000");
    let expected = ((args.chats - 1) * NOTES_PER_CHAT).min(1000);
    wait_until_found(&mut control, &rare, expected).await?;
    let mut pages = Vec::new();
    for (kind, path) in kinds {
        let mut samples = Vec::with_capacity(args.reads);
        for _ in 0..args.reads {
            let asked = Instant::now();
            let page = control.get(&path).await?;
            samples.push(asked.elapsed());
            if page.status != StatusCode::OK {
                bail!("{path} answered {}", page.status);
            }
        }
        let summary = LatencySummary::of(samples);
        println!(
            "{kind:<50} p50 {:>7.3} ms  p99 {:>7.3} ms  ({} reads)",
            summary.p50_ms, summary.p99_ms, summary.count
        );
        pages.push((kind.to_owned(), summary));
    }
    // Deletes of distinct messages of the long chat, one after another: what the API answers (202)
    // costs; the worker's part follows in the background.
    let mut samples = Vec::with_capacity(args.reads);
    for number in 1..=args.reads as u64 {
        let path = format!("{messages}/{number}");
        let asked = Instant::now();
        let deleted = control.send(http::Method::DELETE, &path, None).await?;
        samples.push(asked.elapsed());
        if deleted.status != StatusCode::ACCEPTED {
            bail!("DELETE {path} answered {}", deleted.status);
        }
    }
    let summary = LatencySummary::of(samples);
    let kind = "delete a message (answered 202)";
    println!(
        "{kind:<50} p50 {:>7.3} ms  p99 {:>7.3} ms  ({} deletes)",
        summary.p50_ms, summary.p99_ms, summary.count
    );
    pages.push((kind.to_owned(), summary));
    let report = Report {
        messages: args.messages,
        chats: args.chats,
        limit,
        filled,
        pages,
    };
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    drop(server);
    Ok(())
}

/// Waits until a search finds `expected` messages (stored, then indexed).
async fn wait_until_found(
    connection: &mut Connection,
    path: &str,
    expected: u64,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let page = connection.get(path).await?;
        let found: Vec<serde_json::Value> = serde_json::from_slice(&page.body).context("hits")?;
        if found.len() as u64 == expected {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{path} found {} of {expected}", found.len());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits for the worker to have stored a chat's every message (its count says so).
async fn wait_until_stored(
    connection: &mut Connection,
    token: &str,
    chat: u64,
    messages: u64,
) -> anyhow::Result<()> {
    #[derive(serde::Deserialize)]
    struct Counted {
        messages_count: u64,
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let chat = connection
            .get(&format!("/applications/{token}/chats/{chat}"))
            .await?;
        let counted: Counted = serde_json::from_slice(&chat.body).context("a chat")?;
        if counted.messages_count == messages {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("stored {} of {messages}", counted.messages_count);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
