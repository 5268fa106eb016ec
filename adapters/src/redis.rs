//! Redis: number allocation (atomic across API replicas), the shared cache, and the announcements of
//! stored changes to the API replicas' live streams (pub/sub).

use chatsys_core::telemetry;
use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
pub use redis::aio::ConnectionManager;
use redis::aio::ConnectionManagerConfig;
use redis::aio::PubSubSink;
use redis::{AsyncCommands, Script};
use tokio::sync::broadcast;

use chatsys_core::domain::{AppId, Application, Chat, ChatEvent, Message};
use chatsys_core::error::{Backend, CoreError, CoreResult};
use chatsys_core::idempotency::{KEY_LIFETIME, KeyCells};
use chatsys_core::plan::{ChatKey, MessageKey};
use chatsys_core::ports::{
    Announcements, Announcer, Cache, CachedToken, Heard, ListScope, Numbers, VERSION_HEAD_LIFETIME,
    VersionClaim, VersionFor,
};

/// Scripts are hashed once and then sent by hash (`EVALSHA`), falling back to the source when Redis
/// does not know them (after a restart).
fn script(cell: &'static OnceLock<Script>, source: &str) -> &'static Script {
    cell.get_or_init(|| Script::new(source))
}

static NEXT_NUMBERS_SCRIPT: OnceLock<Script> = OnceLock::new();
static RESTART_COUNTER_SCRIPT: OnceLock<Script> = OnceLock::new();
static NEXT_VERSION_SCRIPT: OnceLock<Script> = OnceLock::new();
static WITHDRAW_VERSION_SCRIPT: OnceLock<Script> = OnceLock::new();
static PUT_NEWER_SCRIPT: OnceLock<Script> = OnceLock::new();
static SWAP_CELL_SCRIPT: OnceLock<Script> = OnceLock::new();
static LIST_GENERATION_SCRIPT: OnceLock<Script> = OnceLock::new();
static PUT_PAGE_SCRIPT: OnceLock<Script> = OnceLock::new();

fn unavailable(e: redis::RedisError) -> CoreError {
    CoreError::unavailable(Backend::Redis, e)
}

/// Connects to Redis with short timeouts, so a Redis outage turns into a quick 503, and a connection
/// that reconnects by itself when Redis comes back. It tries once: waiting is its callers' (start-up
/// waits with its own backoff; a request answers 503 and the next one reconnects).
pub async fn connect(url: &str) -> CoreResult<ConnectionManager> {
    let client = redis::Client::open(url).map_err(unavailable)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(0);
    ConnectionManager::new_with_config(client, config)
        .await
        .map_err(unavailable)
}

/// Key names under one prefix, so several systems (or test runs) can share a Redis.
#[derive(Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_string(),
        }
    }
    fn chat_counter(&self, app: AppId) -> String {
        format!("{}:app:{app}:chats", self.prefix)
    }
    fn message_counter_prefix(&self, app: AppId) -> String {
        format!("{}:chat:{app}:", self.prefix)
    }
    fn message_counter(&self, app: AppId, chat: u64) -> String {
        format!("{}:chat:{app}:{chat}:msgs", self.prefix)
    }
    fn version(&self) -> String {
        format!("{}:version", self.prefix)
    }
    fn version_head(&self, (app, chat, number): MessageKey) -> String {
        format!("{}:head:{app}:{chat}:{number}", self.prefix)
    }
    fn token(&self, token: &str) -> String {
        format!("{}:token:{token}", self.prefix)
    }
    fn idempotency(&self, cell: &str) -> String {
        format!("{}:idempotency:{cell}", self.prefix)
    }
    fn application(&self, app: AppId) -> String {
        format!("{}:application:{app}", self.prefix)
    }
    fn chat(&self, app: AppId, number: u64) -> String {
        format!("{}:chat:{app}:{number}:stored", self.prefix)
    }
    fn pending_chat(&self, app: AppId, number: u64) -> String {
        format!("{}:chat:{app}:{number}:accepted", self.prefix)
    }
    fn message(&self, (app, chat, number): MessageKey) -> String {
        format!("{}:message:{app}:{chat}:{number}", self.prefix)
    }
    /// The bytes of list pages an application wrote within the cache's TTL.
    fn page_bytes(&self, app: AppId) -> String {
        format!("{}:page-bytes:{app}", self.prefix)
    }
    fn list_generation(&self, scope: &ListScope) -> String {
        match scope {
            ListScope::Chats(app) => format!("{}:generation:chats:{app}", self.prefix),
            ListScope::Messages(app, chat) => {
                format!("{}:generation:messages:{app}:{chat}", self.prefix)
            }
        }
    }
    /// The pub/sub channel of a chat's announcements.
    fn announcements(&self, (app, chat): ChatKey) -> String {
        format!("{}:events:{app}:{chat}", self.prefix)
    }
    fn list_page(&self, scope: &ListScope, generation: u64, page: &str) -> String {
        match scope {
            ListScope::Chats(app) => {
                format!("{}:list:chats:{app}:{generation}:{page}", self.prefix)
            }
            ListScope::Messages(app, chat) => {
                format!(
                    "{}:list:messages:{app}:{chat}:{generation}:{page}",
                    self.prefix
                )
            }
        }
    }
}

/// KEYS: the last version handed out, the message's newest. ARGV: the newest the caller read (it counts
/// when newer than the one kept, or none is), the versions the change is conditioned on as `,5,7,`
/// (empty for none), the newest's lifetime in seconds, and `delete` for a delete's version. A version is
/// a microsecond of Redis' clock, never below the last one handed out, so it increases even across a
/// flush. A delete's version is kept as `d<version>`: the message's last. Answers `{1, version, the
/// newest before it}`, `{0, newest}` when the newest is none of those expected, or `{2}` once deleted.
const NEXT_VERSION: &str = r"
local head = redis.call('GET', KEYS[2])
if head and string.sub(head, 1, 1) == 'd' then return {2} end
if not head or tonumber(head) < tonumber(ARGV[1]) then head = ARGV[1] end
if ARGV[2] ~= '' and not string.find(ARGV[2], ',' .. head .. ',', 1, true) then
  return {0, head}
end
local t = redis.call('TIME')
local v = tonumber(t[1]) * 1000000 + tonumber(t[2])
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
if v <= last then v = last + 1 end
local version = string.format('%.0f', v)
redis.call('SET', KEYS[1], version)
local kept = version
if ARGV[4] == 'delete' then kept = 'd' .. version end
redis.call('SET', KEYS[2], kept, 'EX', ARGV[3])
return {1, version, head}
";

/// KEYS: the message's newest version. ARGV: the version taken back as kept (`d<version>` for a
/// delete's), the one before it, the lifetime in seconds. Only a newest still equal to the version taken
/// back is put back.
const WITHDRAW_VERSION: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
end
return 0
";

/// Counters live without expiry (an eviction policy of `volatile-*` never evicts them). A counter that
/// is missing was never started or was lost (Redis restarted or flushed): new applications and chats
/// start theirs at 0 explicitly, so a missing one is restarted by the caller above a floor instead of
/// from 1. Many numbers are taken in one script call: one round trip and one script run for all.
pub struct RedisNumbers {
    redis: ConnectionManager,
    keys: Keys,
}

/// KEYS: counters, a counter more than once for several of its numbers. ARGV: for each, the prefix of
/// its chats' message counters when it is an application's chat counter ('' for a chat's message
/// counter): a new chat's message counter starts at 0 with it. Answers each counter's next number in
/// order, or -1 for a counter that is missing.
const NEXT_NUMBERS: &str = r"
local numbers = {}
for i, counter in ipairs(KEYS) do
  if redis.call('EXISTS', counter) == 0 then
    numbers[i] = -1
  else
    local n = redis.call('INCR', counter)
    if ARGV[i] ~= '' then redis.call('SET', ARGV[i] .. n .. ':msgs', 0, 'NX') end
    numbers[i] = n
  end
end
return numbers
";

/// KEYS[1]: a counter. ARGV: the floor it restarts at when missing, and the prefix as in
/// [`NEXT_NUMBERS`]. Answers its next number.
const RESTART_COUNTER: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'NX')
local n = redis.call('INCR', KEYS[1])
if ARGV[2] ~= '' then redis.call('SET', ARGV[2] .. n .. ':msgs', 0, 'NX') end
return n
";

/// Numbers asked for per script call at most.
const NUMBERS_PER_CALL: usize = 256;

/// How a version is kept as a message's newest.
fn kept_version(version: u64, change: VersionFor) -> String {
    match change {
        VersionFor::Edit => version.to_string(),
        VersionFor::Delete => format!("d{version}"),
    }
}

impl RedisNumbers {
    pub fn new(redis: ConnectionManager, keys: Keys) -> Self {
        RedisNumbers { redis, keys }
    }

    /// The next number of each counter, in order (a counter named twice gives two); `None` for a
    /// counter that is missing. `counters` pairs each counter with the prefix of its chats' message
    /// counters when it is an application's chat counter.
    async fn allocate(
        &self,
        counters: &[(String, Option<String>)],
    ) -> CoreResult<Vec<Option<u64>>> {
        let mut numbers = Vec::with_capacity(counters.len());
        for chunk in counters.chunks(NUMBERS_PER_CALL) {
            let mut invocation = script(&NEXT_NUMBERS_SCRIPT, NEXT_NUMBERS).prepare_invoke();
            for (counter, chats_of) in chunk {
                invocation
                    .key(counter)
                    .arg(chats_of.as_deref().unwrap_or(""));
            }
            let taken: Vec<i64> = invocation
                .invoke_async(&mut self.redis.clone())
                .await
                .map_err(unavailable)?;
            if taken.len() != chunk.len() {
                return Err(CoreError::unavailable(
                    Backend::Redis,
                    format!("{} numbers for {} counters", taken.len(), chunk.len()),
                ));
            }
            numbers.extend(
                taken
                    .into_iter()
                    .map(|n| u64::try_from(n).ok().filter(|n| *n > 0)),
            );
        }
        Ok(numbers)
    }

    async fn allocate_one(
        &self,
        counter: String,
        chats_of: Option<String>,
    ) -> CoreResult<Option<u64>> {
        Ok(self.allocate(&[(counter, chats_of)]).await?.pop().flatten())
    }

    /// Starts a missing counter at `floor` (one started meanwhile is kept) and takes its next number.
    async fn restart(
        &self,
        counter: &'static str,
        key: String,
        chats_of: Option<String>,
        floor: u64,
    ) -> CoreResult<u64> {
        metrics::counter!(telemetry::COUNTER_RESEEDS.name, "counter" => counter).increment(1);
        tracing::warn!(
            counter,
            "number counter missing from Redis; restarting it above every number handed out"
        );
        let n: i64 = script(&RESTART_COUNTER_SCRIPT, RESTART_COUNTER)
            .key(key)
            .arg(floor)
            .arg(chats_of.unwrap_or_default())
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        u64::try_from(n).ok().filter(|n| *n > 0).ok_or_else(|| {
            CoreError::unavailable(Backend::Redis, "a restarted counter answered no number")
        })
    }
}

#[async_trait]
impl Numbers for RedisNumbers {
    async fn ping(&self) -> CoreResult<()> {
        let mut redis = self.redis.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut redis)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn init_application(&self, app: AppId) -> CoreResult<()> {
        let mut redis = self.redis.clone();
        redis
            .set_nx::<_, _, bool>(self.keys.chat_counter(app), 0)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn next_chat(&self, app: AppId) -> CoreResult<Option<u64>> {
        let prefix = self.keys.message_counter_prefix(app);
        self.allocate_one(self.keys.chat_counter(app), Some(prefix))
            .await
    }

    async fn next_message(&self, app: AppId, chat: u64) -> CoreResult<Option<u64>> {
        self.allocate_one(self.keys.message_counter(app, chat), None)
            .await
    }

    async fn next_messages(&self, chats: &[ChatKey]) -> CoreResult<Vec<Option<u64>>> {
        let counters: Vec<(String, Option<String>)> = chats
            .iter()
            .map(|(app, chat)| (self.keys.message_counter(*app, *chat), None))
            .collect();
        self.allocate(&counters).await
    }

    async fn restart_chats(&self, app: AppId, floor: u64) -> CoreResult<u64> {
        let prefix = self.keys.message_counter_prefix(app);
        self.restart("chats", self.keys.chat_counter(app), Some(prefix), floor)
            .await
    }

    async fn restart_messages(&self, app: AppId, chat: u64, floor: u64) -> CoreResult<u64> {
        self.restart(
            "messages",
            self.keys.message_counter(app, chat),
            None,
            floor,
        )
        .await
    }

    async fn next_version(
        &self,
        message: MessageKey,
        seen: u64,
        expected: Option<&[u64]>,
        change: VersionFor,
    ) -> CoreResult<VersionClaim> {
        let mut redis = self.redis.clone();
        let expected = expected.map_or_else(String::new, |versions| {
            let listed: String = versions.iter().map(|v| format!("{v},")).collect();
            format!(",{listed}")
        });
        let answer: Vec<String> = script(&NEXT_VERSION_SCRIPT, NEXT_VERSION)
            .key(self.keys.version())
            .key(self.keys.version_head(message))
            .arg(seen)
            .arg(expected)
            .arg(VERSION_HEAD_LIFETIME.as_secs())
            .arg(match change {
                VersionFor::Edit => "edit",
                VersionFor::Delete => "delete",
            })
            .invoke_async(&mut redis)
            .await
            .map_err(unavailable)?;
        let numbers: Option<Vec<u64>> = answer.iter().map(|n| n.parse().ok()).collect();
        match numbers.as_deref() {
            Some([1, version, previous]) => Ok(VersionClaim::Granted {
                version: *version,
                previous: *previous,
            }),
            Some([0, newest]) => Ok(VersionClaim::Moved(*newest)),
            Some([2]) => Ok(VersionClaim::Deleted),
            _ => Err(CoreError::unavailable(
                Backend::Redis,
                format!("a version script answered {answer:?}"),
            )),
        }
    }

    async fn withdraw_version(
        &self,
        message: MessageKey,
        version: u64,
        previous: u64,
        change: VersionFor,
    ) -> CoreResult<()> {
        let mut redis = self.redis.clone();
        script(&WITHDRAW_VERSION_SCRIPT, WITHDRAW_VERSION)
            .key(self.keys.version_head(message))
            .arg(kept_version(version, change))
            .arg(previous)
            .arg(VERSION_HEAD_LIFETIME.as_secs())
            .invoke_async::<i64>(&mut redis)
            .await
            .map(drop)
            .map_err(unavailable)
    }
}

/// Idempotency key records, as strings that expire [`KEY_LIFETIME`] after they are first written.
/// Under an eviction policy of `allkeys-*` or `volatile-*`, Redis may drop one early when it runs out
/// of memory: the key is then new again to a retry.
pub struct RedisKeyCells {
    redis: ConnectionManager,
    keys: Keys,
}

impl RedisKeyCells {
    pub fn new(redis: ConnectionManager, keys: Keys) -> Self {
        RedisKeyCells { redis, keys }
    }
}

/// KEYS[1]: the cell. ARGV: the value expected ("" and a flag of 0 for none), the new value ("" and a
/// flag of 0 to remove the cell), and the lifetime of a new cell in milliseconds.
const SWAP_CELL: &str = r"
local current = redis.call('GET', KEYS[1])
if ARGV[2] == '1' then
  if current ~= ARGV[1] then return 0 end
elseif current then
  return 0
end
if ARGV[4] == '0' then
  redis.call('DEL', KEYS[1])
elseif current then
  redis.call('SET', KEYS[1], ARGV[3], 'KEEPTTL')
else
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[5])
end
return 1
";

#[async_trait]
impl KeyCells for RedisKeyCells {
    async fn read(&self, cell: &str) -> CoreResult<Option<String>> {
        let mut redis = self.redis.clone();
        redis
            .get(self.keys.idempotency(cell))
            .await
            .map_err(unavailable)
    }

    async fn swap(
        &self,
        cell: &str,
        expected: Option<&str>,
        new: Option<&str>,
    ) -> CoreResult<bool> {
        let mut redis = self.redis.clone();
        let swapped: i64 = script(&SWAP_CELL_SCRIPT, SWAP_CELL)
            .key(self.keys.idempotency(cell))
            .arg(expected.unwrap_or(""))
            .arg(u8::from(expected.is_some()))
            .arg(new.unwrap_or(""))
            .arg(u8::from(new.is_some()))
            .arg(KEY_LIFETIME.as_millis() as u64)
            .invoke_async(&mut redis)
            .await
            .map_err(unavailable)?;
        Ok(swapped == 1)
    }
}

/// What a forgotten token's cache entry holds for the cache's lifetime: no application id, and a value
/// `put_application_id` (which only sets a missing entry) does not replace.
const FORGOTTEN_TOKEN: &str = "forgotten";

/// The shared cache, over two Redis roles. `state` holds what must not be lost before its time:
/// tokens and the marks of replaced ones, and writes accepted but maybe not stored yet (read your own
/// writes); run it with `noeviction`. `cache` holds what the store can always answer again: stored
/// applications, chats and messages, list generations and pages; run it with `allkeys-lru` and a
/// `maxmemory`, and a full cache drops only these. Two servers, not two logical databases of one:
/// eviction samples every database of a server (redis `src/evict.c`, `performEvictions` loops over
/// `server.dbnum`). One Redis may take both roles (then run it with `noeviction`: every entry still
/// expires after the TTL).
pub struct RedisCache {
    state: ConnectionManager,
    cache: ConnectionManager,
    /// Whether the roles are two servers (a write for both goes to each).
    separate: bool,
    keys: Keys,
    ttl_secs: u64,
    max_page_bytes: usize,
    max_application_bytes: usize,
}

/// A record to put by [`PUT_NEWER`]: its key, its freshness and its JSON.
type Record = (String, u64, Vec<u8>);

/// Records put by one [`PUT_NEWER`] call at most; more go in several, in one round trip.
const RECORDS_PER_CALL: usize = 500;

/// Puts records by [`PUT_NEWER`], all in one round trip.
async fn put_newer(
    redis: &ConnectionManager,
    ttl_secs: u64,
    records: Vec<Record>,
) -> CoreResult<()> {
    let put = script(&PUT_NEWER_SCRIPT, PUT_NEWER);
    let mut pipe = redis::pipe();
    for chunk in records.chunks(RECORDS_PER_CALL) {
        let mut invocation = put.prepare_invoke();
        invocation.arg(ttl_secs);
        for (key, freshness, json) in chunk {
            invocation
                .key(key)
                .arg(freshness)
                .arg(json)
                .arg(freshness >> 1);
        }
        pipe.invoke_script(&invocation).ignore();
    }
    let mut redis = redis.clone();
    match pipe.query_async::<()>(&mut redis).await {
        // A pipeline sends scripts by hash alone: after a restart of Redis, the script is loaded
        // and the pipeline sent again.
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            put.load_async(&mut redis).await.map_err(unavailable)?;
            pipe.query_async::<()>(&mut redis)
                .await
                .map_err(unavailable)
        }
        result => result.map_err(unavailable),
    }
}

/// What a [`RedisCache`] may hold: each entry's lifetime, the largest list page it keeps, and the bytes
/// of pages one application may write within a lifetime (and so hold at most).
#[derive(Debug, Clone, Copy)]
pub struct CacheLimits {
    pub ttl: Duration,
    pub max_page_bytes: usize,
    pub max_application_bytes: usize,
}

/// Keeps, for each record, whichever of the cached and the given one is the later
/// ([`Message::freshness`], [`Chat::freshness`]: a version or latest change, a tombstone after a live
/// state), so that a reader putting what it read before a commit cannot hide the commit's
/// write-through. A record as fresh as the one kept is the same state, and is not written again (the
/// worker's write-through of a create the API remembered costs one read). A record an earlier release
/// kept is compared by its version alone (field `v`), and one it kept as a plain string is replaced.
/// KEYS: the records. ARGV: the lifetime in seconds, then for each record its freshness, its JSON and
/// its version.
const PUT_NEWER: &str = r"
for i, key in ipairs(KEYS) do
  local at = 2 + (i - 1) * 3
  local freshness = tonumber(ARGV[at])
  local fields = redis.pcall('HMGET', key, 'f', 'v')
  if fields.err then
    redis.call('DEL', key)
    fields = {false, false}
  end
  local current, kept = fields[1], fields[2]
  local newer
  if current then
    newer = tonumber(current) < freshness
  else
    newer = not kept or tonumber(kept) <= tonumber(ARGV[at + 2])
    if newer and kept then redis.call('HDEL', key, 'v') end
  end
  if newer then
    redis.call('HSET', key, 'f', ARGV[at], 'd', ARGV[at + 1])
    redis.call('EXPIRE', key, ARGV[1])
  end
end
return 0
";

/// A list's generation, starting it at the value given when it is missing (new, or lost with Redis).
const LIST_GENERATION: &str = r"
local generation = redis.call('GET', KEYS[1])
if generation then return generation end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
";

/// A generation no list had before: random, so that one restarted after Redis lost the key never
/// equals one a process still holds pages under (a counter restarting at 0 would).
fn fresh_generation() -> u64 {
    rand::random::<u64>() >> 1
}

/// Stores a list page unless its application wrote more than its share of page bytes within the TTL:
/// KEYS[1] the page, KEYS[2] the application's page bytes; ARGV: the page, the TTL, the share.
const PUT_PAGE: &str = r"
local written = tonumber(redis.call('GET', KEYS[2]) or '0')
if written + #ARGV[1] > tonumber(ARGV[3]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('INCRBY', KEYS[2], #ARGV[1])
if redis.call('TTL', KEYS[2]) < 0 then redis.call('EXPIRE', KEYS[2], ARGV[2]) end
return 1
";

impl RedisCache {
    /// `cache` is `state` again when one Redis takes both roles. A list page over `max_page_bytes` is
    /// not cached: one page of a thousand 64 KiB messages is 63 MB, which Redis would hold (and send
    /// over the network on every hit) for the whole TTL.
    pub fn new(
        state: ConnectionManager,
        cache: Option<ConnectionManager>,
        keys: Keys,
        limits: CacheLimits,
    ) -> Self {
        RedisCache {
            separate: cache.is_some(),
            cache: cache.unwrap_or_else(|| state.clone()),
            state,
            keys,
            ttl_secs: limits.ttl.as_secs().max(1),
            max_page_bytes: limits.max_page_bytes,
            max_application_bytes: limits.max_application_bytes,
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        redis: &ConnectionManager,
        key: String,
    ) -> CoreResult<Option<T>> {
        let raw: Option<Vec<u8>> = redis.clone().get(key).await.map_err(unavailable)?;
        Ok(raw.and_then(|bytes| serde_json::from_slice(&bytes).ok()))
    }

    async fn put_json<T: serde::Serialize>(
        &self,
        redis: &ConnectionManager,
        key: String,
        value: &T,
    ) -> CoreResult<()> {
        let bytes = serde_json::to_vec(value).expect("cached values serialise");
        redis
            .clone()
            .set_ex::<_, _, ()>(key, bytes, self.ttl_secs)
            .await
            .map_err(unavailable)
    }

    async fn delete(&self, keys: Vec<String>) -> CoreResult<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut redis = self.cache.clone();
        redis.del::<_, ()>(keys).await.map_err(unavailable)
    }

    /// A record kept by [`PUT_NEWER`].
    async fn versioned_in<T: serde::de::DeserializeOwned>(
        &self,
        redis: &ConnectionManager,
        key: String,
    ) -> CoreResult<Option<T>> {
        let raw: Option<Vec<u8>> = redis.clone().hget(key, "d").await.map_err(unavailable)?;
        Ok(raw.and_then(|bytes| serde_json::from_slice(&bytes).ok()))
    }

    fn message_record(&self, message: &Message) -> Record {
        let key = (message.application_id, message.chat_number, message.number);
        let json = serde_json::to_vec(message).expect("messages serialise");
        (self.keys.message(key), message.freshness(), json)
    }

    fn chat_record(&self, chat: &Chat) -> Record {
        let key = self.keys.chat(chat.application_id, chat.number);
        let json = serde_json::to_vec(chat).expect("chats serialise");
        (key, chat.freshness(), json)
    }
}

#[async_trait]
impl Cache for RedisCache {
    async fn application_id(&self, token: &str) -> CoreResult<CachedToken> {
        let mut redis = self.state.clone();
        let cached: Option<String> = redis
            .get(self.keys.token(token))
            .await
            .map_err(unavailable)?;
        Ok(match cached {
            None => CachedToken::Unknown,
            Some(id) => id.parse().map_or(CachedToken::Replaced, CachedToken::Names),
        })
    }

    async fn put_application_id(&self, token: &str, app: AppId) -> CoreResult<()> {
        let mut redis = self.state.clone();
        let options = redis::SetOptions::default()
            .conditional_set(redis::ExistenceCheck::NX)
            .with_expiration(redis::SetExpiry::EX(self.ttl_secs));
        redis
            .set_options::<_, _, ()>(self.keys.token(token), app, options)
            .await
            .map_err(unavailable)
    }

    async fn forget_token(&self, token: &str) -> CoreResult<()> {
        let mut redis = self.state.clone();
        redis
            .set_ex::<_, _, ()>(self.keys.token(token), FORGOTTEN_TOKEN, self.ttl_secs)
            .await
            .map_err(unavailable)
    }

    async fn application(&self, app: AppId) -> CoreResult<Option<Application>> {
        self.get_json(&self.cache, self.keys.application(app)).await
    }

    async fn put_application(&self, application: &Application) -> CoreResult<()> {
        self.put_json(
            &self.cache,
            self.keys.application(application.id),
            application,
        )
        .await
    }

    async fn forget_applications(&self, apps: &[AppId]) -> CoreResult<()> {
        self.delete(apps.iter().map(|app| self.keys.application(*app)).collect())
            .await
    }

    async fn chat(&self, app: AppId, number: u64) -> CoreResult<Option<Chat>> {
        self.versioned_in(&self.cache, self.keys.chat(app, number))
            .await
    }

    async fn put_chats(&self, chats: &[Chat]) -> CoreResult<()> {
        if chats.is_empty() {
            return Ok(());
        }
        let records = chats.iter().map(|c| self.chat_record(c)).collect();
        put_newer(&self.cache, self.ttl_secs, records).await
    }

    async fn pending_chat(&self, app: AppId, number: u64) -> CoreResult<Option<Chat>> {
        self.get_json(&self.state, self.keys.pending_chat(app, number))
            .await
    }

    async fn put_pending_chat(&self, chat: &Chat) -> CoreResult<()> {
        self.put_json(
            &self.state,
            self.keys.pending_chat(chat.application_id, chat.number),
            chat,
        )
        .await
    }

    /// The cache's copy, or else the one remembered in `state` (dropped from the cache, or never
    /// stored there).
    async fn message(&self, key: MessageKey) -> CoreResult<Option<Message>> {
        let key = self.keys.message(key);
        match self.versioned_in(&self.cache, key.clone()).await? {
            Some(message) => Ok(Some(message)),
            None if self.separate => self.versioned_in(&self.state, key).await,
            None => Ok(None),
        }
    }

    async fn put_message(&self, message: &Message) -> CoreResult<()> {
        self.put_messages(std::slice::from_ref(message)).await
    }

    async fn remember_message(&self, message: &Message) -> CoreResult<()> {
        self.remember_messages(std::slice::from_ref(message)).await
    }

    /// Kept in `state` until its TTL, whatever the cache drops; in the cache too, where reads look
    /// first (and where an older version would otherwise shadow it). One round trip to each.
    async fn remember_messages(&self, messages: &[Message]) -> CoreResult<()> {
        if messages.is_empty() {
            return Ok(());
        }
        let records: Vec<Record> = messages.iter().map(|m| self.message_record(m)).collect();
        if !self.separate {
            return put_newer(&self.state, self.ttl_secs, records).await;
        }
        let (state, cache) = tokio::join!(
            put_newer(&self.state, self.ttl_secs, records.clone()),
            put_newer(&self.cache, self.ttl_secs, records)
        );
        state.and(cache)
    }

    async fn put_messages(&self, messages: &[Message]) -> CoreResult<()> {
        if messages.is_empty() {
            return Ok(());
        }
        let records = messages.iter().map(|m| self.message_record(m)).collect();
        put_newer(&self.cache, self.ttl_secs, records).await
    }

    async fn list_generation(&self, scope: &ListScope) -> CoreResult<u64> {
        let mut redis = self.cache.clone();
        script(&LIST_GENERATION_SCRIPT, LIST_GENERATION)
            .key(self.keys.list_generation(scope))
            .arg(fresh_generation())
            .invoke_async(&mut redis)
            .await
            .map_err(unavailable)
    }

    async fn list_page(
        &self,
        scope: &ListScope,
        generation: u64,
        page: &str,
    ) -> CoreResult<Option<Vec<u8>>> {
        let mut redis = self.cache.clone();
        redis
            .get(self.keys.list_page(scope, generation, page))
            .await
            .map_err(unavailable)
    }

    async fn put_list(
        &self,
        scope: &ListScope,
        generation: u64,
        page: &str,
        body: &[u8],
    ) -> CoreResult<()> {
        if super::memory::page_too_large(body.len(), self.max_page_bytes) {
            return Ok(());
        }
        let app = match scope {
            ListScope::Chats(app) | ListScope::Messages(app, _) => *app,
        };
        let stored: i64 = script(&PUT_PAGE_SCRIPT, PUT_PAGE)
            .key(self.keys.list_page(scope, generation, page))
            .key(self.keys.page_bytes(app))
            .arg(body)
            .arg(self.ttl_secs)
            .arg(self.max_application_bytes)
            .invoke_async(&mut self.cache.clone())
            .await
            .map_err(unavailable)?;
        if stored == 0 {
            metrics::counter!(telemetry::CACHE_PAGES_TOO_LARGE.name).increment(1);
        }
        Ok(())
    }

    async fn bump_lists(&self, scopes: &[ListScope]) -> CoreResult<()> {
        if scopes.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for scope in scopes {
            pipe.set(self.keys.list_generation(scope), fresh_generation())
                .ignore();
        }
        let mut redis = self.cache.clone();
        pipe.query_async::<()>(&mut redis)
            .await
            .map_err(unavailable)
    }
}

/// Announcements are published in pieces of at most this much JSON, so a batch of large messages is
/// never one huge pub/sub message.
const ANNOUNCEMENT_BYTES: usize = 256 * 1024;

/// Publishes each chat's changes on the chat's channel (the worker's side).
pub struct RedisAnnouncer {
    redis: ConnectionManager,
    keys: Keys,
}

impl RedisAnnouncer {
    pub fn new(redis: ConnectionManager, keys: Keys) -> Self {
        RedisAnnouncer { redis, keys }
    }
}

#[async_trait]
impl Announcer for RedisAnnouncer {
    async fn announce(&self, events: &[ChatEvent]) -> CoreResult<()> {
        let mut pipe = redis::pipe();
        for chat in events.chunk_by(|a, b| chat_of(a) == chat_of(b)) {
            let channel = self.keys.announcements(chat_of(&chat[0]));
            let mut piece: Vec<&ChatEvent> = Vec::new();
            let mut bytes = 0;
            for event in chat {
                let size = event.message.body.len() + 256;
                if !piece.is_empty() && bytes + size > ANNOUNCEMENT_BYTES {
                    pipe.publish(&channel, encode_events(&piece)).ignore();
                    piece.clear();
                    bytes = 0;
                }
                piece.push(event);
                bytes += size;
            }
            pipe.publish(&channel, encode_events(&piece)).ignore();
        }
        pipe.query_async::<()>(&mut self.redis.clone())
            .await
            .map_err(unavailable)
    }
}

fn chat_of(event: &ChatEvent) -> ChatKey {
    (event.message.application_id, event.message.chat_number)
}

fn encode_events(events: &[&ChatEvent]) -> Vec<u8> {
    serde_json::to_vec(events).expect("events serialise")
}

/// Subscribes to the channels of the chats this process streams (the API's side), on a connection of
/// its own that a background task keeps open: after each reconnection it subscribes again to every
/// chat followed and tells the listeners they may have missed announcements.
pub struct RedisAnnouncements {
    shared: Arc<Subscriptions>,
}

struct Subscriptions {
    keys: Keys,
    /// The chats followed, and the live connection's subscribing half when there is one: one lock for
    /// both, so a chat followed while the connection is re-established is never left out.
    state: tokio::sync::Mutex<(HashSet<ChatKey>, Option<PubSubSink>)>,
    heard: broadcast::Sender<Heard>,
}

/// Announcements a listener may be behind before it is told it missed some.
const HEARD_BUFFER: usize = 4096;
/// A subscription not confirmed this soon counts as failed (the connection is then re-established).
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);

impl RedisAnnouncements {
    /// Starts the subscriber task; it connects (and reconnects) by itself, and ends when this is dropped.
    pub fn start(url: &str, keys: Keys) -> CoreResult<Self> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let shared = Arc::new(Subscriptions {
            keys,
            state: tokio::sync::Mutex::new((HashSet::new(), None)),
            heard: broadcast::channel(HEARD_BUFFER).0,
        });
        tokio::spawn(keep_subscribed(client, Arc::downgrade(&shared)));
        Ok(RedisAnnouncements { shared })
    }
}

#[async_trait]
impl Announcements for RedisAnnouncements {
    async fn follow(&self, chat: ChatKey) -> CoreResult<()> {
        let mut state = self.shared.state.lock().await;
        state.0.insert(chat);
        match state.1.as_mut() {
            Some(sink) => {
                let channel = self.shared.keys.announcements(chat);
                match tokio::time::timeout(SUBSCRIBE_TIMEOUT, sink.subscribe(channel)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(unavailable(e)),
                    Err(_) => Err(CoreError::unavailable(
                        Backend::Redis,
                        "subscribing timed out",
                    )),
                }
            }
            None => Err(CoreError::unavailable(
                Backend::Redis,
                "not connected for announcements",
            )),
        }
    }

    async fn unfollow(&self, chat: ChatKey) -> CoreResult<()> {
        let mut state = self.shared.state.lock().await;
        state.0.remove(&chat);
        if let Some(sink) = state.1.as_mut() {
            let channel = self.shared.keys.announcements(chat);
            let _ = tokio::time::timeout(SUBSCRIBE_TIMEOUT, sink.unsubscribe(channel)).await;
        }
        Ok(())
    }

    fn listen(&self) -> broadcast::Receiver<Heard> {
        self.shared.heard.subscribe()
    }
}

/// How long the subscriber waits before connecting again after losing its connection.
const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(1);

async fn keep_subscribed(client: redis::Client, shared: std::sync::Weak<Subscriptions>) {
    use futures::StreamExt;
    loop {
        let connected = client.get_async_pubsub().await;
        let Some(subscriptions) = shared.upgrade() else {
            return;
        };
        match connected {
            Ok(pubsub) => {
                let (mut sink, mut messages) = pubsub.split();
                let subscribed = {
                    let mut state = subscriptions.state.lock().await;
                    let channels: Vec<String> = state
                        .0
                        .iter()
                        .map(|chat| subscriptions.keys.announcements(*chat))
                        .collect();
                    let subscribed = channels.is_empty()
                        || matches!(
                            tokio::time::timeout(SUBSCRIBE_TIMEOUT, sink.subscribe(channels)).await,
                            Ok(Ok(()))
                        );
                    if subscribed {
                        state.1 = Some(sink);
                    }
                    subscribed
                };
                if subscribed {
                    // Whatever was announced while not subscribed is only in the store.
                    let _ = subscriptions.heard.send(Heard::Interrupted);
                    let heard = subscriptions.heard.clone();
                    drop(subscriptions);
                    loop {
                        let message = tokio::select! {
                            message = messages.next() => message,
                            // Ends with the adapter, even while no announcement comes.
                            () = tokio::time::sleep(RESUBSCRIBE_AFTER * 5) => {
                                if shared.strong_count() == 0 {
                                    return;
                                }
                                continue;
                            }
                        };
                        let Some(message) = message else { break };
                        match serde_json::from_slice::<Vec<ChatEvent>>(message.get_payload_bytes())
                        {
                            Ok(events) => {
                                let _ = heard.send(Heard::Changes(events.into()));
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "an announcement could not be read")
                            }
                        }
                    }
                    let Some(subscriptions) = shared.upgrade() else {
                        return;
                    };
                    subscriptions.state.lock().await.1 = None;
                    let _ = subscriptions.heard.send(Heard::Interrupted);
                    tracing::warn!("the announcements connection to Redis was lost; reconnecting");
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "connecting for announcements failed; retrying");
            }
        }
        tokio::time::sleep(RESUBSCRIBE_AFTER).await;
    }
}
