//! The live-stream benchmark of issue 12: many clients follow chats while messages are created at a fixed
//! rate; it reports the time from each create's 201 to its event reaching each subscriber, and the API's
//! memory with the streams open.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use chatsys_bench::client::{Connection, create_application, create_chat_number};
use chatsys_bench::events::EventStream;
use chatsys_bench::load::{self, ChatTarget, Pace};
use chatsys_bench::stats::{LatencySummary, Rate};
use chatsys_bench::system::{Endpoints, Options, Role, System, parse_env, rss_kib};
use clap::Parser;
use serde::Serialize;
use tokio::time::Instant;

#[derive(Debug, Parser)]
#[command(name = "streams")]
struct Args {
    #[command(flatten)]
    endpoints: Endpoints,
    /// Tiny sizes, in seconds (CI keeps the benchmark working with it).
    #[arg(long)]
    smoke: bool,
    /// Open event streams, spread evenly over the chats.
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    #[arg(long, default_value_t = 100)]
    chats: usize,
    /// Messages created per second, over all chats.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    #[arg(long, default_value_t = 10)]
    secs: u64,
    #[arg(long, default_value_t = 200)]
    body_bytes: usize,
    /// Connections the creates are sent on.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Extra environment for the chatsys processes; repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,
}

#[derive(Debug, Serialize)]
struct Report {
    streams: usize,
    chats: usize,
    offered_rate: f64,
    created: Rate,
    create_errors: u64,
    /// From a create's 201 to its event at each subscriber of its chat.
    delivery: LatencySummary,
    /// Deliveries expected (subscribers of the chat of every 201) that never came.
    never_delivered: usize,
    /// Streams that ended while the load ran.
    streams_ended: usize,
    api_rss_idle_mib: f64,
    api_rss_streams_open_mib: f64,
    api_rss_after_load_mib: f64,
}

const MIB: f64 = 1024.0;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    chatsys_bench::run_to_end(run(args))?
}

async fn run(mut args: Args) -> anyhow::Result<()> {
    if args.smoke {
        (args.streams, args.chats, args.rate, args.secs) = (20, 5, 50.0, 2);
    }
    if args.chats == 0 || args.streams == 0 || args.rate <= 0.0 {
        bail!("--streams, --chats and --rate must be positive");
    }
    // One application holds every stream: its limits are raised to the run's size.
    let mut env = vec![
        (
            "CHATSYS_MAX_CONNECTIONS".to_owned(),
            // The streams may hold all but a tenth of the connections.
            ((args.streams + args.connections + 100) * 10 / 9 + 8).to_string(),
        ),
        (
            "CHATSYS_EVENT_MAX_STREAMS_PER_APP".to_owned(),
            args.streams.to_string(),
        ),
        ("CHATSYS_EVENT_MAX_CHATS".to_owned(), args.chats.to_string()),
    ];
    env.extend(args.env.clone());
    let system = System::start(args.endpoints.clone(), Options { keep: false, env })
        .await
        .context("starting chatsys")?;
    let measured = measure(&args, &system).await;
    let shutdown = system.shutdown().await;
    let report = measured?;
    shutdown?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    if args.smoke && report.never_delivered > 0 {
        bail!("{} deliveries never came", report.never_delivered);
    }
    Ok(())
}

/// What each stream saw: per chat target, the numbers created and when they arrived.
type Arrivals = Arc<Mutex<Vec<(usize, u64, Instant)>>>;

async fn measure(args: &Args, system: &System) -> anyhow::Result<Report> {
    let addr = system.api_addr();
    let api = system.pid(Role::Api).context("the API runs")?;
    let mut connection = Connection::new(addr, Duration::from_secs(30));
    let token: Arc<str> = Arc::from(create_application(&mut connection, "streams").await?);
    let mut targets = Vec::new();
    for _ in 0..args.chats {
        let chat = create_chat_number(&mut connection, &token).await?;
        targets.push(ChatTarget {
            token: token.clone(),
            chat,
        });
    }
    let api_rss_idle_mib = rss_kib(api) as f64 / MIB;

    eprintln!("opening {} streams over {} chats", args.streams, args.chats);
    let arrivals: Arrivals = Arc::default();
    let ended = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for index in 0..args.streams {
        let target = index % args.chats;
        let path = format!(
            "/applications/{token}/chats/{}/events",
            targets[target].chat
        );
        let mut stream = EventStream::open(addr, &path, None)
            .await
            .with_context(|| format!("opening stream {index}"))?;
        let (arrivals, ended, stop) = (arrivals.clone(), ended.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match stream.next().await {
                    Ok(event) if event.kind == "message.created" => {
                        let arrived = Instant::now();
                        arrivals
                            .lock()
                            .expect("arrivals")
                            .push((target, event.number, arrived));
                    }
                    Ok(_) => {}
                    Err(_) => {
                        ended.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let api_rss_streams_open_mib = rss_kib(api) as f64 / MIB;

    eprintln!("creating {}/s for {} s", args.rate, args.secs);
    let outcome = load::create_messages(
        addr,
        Arc::new(targets),
        args.connections,
        args.body_bytes,
        false,
        Pace::Open {
            rate: args.rate,
            within: Duration::from_secs(args.secs),
        },
    )
    .await;
    // Every event is due within a few seconds of the last 201.
    let subscribers = |target: usize| {
        (0..args.streams)
            .filter(|i| i % args.chats == target)
            .count()
    };
    let expected: usize = outcome.created.iter().map(|c| subscribers(c.target)).sum();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline && arrivals.lock().expect("arrivals").len() < expected {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let api_rss_after_load_mib = rss_kib(api) as f64 / MIB;
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.abort();
    }
    let created_at: HashMap<(usize, u64), Instant> = outcome
        .created
        .iter()
        .map(|c| ((c.target, c.number), c.at))
        .collect();
    let arrivals = arrivals.lock().expect("arrivals");
    let latencies: Vec<Duration> = arrivals
        .iter()
        .filter_map(|(target, number, at)| {
            created_at
                .get(&(*target, *number))
                .map(|created| at.saturating_duration_since(*created))
        })
        .collect();
    let delivered = latencies.len();
    Ok(Report {
        streams: args.streams,
        chats: args.chats,
        offered_rate: args.rate,
        created: Rate::new(outcome.ok, outcome.elapsed),
        create_errors: outcome.errors(),
        delivery: LatencySummary::of(latencies),
        never_delivered: expected.saturating_sub(delivered),
        streams_ended: ended.load(Ordering::Relaxed),
        api_rss_idle_mib,
        api_rss_streams_open_mib,
        api_rss_after_load_mib,
    })
}
