//! The limits of the backing services on this machine, measured with plain clients on scratch resources.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chatsys_core::ports::Store;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use serde::Serialize;
use sqlx::mysql::MySqlPoolOptions;
use sqlx::{AssertSqlSafe, MySql, QueryBuilder};

use crate::cpu::{CpuSnapshot, CpuUse, services};
use crate::stats::Rate;
use crate::system::{Endpoints, drop_database, unique_name};
use chatsys_scratch::delete_queues;

pub async fn amqp_connect(url: &str) -> anyhow::Result<Connection> {
    tokio::time::timeout(
        AMQP_WITHIN,
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .with_context(|| format!("connecting to {url}: no answer"))?
    .with_context(|| format!("connecting to {url}"))
}

/// How long a connection's opening or closing may take. Once, in CI, a close after a raw measure
/// never returned (no socket left open, nothing more in the broker's log, the bench idle): every
/// connect and close of the bench is bounded, so a run fails or goes on rather than hangs.
const AMQP_WITHIN: Duration = Duration::from_secs(10);

/// Closes `connection`, waiting at most [`AMQP_WITHIN`]: what a bench closes it has finished with.
pub async fn amqp_close(connection: Connection, reason: &str) {
    let _ = tokio::time::timeout(AMQP_WITHIN, connection.close(200, reason.into())).await;
}

/// Deletes the bench's scratch queues, within [`AMQP_WITHIN`].
pub async fn remove_queues(amqp_url: &str, names: &[String]) -> anyhow::Result<()> {
    tokio::time::timeout(AMQP_WITHIN, delete_queues(amqp_url, names))
        .await
        .context("removing the scratch queues: no answer")??;
    Ok(())
}

const PERSISTENT: u8 = 2;

/// A payload of printable bytes.
pub fn filler(len: usize) -> String {
    "chatsys-bench-payload-".chars().cycle().take(len).collect()
}

#[derive(Debug, Clone, Serialize)]
pub struct QueueLimits {
    pub publish: Rate,
    pub publish_cpu: CpuUse,
    pub consume: Rate,
    pub consume_cpu: CpuUse,
}

/// Publishing and consuming at once, the queues' steady state under load.
#[derive(Debug, Clone, Serialize)]
pub struct QueueFlow {
    pub queues: usize,
    pub publishers: usize,
    /// Confirmed publishes and acknowledged consumes in the same interval.
    pub published: Rate,
    pub consumed: Rate,
    /// Per message consumed.
    pub cpu: CpuUse,
}

/// How the raw queue limits publish and consume: payloads of `payload_len` bytes, up to `outstanding`
/// unconfirmed publishes per channel, consumers with `prefetch` and a multiple-ack every `ack_every`,
/// for `within`.
#[derive(Debug, Clone, Copy)]
pub struct QueueLoad {
    pub payload_len: usize,
    pub outstanding: usize,
    pub prefetch: u16,
    pub ack_every: u64,
    pub within: Duration,
}

/// Up to `count` confirmed persistent publishes to a durable scratch queue from one channel, then
/// consumes them.
pub async fn amqp_publish_consume(
    amqp_url: &str,
    count: u64,
    load: QueueLoad,
) -> anyhow::Result<QueueLimits> {
    let connection = amqp_connect(amqp_url).await?;
    let queue = unique_name("chatsys_bench_raw");
    let result = publish_then_consume(&connection, &queue, count, load).await;
    amqp_close(connection, "bench done").await;
    remove_queues(amqp_url, &[queue]).await?;
    result
}

async fn declare_durable(channel: &Channel, queue: &str) -> anyhow::Result<()> {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// A consumer of `queue` on a channel of its own, with `prefetch` unacknowledged deliveries at most.
async fn consume(
    connection: &Connection,
    queue: &str,
    prefetch: u16,
) -> anyhow::Result<(Channel, Consumer)> {
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            queue.into(),
            "bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer))
}

async fn publish_then_consume(
    connection: &Connection,
    queue: &str,
    count: u64,
    load: QueueLoad,
) -> anyhow::Result<QueueLimits> {
    let channel = connection.create_channel().await?;
    declare_durable(&channel, queue).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let payload = filler(load.payload_len).into_bytes();
    let properties = BasicProperties::default().with_delivery_mode(PERSISTENT);
    let before = CpuSnapshot::take(&services());
    let started = Instant::now();
    let mut pending = FuturesUnordered::new();
    let mut confirmed = 0u64;
    let mut published = 0u64;
    while published < count && started.elapsed() < load.within {
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &payload,
                properties.clone(),
            )
            .await?;
        published += 1;
        pending.push(confirm);
        if pending.len() >= load.outstanding {
            confirmed += acked(pending.next().await)?;
        }
    }
    while let Some(confirmation) = pending.next().await {
        confirmed += acked(Some(confirmation))?;
    }
    let publish = Rate::new(confirmed, started.elapsed());
    let publish_cpu = CpuUse::between(&before, &CpuSnapshot::take(&services()), confirmed);

    let (channel, mut consumer) = consume(connection, queue, load.prefetch).await?;
    let before = CpuSnapshot::take(&services());
    let started = Instant::now();
    let deadline = started + load.within;
    let mut consumed = 0u64;
    while consumed < published {
        let delivery = match tokio::time::timeout_at(deadline.into(), consumer.next()).await {
            Ok(Some(delivery)) => delivery?,
            Ok(None) => bail!("consumer cancelled after {consumed} deliveries"),
            Err(_) => break,
        };
        consumed += 1;
        if consumed.is_multiple_of(load.ack_every) || consumed == published {
            channel
                .basic_ack(delivery.delivery_tag, BasicAckOptions { multiple: true })
                .await?;
        }
    }
    let consume = Rate::new(consumed, started.elapsed());
    let consume_cpu = CpuUse::between(&before, &CpuSnapshot::take(&services()), consumed);
    Ok(QueueLimits {
        publish,
        publish_cpu,
        consume,
        consume_cpu,
    })
}

/// `publishers` channels publish confirmed persistent messages spread over `queues` durable scratch
/// queues, while one consumer per queue acknowledges them as the worker does; measured for `within` after
/// a second of warm-up.
pub async fn amqp_flow(
    amqp_url: &str,
    queues: usize,
    publishers: usize,
    load: QueueLoad,
) -> anyhow::Result<QueueFlow> {
    let connection = amqp_connect(amqp_url).await?;
    let names: Vec<String> = (0..queues.max(1))
        .map(|_| unique_name("chatsys_bench_flow"))
        .collect();
    let result = flow(&connection, &names, publishers.max(1), load).await;
    amqp_close(connection, "bench done").await;
    remove_queues(amqp_url, &names).await?;
    result
}

async fn flow(
    connection: &Connection,
    queues: &[String],
    publishers: usize,
    load: QueueLoad,
) -> anyhow::Result<QueueFlow> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let setup = connection.create_channel().await?;
    for queue in queues {
        declare_durable(&setup, queue).await?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(0));
    let consumed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for queue in queues {
        let (channel, mut consumer) = consume(connection, queue, load.prefetch).await?;
        let (stop, consumed) = (stop.clone(), consumed.clone());
        tasks.push(tokio::spawn(async move {
            let mut unacked = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let delivery =
                    match tokio::time::timeout(Duration::from_millis(100), consumer.next()).await {
                        Ok(Some(delivery)) => delivery?,
                        Ok(None) => bail!("consumer cancelled"),
                        Err(_) => continue,
                    };
                consumed.fetch_add(1, Ordering::Relaxed);
                unacked += 1;
                if unacked >= load.ack_every {
                    channel
                        .basic_ack(delivery.delivery_tag, BasicAckOptions { multiple: true })
                        .await?;
                    unacked = 0;
                }
            }
            anyhow::Ok(())
        }));
    }
    for index in 0..publishers {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let queue = queues[index % queues.len()].clone();
        let payload = filler(load.payload_len).into_bytes();
        let (stop, published) = (stop.clone(), published.clone());
        tasks.push(tokio::spawn(async move {
            let properties = BasicProperties::default().with_delivery_mode(PERSISTENT);
            let mut pending = FuturesUnordered::new();
            while !stop.load(Ordering::Relaxed) {
                let confirm = channel
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &payload,
                        properties.clone(),
                    )
                    .await?;
                pending.push(confirm);
                if pending.len() >= load.outstanding {
                    published.fetch_add(acked(pending.next().await)?, Ordering::Relaxed);
                }
            }
            while let Some(confirmation) = pending.next().await {
                published.fetch_add(acked(Some(confirmation))?, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (published_before, consumed_before) = (
        published.load(Ordering::Relaxed),
        consumed.load(Ordering::Relaxed),
    );
    let before = CpuSnapshot::take(&services());
    let started = Instant::now();
    tokio::time::sleep(load.within).await;
    let elapsed = started.elapsed();
    let consumed_now = consumed.load(Ordering::Relaxed) - consumed_before;
    let cpu = CpuUse::between(&before, &CpuSnapshot::take(&services()), consumed_now);
    let published_now = published.load(Ordering::Relaxed) - published_before;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await??;
    }
    Ok(QueueFlow {
        queues: queues.len(),
        publishers,
        published: Rate::new(published_now, elapsed),
        consumed: Rate::new(consumed_now, elapsed),
        cpu,
    })
}

fn acked(confirmation: Option<lapin::Result<lapin::Confirmation>>) -> anyhow::Result<u64> {
    match confirmation {
        Some(Ok(confirmation)) if confirmation.is_ack() => Ok(1),
        Some(Ok(_)) => bail!("the broker refused a publish"),
        Some(Err(error)) => Err(error.into()),
        None => Ok(0),
    }
}

/// GETs of one value of `value_len` bytes from `connections` connections, one request at a time each.
pub async fn redis_get(
    redis_url: &str,
    value_len: usize,
    connections: usize,
    within: Duration,
) -> anyhow::Result<(Rate, CpuUse)> {
    let client = redis::Client::open(redis_url)?;
    let key = unique_name("chatsys_bench_raw");
    let mut setup = client.get_multiplexed_async_connection().await?;
    redis::cmd("SET")
        .arg(&key)
        .arg(filler(value_len))
        .query_async::<()>(&mut setup)
        .await?;
    let before = CpuSnapshot::take(&services());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let mut connection = client.get_multiplexed_async_connection().await?;
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let mut gets = 0u64;
            while started.elapsed() < within {
                let value: Vec<u8> = redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut connection)
                    .await?;
                if value.len() != value_len {
                    bail!("GET returned {} bytes, expected {value_len}", value.len());
                }
                gets += 1;
            }
            Ok(gets)
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    let rate = Rate::new(total, started.elapsed());
    let cpu = CpuUse::between(&before, &CpuSnapshot::take(&services()), total);
    redis::cmd("DEL")
        .arg(&key)
        .query_async::<()>(&mut setup)
        .await?;
    Ok((rate, cpu))
}

#[derive(Debug, Clone, Serialize)]
pub struct DatabaseLimits {
    pub multi_row_insert: Rate,
    /// Per row inserted.
    pub multi_row_insert_cpu: CpuUse,
    pub seed_design: Rate,
}

/// On one connection to a scratch database with the chatsys schema, migrated as the worker migrates it
/// (so that the raw figures are for the rows the worker writes, whatever the migrations make of the
/// `messages` table): multi-row inserts of `rows_per_insert`, then the seed design's one transaction
/// per message.
pub async fn mysql_limits(
    endpoints: &Endpoints,
    rows_per_insert: usize,
    body_len: usize,
    within: Duration,
    max_rows: u64,
) -> anyhow::Result<DatabaseLimits> {
    let database = unique_name("chatsys_bench_raw");
    let server = endpoints.server_pool().await?;
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE `{database}`")))
        .execute(&server)
        .await?;
    server.close().await;
    let result = measure_mysql(
        endpoints,
        &database,
        rows_per_insert,
        body_len,
        within,
        max_rows,
    )
    .await;
    drop_database(endpoints, &database).await?;
    result
}

async fn measure_mysql(
    endpoints: &Endpoints,
    database: &str,
    rows_per_insert: usize,
    body_len: usize,
    within: Duration,
    max_rows: u64,
) -> anyhow::Result<DatabaseLimits> {
    chatsys_adapters::mysql::MySqlStore::connect(&endpoints.database(database), 1)?
        .migrate()
        .await?;
    let pool = MySqlPoolOptions::new()
        .max_connections(1)
        .connect(&endpoints.database(database))
        .await?;
    let body = filler(body_len);
    const CHATS: u64 = 10;

    let before = CpuSnapshot::take(&services());
    let started = Instant::now();
    let mut inserted = 0u64;
    let mut insert = QueryBuilder::<MySql>::new("");
    while inserted < max_rows && started.elapsed() < within {
        insert.reset();
        // The batch in both columns the worker writes it to, `changed_by` indexed.
        insert.push(
            "INSERT INTO messages (application_id, chat_number, number, body, version, created_at, \
             updated_at, inserted_by, changed_by) ",
        );
        let batch = inserted / rows_per_insert as u64 + 1;
        let first = inserted;
        insert.push_values(first..first + rows_per_insert as u64, |mut row, index| {
            row.push_bind(1u64)
                .push_bind(index % CHATS + 1)
                .push_bind(index / CHATS + 1)
                .push_bind(body.as_str())
                .push_bind(1u64)
                .push("NOW(6)")
                .push("NOW(6)")
                .push_bind(batch)
                .push_bind(batch);
        });
        insert.build().execute(&pool).await?;
        inserted += rows_per_insert as u64;
    }
    let multi_row_insert = Rate::new(inserted, started.elapsed());
    let multi_row_insert_cpu = CpuUse::between(&before, &CpuSnapshot::take(&services()), inserted);

    let started = Instant::now();
    let mut stored = 0u64;
    while stored < max_rows && started.elapsed() < within {
        let chat = stored % CHATS + 1;
        let mut transaction = pool.begin().await?;
        let (highest,): (i64,) = sqlx::query_as(
            "SELECT CAST(COALESCE(MAX(number), 0) AS SIGNED) FROM messages \
             WHERE application_id = 2 AND chat_number = ? FOR UPDATE",
        )
        .bind(chat)
        .fetch_one(&mut *transaction)
        .await?;
        sqlx::query(
            "INSERT INTO messages (application_id, chat_number, number, body, version, created_at, \
             updated_at, inserted_by, changed_by) VALUES (2, ?, ?, ?, 1, NOW(6), NOW(6), ?, ?)",
        )
        .bind(chat)
        .bind(highest + 1)
        .bind(body.as_str())
        .bind(stored + 1)
        .bind(stored + 1)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        stored += 1;
    }
    let seed_design = Rate::new(stored, started.elapsed());
    pool.close().await;
    Ok(DatabaseLimits {
        multi_row_insert,
        multi_row_insert_cpu,
        seed_design,
    })
}
