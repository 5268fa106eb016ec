//! The SQLite dialect of the SQL store, the embedded store of standalone mode. The durable command
//! queue lives in the same database file (`sqlite_queue`). WAL journal with `synchronous = FULL`: a
//! command is on disk before its 201.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteQueryResult,
    SqliteSynchronous,
};
use sqlx::{Pool, Sqlite};

use super::sql::{Dialect, SqlStore};
use crate::database_error::from_sqlx;
use chatsys_core::error::{Backend, CoreError, CoreResult};

pub type SqliteStore = SqlStore<Sqlite>;

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

#[async_trait]
impl Dialect for Sqlite {
    // SQLite's assignments all see the row as it was before the statement.
    const MESSAGE_UPSERT: &'static str = " ON CONFLICT (application_id, chat_number, number) DO UPDATE SET \
        deleted_by = CASE WHEN messages.deleted = 0 AND excluded.deleted = 1 THEN excluded.deleted_by ELSE messages.deleted_by END, \
        changed_by = CASE WHEN messages.deleted = 0 AND (excluded.version > messages.version OR excluded.deleted = 1) \
            THEN excluded.changed_by ELSE messages.changed_by END, \
        body = CASE WHEN messages.deleted = 1 OR excluded.deleted = 1 THEN '' \
            WHEN excluded.version > messages.version THEN excluded.body ELSE messages.body END, \
        updated_at = CASE WHEN messages.deleted = 0 AND excluded.version > messages.version THEN excluded.updated_at \
            ELSE messages.updated_at END, \
        created_at = MIN(messages.created_at, excluded.created_at), \
        version = MAX(messages.version, excluded.version), \
        deleted = MAX(messages.deleted, excluded.deleted)";
    const CHAT_UPSERT: &'static str = " ON CONFLICT (application_id, number) DO UPDATE SET \
        deleted_by = CASE WHEN chats.deleted = 0 AND excluded.deleted = 1 THEN excluded.deleted_by ELSE chats.deleted_by END, \
        messages_count = CASE WHEN chats.deleted = 1 THEN chats.messages_count \
            ELSE chats.messages_count + excluded.messages_count END, \
        changed_by = CASE WHEN excluded.last_event > 0 OR (chats.deleted = 0 AND excluded.deleted = 1) \
            THEN excluded.changed_by ELSE chats.changed_by END, \
        last_event = CASE WHEN chats.deleted = 1 THEN chats.last_event ELSE chats.last_event + excluded.last_event END, \
        updated_at = CASE WHEN excluded.messages_count > 0 THEN MAX(chats.updated_at, excluded.updated_at) ELSE chats.updated_at END, \
        deleted = MAX(chats.deleted, excluded.deleted)";
    // One writer at a time: every transaction is serialised already.
    const FOR_UPDATE: &'static str = "";
    // SQLite has no DELETE … LIMIT by default (a compile-time option), and these tables have no rowid.
    const PURGE_MESSAGES: &'static str = "DELETE FROM messages WHERE (application_id, chat_number, number) IN \
        (SELECT application_id, chat_number, number FROM messages WHERE application_id = ? AND chat_number = ? LIMIT ?)";
    const PURGE_EVENTS: &'static str = "DELETE FROM chat_events WHERE (application_id, chat_number, seq) IN \
        (SELECT application_id, chat_number, seq FROM chat_events WHERE application_id = ? AND chat_number = ? LIMIT ?)";
    const GREATEST: &'static str = "MAX";

    fn affected(result: &SqliteQueryResult) -> u64 {
        result.rows_affected()
    }

    fn inserted_id(result: &SqliteQueryResult) -> u64 {
        result.last_insert_rowid() as u64
    }

    async fn migrate(pool: &Pool<Sqlite>) -> CoreResult<()> {
        crate::migrations::migrator(&[
            (
                1,
                "schema",
                include_str!("../migrations/sqlite/0001_schema.sql"),
            ),
            (
                2,
                "chat events",
                include_str!("../migrations/sqlite/0002_chat_events.sql"),
            ),
            (
                3,
                "idempotency keys",
                include_str!("../migrations/sqlite/0003_idempotency_keys.sql"),
            ),
            (
                4,
                "chat events by message",
                include_str!("../migrations/sqlite/0004_chat_events_by_message.sql"),
            ),
            (
                5,
                "deletes",
                include_str!("../migrations/sqlite/0005_deletes.sql"),
            ),
        ])
        .run(pool)
        .await
        .map_err(|e| CoreError::unavailable(Backend::Database, e))
    }

    async fn repair_counts(pool: &Pool<Sqlite>) -> CoreResult<u64> {
        let mut tx = pool.begin().await.map_err(from_sqlx)?;
        let chats = sqlx::query(
            "UPDATE chats SET messages_count = (SELECT COUNT(*) FROM messages m WHERE m.application_id = chats.application_id \
             AND m.chat_number = chats.number AND m.deleted = 0) WHERE deleted = 0 AND messages_count <> (SELECT COUNT(*) \
             FROM messages m WHERE m.application_id = chats.application_id AND m.chat_number = chats.number AND m.deleted = 0)",
        )
        .execute(&mut *tx)
        .await
        .map_err(from_sqlx)?;
        let apps = sqlx::query(
            "UPDATE applications SET chats_count = (SELECT COUNT(*) FROM chats c WHERE c.application_id = applications.id \
             AND c.deleted = 0) WHERE deleted = 0 AND chats_count <> (SELECT COUNT(*) FROM chats c \
             WHERE c.application_id = applications.id AND c.deleted = 0)",
        )
        .execute(&mut *tx)
        .await
        .map_err(from_sqlx)?;
        tx.commit().await.map_err(from_sqlx)?;
        Ok(chats.rows_affected() + apps.rows_affected())
    }
}
