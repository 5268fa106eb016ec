//! The idempotency key records of standalone mode: rows of the SQLite database of the store, so a key
//! outlives a restart as the commands it guards do.

use async_trait::async_trait;
use sqlx::sqlite::SqlitePool;

use crate::database_error::from_sqlx;
use chatsys_core::error::CoreResult;
use chatsys_core::idempotency::{KEY_LIFETIME, KeyCells, now_ms};

#[derive(Clone)]
pub struct SqliteKeyCells {
    pool: SqlitePool,
}

impl SqliteKeyCells {
    pub fn new(pool: SqlitePool) -> Self {
        SqliteKeyCells { pool }
    }
}

#[async_trait]
impl KeyCells for SqliteKeyCells {
    async fn read(&self, cell: &str) -> CoreResult<Option<String>> {
        sqlx::query_scalar("SELECT value FROM idempotency_keys WHERE cell = ? AND expires_at > ?")
            .bind(cell)
            .bind(now_ms())
            .fetch_optional(&self.pool)
            .await
            .map_err(from_sqlx)
    }

    async fn swap(
        &self,
        cell: &str,
        expected: Option<&str>,
        new: Option<&str>,
    ) -> CoreResult<bool> {
        let now = now_ms();
        let changed = match (expected, new) {
            (Some(expected), Some(new)) => sqlx::query(
                "UPDATE idempotency_keys SET value = ? WHERE cell = ? AND value = ? AND expires_at > ?",
            )
            .bind(new)
            .bind(cell)
            .bind(expected)
            .bind(now)
            .execute(&self.pool)
            .await,
            (Some(expected), None) => sqlx::query(
                "DELETE FROM idempotency_keys WHERE cell = ? AND value = ? AND expires_at > ?",
            )
            .bind(cell)
            .bind(expected)
            .bind(now)
            .execute(&self.pool)
            .await,
            (None, Some(new)) => {
                // Rows past their lifetime are removed as new ones come, this cell's among them.
                sqlx::query("DELETE FROM idempotency_keys WHERE expires_at <= ?")
                    .bind(now)
                    .execute(&self.pool)
                    .await
                    .map_err(from_sqlx)?;
                sqlx::query(
                    "INSERT INTO idempotency_keys (cell, value, expires_at) VALUES (?, ?, ?) \
                     ON CONFLICT (cell) DO NOTHING",
                )
                .bind(cell)
                .bind(new)
                .bind(now + KEY_LIFETIME.as_millis() as i64)
                .execute(&self.pool)
                .await
            }
            (None, None) => return Ok(self.read(cell).await?.is_none()),
        };
        Ok(changed.map_err(from_sqlx)?.rows_affected() == 1)
    }
}
