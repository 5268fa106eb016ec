//! Idempotency keys: a client that retries a create with the same `Idempotency-Key` gets the first
//! answer, and nothing is created twice, even when the first attempt's process died between publishing
//! and answering.
//!
//! A key's record lives where every API replica sees it (the [`Keys`] port: Redis, or the embedded
//! store) for [`KEY_LIFETIME`]. The request that claims a key first records its *intent* (the command
//! it is about to publish, with its number already allocated) before it acts, then marks the record
//! finished. A retry finds one of three things: a finished record, which it answers from; a record
//! whose owner is still within its lease, which it waits for; or a record whose owner died (its lease
//! ran out), which it takes over, acting out the recorded intent again. Acting twice is harmless: the
//! commands are idempotent, and an application is created under the token the intent names.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::command::Command;
use crate::domain::AppId;
use crate::error::{CoreError, CoreResult};

/// How long a key is remembered after it was first used.
pub const KEY_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// How long a claim is held without being finished before another request may take it over. Longer
/// than a create can take while its process lives (the publish timeout is 5 s by default), short
/// enough that a client retrying after a crash is not kept waiting long.
pub const LEASE: Duration = Duration::from_secs(10);

/// How long a retry waits for the request that holds its key before answering 409.
pub const WAIT_FOR_OWNER: Duration = Duration::from_secs(2);

/// The longest key taken, as Stripe's API takes.
pub const KEY_MAX_BYTES: usize = 255;

/// A client's idempotency key: 1 to 255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(raw: &[u8]) -> CoreResult<IdempotencyKey> {
        let usable =
            (1..=KEY_MAX_BYTES).contains(&raw.len()) && raw.iter().all(u8::is_ascii_graphic);
        if !usable {
            return Err(CoreError::invalid_header(
                "Idempotency-Key",
                "must be 1 to 255 visible ASCII characters",
            ));
        }
        Ok(IdempotencyKey(String::from_utf8_lossy(raw).into_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where a key is looked up: keys are scoped per application and token (a replaced token's keys end
/// with it), and creating an application (which has none yet) has a scope of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyScope<'a> {
    NewApplications,
    Application { app: AppId, token: &'a str },
}

impl KeyScope<'_> {
    /// The scope as a storage key segment: `new`, or the application id and its token's fingerprint.
    pub fn segment(&self) -> String {
        match self {
            KeyScope::NewApplications => "new".to_string(),
            KeyScope::Application { app, token } => format!("{app}.{}", token_fingerprint(token)),
        }
    }
}

/// What a create under a key is about to do, recorded before it does it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Intent {
    Application {
        token: String,
        name: String,
        at: DateTime<Utc>,
    },
    Command {
        command: Command,
    },
}

impl Intent {
    /// The command the intent publishes, for a chat or a message.
    pub fn command(&self) -> Option<&Command> {
        match self {
            Intent::Command { command } => Some(command),
            Intent::Application { .. } => None,
        }
    }
}

/// What a request finds when it claims a key: `H` is what holding it gives (the record to store, for
/// the rule of [`KeyRecord::claim`]; a [`Held`] key, for [`Keys::claim`]'s callers).
#[derive(Debug, Clone, PartialEq)]
pub enum Claim<H> {
    /// This request holds the key. Either nobody held it, and the request does the work; or its holder
    /// recorded an intent and died (or failed) before finishing, and the request acts that intent out
    /// again.
    Held(H),
    /// The key's work is done; this is what it did.
    Finished(Intent),
    /// The key was used for another request (another body, path or operation).
    Reused,
    /// Another request holds the key and is still within its lease.
    Busy,
}

/// A key this request holds: its record as this request stored it. Every change is a swap against
/// exactly that stored value, with no read first; a swap that fails means the key is no longer this
/// request's (another took it over once the lease ran out, or it expired).
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    cell: String,
    record: KeyRecord,
    stored: String,
}

impl Held {
    fn new(cell: String, record: KeyRecord) -> Self {
        let stored = serde_json::to_string(&record).expect("a key record serialises");
        Held {
            cell,
            record,
            stored,
        }
    }

    /// The intent its previous holder recorded, when this request took the key over.
    pub fn intent(&self) -> Option<&Intent> {
        self.record.intent.as_ref()
    }
}

/// The port: cells holding key records, shared by every API replica, changed by compare-and-swap
/// only, so that the rules of [`KeyRecord`] hold whatever replicas race.
#[async_trait]
pub trait KeyCells: Send + Sync {
    /// The value of a cell, or `None` (never written, or past its lifetime).
    async fn read(&self, cell: &str) -> CoreResult<Option<String>>;
    /// Writes `new` (or removes the cell, for `None`) if the cell holds `expected` (`None`: nothing),
    /// and says whether it did. A cell written where there was none lives [`KEY_LIFETIME`]; a
    /// replaced one keeps the expiry it had.
    async fn swap(&self, cell: &str, expected: Option<&str>, new: Option<&str>)
    -> CoreResult<bool>;
}

/// Compare-and-swap attempts of a claim before it gives up to racing ones.
const SWAP_ATTEMPTS: usize = 8;

/// The key records over a [`KeyCells`] port.
#[derive(Clone)]
pub struct Keys {
    cells: Arc<dyn KeyCells>,
}

impl Keys {
    pub fn new(cells: Arc<dyn KeyCells>) -> Self {
        Keys { cells }
    }

    /// Claims `key` for a request with this fingerprint (see [`Claim`]). The first attempt takes the key
    /// to be new, the common case, and so costs one swap; the record is read only when that fails.
    pub async fn claim(
        &self,
        scope: KeyScope<'_>,
        key: &IdempotencyKey,
        fingerprint: &str,
        lease: Duration,
    ) -> CoreResult<Claim<Held>> {
        let cell = format!("{}:{}", scope.segment(), key.as_str());
        let mut current: Option<String> = None;
        for _ in 0..SWAP_ATTEMPTS {
            // A record this version cannot read is treated as absent, and replaced.
            let existing = current
                .as_deref()
                .and_then(|raw| serde_json::from_str(raw).ok());
            let record = match KeyRecord::claim(existing, fingerprint, lease, now_ms()) {
                Claim::Held(record) => record,
                Claim::Finished(intent) => return Ok(Claim::Finished(intent)),
                Claim::Reused => return Ok(Claim::Reused),
                Claim::Busy => return Ok(Claim::Busy),
            };
            let held = Held::new(cell.clone(), record);
            if self
                .cells
                .swap(&cell, current.as_deref(), Some(&held.stored))
                .await?
            {
                return Ok(Claim::Held(held));
            }
            current = self.cells.read(&cell).await?;
        }
        Ok(Claim::Busy)
    }

    /// Records the intent: `false` when the key is no longer this request's.
    pub async fn record(&self, held: &mut Held, intent: &Intent) -> CoreResult<bool> {
        let recorded = KeyRecord {
            intent: Some(intent.clone()),
            ..held.record.clone()
        };
        self.replace(held, Some(recorded)).await
    }

    /// Marks the key's work done.
    pub async fn finish(&self, mut held: Held) -> CoreResult<()> {
        let finished = KeyRecord {
            finished: true,
            ..held.record.clone()
        };
        self.replace(&mut held, Some(finished)).await.map(drop)
    }

    /// Gives the key up after a failure: forgotten when no intent was recorded (a retry starts over),
    /// otherwise free to be taken over at once (a retry acts the intent out).
    pub async fn release(&self, mut held: Held) -> CoreResult<()> {
        let released = held.record.intent.is_some().then(|| KeyRecord {
            lease_until_ms: 0,
            ..held.record.clone()
        });
        self.replace(&mut held, released).await.map(drop)
    }

    /// Swaps the held record for `record` (`None` removes it); `false` when the key is no longer held.
    async fn replace(&self, held: &mut Held, record: Option<KeyRecord>) -> CoreResult<bool> {
        let next = record.map(|record| Held::new(held.cell.clone(), record));
        let swapped = self
            .cells
            .swap(
                &held.cell,
                Some(&held.stored),
                next.as_ref().map(|next| next.stored.as_str()),
            )
            .await?;
        if swapped && let Some(next) = next {
            *held = next;
        }
        Ok(swapped)
    }
}

/// Now, in milliseconds since the epoch: the clock of key records and their expiry.
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// What identifies a request under its key: the operation and everything that decides its result,
/// hashed. Each part is length-prefixed, so no two lists of parts hash alike.
pub fn fingerprint(parts: &[&str]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    hex(&hash.finalize())
}

/// A short, non-reversible name for a token, for logs: the first 8 hex digits of its SHA-256. Tokens
/// are 192 random bits, so the digest reveals nothing of them, and distinct tokens rarely share one.
pub fn token_fingerprint(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes())[..4])
}

/// A fresh owner id for a claim.
pub fn new_owner() -> String {
    hex(&rand::random::<[u8; 12]>())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The stored state of one key, and the rule of [`Keys::claim`] over it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub fingerprint: String,
    pub owner: String,
    /// When the owner's claim runs out, in milliseconds since the epoch.
    pub lease_until_ms: i64,
    pub intent: Option<Intent>,
    pub finished: bool,
}

impl KeyRecord {
    /// What a claim at `now_ms` finds in `existing`; when it gets the key, the record to store.
    pub fn claim(
        existing: Option<KeyRecord>,
        fingerprint: &str,
        lease: Duration,
        now_ms: i64,
    ) -> Claim<KeyRecord> {
        let held = |intent: Option<Intent>| {
            Claim::Held(KeyRecord {
                fingerprint: fingerprint.to_string(),
                owner: new_owner(),
                lease_until_ms: now_ms + lease.as_millis() as i64,
                intent,
                finished: false,
            })
        };
        match existing {
            None => held(None),
            Some(record) if record.fingerprint != fingerprint => Claim::Reused,
            Some(KeyRecord {
                finished: true,
                intent: Some(intent),
                ..
            }) => Claim::Finished(intent),
            Some(record) if record.lease_until_ms > now_ms => Claim::Busy,
            Some(record) => held(record.intent),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent() -> Intent {
        Intent::Application {
            token: "t".into(),
            name: "n".into(),
            at: DateTime::from_timestamp(0, 0).unwrap(),
        }
    }

    #[test]
    fn a_claim_follows_the_record_it_finds() {
        let lease = Duration::from_secs(10);
        let held = |claim: Claim<KeyRecord>| match claim {
            Claim::Held(record) => record,
            other => panic!("the key was meant to be held, got {other:?}"),
        };
        let mut record = held(KeyRecord::claim(None, "f", lease, 1000));
        assert_eq!(
            (record.lease_until_ms, record.intent.as_ref()),
            (11_000, None)
        );

        let again = |record: &KeyRecord, fingerprint, now| {
            KeyRecord::claim(Some(record.clone()), fingerprint, lease, now)
        };
        assert_eq!(again(&record, "g", 1001), Claim::Reused);
        assert_eq!(again(&record, "f", 1001), Claim::Busy);
        // The holder died before recording an intent: the next request starts afresh.
        let taken = held(again(&record, "f", 11_000));
        assert_eq!(taken.intent, None);
        assert_ne!(taken.owner, record.owner);
        // It died after recording one: the next request acts it out, as a new holder.
        record.intent = Some(intent());
        let taken = held(again(&record, "f", 11_000));
        assert_eq!(taken.intent, Some(intent()));
        assert_ne!(taken.owner, record.owner);
        record.finished = true;
        assert_eq!(again(&record, "f", 1001), Claim::Finished(intent()));
    }

    #[test]
    fn keys_are_short_visible_ascii() {
        assert!(IdempotencyKey::parse(b"a").is_ok());
        assert!(IdempotencyKey::parse(&[b'k'; 255]).is_ok());
        for refused in [
            &b""[..],
            &[b'k'; 256],
            b"with space",
            b"tab\t",
            "é".as_bytes(),
        ] {
            assert!(
                IdempotencyKey::parse(refused).is_err(),
                "{refused:?} was taken"
            );
        }
    }

    #[test]
    fn fingerprints_tell_parts_apart() {
        assert_ne!(fingerprint(&["ab", "c"]), fingerprint(&["a", "bc"]));
        assert_eq!(fingerprint(&["a"]), fingerprint(&["a"]));
        assert_eq!(token_fingerprint("token").len(), 8);
    }
}
