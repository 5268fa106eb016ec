//! Adapters for every port: the real ones a deployment uses (MySQL, Redis, RabbitMQ, OpenSearch) and the
//! embedded ones of standalone mode (SQLite, in-process numbers and cache, tantivy).

pub mod amqp;
pub mod embedded_search;
pub mod memory;
pub mod mysql;
pub mod opensearch;
pub mod redis;
pub mod sql;
pub mod sqlite;
pub mod sqlite_keys;
pub mod sqlite_queue;

use std::borrow::Cow;

use std::collections::BTreeMap;

use sqlx::{Database, Encode, QueryBuilder, SqlSafeStr, Type};

use crate::plan::{ChatKey, MessageKey};
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

/// `(application_id = ? AND chat_number = ? AND number IN (…)) OR …`, one group per chat, which both
/// databases turn into primary-key lookups: one query reads back every message a batch touched.
fn push_message_keys<'a, DB>(
    query: &mut QueryBuilder<DB>,
    keys: impl IntoIterator<Item = &'a MessageKey>,
) where
    DB: Database,
    i64: for<'t> Encode<'t, DB> + Type<DB>,
{
    let mut by_chat: BTreeMap<ChatKey, Vec<u64>> = BTreeMap::new();
    for (app, chat, number) in keys {
        by_chat.entry((*app, *chat)).or_default().push(*number);
    }
    for (i, ((app, chat), numbers)) in by_chat.into_iter().enumerate() {
        if i > 0 {
            query.push(" OR ");
        }
        query
            .push("(application_id = ")
            .push_bind(app as i64)
            .push(" AND chat_number = ")
            .push_bind(chat as i64)
            .push(" AND number IN (");
        let mut separated = query.separated(", ");
        for number in numbers {
            separated.push_bind(number as i64);
        }
        query.push("))");
    }
}
