//! Message creates without an idempotency key, in group commits: the creates waiting at the same time
//! take their numbers in one call to [`Numbers`], are published together (the queue carries the
//! commands of one queue in one envelope), and are remembered for read-your-writes in one call to the
//! cache. So a create costs a share of one Redis round trip each way and of one confirmed publish,
//! however many wait together, and a lone create still goes at once. Each create is answered with its
//! own outcome: one whose publish failed gets its error, and its number is a gap as before.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::command::Command;
use crate::domain::{self, AppId, Message};
use crate::error::{Backend, CoreError, CoreResult};
use crate::group_commit::Flush;
use crate::plan::ChatKey;
use crate::ports::{Cache, NumberFloor, Numbers, Queue};
use crate::telemetry;

/// A message to create, once its chat is known to exist.
pub struct NewMessage {
    pub app: AppId,
    pub chat: u64,
    pub chat_created_at: DateTime<Utc>,
    pub body: String,
}

/// The ports a group of creates goes through.
pub struct MessageCreates {
    pub numbers: Arc<dyn Numbers>,
    pub floor: Arc<dyn NumberFloor>,
    pub queue: Arc<dyn Queue>,
    pub cache: Arc<dyn Cache>,
}

/// The next number of a chat whose message counter is missing: the counter restarted above the floor.
pub async fn restart_message_counter(
    numbers: &dyn Numbers,
    floor: &dyn NumberFloor,
    (app, chat): ChatKey,
) -> CoreResult<u64> {
    let floor = floor.message_floor(app, chat).await?;
    numbers.restart_messages(app, chat, floor).await
}

impl MessageCreates {
    /// Publishes one create, once it has its number.
    async fn publish(&self, create: NewMessage, number: CoreResult<u64>) -> CoreResult<Message> {
        let command = Command::CreateMessage {
            application_id: create.app,
            chat_number: create.chat,
            chat_created_at: create.chat_created_at,
            number: number?,
            body: create.body,
            at: domain::now(),
        };
        self.queue.publish(&command).await?;
        Ok(command.created_message().expect("a message's creation"))
    }
}

#[async_trait]
impl Flush for MessageCreates {
    type Item = NewMessage;
    type Output = CoreResult<Message>;

    async fn flush(&self, _: usize, creates: Vec<NewMessage>) -> Vec<CoreResult<Message>> {
        let chats: Vec<ChatKey> = creates.iter().map(|c| (c.app, c.chat)).collect();
        let numbers = match self.numbers.next_messages(&chats).await {
            Ok(numbers) => numbers,
            Err(e) => return creates.iter().map(|_| Err(again(&e))).collect(),
        };
        let mut taken = Vec::with_capacity(creates.len());
        for (chat, number) in chats.iter().zip(numbers) {
            taken.push(match number {
                Some(number) => Ok(number),
                None => {
                    restart_message_counter(self.numbers.as_ref(), self.floor.as_ref(), *chat).await
                }
            });
        }
        let published = futures::future::join_all(
            creates
                .into_iter()
                .zip(taken)
                .map(|(create, number)| self.publish(create, number)),
        )
        .await;
        // The accepted messages apart, to be remembered in one call, and each failure in its place.
        let mut accepted = Vec::with_capacity(published.len());
        let failures: Vec<Option<CoreError>> = published
            .into_iter()
            .map(|outcome| match outcome {
                Ok(message) => {
                    accepted.push(message);
                    None
                }
                Err(e) => Some(e),
            })
            .collect();
        if let Err(e) = self.cache.remember_messages(&accepted).await {
            metrics::counter!(telemetry::CACHE_ERRORS.name).increment(1);
            tracing::debug!(error = %e, "cache unavailable; reads fall back to the store");
        }
        let mut accepted = accepted.into_iter();
        failures
            .into_iter()
            .map(|failure| match failure {
                None => Ok(accepted.next().expect("a message for each success")),
                Some(e) => Err(e),
            })
            .collect()
    }
}

/// The same failure, for another create of the group.
fn again(e: &CoreError) -> CoreError {
    match e {
        CoreError::Unavailable { backend, detail } => CoreError::Unavailable {
            backend: *backend,
            detail: detail.clone(),
        },
        other => CoreError::unavailable(Backend::Redis, other),
    }
}
