//! SQLite, the embedded store of standalone mode. The durable command queue lives in the same database
//! file (`sqlite_queue`). WAL journal with `synchronous = FULL`: a command is on disk before its 201.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite};

use crate::command::Command;
use crate::domain::{AppId, Application, Chat, Message, Page};
use crate::error::{Backend, CoreError, CoreResult, from_sqlx};
use crate::plan::{BatchPlan, ChatKey, plan_batch};
use crate::ports::{Applied, Store};

pub async fn open(path: &Path) -> CoreResult<SqlitePool> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10));
    SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .map_err(|e| CoreError::unavailable(Backend::Database, e))
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn time(row: &SqliteRow, column: &str) -> Result<DateTime<Utc>, sqlx::Error> {
    let us: i64 = row.try_get(column)?;
    DateTime::from_timestamp_micros(us)
        .ok_or_else(|| sqlx::Error::Decode(format!("bad time in {column}").into()))
}

fn unsigned(row: &SqliteRow, column: &str) -> Result<u64, sqlx::Error> {
    row.try_get::<i64, _>(column).map(|v| v as u64)
}

fn application_from(row: &SqliteRow) -> Result<Application, sqlx::Error> {
    Ok(Application {
        id: unsigned(row, "id")?,
        token: row.try_get("token")?,
        name: row.try_get("name")?,
        chats_count: unsigned(row, "chats_count")?,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
    })
}

fn chat_from(row: &SqliteRow) -> Result<Chat, sqlx::Error> {
    Ok(Chat {
        application_id: unsigned(row, "application_id")?,
        number: unsigned(row, "number")?,
        messages_count: unsigned(row, "messages_count")?,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
    })
}

fn message_from(row: &SqliteRow) -> Result<Message, sqlx::Error> {
    Ok(Message {
        application_id: unsigned(row, "application_id")?,
        chat_number: unsigned(row, "chat_number")?,
        number: unsigned(row, "number")?,
        body: row.try_get("body")?,
        version: unsigned(row, "version")?,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
    })
}

const APPLICATION_COLUMNS: &str = "id, token, name, chats_count, created_at, updated_at";
const CHAT_COLUMNS: &str = "application_id, number, messages_count, created_at, updated_at";
const MESSAGE_COLUMNS: &str =
    "application_id, chat_number, number, body, version, created_at, updated_at";

#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    pub fn new(pool: SqlitePool) -> Self {
        SqliteStore { pool }
    }

    async fn fetch_optional<T>(
        &self,
        sql: String,
        binds: &[i64],
        map: fn(&SqliteRow) -> Result<T, sqlx::Error>,
    ) -> CoreResult<Option<T>> {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for b in binds {
            query = query.bind(*b);
        }
        let row = query.fetch_optional(&self.pool).await.map_err(from_sqlx)?;
        row.as_ref().map(map).transpose().map_err(from_sqlx)
    }

    async fn fetch_all<T>(
        &self,
        sql: String,
        binds: &[i64],
        map: fn(&SqliteRow) -> Result<T, sqlx::Error>,
    ) -> CoreResult<Vec<T>> {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for b in binds {
            query = query.bind(*b);
        }
        let rows = query.fetch_all(&self.pool).await.map_err(from_sqlx)?;
        rows.iter()
            .map(map)
            .collect::<Result<_, _>>()
            .map_err(from_sqlx)
    }

    async fn apply_plan(&self, plan: &BatchPlan) -> CoreResult<Applied> {
        let batch = super::batch_id();
        let mut tx = self.pool.begin().await.map_err(from_sqlx)?;
        let mut new_messages: BTreeMap<ChatKey, i64> = BTreeMap::new();
        if !plan.messages.is_empty() {
            for statement in plan.message_statements() {
                let mut insert: QueryBuilder<Sqlite> = QueryBuilder::new(
                    "INSERT INTO messages (application_id, chat_number, number, body, version, created_at, updated_at, inserted_by) ",
                );
                insert.push_values(statement, |mut row, ((app, chat, number), message)| {
                    row.push_bind(*app as i64)
                        .push_bind(*chat as i64)
                        .push_bind(*number as i64)
                        .push_bind(message.body.clone())
                        .push_bind(message.version as i64)
                        .push_bind(micros(message.created_at))
                        .push_bind(micros(message.updated_at))
                        .push_bind(batch);
                });
                insert.push(
                    " ON CONFLICT (application_id, chat_number, number) DO UPDATE SET \
                     body = CASE WHEN excluded.version > messages.version THEN excluded.body ELSE messages.body END, \
                     updated_at = CASE WHEN excluded.version > messages.version THEN excluded.updated_at ELSE messages.updated_at END, \
                     created_at = MIN(messages.created_at, excluded.created_at), \
                     version = MAX(messages.version, excluded.version)",
                );
                insert.build().execute(&mut *tx).await.map_err(from_sqlx)?;
            }
            let counted: Vec<(i64, i64, i64)> = sqlx::query_as(
                "SELECT application_id, chat_number, COUNT(*) FROM messages WHERE inserted_by = ? GROUP BY application_id, chat_number",
            )
            .bind(batch)
            .fetch_all(&mut *tx)
            .await
            .map_err(from_sqlx)?;
            new_messages = counted
                .into_iter()
                .map(|(a, c, n)| ((a as u64, c as u64), n))
                .collect();
        }
        for chunk in plan.chats.iter().collect::<Vec<_>>().chunks(1000) {
            let mut insert: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO chats (application_id, number, messages_count, created_at, updated_at, inserted_by) ",
            );
            insert.push_values(chunk, |mut row, (key, chat)| {
                row.push_bind(key.0 as i64)
                    .push_bind(key.1 as i64)
                    .push_bind(new_messages.get(key).copied().unwrap_or(0))
                    .push_bind(micros(chat.created_at))
                    .push_bind(micros(chat.updated_at))
                    .push_bind(batch);
            });
            insert.push(
                " ON CONFLICT (application_id, number) DO UPDATE SET \
                 messages_count = chats.messages_count + excluded.messages_count, \
                 updated_at = CASE WHEN excluded.messages_count > 0 THEN MAX(chats.updated_at, excluded.updated_at) ELSE chats.updated_at END",
            );
            insert.build().execute(&mut *tx).await.map_err(from_sqlx)?;
        }
        let new_chats: Vec<(i64, i64)> =
            sqlx::query_as("SELECT application_id, COUNT(*) FROM chats WHERE inserted_by = ? GROUP BY application_id")
                .bind(batch)
                .fetch_all(&mut *tx)
                .await
                .map_err(from_sqlx)?;
        for (app, count) in &new_chats {
            let app = *app as u64;
            let latest = plan
                .chats
                .range((app, 0)..=(app, u64::MAX))
                .map(|(_, c)| micros(c.created_at))
                .max();
            sqlx::query("UPDATE applications SET chats_count = chats_count + ?, updated_at = MAX(updated_at, ?) WHERE id = ?")
                .bind(count)
                .bind(latest.unwrap_or(0))
                .bind(app as i64)
                .execute(&mut *tx)
                .await
                .map_err(from_sqlx)?;
        }
        let (mut messages, to_read) = plan.written_or_to_read(&new_messages);
        if !to_read.is_empty() {
            let mut select: QueryBuilder<Sqlite> =
                QueryBuilder::new(format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE "));
            super::push_message_keys(&mut select, to_read);
            let rows = select
                .build()
                .fetch_all(&mut *tx)
                .await
                .map_err(from_sqlx)?;
            for row in &rows {
                messages.push(message_from(row).map_err(from_sqlx)?);
            }
        }
        tx.commit().await.map_err(from_sqlx)?;
        Ok(Applied {
            chats: plan.chats.keys().copied().collect(),
            applications: new_chats.iter().map(|(app, _)| *app as u64).collect(),
            messages,
        })
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> CoreResult<()> {
        super::migrator(&[(
            1,
            "schema",
            include_str!("../../migrations/sqlite/0001_schema.sql"),
        )])
        .run(&self.pool)
        .await
        .map_err(|e| CoreError::unavailable(Backend::Database, e))
    }

    async fn ping(&self) -> CoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(from_sqlx)
    }

    async fn create_application(
        &self,
        token: &str,
        name: &str,
        at: DateTime<Utc>,
    ) -> CoreResult<Application> {
        let result =
            sqlx::query("INSERT INTO applications (token, name, chats_count, created_at, updated_at) VALUES (?, ?, 0, ?, ?)")
                .bind(token)
                .bind(name)
                .bind(micros(at))
                .bind(micros(at))
                .execute(&self.pool)
                .await
                .map_err(from_sqlx)?;
        Ok(Application {
            id: result.last_insert_rowid() as u64,
            token: token.to_string(),
            name: name.to_string(),
            chats_count: 0,
            created_at: at,
            updated_at: at,
        })
    }

    async fn rename_application(&self, id: AppId, name: &str, at: DateTime<Utc>) -> CoreResult<()> {
        sqlx::query("UPDATE applications SET name = ?, updated_at = ? WHERE id = ?")
            .bind(name)
            .bind(micros(at))
            .bind(id as i64)
            .execute(&self.pool)
            .await
            .map_err(from_sqlx)?;
        Ok(())
    }

    async fn application_by_token(&self, token: &str) -> CoreResult<Option<Application>> {
        let sql = format!("SELECT {APPLICATION_COLUMNS} FROM applications WHERE token = ?");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(token)
            .fetch_optional(&self.pool)
            .await
            .map_err(from_sqlx)?;
        row.as_ref()
            .map(application_from)
            .transpose()
            .map_err(from_sqlx)
    }

    async fn application(&self, id: AppId) -> CoreResult<Option<Application>> {
        self.fetch_optional(
            format!("SELECT {APPLICATION_COLUMNS} FROM applications WHERE id = ?"),
            &[id as i64],
            application_from,
        )
        .await
    }

    async fn list_applications(
        &self,
        after: Option<AppId>,
        limit: u32,
    ) -> CoreResult<Vec<Application>> {
        let sql = format!(
            "SELECT {APPLICATION_COLUMNS} FROM applications WHERE id > ? ORDER BY id LIMIT ?"
        );
        self.fetch_all(
            sql,
            &[after.unwrap_or(0) as i64, i64::from(limit)],
            application_from,
        )
        .await
    }

    async fn chat(&self, app: AppId, number: u64) -> CoreResult<Option<Chat>> {
        let sql =
            format!("SELECT {CHAT_COLUMNS} FROM chats WHERE application_id = ? AND number = ?");
        self.fetch_optional(sql, &[app as i64, number as i64], chat_from)
            .await
    }

    async fn list_chats(&self, app: AppId, page: Page) -> CoreResult<Vec<Chat>> {
        let sql = format!(
            "SELECT {CHAT_COLUMNS} FROM chats WHERE application_id = ? AND number > ? ORDER BY number LIMIT ?"
        );
        self.fetch_all(
            sql,
            &[
                app as i64,
                page.after.unwrap_or(0) as i64,
                i64::from(page.limit),
            ],
            chat_from,
        )
        .await
    }

    async fn message(&self, app: AppId, chat: u64, number: u64) -> CoreResult<Option<Message>> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE application_id = ? AND chat_number = ? AND number = ?"
        );
        self.fetch_optional(sql, &[app as i64, chat as i64, number as i64], message_from)
            .await
    }

    async fn list_messages(&self, app: AppId, chat: u64, page: Page) -> CoreResult<Vec<Message>> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE application_id = ? AND chat_number = ? AND number > ? ORDER BY number LIMIT ?"
        );
        let binds = [
            app as i64,
            chat as i64,
            page.after.unwrap_or(0) as i64,
            i64::from(page.limit),
        ];
        self.fetch_all(sql, &binds, message_from).await
    }

    async fn max_chat_number(&self, app: AppId) -> CoreResult<u64> {
        let max: Option<i64> =
            sqlx::query_scalar("SELECT MAX(number) FROM chats WHERE application_id = ?")
                .bind(app as i64)
                .fetch_one(&self.pool)
                .await
                .map_err(from_sqlx)?;
        Ok(max.unwrap_or(0) as u64)
    }

    async fn max_message_number(&self, app: AppId, chat: u64) -> CoreResult<u64> {
        let max: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(number) FROM messages WHERE application_id = ? AND chat_number = ?",
        )
        .bind(app as i64)
        .bind(chat as i64)
        .fetch_one(&self.pool)
        .await
        .map_err(from_sqlx)?;
        Ok(max.unwrap_or(0) as u64)
    }

    async fn apply(&self, commands: &[Command]) -> CoreResult<Applied> {
        let plan = plan_batch(commands);
        if plan.is_empty() {
            return Ok(Applied::default());
        }
        self.apply_plan(&plan).await
    }

    async fn repair_counts(&self) -> CoreResult<u64> {
        let mut tx = self.pool.begin().await.map_err(from_sqlx)?;
        let chats = sqlx::query(
            "UPDATE chats SET messages_count = (SELECT COUNT(*) FROM messages m WHERE m.application_id = chats.application_id \
             AND m.chat_number = chats.number) WHERE messages_count <> (SELECT COUNT(*) FROM messages m \
             WHERE m.application_id = chats.application_id AND m.chat_number = chats.number)",
        )
        .execute(&mut *tx)
        .await
        .map_err(from_sqlx)?;
        let apps = sqlx::query(
            "UPDATE applications SET chats_count = (SELECT COUNT(*) FROM chats c WHERE c.application_id = applications.id) \
             WHERE chats_count <> (SELECT COUNT(*) FROM chats c WHERE c.application_id = applications.id)",
        )
        .execute(&mut *tx)
        .await
        .map_err(from_sqlx)?;
        tx.commit().await.map_err(from_sqlx)?;
        Ok(chats.rows_affected() + apps.rows_affected())
    }
}
