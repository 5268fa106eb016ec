//! The SQL store, written once for MySQL (and MariaDB) and SQLite: the reads, and the apply algorithm
//! (insert the batch's messages and chats with an upsert, count what this batch inserted, raise the
//! counts, read back what may hold a newer edit, all in one transaction). What differs between the
//! two databases is the [`Dialect`]: the upsert clauses, the greatest-of function, how a time and an
//! inserted id come back, migrations and the counts repair.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDateTime, Utc};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::mysql::{MySqlTypeInfo, MySqlValueRef};
use sqlx::sqlite::{SqliteTypeInfo, SqliteValueRef};
use sqlx::{
    Database, Decode, Encode, Executor, FromRow, IntoArguments, MySql, Pool, QueryBuilder, Sqlite,
    Type,
};

use crate::command::Command;
use crate::domain::{AppId, Application, Chat, Message, Page};
use crate::error::{CoreResult, from_sqlx};
use crate::plan::{BatchPlan, ChatKey, plan_batch};
use crate::ports::{Applied, Store};

/// What the shared algorithm needs to know of a database.
#[async_trait]
pub trait Dialect: Database {
    /// Ends the multi-row insert into `messages`: on an existing row the higher version's body and
    /// `updated_at` win, and the earliest `created_at` stays.
    const MESSAGE_UPSERT: &'static str;
    /// Ends the multi-row insert into `chats`: on an existing row the count grows by the new messages
    /// and `updated_at` moves to the latest of them.
    const CHAT_UPSERT: &'static str;
    /// The scalar greatest-of function.
    const GREATEST: &'static str;
    /// The id the last insert generated.
    fn inserted_id(result: &Self::QueryResult) -> u64;
    async fn migrate(pool: &Pool<Self>) -> CoreResult<()>;
    /// Recomputes counts that drifted from the rows; returns how many were fixed.
    async fn repair_counts(pool: &Pool<Self>) -> CoreResult<u64>;
}

/// A time as each database keeps it: `DATETIME(6)` in UTC on MySQL, microseconds since the epoch on
/// SQLite (which has no time type).
#[derive(Debug, Clone, Copy, Default)]
pub struct Stamp(pub DateTime<Utc>);

impl From<Stamp> for DateTime<Utc> {
    fn from(stamp: Stamp) -> Self {
        stamp.0
    }
}

impl Type<MySql> for Stamp {
    fn type_info() -> MySqlTypeInfo {
        <NaiveDateTime as Type<MySql>>::type_info()
    }
    fn compatible(ty: &MySqlTypeInfo) -> bool {
        <NaiveDateTime as Type<MySql>>::compatible(ty)
    }
}

impl Encode<'_, MySql> for Stamp {
    fn encode_by_ref(&self, buf: &mut Vec<u8>) -> Result<IsNull, BoxDynError> {
        <NaiveDateTime as Encode<MySql>>::encode_by_ref(&self.0.naive_utc(), buf)
    }
}

impl<'r> Decode<'r, MySql> for Stamp {
    fn decode(value: MySqlValueRef<'r>) -> Result<Self, BoxDynError> {
        let naive = <NaiveDateTime as Decode<MySql>>::decode(value)?;
        Ok(Stamp(DateTime::from_naive_utc_and_offset(naive, Utc)))
    }
}

impl Type<Sqlite> for Stamp {
    fn type_info() -> SqliteTypeInfo {
        <i64 as Type<Sqlite>>::type_info()
    }
    fn compatible(ty: &SqliteTypeInfo) -> bool {
        <i64 as Type<Sqlite>>::compatible(ty)
    }
}

impl Encode<'_, Sqlite> for Stamp {
    fn encode_by_ref(
        &self,
        buf: &mut <Sqlite as Database>::ArgumentBuffer,
    ) -> Result<IsNull, BoxDynError> {
        <i64 as Encode<Sqlite>>::encode_by_ref(&self.0.timestamp_micros(), buf)
    }
}

impl<'r> Decode<'r, Sqlite> for Stamp {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        let micros = <i64 as Decode<Sqlite>>::decode(value)?;
        DateTime::from_timestamp_micros(micros)
            .map(Stamp)
            .ok_or_else(|| format!("{micros} µs is out of the range of times").into())
    }
}

/// A store over either database.
pub struct SqlStore<DB: Database> {
    pool: Pool<DB>,
}

impl<DB: Database> SqlStore<DB> {
    pub fn new(pool: Pool<DB>) -> Self {
        SqlStore { pool }
    }

    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
    }
}

const APPLICATION_COLUMNS: &str = "id, token, name, chats_count, created_at, updated_at";
const CHAT_COLUMNS: &str = "application_id, number, messages_count, created_at, updated_at";
const MESSAGE_COLUMNS: &str =
    "application_id, chat_number, number, body, version, created_at, updated_at";

/// Rows of `chats` per insert: six values each, well within both databases' limit on bound values.
const CHAT_ROWS_PER_INSERT: usize = 1000;

fn signed(n: u64) -> i64 {
    n as i64
}

#[async_trait]
impl<DB: Dialect> Store for SqlStore<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    i64: for<'q> Encode<'q, DB> + Type<DB>,
    u64: Type<DB> + for<'r> Decode<'r, DB>,
    Stamp: for<'q> Encode<'q, DB> + Type<DB>,
    for<'s> &'s str: Encode<'s, DB> + Type<DB>,
    Application: for<'r> FromRow<'r, DB::Row>,
    Chat: for<'r> FromRow<'r, DB::Row>,
    Message: for<'r> FromRow<'r, DB::Row>,
    (Option<u64>,): for<'r> FromRow<'r, DB::Row>,
    (u64, u64, i64): for<'r> FromRow<'r, DB::Row>,
    (u64, i64): for<'r> FromRow<'r, DB::Row>,
{
    async fn migrate(&self) -> CoreResult<()> {
        DB::migrate(&self.pool).await
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
        .bind(Stamp(at))
        .bind(Stamp(at))
        .execute(&self.pool)
        .await
        .map_err(from_sqlx)?;
        Ok(Application {
            id: DB::inserted_id(&result),
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
            .bind(Stamp(at))
            .bind(signed(id))
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(from_sqlx)
    }

    async fn application_by_token(&self, token: &str) -> CoreResult<Option<Application>> {
        let sql = format!("SELECT {APPLICATION_COLUMNS} FROM applications WHERE token = ?");
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(token)
            .fetch_optional(&self.pool)
            .await
            .map_err(from_sqlx)
    }

    async fn application(&self, id: AppId) -> CoreResult<Option<Application>> {
        let sql = format!("SELECT {APPLICATION_COLUMNS} FROM applications WHERE id = ?");
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(signed(id))
            .fetch_optional(&self.pool)
            .await
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
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(signed(after.unwrap_or(0)))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(from_sqlx)
    }

    async fn chat(&self, app: AppId, number: u64) -> CoreResult<Option<Chat>> {
        let sql =
            format!("SELECT {CHAT_COLUMNS} FROM chats WHERE application_id = ? AND number = ?");
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(signed(app))
            .bind(signed(number))
            .fetch_optional(&self.pool)
            .await
            .map_err(from_sqlx)
    }

    async fn list_chats(&self, app: AppId, page: Page) -> CoreResult<Vec<Chat>> {
        let sql = format!(
            "SELECT {CHAT_COLUMNS} FROM chats WHERE application_id = ? AND number > ? ORDER BY number LIMIT ?"
        );
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(signed(app))
            .bind(signed(page.after.unwrap_or(0)))
            .bind(i64::from(page.limit))
            .fetch_all(&self.pool)
            .await
            .map_err(from_sqlx)
    }

    async fn message(&self, app: AppId, chat: u64, number: u64) -> CoreResult<Option<Message>> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE application_id = ? AND chat_number = ? AND number = ?"
        );
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(signed(app))
            .bind(signed(chat))
            .bind(signed(number))
            .fetch_optional(&self.pool)
            .await
            .map_err(from_sqlx)
    }

    async fn list_messages(&self, app: AppId, chat: u64, page: Page) -> CoreResult<Vec<Message>> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE application_id = ? AND chat_number = ? AND number > ? \
             ORDER BY number LIMIT ?"
        );
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(signed(app))
            .bind(signed(chat))
            .bind(signed(page.after.unwrap_or(0)))
            .bind(i64::from(page.limit))
            .fetch_all(&self.pool)
            .await
            .map_err(from_sqlx)
    }

    async fn max_chat_number(&self, app: AppId) -> CoreResult<u64> {
        let max: Option<u64> =
            sqlx::query_scalar("SELECT MAX(number) FROM chats WHERE application_id = ?")
                .bind(signed(app))
                .fetch_one(&self.pool)
                .await
                .map_err(from_sqlx)?;
        Ok(max.unwrap_or(0))
    }

    async fn max_message_number(&self, app: AppId, chat: u64) -> CoreResult<u64> {
        let max: Option<u64> = sqlx::query_scalar(
            "SELECT MAX(number) FROM messages WHERE application_id = ? AND chat_number = ?",
        )
        .bind(signed(app))
        .bind(signed(chat))
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
        self.apply_plan(&plan).await
    }

    async fn repair_counts(&self) -> CoreResult<u64> {
        DB::repair_counts(&self.pool).await
    }
}

impl<DB: Dialect> SqlStore<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    i64: for<'q> Encode<'q, DB> + Type<DB>,
    Stamp: for<'q> Encode<'q, DB> + Type<DB>,
    for<'s> &'s str: Encode<'s, DB> + Type<DB>,
    Message: for<'r> FromRow<'r, DB::Row>,
    (u64, u64, i64): for<'r> FromRow<'r, DB::Row>,
    (u64, i64): for<'r> FromRow<'r, DB::Row>,
{
    /// One transaction. Rows are tagged with a random batch id, so the batch counts exactly the rows it
    /// inserted, whatever another worker or a redelivery wrote meanwhile.
    async fn apply_plan(&self, plan: &BatchPlan) -> CoreResult<Applied> {
        let batch = super::batch_id();
        let mut tx = self.pool.begin().await.map_err(from_sqlx)?;

        let mut new_messages: BTreeMap<ChatKey, i64> = BTreeMap::new();
        if !plan.messages.is_empty() {
            for statement in plan.message_statements() {
                let mut insert = QueryBuilder::<DB>::new(
                    "INSERT INTO messages (application_id, chat_number, number, body, version, created_at, updated_at, inserted_by) ",
                );
                insert.push_values(statement, |mut row, ((app, chat, number), message)| {
                    row.push_bind(signed(*app))
                        .push_bind(signed(*chat))
                        .push_bind(signed(*number))
                        .push_bind(message.body.as_str())
                        .push_bind(signed(message.version))
                        .push_bind(Stamp(message.created_at))
                        .push_bind(Stamp(message.updated_at))
                        .push_bind(batch);
                });
                insert.push(DB::MESSAGE_UPSERT);
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

        for chunk in plan
            .chats
            .iter()
            .collect::<Vec<_>>()
            .chunks(CHAT_ROWS_PER_INSERT)
        {
            let mut insert = QueryBuilder::<DB>::new(
                "INSERT INTO chats (application_id, number, messages_count, created_at, updated_at, inserted_by) ",
            );
            insert.push_values(chunk, |mut row, (key, chat)| {
                row.push_bind(signed(key.0))
                    .push_bind(signed(key.1))
                    .push_bind(new_messages.get(key).copied().unwrap_or(0))
                    .push_bind(Stamp(chat.created_at))
                    .push_bind(Stamp(chat.updated_at))
                    .push_bind(batch);
            });
            insert.push(DB::CHAT_UPSERT);
            insert.build().execute(&mut *tx).await.map_err(from_sqlx)?;
        }

        let new_chats: Vec<(u64, i64)> = sqlx::query_as(
            "SELECT application_id, COUNT(*) FROM chats WHERE inserted_by = ? GROUP BY application_id",
        )
        .bind(batch)
        .fetch_all(&mut *tx)
        .await
        .map_err(from_sqlx)?;
        let raise = format!(
            "UPDATE applications SET chats_count = chats_count + ?, updated_at = {}(updated_at, ?) WHERE id = ?",
            DB::GREATEST
        );
        for (app, count) in &new_chats {
            let latest = plan
                .chats
                .range((*app, 0)..=(*app, u64::MAX))
                .map(|(_, c)| c.created_at)
                .max()
                .unwrap_or_default();
            sqlx::query(sqlx::AssertSqlSafe(raise.as_str()))
                .bind(*count)
                .bind(Stamp(latest))
                .bind(signed(*app))
                .execute(&mut *tx)
                .await
                .map_err(from_sqlx)?;
        }

        let (mut messages, to_read) = plan.written_or_to_read(&new_messages);
        if !to_read.is_empty() {
            let mut select =
                QueryBuilder::<DB>::new(format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE "));
            super::push_message_keys(&mut select, to_read);
            let read: Vec<Message> = select
                .build_query_as()
                .fetch_all(&mut *tx)
                .await
                .map_err(from_sqlx)?;
            messages.extend(read);
        }
        tx.commit().await.map_err(from_sqlx)?;
        Ok(Applied {
            chats: plan.chats.keys().copied().collect(),
            applications: new_chats.iter().map(|(app, _)| *app).collect(),
            messages,
        })
    }
}
