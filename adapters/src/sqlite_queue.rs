//! The embedded durable command queue of standalone mode: a table in the SQLite database of the store,
//! so a command and the rows it becomes share one file and one fsync discipline.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::SqlitePool;
use sqlx::{QueryBuilder, Sqlite};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::database_error::from_sqlx;
use chatsys_core::command::Command;
use chatsys_core::domain::AppId;
use chatsys_core::error::{Backend, CoreError, CoreResult};
use chatsys_core::ports::{BatchLimits, CommandSource, Delivery, NumberFloor, Queue};

/// The embedded durable queue: commands are rows of `command_queue`, written in group commits (every
/// request waiting at the same time shares one transaction and one fsync) and deleted on acknowledgement.
#[derive(Clone)]
pub struct SqliteQueue {
    pool: SqlitePool,
    writes: mpsc::Sender<(Command, oneshot::Sender<CoreResult<()>>)>,
    arrived: Arc<Notify>,
}

impl SqliteQueue {
    pub fn new(pool: SqlitePool) -> Self {
        let (writes, receiver) = mpsc::channel(10_000);
        let arrived = Arc::new(Notify::new());
        tokio::spawn(group_commit(pool.clone(), receiver, arrived.clone()));
        SqliteQueue {
            pool,
            writes,
            arrived,
        }
    }

    pub fn source(&self) -> SqliteSource {
        SqliteSource {
            pool: self.pool.clone(),
            arrived: self.arrived.clone(),
            seen: 0,
        }
    }
}

fn scope(command: &Command) -> (u64, u64, u64) {
    command.message_key().unwrap_or_else(|| {
        let (app, chat) = command.chat_key().unwrap_or((command.application_id(), 0));
        (app, chat, 0)
    })
}

async fn group_commit(
    pool: SqlitePool,
    mut receiver: mpsc::Receiver<(Command, oneshot::Sender<CoreResult<()>>)>,
    arrived: Arc<Notify>,
) {
    let mut waiting = Vec::new();
    while receiver.recv_many(&mut waiting, 1000).await > 0 {
        let result = async {
            let mut insert: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO command_queue (payload, application_id, chat_number, message_number) ",
            );
            insert.push_values(&waiting, |mut row, (command, _)| {
                let (app, chat, number) = scope(command);
                row.push_bind(command.encode())
                    .push_bind(app as i64)
                    .push_bind(chat as i64)
                    .push_bind(number as i64);
            });
            insert.build().execute(&pool).await.map(|_| ())
        }
        .await;
        let result = result.map_err(|e| e.to_string());
        for (_, reply) in waiting.drain(..) {
            let _ = reply.send(
                result
                    .clone()
                    .map_err(|e| CoreError::unavailable(Backend::Queue, e)),
            );
        }
        arrived.notify_one();
    }
}

#[async_trait]
impl Queue for SqliteQueue {
    async fn ping(&self) -> CoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(from_sqlx)
    }

    async fn publish(&self, command: &Command) -> CoreResult<()> {
        let (reply, done) = oneshot::channel();
        self.writes
            .send((command.clone(), reply))
            .await
            .map_err(|_| CoreError::unavailable(Backend::Queue, "the queue writer stopped"))?;
        done.await
            .map_err(|_| CoreError::unavailable(Backend::Queue, "the queue writer stopped"))?
    }

    async fn backlog(&self) -> CoreResult<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM command_queue")
            .fetch_one(&self.pool)
            .await
            .map_err(from_sqlx)?;
        Ok(n as u64)
    }
}

/// Exact floors for standalone: every number stored or still queued, nothing more.
#[async_trait]
impl NumberFloor for SqliteQueue {
    async fn chat_floor(&self, app: AppId) -> CoreResult<u64> {
        let max: i64 = sqlx::query_scalar(
            "SELECT MAX(COALESCE((SELECT MAX(number) FROM chats WHERE application_id = ?1), 0), \
             COALESCE((SELECT MAX(chat_number) FROM command_queue WHERE application_id = ?1), 0))",
        )
        .bind(app as i64)
        .fetch_one(&self.pool)
        .await
        .map_err(from_sqlx)?;
        Ok(max as u64)
    }

    async fn message_floor(&self, app: AppId, chat: u64) -> CoreResult<u64> {
        let max: i64 = sqlx::query_scalar(
            "SELECT MAX(COALESCE((SELECT MAX(number) FROM messages WHERE application_id = ?1 AND chat_number = ?2), 0), \
             COALESCE((SELECT MAX(message_number) FROM command_queue WHERE application_id = ?1 AND chat_number = ?2), 0))",
        )
        .bind(app as i64)
        .bind(chat as i64)
        .fetch_one(&self.pool)
        .await
        .map_err(from_sqlx)?;
        Ok(max as u64)
    }
}

pub struct SqliteSource {
    pool: SqlitePool,
    arrived: Arc<Notify>,
    /// Rows up to this id were handed out already (a restart hands them out again: redelivery).
    seen: i64,
}

#[async_trait]
impl CommandSource for SqliteSource {
    async fn next_batch(&mut self, limits: &BatchLimits) -> CoreResult<Vec<Delivery>> {
        let max = limits.commands;
        loop {
            // The oldest rows whose bytes, counted from the first, stay within the limit (the first
            // row whatever its size).
            let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
                "SELECT id, payload FROM (SELECT id, payload, SUM(length(payload)) OVER (ORDER BY id) AS running \
                 FROM command_queue WHERE id > ? ORDER BY id LIMIT ?) \
                 WHERE running <= ? OR running = length(payload) ORDER BY id",
            )
            .bind(self.seen)
            .bind(max as i64)
            .bind(limits.bytes as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(from_sqlx)?;
            if rows.is_empty() {
                let _ = tokio::time::timeout(Duration::from_secs(1), self.arrived.notified()).await;
                continue;
            }
            if rows.len() < max {
                // Let a few more group commits land so the batch is worth its transaction.
                tokio::time::sleep(limits.wait.min(Duration::from_millis(5))).await;
            }
            self.seen = rows.last().map_or(self.seen, |r| r.0);
            return Ok(rows
                .into_iter()
                .map(|(id, payload)| Delivery {
                    connection: 0,
                    lane: 0,
                    tag: id as u64,
                    payload,
                    redelivered: false,
                    headers: Vec::new(),
                })
                .collect());
        }
    }

    async fn ack(&mut self, deliveries: &[Delivery]) -> CoreResult<()> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let mut delete: QueryBuilder<Sqlite> =
            QueryBuilder::new("DELETE FROM command_queue WHERE id IN (");
        let mut ids = delete.separated(", ");
        for d in deliveries {
            ids.push_bind(d.tag as i64);
        }
        delete.push(")");
        delete
            .build()
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(from_sqlx)
    }

    async fn set_aside(
        &mut self,
        _delivery: &Delivery,
        command: &[u8],
        reason: &str,
    ) -> CoreResult<()> {
        sqlx::query("INSERT INTO dead_letters (payload, reason, failed_at) VALUES (?, ?, ?)")
            .bind(command)
            .bind(reason)
            .bind(chatsys_core::domain::now().timestamp_micros())
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(from_sqlx)
    }
}
