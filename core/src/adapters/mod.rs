//! Adapters for every port: the real ones a deployment uses (MySQL, Redis, RabbitMQ, OpenSearch) and the
//! embedded ones of standalone mode (SQLite, in-process numbers and cache, tantivy).

pub mod amqp;
pub mod embedded_search;
pub mod memory;
pub mod mysql;
pub mod opensearch;
pub mod redis;
pub mod sqlite;

use std::borrow::Cow;

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

/// Builds a migrator over SQL files compiled into the binary (no files needed at run time).
fn migrator(files: &[(i64, &'static str, &'static str)]) -> Migrator {
    let migrations = files
        .iter()
        .map(|(version, description, sql)| {
            Migration::new(
                *version,
                Cow::Borrowed(*description),
                MigrationType::Simple,
                sql.into_sql_str(),
                false,
            )
        })
        .collect::<Vec<_>>();
    Migrator {
        migrations: Cow::Owned(migrations),
        ..Migrator::DEFAULT
    }
}

/// A random id for one attempt at a batch; rows it inserts carry it.
fn batch_id() -> i64 {
    (rand::random::<u64>() >> 1) as i64
}
