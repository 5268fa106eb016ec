//! The MySQL (and MariaDB) dialect of the SQL store.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPoolOptions, MySqlQueryResult};
use sqlx::{Connection, Executor, MySql, Pool};

use super::sql::{Dialect, SqlStore};
use crate::database_error::{from_migrate, from_sqlx};
use chatsys_core::error::{Backend, CoreError, CoreResult};

pub type MySqlStore = SqlStore<MySql>;

impl SqlStore<MySql> {
    /// Connects lazily: the pool opens connections on demand, so a database that is down at start
    /// makes requests fail with 503 instead of the process exiting.
    pub fn connect(url: &str, pool_size: u32) -> CoreResult<Self> {
        let options: MySqlConnectOptions = url
            .parse()
            .map_err(|e| CoreError::unavailable(Backend::Database, e))?;
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
            .connect_lazy_with(options);
        Ok(SqlStore::new(pool))
    }
}

/// How long `migrate` waits for another process's migrations to finish.
const MIGRATION_LOCK_WAIT: Duration = Duration::from_secs(3600);

#[async_trait]
impl Dialect for MySql {
    // Assignments run left to right, so `version` is compared before it is raised.
    // MySQL assigns left to right, each assignment seeing the ones before it: `deleted` goes last, so
    // every other one still sees whether the row was a tombstone before this batch.
    const MESSAGE_UPSERT: &'static str = " ON DUPLICATE KEY UPDATE \
        deleted_by = IF(deleted = 0 AND VALUES(deleted) = 1, VALUES(deleted_by), deleted_by), \
        changed_by = IF(deleted = 0 AND (VALUES(version) > version OR VALUES(deleted) = 1), VALUES(changed_by), changed_by), \
        body = IF(deleted = 1 OR VALUES(deleted) = 1, '', IF(VALUES(version) > version, VALUES(body), body)), \
        updated_at = IF(deleted = 0 AND VALUES(version) > version, VALUES(updated_at), updated_at), \
        created_at = LEAST(created_at, VALUES(created_at)), \
        version = GREATEST(version, VALUES(version)), \
        deleted = GREATEST(deleted, VALUES(deleted))";
    const CHAT_UPSERT: &'static str = " ON DUPLICATE KEY UPDATE \
        deleted_by = IF(deleted = 0 AND VALUES(deleted) = 1, VALUES(deleted_by), deleted_by), \
        messages_count = IF(deleted = 1, messages_count, messages_count + VALUES(messages_count)), \
        changed_by = IF(VALUES(last_event) > 0 OR (deleted = 0 AND VALUES(deleted) = 1), VALUES(changed_by), changed_by), \
        last_event = IF(deleted = 1, last_event, last_event + VALUES(last_event)), \
        updated_at = IF(VALUES(messages_count) > 0, GREATEST(updated_at, VALUES(updated_at)), updated_at), \
        deleted = GREATEST(deleted, VALUES(deleted))";
    const FOR_UPDATE: &'static str = " FOR UPDATE";
    const PURGE_MESSAGES: &'static str =
        "DELETE FROM messages WHERE application_id = ? AND chat_number = ? LIMIT ?";
    const PURGE_EVENTS: &'static str =
        "DELETE FROM chat_events WHERE application_id = ? AND chat_number = ? LIMIT ?";
    const GREATEST: &'static str = "GREATEST";

    fn affected(result: &MySqlQueryResult) -> u64 {
        result.rows_affected()
    }

    fn inserted_id(result: &MySqlQueryResult) -> u64 {
        result.last_insert_id()
    }

    async fn migrate(pool: &Pool<MySql>) -> CoreResult<()> {
        // sqlx's own migration lock is `GET_LOCK(name, -1)`, which MariaDB answers with NULL at once
        // when another session holds the lock, so replicas starting together would all migrate. This
        // lock waits on MySQL and MariaDB alike. It is held by a connection of its own, outside the
        // pool, for the whole run; closing that connection (or losing it) releases it.
        let mut lock = MySqlConnection::connect_with(&pool.connect_options())
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
                Backend::Database,
                format!(
                    "another process held the migration lock for over {} s",
                    MIGRATION_LOCK_WAIT.as_secs()
                ),
            ));
        }
        let mut migrator = crate::migrations::migrator(&[
            (
                1,
                "schema",
                include_str!("../migrations/mysql/0001_schema.sql"),
            ),
            (
                2,
                "chat events",
                include_str!("../migrations/mysql/0002_chat_events.sql"),
            ),
            (
                3,
                "chat events by message",
                include_str!("../migrations/mysql/0003_chat_events_by_message.sql"),
            ),
            (
                4,
                "deletes",
                include_str!("../migrations/mysql/0004_deletes.sql"),
            ),
        ]);
        migrator.set_locking(false);
        let migrated = migrator.run(pool).await.map_err(from_migrate);
        let _ = lock.close().await;
        migrated
    }

    async fn repair_counts(pool: &Pool<MySql>) -> CoreResult<u64> {
        let drifted_chats: Vec<(u64, u64)> = sqlx::query_as(
            "SELECT c.application_id, c.number FROM chats c \
             LEFT JOIN (SELECT application_id, chat_number, COUNT(*) AS n FROM messages WHERE deleted = 0 \
             GROUP BY application_id, chat_number) m \
             ON m.application_id = c.application_id AND m.chat_number = c.number \
             WHERE c.deleted = 0 AND c.messages_count <> COALESCE(m.n, 0) LIMIT 1000",
        )
        .fetch_all(pool)
        .await
        .map_err(from_sqlx)?;
        let drifted_apps: Vec<(u64,)> = sqlx::query_as(
            "SELECT a.id FROM applications a \
             LEFT JOIN (SELECT application_id, COUNT(*) AS n FROM chats WHERE deleted = 0 GROUP BY application_id) c \
             ON c.application_id = a.id WHERE a.deleted = 0 AND a.chats_count <> COALESCE(c.n, 0) LIMIT 1000",
        )
        .fetch_all(pool)
        .await
        .map_err(from_sqlx)?;
        // Each fix locks the counter row first, so a batch committing meanwhile adds its increment after.
        for (app, chat) in &drifted_chats {
            let mut tx = pool.begin().await.map_err(from_sqlx)?;
            sqlx::query("SELECT messages_count FROM chats WHERE application_id = ? AND number = ? FOR UPDATE")
                .bind(app)
                .bind(chat)
                .execute(&mut *tx)
                .await
                .map_err(from_sqlx)?;
            sqlx::query(
                "UPDATE chats SET messages_count = \
                 (SELECT COUNT(*) FROM messages WHERE application_id = ? AND chat_number = ? AND deleted = 0) \
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
            let mut tx = pool.begin().await.map_err(from_sqlx)?;
            sqlx::query("SELECT chats_count FROM applications WHERE id = ? FOR UPDATE")
                .bind(app)
                .execute(&mut *tx)
                .await
                .map_err(from_sqlx)?;
            sqlx::query("UPDATE applications SET chats_count = (SELECT COUNT(*) FROM chats WHERE application_id = ? AND deleted = 0) WHERE id = ?")
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
