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
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyScope {
    NewApplications,
    Application { app: AppId, token: String },
}

impl KeyScope {
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

/// What a request finds when it claims a key.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// Nobody holds the key: this request does, as `owner`, and does the work.
    Owned { owner: String },
    /// The key's holder recorded this intent and died (or failed) before finishing: this request holds
    /// the key now and acts the intent out again.
    Resumed { owner: String, intent: Intent },
    /// The key's work is done; this is what it did.
    Finished(Intent),
    /// The key was used for another request (another body, path or operation).
    Reused,
    /// Another request holds the key and is still within its lease.
    Busy,
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

/// Compare-and-swap attempts before a change gives up to a racing one.
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

    fn cell(scope: &KeyScope, key: &IdempotencyKey) -> String {
        format!("{}:{}", scope.segment(), key.as_str())
    }

    async fn read(&self, cell: &str) -> CoreResult<(Option<String>, Option<KeyRecord>)> {
        let raw = self.cells.read(cell).await?;
        // A record this version cannot read is treated as absent, and replaced.
        let record = raw
            .as_deref()
            .and_then(|raw| serde_json::from_str(raw).ok());
        Ok((raw, record))
    }

    /// Claims `key` for a request with this fingerprint (see [`Claim`]).
    pub async fn claim(
        &self,
        scope: &KeyScope,
        key: &IdempotencyKey,
        fingerprint: &str,
        lease: Duration,
    ) -> CoreResult<Claim> {
        let cell = Self::cell(scope, key);
        for _ in 0..SWAP_ATTEMPTS {
            let (raw, existing) = self.read(&cell).await?;
            let (claim, stored) = KeyRecord::claim(existing, fingerprint, lease, now_ms());
            let Some(stored) = stored else {
                return Ok(claim);
            };
            let stored = serde_json::to_string(&stored).expect("a key record serialises");
            if self
                .cells
                .swap(&cell, raw.as_deref(), Some(&stored))
                .await?
            {
                return Ok(claim);
            }
        }
        Ok(Claim::Busy)
    }

    /// Records the intent if `owner` still holds the key: `false` when another request took it over.
    pub async fn record(
        &self,
        scope: &KeyScope,
        key: &IdempotencyKey,
        owner: &str,
        intent: &Intent,
    ) -> CoreResult<bool> {
        self.change(scope, key, owner, |record| {
            Some(KeyRecord {
                intent: Some(intent.clone()),
                ..record
            })
        })
        .await
    }

    /// Marks the key's work done, if `owner` still holds it.
    pub async fn finish(
        &self,
        scope: &KeyScope,
        key: &IdempotencyKey,
        owner: &str,
    ) -> CoreResult<()> {
        self.change(scope, key, owner, |record| {
            Some(KeyRecord {
                finished: true,
                ..record
            })
        })
        .await
        .map(drop)
    }

    /// Gives the key up after a failure: forgotten when no intent was recorded (a retry starts over),
    /// otherwise free to be taken over at once (a retry acts the intent out).
    pub async fn release(
        &self,
        scope: &KeyScope,
        key: &IdempotencyKey,
        owner: &str,
    ) -> CoreResult<()> {
        self.change(scope, key, owner, |record| {
            record.intent.is_some().then_some(KeyRecord {
                lease_until_ms: 0,
                ..record
            })
        })
        .await
        .map(drop)
    }

    /// Replaces the record by `change(record)` (`None` removes it) if `owner` holds it.
    async fn change(
        &self,
        scope: &KeyScope,
        key: &IdempotencyKey,
        owner: &str,
        change: impl Fn(KeyRecord) -> Option<KeyRecord>,
    ) -> CoreResult<bool> {
        let cell = Self::cell(scope, key);
        for _ in 0..SWAP_ATTEMPTS {
            let (raw, Some(record)) = self.read(&cell).await? else {
                return Ok(false);
            };
            if record.owner != owner {
                return Ok(false);
            }
            let changed = change(record)
                .map(|record| serde_json::to_string(&record).expect("a key record serialises"));
            if self
                .cells
                .swap(&cell, raw.as_deref(), changed.as_deref())
                .await?
            {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

fn now_ms() -> i64 {
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
    /// What a claim at `now_ms` finds in `existing`, and the record to store (when it changes).
    pub fn claim(
        existing: Option<KeyRecord>,
        fingerprint: &str,
        lease: Duration,
        now_ms: i64,
    ) -> (Claim, Option<KeyRecord>) {
        let owned = |intent: Option<Intent>| {
            let owner = new_owner();
            let record = KeyRecord {
                fingerprint: fingerprint.to_string(),
                owner: owner.clone(),
                lease_until_ms: now_ms + lease.as_millis() as i64,
                intent: intent.clone(),
                finished: false,
            };
            let claim = match intent {
                Some(intent) => Claim::Resumed { owner, intent },
                None => Claim::Owned { owner },
            };
            (claim, Some(record))
        };
        match existing {
            None => owned(None),
            Some(record) if record.fingerprint != fingerprint => (Claim::Reused, None),
            Some(KeyRecord {
                finished: true,
                intent: Some(intent),
                ..
            }) => (Claim::Finished(intent), None),
            Some(record) if record.lease_until_ms > now_ms => (Claim::Busy, None),
            Some(record) => owned(record.intent),
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
        let (claim, stored) = KeyRecord::claim(None, "f", lease, 1000);
        let Claim::Owned { owner } = claim else {
            panic!("a fresh key is owned, got {claim:?}")
        };
        let mut record = stored.unwrap();
        assert_eq!(
            (record.owner.as_str(), record.lease_until_ms),
            (owner.as_str(), 11_000)
        );

        assert_eq!(
            KeyRecord::claim(Some(record.clone()), "g", lease, 1001).0,
            Claim::Reused
        );
        assert_eq!(
            KeyRecord::claim(Some(record.clone()), "f", lease, 1001).0,
            Claim::Busy
        );
        // The owner died before recording an intent: the next request starts afresh.
        assert!(matches!(
            KeyRecord::claim(Some(record.clone()), "f", lease, 11_000).0,
            Claim::Owned { .. }
        ));
        // It died after recording one: the next request acts it out, as a new owner.
        record.intent = Some(intent());
        let (claim, stored) = KeyRecord::claim(Some(record.clone()), "f", lease, 11_000);
        let Claim::Resumed {
            owner: taker,
            intent: resumed,
        } = claim
        else {
            panic!("an abandoned intent is resumed, got {claim:?}")
        };
        assert_ne!(taker, owner);
        assert_eq!(resumed, intent());
        assert_eq!(stored.unwrap().owner, taker);
        record.finished = true;
        assert_eq!(
            KeyRecord::claim(Some(record), "f", lease, 1001).0,
            Claim::Finished(intent())
        );
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
