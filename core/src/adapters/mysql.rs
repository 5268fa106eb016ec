//! The MySQL (and MariaDB) store.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDateTime, Utc};
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPool, MySqlPoolOptions, MySqlRow};
use sqlx::{Connection, Executor, MySql, QueryBuilder, Row};

use crate::command::Command;
use crate::domain::{AppId, Application, Chat, Message, Page};
use crate::error::{CoreError, CoreResult, from_sqlx};
use crate::plan::{ChatKey, plan_batch};
use crate::ports::{Applied, Store};

pub struct MySqlStore {
    pool: MySqlPool,
    options: MySqlConnectOptions,
}

impl MySqlStore {
    /// Connects lazily: the pool opens connections on demand, so a database that is down at start
    /// makes requests fail with 503 instead of the process exiting.
    pub fn connect(url: &str, pool_size: u32) -> CoreResult<Self> {
        let options: MySqlConnectOptions = url
            .parse()
            .map_err(|e| CoreError::unavailable(crate::error::Backend::Database, e))?;
        let options = options
            .timezone(Some("+00:00".to_string()))
            .charset("utf8mb4");
        let pool = MySqlPoolOptions::new()
            .max_connections(pool_size)
            .acquire_timeout(Duration::from_secs(3))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    // Row locks only: no gap locks between workers writing neighbouring rows.
                    conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                        .await?;
                    Ok(())
                })
            })
            .connect_lazy_with(options.clone());
        Ok(MySqlStore { pool, options })
    }

    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }
}

fn utc(n: NaiveDateTime) -> DateTime<Utc> {
    DateTime::from_naive_utc_and_offset(n, Utc)
}

fn application_from(row: &MySqlRow) -> Result<Application, sqlx::Error> {
    Ok(Application {
        id: row.try_get("id")?,
        token: row.try_get("token")?,
        name: row.try_get("name")?,
        chats_count: row.try_get("chats_count")?,
        created_at: utc(row.try_get("created_at")?),
        updated_at: utc(row.try_get("updated_at")?),
    })
}

fn chat_from(row: &MySqlRow) -> Result<Chat, sqlx::Error> {
    Ok(Chat {
        application_id: row.try_get("application_id")?,
        number: row.try_get("number")?,
        messages_count: row.try_get("messages_count")?,
        created_at: utc(row.try_get("created_at")?),
        updated_at: utc(row.try_get("updated_at")?),
    })
}

fn message_from(row: &MySqlRow) -> Result<Message, sqlx::Error> {
    Ok(Message {
        application_id: row.try_get("application_id")?,
        chat_number: row.try_get("chat_number")?,
        number: row.try_get("number")?,
        body: row.try_get("body")?,
        version: row.try_get("version")?,
        created_at: utc(row.try_get("created_at")?),
        updated_at: utc(row.try_get("updated_at")?),
    })
}

const APPLICATION_COLUMNS: &str = "id, token, name, chats_count, created_at, updated_at";
const CHAT_COLUMNS: &str = "application_id, number, messages_count, created_at, updated_at";
const MESSAGE_COLUMNS: &str =
    "application_id, chat_number, number, body, version, created_at, updated_at";

/// Tries a transaction again when the database chose it as a deadlock victim.
const DEADLOCK_RETRIES: usize = 5;

/// How long `migrate` waits for another process's migrations to finish.
const MIGRATION_LOCK_WAIT: Duration = Duration::from_secs(3600);

#[async_trait]
impl Store for MySqlStore {
    async fn migrate(&self) -> CoreResult<()> {
        // sqlx's own migration lock is `GET_LOCK(name, -1)`, which MariaDB answers with NULL at once
        // when another session holds the lock, so replicas starting together would all migrate. This
        // lock waits on MySQL and MariaDB alike. It is held by a connection of its own, outside the
        // pool, for the whole run; closing that connection (or losing it) releases it.
        let mut lock = MySqlConnection::connect_with(&self.options)
            .await
            .map_err(from_sqlx)?;
        let locked: Option<i64> = sqlx::query_scalar(
            "SELECT GET_LOCK(CONCAT('chatsys-migrations-', MD5(DATABASE())), ?)",
        )
        .bind(MIGRATION_LOCK_WAIT.as_secs())
        .fetch_one(&mut lock)
        .await
        .map_err(from_sqlx)?;
        if locked != Some(1) {
            return Err(CoreError::unavailable(
                crate::error::Backend::Database,
                format!(
                    "another process held the migration lock for over {} s",
                    MIGRATION_LOCK_WAIT.as_secs()
                ),
            ));
        }
        let mut migrator = super::migrator(&[(
            1,
            "schema",
            include_str!("../../migrations/mysql/0001_schema.sql"),
        )]);
        migrator.set_locking(false);
        let migrated = migrator
            .run(&self.pool)
            .await
            .map_err(|e| CoreError::unavailable(crate::error::Backend::Database, e));
        let _ = lock.close().await;
        migrated
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
        let result = sqlx::query(
            "INSERT INTO applications (token, name, chats_count, created_at, updated_at) VALUES (?, ?, 0, ?, ?)",
        )
        .bind(token)
        .bind(name)
        .bind(at.naive_utc())
        .bind(at.naive_utc())
        .execute(&self.pool)
        .await
        .map_err(from_sqlx)?;
        Ok(Application {
            id: result.last_insert_id(),
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
            .bind(at.naive_utc())
            .bind(id)
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
        let sql = format!("SELECT {APPLICATION_COLUMNS} FROM applications WHERE id = ?");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(from_sqlx)?;
        row.as_ref()
            .map(application_from)
            .transpose()
            .map_err(from_sqlx)
    }

    async fn list_applications(
        &self,
        after: Option<AppId>,
        limit: u32,
    ) -> CoreResult<Vec<Application>> {
        let sql = format!(
            "SELECT {APPLICATION_COLUMNS} FROM applications WHERE id > ? ORDER BY id LIMIT ?"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(after.unwrap_or(0))
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(from_sqlx)?;
        rows.iter()
            .map(application_from)
            .collect::<Result<_, _>>()
            .map_err(from_sqlx)
    }

    async fn chat(&self, app: AppId, number: u64) -> CoreResult<Option<Chat>> {
        let sql =
            format!("SELECT {CHAT_COLUMNS} FROM chats WHERE application_id = ? AND number = ?");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(app)
            .bind(number)
            .fetch_optional(&self.pool)
            .await
            .map_err(from_sqlx)?;
        row.as_ref().map(chat_from).transpose().map_err(from_sqlx)
    }

    async fn list_chats(&self, app: AppId, page: Page) -> CoreResult<Vec<Chat>> {
        let sql = format!(
            "SELECT {CHAT_COLUMNS} FROM chats WHERE application_id = ? AND number > ? ORDER BY number LIMIT ?"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(app)
            .bind(page.after.unwrap_or(0))
            .bind(page.limit)
            .fetch_all(&self.pool)
            .await
            .map_err(from_sqlx)?;
        rows.iter()
            .map(chat_from)
            .collect::<Result<_, _>>()
            .map_err(from_sqlx)
    }

    async fn message(&self, app: AppId, chat: u64, number: u64) -> CoreResult<Option<Message>> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE application_id = ? AND chat_number = ? AND number = ?"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(app)
            .bind(chat)
            .bind(number)
            .fetch_optional(&self.pool)
            .await
            .map_err(from_sqlx)?;
        row.as_ref()
            .map(message_from)
            .transpose()
            .map_err(from_sqlx)
    }

    async fn list_messages(&self, app: AppId, chat: u64, page: Page) -> CoreResult<Vec<Message>> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE application_id = ? AND chat_number = ? AND number > ? \
             ORDER BY number LIMIT ?"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(app)
            .bind(chat)
            .bind(page.after.unwrap_or(0))
            .bind(page.limit)
            .fetch_all(&self.pool)
            .await
            .map_err(from_sqlx)?;
        rows.iter()
            .map(message_from)
            .collect::<Result<_, _>>()
            .map_err(from_sqlx)
    }

    async fn max_chat_number(&self, app: AppId) -> CoreResult<u64> {
        let max: Option<u64> =
            sqlx::query_scalar("SELECT MAX(number) FROM chats WHERE application_id = ?")
                .bind(app)
                .fetch_one(&self.pool)
                .await
                .map_err(from_sqlx)?;
        Ok(max.unwrap_or(0))
    }

    async fn max_message_number(&self, app: AppId, chat: u64) -> CoreResult<u64> {
        let max: Option<u64> = sqlx::query_scalar(
            "SELECT MAX(number) FROM messages WHERE application_id = ? AND chat_number = ?",
        )
        .bind(app)
        .bind(chat)
        .fetch_one(&self.pool)
        .await
        .map_err(from_sqlx)?;
        Ok(max.unwrap_or(0))
    }

    async fn apply(&self, commands: &[Command]) -> CoreResult<Applied> {
        let plan = plan_batch(commands);
        if plan.is_empty() {
            return Ok(Applied::default());
        }
        let mut attempt = 0;
        loop {
            match self.apply_once(&plan).await {
                Err(CoreError::Unavailable { .. })
                    if attempt < DEADLOCK_RETRIES && self.ping().await.is_ok() =>
                {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(
                        10 * (1 << attempt) + rand::random::<u64>() % 20,
                    ))
                    .await;
                }
                other => return other,
            }
        }
    }

    async fn repair_counts(&self) -> CoreResult<u64> {
        let drifted_chats: Vec<(u64, u64)> = sqlx::query_as(
            "SELECT c.application_id, c.number FROM chats c \
             LEFT JOIN (SELECT application_id, chat_number, COUNT(*) AS n FROM messages GROUP BY application_id, chat_number) m \
             ON m.application_id = c.application_id AND m.chat_number = c.number \
             WHERE c.messages_count <> COALESCE(m.n, 0) LIMIT 1000",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(from_sqlx)?;
        let drifted_apps: Vec<(u64,)> = sqlx::query_as(
            "SELECT a.id FROM applications a \
             LEFT JOIN (SELECT application_id, COUNT(*) AS n FROM chats GROUP BY application_id) c \
             ON c.application_id = a.id WHERE a.chats_count <> COALESCE(c.n, 0) LIMIT 1000",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(from_sqlx)?;
        // Each fix locks the counter row first, so a batch committing meanwhile adds its increment after.
        for (app, chat) in &drifted_chats {
            let mut tx = self.pool.begin().await.map_err(from_sqlx)?;
            sqlx::query("SELECT messages_count FROM chats WHERE application_id = ? AND number = ? FOR UPDATE")
                .bind(app)
                .bind(chat)
                .execute(&mut *tx)
                .await
                .map_err(from_sqlx)?;
            sqlx::query(
                "UPDATE chats SET messages_count = \
                 (SELECT COUNT(*) FROM messages WHERE application_id = ? AND chat_number = ?) \
                 WHERE application_id = ? AND number = ?",
            )
            .bind(app)
            .bind(chat)
            .bind(app)
            .bind(chat)
            .execute(&mut *tx)
            .await
            .map_err(from_sqlx)?;
            tx.commit().await.map_err(from_sqlx)?;
        }
        for (app,) in &drifted_apps {
            let mut tx = self.pool.begin().await.map_err(from_sqlx)?;
            sqlx::query("SELECT chats_count FROM applications WHERE id = ? FOR UPDATE")
                .bind(app)
                .execute(&mut *tx)
                .await
                .map_err(from_sqlx)?;
            sqlx::query("UPDATE applications SET chats_count = (SELECT COUNT(*) FROM chats WHERE application_id = ?) WHERE id = ?")
                .bind(app)
                .bind(app)
                .execute(&mut *tx)
                .await
                .map_err(from_sqlx)?;
            tx.commit().await.map_err(from_sqlx)?;
        }
        Ok((drifted_chats.len() + drifted_apps.len()) as u64)
    }
}

impl MySqlStore {
    async fn apply_once(&self, plan: &crate::plan::BatchPlan) -> CoreResult<Applied> {
        let batch = super::batch_id();
        let mut tx = self.pool.begin().await.map_err(from_sqlx)?;

        let mut new_messages: BTreeMap<ChatKey, i64> = BTreeMap::new();
        if !plan.messages.is_empty() {
            for statement in plan.message_statements() {
                let mut insert: QueryBuilder<MySql> = QueryBuilder::new(
                    "INSERT INTO messages (application_id, chat_number, number, body, version, created_at, updated_at, inserted_by) ",
                );
                insert.push_values(statement, |mut row, ((app, chat, number), message)| {
                    row.push_bind(*app)
                        .push_bind(*chat)
                        .push_bind(*number)
                        .push_bind(message.body.as_str())
                        .push_bind(message.version)
                        .push_bind(message.created_at.naive_utc())
                        .push_bind(message.updated_at.naive_utc())
                        .push_bind(batch);
                });
                // Assignments run left to right, so `version` is compared before it is raised.
                insert.push(
                    " ON DUPLICATE KEY UPDATE \
                     body = IF(VALUES(version) > version, VALUES(body), body), \
                     updated_at = IF(VALUES(version) > version, VALUES(updated_at), updated_at), \
                     created_at = LEAST(created_at, VALUES(created_at)), \
                     version = GREATEST(version, VALUES(version))",
                );
                insert.build().execute(&mut *tx).await.map_err(from_sqlx)?;
            }
            let counted: Vec<(u64, u64, i64)> = sqlx::query_as(
                "SELECT application_id, chat_number, COUNT(*) FROM messages WHERE inserted_by = ? \
                 GROUP BY application_id, chat_number",
            )
            .bind(batch)
            .fetch_all(&mut *tx)
            .await
            .map_err(from_sqlx)?;
            new_messages = counted
                .into_iter()
                .map(|(app, chat, n)| ((app, chat), n))
                .collect();
        }

        let mut insert: QueryBuilder<MySql> = QueryBuilder::new(
            "INSERT INTO chats (application_id, number, messages_count, created_at, updated_at, inserted_by) ",
        );
        insert.push_values(&plan.chats, |mut row, (key, chat)| {
            row.push_bind(key.0)
                .push_bind(key.1)
                .push_bind(new_messages.get(key).copied().unwrap_or(0))
                .push_bind(chat.created_at.naive_utc())
                .push_bind(chat.updated_at.naive_utc())
                .push_bind(batch);
        });
        insert.push(
            " ON DUPLICATE KEY UPDATE messages_count = messages_count + VALUES(messages_count), \
             updated_at = IF(VALUES(messages_count) > 0, GREATEST(updated_at, VALUES(updated_at)), updated_at)",
        );
        insert.build().execute(&mut *tx).await.map_err(from_sqlx)?;

        let new_chats: Vec<(u64, i64)> = sqlx::query_as(
            "SELECT application_id, COUNT(*) FROM chats WHERE inserted_by = ? GROUP BY application_id",
        )
        .bind(batch)
        .fetch_all(&mut *tx)
        .await
        .map_err(from_sqlx)?;
        for (app, count) in &new_chats {
            let latest = plan
                .chats
                .range((*app, 0)..=(*app, u64::MAX))
                .map(|(_, c)| c.created_at)
                .max();
            sqlx::query(
                "UPDATE applications SET chats_count = chats_count + ?, updated_at = GREATEST(updated_at, ?) WHERE id = ?",
            )
            .bind(count)
            .bind(latest.map(|t| t.naive_utc()))
            .bind(app)
            .execute(&mut *tx)
            .await
            .map_err(from_sqlx)?;
        }

        let (mut messages, to_read) = plan.written_or_to_read(&new_messages);
        if !to_read.is_empty() {
            let mut select: QueryBuilder<MySql> =
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
            applications: new_chats.iter().map(|(app, _)| *app).collect(),
            messages,
        })
    }
}
