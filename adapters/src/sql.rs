//! The SQL store, written once for MySQL (and MariaDB) and SQLite: the reads, and the apply algorithm
//! (insert the batch's messages and chats with an upsert, count what this batch inserted, raise the
//! counts, read back what may hold a newer edit, all in one transaction). What differs between the
//! two databases is the [`Dialect`]: the upsert clauses, the greatest-of function, how a time and an
//! inserted id come back, migrations and the counts repair.

use std::collections::{BTreeMap, BTreeSet};

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

use crate::database_error::from_sqlx;
use chatsys_core::command::Command;
use chatsys_core::domain::{AppId, Application, ChangeKind, Chat, ChatEvent, Message, Scan};
use chatsys_core::error::CoreResult;
use chatsys_core::plan::{BatchPlan, ChatKey, MessageKey, plan_batch};
use chatsys_core::ports::{Applied, MessageRows, Store};

/// What the shared algorithm needs to know of a database.
#[async_trait]
pub trait Dialect: Database {
    /// Ends the multi-row insert into `messages`: on an existing row the higher version's body and
    /// `updated_at` win, and the earliest `created_at` stays; a tombstone stays one, bodiless, and
    /// `deleted_by` names the batch that made it one.
    const MESSAGE_UPSERT: &'static str;
    /// Ends the multi-row insert into `chats`: on an existing row the count grows by the new messages
    /// and `updated_at` moves to the latest of them; a tombstone stays one, its count and last change
    /// as they were, and `deleted_by` names the batch that made it one. `changed_by` names the batch
    /// that added a change to the chat or made it a tombstone.
    const CHAT_UPSERT: &'static str;
    /// The scalar greatest-of function.
    const GREATEST: &'static str;
    /// Ends a `SELECT` that locks the rows it reads until the transaction ends.
    const FOR_UPDATE: &'static str;
    /// Deletes at most `?` (the third parameter) of a chat's messages, then of its change log.
    const PURGE_MESSAGES: &'static str;
    const PURGE_EVENTS: &'static str;
    /// The id the last insert generated.
    fn inserted_id(result: &Self::QueryResult) -> u64;
    /// The rows a statement changed.
    fn affected(result: &Self::QueryResult) -> u64;
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

const APPLICATION_COLUMNS: &str = "id, token, name, chats_count, created_at, updated_at, deleted";
const CHAT_COLUMNS: &str =
    "application_id, number, messages_count, created_at, updated_at, last_event, deleted";
const MESSAGE_COLUMNS: &str =
    "application_id, chat_number, number, body, version, created_at, updated_at, deleted";

const MESSAGE_COLUMNS_OF_M: &str = "m.application_id, m.chat_number, m.number, m.body, m.version, \
     m.created_at, m.updated_at, m.deleted";

/// A row of `applications`, as the database returns it.
#[derive(FromRow)]
pub struct ApplicationRow {
    id: u64,
    token: String,
    name: String,
    chats_count: u64,
    created_at: Stamp,
    updated_at: Stamp,
    deleted: bool,
}

impl From<ApplicationRow> for Application {
    fn from(row: ApplicationRow) -> Self {
        Application {
            id: row.id,
            token: row.token,
            name: row.name,
            chats_count: row.chats_count,
            created_at: row.created_at.0,
            updated_at: row.updated_at.0,
            deleted: row.deleted,
        }
    }
}

/// A row of `chats`.
#[derive(FromRow)]
pub struct ChatRow {
    application_id: u64,
    number: u64,
    messages_count: u64,
    created_at: Stamp,
    updated_at: Stamp,
    last_event: u64,
    deleted: bool,
}

impl From<ChatRow> for Chat {
    fn from(row: ChatRow) -> Self {
        Chat {
            application_id: row.application_id,
            number: row.number,
            messages_count: row.messages_count,
            created_at: row.created_at.0,
            updated_at: row.updated_at.0,
            last_event: row.last_event,
            deleted: row.deleted,
        }
    }
}

/// A row of `messages`.
#[derive(FromRow)]
pub struct MessageRow {
    application_id: u64,
    chat_number: u64,
    number: u64,
    body: String,
    version: u64,
    created_at: Stamp,
    updated_at: Stamp,
    deleted: bool,
}

impl From<MessageRow> for Message {
    fn from(row: MessageRow) -> Self {
        Message {
            application_id: row.application_id,
            chat_number: row.chat_number,
            number: row.number,
            body: row.body,
            version: row.version,
            created_at: row.created_at.0,
            updated_at: row.updated_at.0,
            deleted: row.deleted,
        }
    }
}

fn rows_into<Row, T: From<Row>>(rows: Vec<Row>) -> Vec<T> {
    rows.into_iter().map(T::from).collect()
}

/// A row of the change log with the message's present state.
#[derive(FromRow)]
struct LoggedChange {
    seq: u64,
    created: i64,
    #[sqlx(flatten)]
    message: MessageRow,
}

impl From<LoggedChange> for ChatEvent {
    fn from(row: LoggedChange) -> Self {
        ChatEvent {
            seq: row.seq,
            kind: change_kind(row.message.deleted, row.created != 0),
            message: row.message.into(),
        }
    }
}

/// What a change did to a message: deleted it, stored its first state, or a newer one.
fn change_kind(deleted: bool, created: bool) -> ChangeKind {
    match (deleted, created) {
        (true, _) => ChangeKind::Deleted,
        (false, true) => ChangeKind::Created,
        (false, false) => ChangeKind::Edited,
    }
}

/// A chat row a batch changed, read back with the batches that inserted it and made it a tombstone.
#[derive(FromRow)]
pub struct StoredChatRow {
    #[sqlx(flatten)]
    chat: ChatRow,
    inserted_by: u64,
    deleted_by: u64,
}

struct StoredChat {
    chat: Chat,
    inserted_by: u64,
    deleted_by: u64,
}

impl From<StoredChatRow> for StoredChat {
    fn from(row: StoredChatRow) -> Self {
        StoredChat {
            chat: row.chat.into(),
            inserted_by: row.inserted_by,
            deleted_by: row.deleted_by,
        }
    }
}

/// Rows a purge deletes per statement: each statement a short transaction of its own.
const PURGE_ROWS: i64 = 5000;

/// Rows of `chats` per insert: six values each, well within both databases' limit on bound values.
const CHAT_ROWS_PER_INSERT: usize = 1000;

fn signed(n: u64) -> i64 {
    n as i64
}

/// The condition and order of a walk along `number`, the last column of the primary key, with its two
/// bounds (inclusive, in the order of the condition): either way the database reads the index in
/// order, from the near bound, and stops at the limit or the far bound (no sort).
fn keyset(scan: Scan) -> (&'static str, i64, i64) {
    let below = |bound: Option<u64>| bound.map_or(i64::MAX, |n| signed(n) - 1);
    match scan {
        Scan::Up {
            after, below: far, ..
        } => (
            "number > ? AND number <= ? ORDER BY number",
            signed(after),
            below(far),
        ),
        Scan::Down { before, above, .. } => (
            "number <= ? AND number > ? ORDER BY number DESC",
            below(before),
            signed(above),
        ),
    }
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
    ApplicationRow: for<'r> FromRow<'r, DB::Row>,
    ChatRow: for<'r> FromRow<'r, DB::Row>,
    MessageRow: for<'r> FromRow<'r, DB::Row>,
    (Option<u64>,): for<'r> FromRow<'r, DB::Row>,
    (u64,): for<'r> FromRow<'r, DB::Row>,
    (u64, u64, u64, u64, bool, u64): for<'r> FromRow<'r, DB::Row>,
    StoredChatRow: for<'r> FromRow<'r, DB::Row>,
    (u64, bool): for<'r> FromRow<'r, DB::Row>,
    (u64, Stamp): for<'r> FromRow<'r, DB::Row>,
    LoggedChange: for<'r> FromRow<'r, DB::Row>,
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
            deleted: false,
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

    async fn replace_token(&self, id: AppId, token: &str, at: DateTime<Utc>) -> CoreResult<()> {
        sqlx::query("UPDATE applications SET token = ?, updated_at = ? WHERE id = ?")
            .bind(token)
            .bind(Stamp(at))
            .bind(signed(id))
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(from_sqlx)
    }

    async fn application_by_token(&self, token: &str) -> CoreResult<Option<Application>> {
        let sql = format!("SELECT {APPLICATION_COLUMNS} FROM applications WHERE token = ?");
        sqlx::query_as::<_, ApplicationRow>(sqlx::AssertSqlSafe(sql))
            .bind(token)
            .fetch_optional(&self.pool)
            .await
            .map(|row| row.map(Application::from))
            .map_err(from_sqlx)
    }

    async fn application(&self, id: AppId) -> CoreResult<Option<Application>> {
        let sql = format!("SELECT {APPLICATION_COLUMNS} FROM applications WHERE id = ?");
        sqlx::query_as::<_, ApplicationRow>(sqlx::AssertSqlSafe(sql))
            .bind(signed(id))
            .fetch_optional(&self.pool)
            .await
            .map(|row| row.map(Application::from))
            .map_err(from_sqlx)
    }

    async fn list_applications(
        &self,
        after: Option<AppId>,
        limit: u32,
    ) -> CoreResult<Vec<Application>> {
        let sql = format!(
            "SELECT {APPLICATION_COLUMNS} FROM applications WHERE id > ? AND deleted = 0 ORDER BY id LIMIT ?"
        );
        sqlx::query_as::<_, ApplicationRow>(sqlx::AssertSqlSafe(sql))
            .bind(signed(after.unwrap_or(0)))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map(rows_into)
            .map_err(from_sqlx)
    }

    async fn chat(&self, app: AppId, number: u64) -> CoreResult<Option<Chat>> {
        let sql =
            format!("SELECT {CHAT_COLUMNS} FROM chats WHERE application_id = ? AND number = ?");
        sqlx::query_as::<_, ChatRow>(sqlx::AssertSqlSafe(sql))
            .bind(signed(app))
            .bind(signed(number))
            .fetch_optional(&self.pool)
            .await
            .map(|row| row.map(Chat::from))
            .map_err(from_sqlx)
    }

    async fn list_chats(&self, app: AppId, scan: Scan) -> CoreResult<Vec<Chat>> {
        let (condition, near, far) = keyset(scan);
        let sql = format!(
            "SELECT {CHAT_COLUMNS} FROM chats WHERE application_id = ? AND deleted = 0 AND {condition} LIMIT ?"
        );
        sqlx::query_as::<_, ChatRow>(sqlx::AssertSqlSafe(sql))
            .bind(signed(app))
            .bind(near)
            .bind(far)
            .bind(i64::from(scan.limit()))
            .fetch_all(&self.pool)
            .await
            .map(rows_into)
            .map_err(from_sqlx)
    }

    async fn message(&self, app: AppId, chat: u64, number: u64) -> CoreResult<Option<Message>> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE application_id = ? AND chat_number = ? AND number = ?"
        );
        sqlx::query_as::<_, MessageRow>(sqlx::AssertSqlSafe(sql))
            .bind(signed(app))
            .bind(signed(chat))
            .bind(signed(number))
            .fetch_optional(&self.pool)
            .await
            .map(|row| row.map(Message::from))
            .map_err(from_sqlx)
    }

    async fn list_messages(&self, app: AppId, chat: u64, scan: Scan) -> CoreResult<MessageRows> {
        // One transaction: at MySQL's default isolation (REPEATABLE READ) and in SQLite both reads see
        // one snapshot, so the change number is exactly the state the rows show. It is read first, so
        // that at a weaker isolation a change between the reads is sent by the stream again rather
        // than missed.
        let mut tx = self.pool.begin().await.map_err(from_sqlx)?;
        let last_event: Option<u64> = sqlx::query_scalar(
            "SELECT last_event FROM chats WHERE application_id = ? AND number = ?",
        )
        .bind(signed(app))
        .bind(signed(chat))
        .fetch_optional(&mut *tx)
        .await
        .map_err(from_sqlx)?;
        let (condition, near, far) = keyset(scan);
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE application_id = ? AND chat_number = ? AND deleted = 0 AND {condition} LIMIT ?"
        );
        let messages = sqlx::query_as::<_, MessageRow>(sqlx::AssertSqlSafe(sql))
            .bind(signed(app))
            .bind(signed(chat))
            .bind(near)
            .bind(far)
            .bind(i64::from(scan.limit()))
            .fetch_all(&mut *tx)
            .await
            .map(rows_into)
            .map_err(from_sqlx)?;
        tx.commit().await.map_err(from_sqlx)?;
        Ok(MessageRows {
            messages,
            last_event: last_event.unwrap_or(0),
        })
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

    async fn chat_events(
        &self,
        app: AppId,
        chat: u64,
        from: u64,
        after: u64,
        limit: u32,
        max_bytes: usize,
    ) -> CoreResult<Vec<ChatEvent>> {
        // Only a message's latest change in the whole log is read, so a catch-up read page by page
        // sends each message once whichever page its earlier changes fell in.
        const SAME_MESSAGE: &str = "o.application_id = e.application_id AND o.chat_number = e.chat_number \
             AND o.message_number = e.message_number";
        // The page ends where its bodies' running total passes `max_bytes` (after its first row), so
        // a reader holds about that much whatever the chat's messages weigh.
        let sql = format!(
            "SELECT * FROM (SELECT e.seq, EXISTS (SELECT 1 FROM chat_events o WHERE {SAME_MESSAGE} AND o.created <> 0 AND o.seq > ?) AS created, \
             {MESSAGE_COLUMNS_OF_M}, SUM(OCTET_LENGTH(m.body)) OVER (ORDER BY e.seq) AS running \
             FROM (SELECT * FROM chat_events e WHERE e.application_id = ? AND e.chat_number = ? AND e.seq > ? \
             AND NOT EXISTS (SELECT 1 FROM chat_events o WHERE {SAME_MESSAGE} AND o.seq > e.seq) \
             ORDER BY e.seq LIMIT ?) e JOIN messages m \
             ON m.application_id = e.application_id AND m.chat_number = e.chat_number AND m.number = e.message_number) page \
             WHERE running <= ? OR running = OCTET_LENGTH(body) ORDER BY seq"
        );
        let rows: Vec<LoggedChange> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(signed(from))
            .bind(signed(app))
            .bind(signed(chat))
            .bind(signed(after))
            .bind(i64::from(limit))
            .bind(i64::try_from(max_bytes).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(from_sqlx)?;
        if !rows.is_empty() {
            return Ok(rows.into_iter().map(ChatEvent::from).collect());
        }
        // A deleted chat's log ends with its deletion, whatever of the log its purge has removed.
        let deleted: Option<(u64, Stamp)> = sqlx::query_as(
            "SELECT last_event, updated_at FROM chats WHERE application_id = ? AND number = ? AND deleted = 1",
        )
        .bind(signed(app))
        .bind(signed(chat))
        .fetch_optional(&self.pool)
        .await
        .map_err(from_sqlx)?;
        Ok(match deleted {
            Some((last, at)) if last > after => {
                vec![ChatEvent::chat_deleted(app, chat, last, at.0)]
            }
            _ => Vec::new(),
        })
    }

    async fn last_chat_event(&self, app: AppId, chat: u64) -> CoreResult<u64> {
        let last: Option<u64> = sqlx::query_scalar(
            "SELECT last_event FROM chats WHERE application_id = ? AND number = ?",
        )
        .bind(signed(app))
        .bind(signed(chat))
        .fetch_optional(&self.pool)
        .await
        .map_err(from_sqlx)?;
        Ok(last.unwrap_or(0))
    }

    /// Commands of an application deleted (or removed) meanwhile are left out: what a deleted
    /// application held is removed, never written. Whether one is is read under a lock at the end of
    /// the batch's transaction, so the delete either waits for the batch (and its purge, queued after
    /// the delete, removes what the batch wrote) or comes first (and the batch is applied again
    /// without that application's commands).
    async fn apply(&self, commands: &[Command]) -> CoreResult<Applied> {
        let mut gone: BTreeSet<AppId> = BTreeSet::new();
        loop {
            let plan = plan_batch(commands.iter().filter(|command| {
                matches!(command, Command::PurgeApplication { .. })
                    || !gone.contains(&command.application_id())
            }));
            if plan.is_empty() {
                return Ok(Applied::default());
            }
            match self.apply_plan(&plan).await? {
                Ok(applied) => return Ok(applied),
                Err(deleted) => gone.extend(deleted),
            }
        }
    }

    async fn delete_application(&self, id: AppId, at: DateTime<Utc>) -> CoreResult<()> {
        sqlx::query("UPDATE applications SET deleted = 1, updated_at = ? WHERE id = ?")
            .bind(Stamp(at))
            .bind(signed(id))
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(from_sqlx)
    }

    async fn purge_chat(&self, app: AppId, chat: u64) -> CoreResult<()> {
        for statement in [DB::PURGE_MESSAGES, DB::PURGE_EVENTS] {
            loop {
                let deleted = sqlx::query(sqlx::AssertSqlSafe(statement))
                    .bind(signed(app))
                    .bind(signed(chat))
                    .bind(PURGE_ROWS)
                    .execute(&self.pool)
                    .await
                    .map_err(from_sqlx)?;
                if DB::affected(&deleted) < PURGE_ROWS as u64 {
                    break;
                }
            }
        }
        Ok(())
    }

    async fn purge_application(&self, app: AppId) -> CoreResult<()> {
        loop {
            let chats: Vec<(u64,)> = sqlx::query_as(
                "SELECT number FROM chats WHERE application_id = ? ORDER BY number LIMIT 1000",
            )
            .bind(signed(app))
            .fetch_all(&self.pool)
            .await
            .map_err(from_sqlx)?;
            if chats.is_empty() {
                break;
            }
            for (chat,) in chats {
                self.purge_chat(app, chat).await?;
                sqlx::query("DELETE FROM chats WHERE application_id = ? AND number = ?")
                    .bind(signed(app))
                    .bind(signed(chat))
                    .execute(&self.pool)
                    .await
                    .map_err(from_sqlx)?;
            }
        }
        sqlx::query("DELETE FROM applications WHERE id = ? AND deleted = 1")
            .bind(signed(app))
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(from_sqlx)
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
    MessageRow: for<'r> FromRow<'r, DB::Row>,
    ChatRow: for<'r> FromRow<'r, DB::Row>,
    (u64, u64, u64, u64, bool, u64): for<'r> FromRow<'r, DB::Row>,
    StoredChatRow: for<'r> FromRow<'r, DB::Row>,
    (u64, bool): for<'r> FromRow<'r, DB::Row>,
    (u64, Stamp): for<'r> FromRow<'r, DB::Row>,
{
    /// One transaction. Rows are tagged with a random batch id, so the batch counts exactly the rows it
    /// inserted and turned into tombstones, whatever another worker or a redelivery wrote meanwhile.
    /// Answers the applications found deleted instead, having written nothing, when the plan has some.
    async fn apply_plan(&self, plan: &BatchPlan) -> CoreResult<Result<Applied, Vec<AppId>>> {
        let batch = batch_id();
        let mut tx = self.pool.begin().await.map_err(from_sqlx)?;

        // Per chat: the messages this batch changed, in number order, with what it did to each; the
        // rows it inserted; and the live messages it added and removed.
        let mut changed: BTreeMap<ChatKey, Vec<(u64, ChangeKind)>> = BTreeMap::new();
        let mut inserted_rows: BTreeMap<ChatKey, i64> = BTreeMap::new();
        let mut counts: BTreeMap<ChatKey, (i64, i64)> = BTreeMap::new();
        if !plan.messages.is_empty() {
            for statement in plan.message_statements() {
                let mut insert = QueryBuilder::<DB>::new(
                    "INSERT INTO messages (application_id, chat_number, number, body, version, created_at, updated_at, \
                     inserted_by, changed_by, deleted, deleted_by) ",
                );
                insert.push_values(statement, |mut row, ((app, chat, number), message)| {
                    row.push_bind(signed(*app))
                        .push_bind(signed(*chat))
                        .push_bind(signed(*number))
                        .push_bind(message.body.as_str())
                        .push_bind(signed(message.version))
                        .push_bind(Stamp(message.created_at))
                        .push_bind(Stamp(message.updated_at))
                        .push_bind(batch)
                        .push_bind(batch)
                        .push_bind(i64::from(message.deleted))
                        .push_bind(if message.deleted { batch } else { 0 });
                });
                insert.push(DB::MESSAGE_UPSERT);
                insert.build().execute(&mut *tx).await.map_err(from_sqlx)?;
            }
            // Sorted here: an ORDER BY on the primary key could make the database walk the table in
            // key order instead of looking up this batch's rows by `changed_by`.
            let mut rows: Vec<(u64, u64, u64, u64, bool, u64)> = sqlx::query_as(
                "SELECT application_id, chat_number, number, inserted_by, deleted, deleted_by FROM messages WHERE changed_by = ?",
            )
            .bind(batch)
            .fetch_all(&mut *tx)
            .await
            .map_err(from_sqlx)?;
            rows.sort_unstable();
            for (app, chat, number, inserted_by, deleted, deleted_by) in rows {
                let inserted = inserted_by == batch as u64;
                let count = counts.entry((app, chat)).or_default();
                if inserted {
                    *inserted_rows.entry((app, chat)).or_default() += 1;
                    count.0 += i64::from(!deleted);
                } else if deleted && deleted_by == batch as u64 {
                    count.1 += 1;
                }
                changed
                    .entry((app, chat))
                    .or_default()
                    .push((number, change_kind(deleted, inserted)));
            }
        }

        // A chat deleted by this batch logs no message change: its last change is its deletion.
        for (key, chat) in &plan.chats {
            if chat.deleted {
                changed.remove(key);
            }
        }
        for chunk in plan
            .chats
            .iter()
            .collect::<Vec<_>>()
            .chunks(CHAT_ROWS_PER_INSERT)
        {
            let mut insert = QueryBuilder::<DB>::new(
                "INSERT INTO chats (application_id, number, messages_count, last_event, created_at, updated_at, \
                 inserted_by, changed_by, deleted, deleted_by) ",
            );
            insert.push_values(chunk, |mut row, (key, chat)| {
                row.push_bind(signed(key.0))
                    .push_bind(signed(key.1))
                    .push_bind(counts.get(key).map_or(0, |c| c.0))
                    .push_bind(changed.get(key).map_or(0, |c| c.len() as i64))
                    .push_bind(Stamp(chat.created_at))
                    .push_bind(Stamp(chat.updated_at))
                    .push_bind(batch)
                    .push_bind(batch)
                    .push_bind(i64::from(chat.deleted))
                    .push_bind(if chat.deleted { batch } else { 0 });
            });
            insert.push(DB::CHAT_UPSERT);
            insert.build().execute(&mut *tx).await.map_err(from_sqlx)?;
        }
        for (key, (_, removed)) in counts.iter().filter(|(_, c)| c.1 > 0) {
            sqlx::query(
                "UPDATE chats SET messages_count = messages_count - ? WHERE application_id = ? AND number = ?",
            )
            .bind(*removed)
            .bind(signed(key.0))
            .bind(signed(key.1))
            .execute(&mut *tx)
            .await
            .map_err(from_sqlx)?;
        }

        // Every chat the batch changed (inserted, added a change to, or made a tombstone), read once:
        // the application counts, the deleted chats, the change numbers and the cache's states come
        // from these rows. What the batch wrote into a deleted chat (deleted by it or before it) goes,
        // and a chat this batch deleted logs its deletion as its last change.
        let mut stored: Vec<StoredChat> =
            sqlx::query_as::<_, StoredChatRow>(sqlx::AssertSqlSafe(format!(
                "SELECT {CHAT_COLUMNS}, inserted_by, deleted_by FROM chats WHERE changed_by = ?"
            )))
            .bind(batch)
            .fetch_all(&mut *tx)
            .await
            .map(rows_into)
            .map_err(from_sqlx)?;
        let by_batch = |tag: u64| tag == batch as u64;
        let mut chat_counts: BTreeMap<AppId, (i64, i64)> = BTreeMap::new();
        let mut deleted_chats: BTreeSet<ChatKey> = BTreeSet::new();
        let mut chat_events = Vec::new();
        for row in &mut stored {
            let chat = &mut row.chat;
            let key = (chat.application_id, chat.number);
            if by_batch(row.inserted_by) && !chat.deleted {
                chat_counts.entry(key.0).or_default().0 += 1;
            } else if by_batch(row.deleted_by) && !by_batch(row.inserted_by) {
                chat_counts.entry(key.0).or_default().1 += 1;
            }
            if !chat.deleted {
                continue;
            }
            deleted_chats.insert(key);
            changed.remove(&key);
            sqlx::query(
                "DELETE FROM messages WHERE application_id = ? AND chat_number = ? AND changed_by = ?",
            )
            .bind(signed(key.0))
            .bind(signed(key.1))
            .bind(batch)
            .execute(&mut *tx)
            .await
            .map_err(from_sqlx)?;
            if by_batch(row.deleted_by) {
                let at = plan
                    .chats
                    .get(&key)
                    .map_or(chat.updated_at, |c| c.updated_at);
                sqlx::query(
                    "UPDATE chats SET last_event = last_event + 1, updated_at = ?, messages_count = 0 \
                     WHERE application_id = ? AND number = ?",
                )
                .bind(Stamp(at))
                .bind(signed(key.0))
                .bind(signed(key.1))
                .execute(&mut *tx)
                .await
                .map_err(from_sqlx)?;
                chat.last_event += 1;
                chat.updated_at = at;
                chat.messages_count = 0;
                chat_events.push(ChatEvent::chat_deleted(key.0, key.1, chat.last_event, at));
            }
        }

        // The applications written into, locked until commit, in id order: a delete of one waits.
        let apps = plan.applications();
        if !apps.is_empty() {
            let mut select =
                QueryBuilder::<DB>::new("SELECT id, deleted FROM applications WHERE id IN (");
            let mut ids = select.separated(", ");
            for app in &apps {
                ids.push_bind(signed(*app));
            }
            select.push(") ORDER BY id");
            select.push(DB::FOR_UPDATE);
            let live: Vec<(u64, bool)> = select
                .build_query_as()
                .fetch_all(&mut *tx)
                .await
                .map_err(from_sqlx)?;
            let gone: Vec<AppId> = apps
                .iter()
                .copied()
                .filter(|app| !live.iter().any(|(id, deleted)| id == app && !deleted))
                .collect();
            if !gone.is_empty() {
                tx.rollback().await.map_err(from_sqlx)?;
                return Ok(Err(gone));
            }
        }
        let raise = format!(
            "UPDATE applications SET chats_count = chats_count + ? - ?, updated_at = {}(updated_at, ?) WHERE id = ?",
            DB::GREATEST
        );
        for (app, (added, removed)) in &chat_counts {
            let latest = plan
                .chats
                .range((*app, 0)..=(*app, u64::MAX))
                .map(|(_, c)| c.created_at)
                .max()
                .unwrap_or_default();
            sqlx::query(sqlx::AssertSqlSafe(raise.as_str()))
                .bind(*added)
                .bind(*removed)
                .bind(Stamp(latest))
                .bind(signed(*app))
                .execute(&mut *tx)
                .await
                .map_err(from_sqlx)?;
        }

        let (mut messages, to_read) = plan.written_or_to_read(&inserted_rows);
        if !to_read.is_empty() {
            let mut select =
                QueryBuilder::<DB>::new(format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE "));
            push_message_keys(&mut select, to_read);
            let read: Vec<Message> = select
                .build_query_as::<MessageRow>()
                .fetch_all(&mut *tx)
                .await
                .map(rows_into)
                .map_err(from_sqlx)?;
            messages.extend(read);
        }
        messages.retain(|m| !deleted_chats.contains(&(m.application_id, m.chat_number)));
        let stored_chats: Vec<Chat> = stored.into_iter().map(|row| row.chat).collect();
        let mut events = self
            .log_changes(&mut tx, &stored_chats, &changed, &messages)
            .await?;
        events.extend(chat_events);
        tx.commit().await.map_err(from_sqlx)?;
        Ok(Ok(Applied {
            chats: plan.chats.keys().copied().collect(),
            stored_chats,
            applications: chat_counts.keys().copied().collect(),
            messages,
            events,
            deleted_chats: plan
                .chats
                .iter()
                .filter(|(_, chat)| chat.deleted)
                .map(|(key, _)| *key)
                .collect(),
            purged_applications: plan.purges.iter().copied().collect(),
        }))
    }

    /// Numbers the batch's changes after each chat's last one (`chats`, read back after the chat
    /// upsert, which locks them until commit, hold the new last numbers) and appends them to the change
    /// log.
    ///
    /// The log's rows, integers only, are written into the text of a statement sent unprepared. A
    /// prepared statement whose text varies with the batch would be cached each time, and with MySQL each
    /// eviction from sqlx's cache of prepared statements is a COM_STMT_CLOSE, which gets no answer: the
    /// next statement then waits for the server's delayed ACK (40 ms, since sqlx leaves Nagle's
    /// algorithm on).
    async fn log_changes(
        &self,
        tx: &mut sqlx::Transaction<'static, DB>,
        chats: &[Chat],
        changed: &BTreeMap<ChatKey, Vec<(u64, ChangeKind)>>,
        stored: &[Message],
    ) -> CoreResult<Vec<ChatEvent>> {
        if changed.is_empty() {
            return Ok(Vec::new());
        }
        let last: BTreeMap<ChatKey, u64> = chats
            .iter()
            .map(|chat| ((chat.application_id, chat.number), chat.last_event))
            .collect();
        let states: std::collections::HashMap<MessageKey, &Message> = stored
            .iter()
            .map(|m| ((m.application_id, m.chat_number, m.number), m))
            .collect();
        let mut events = Vec::new();
        for (key @ &(app, chat), messages) in changed {
            let first = last.get(key).copied().unwrap_or(0) + 1 - messages.len() as u64;
            for (offset, (number, kind)) in messages.iter().enumerate() {
                let Some(message) = states.get(&(app, chat, *number)) else {
                    continue;
                };
                events.push(ChatEvent {
                    seq: first + offset as u64,
                    kind: *kind,
                    message: (*message).clone(),
                });
            }
        }
        for chunk in events.chunks(CHAT_ROWS_PER_INSERT) {
            let rows: Vec<String> = chunk
                .iter()
                .map(|event| {
                    format!(
                        "({}, {}, {}, {}, {})",
                        event.message.application_id,
                        event.message.chat_number,
                        event.seq,
                        event.message.number,
                        u8::from(event.kind == ChangeKind::Created)
                    )
                })
                .collect();
            let insert = format!(
                "INSERT INTO chat_events (application_id, chat_number, seq, message_number, created) VALUES {}",
                rows.join(", ")
            );
            sqlx::raw_sql(sqlx::AssertSqlSafe(insert))
                .execute(&mut **tx)
                .await
                .map_err(from_sqlx)?;
        }
        Ok(events)
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
