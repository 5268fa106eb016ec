//! What the worker has stored but not yet indexed, planned so that one application's load costs that
//! application: each index commit takes a bounded amount of text, shared in turn among the applications
//! that have messages waiting, so a small message of one application is not stuck behind another's
//! thousand large ones. Batches still come out in the order they went in, since acknowledging a
//! delivery acknowledges every earlier one. Pure: no I/O.

use std::collections::{BTreeMap, VecDeque};

use crate::domain::{AppId, Message};
use crate::ports::IndexRefusal;

/// What one message costs a commit beyond its body (the document, its fields, its id).
const MESSAGE_OVERHEAD_BYTES: usize = 256;

/// Stored batches waiting to be indexed; `B` is what the caller keeps of a batch (its deliveries).
pub struct IndexQueue<B> {
    batches: VecDeque<Waiting<B>>,
    /// The sequence number of the batch at the front of `batches`.
    front: u64,
    /// Messages still to index, per application, each with its batch's sequence number.
    by_app: BTreeMap<AppId, VecDeque<(u64, Message)>>,
    /// The application the last slice ended with: the next one starts after it.
    turn: Option<AppId>,
}

struct Waiting<B> {
    batch: B,
    /// Messages of this batch not yet indexed.
    left: usize,
    refused: Vec<(IndexRefusal, Message)>,
}

/// Messages to index in one commit, with the batch each came from.
#[derive(Debug, Default)]
pub struct Slice {
    pub messages: Vec<Message>,
    batches: Vec<u64>,
}

/// A batch whose messages are all indexed or refused (the refused ones with their stored state).
pub struct Done<B> {
    pub batch: B,
    pub refused: Vec<(IndexRefusal, Message)>,
}

impl<B> Default for IndexQueue<B> {
    fn default() -> Self {
        IndexQueue {
            batches: VecDeque::new(),
            front: 0,
            by_app: BTreeMap::new(),
            turn: None,
        }
    }
}

impl<B> IndexQueue<B> {
    pub fn push(&mut self, batch: B, messages: Vec<Message>) {
        let sequence = self.front + self.batches.len() as u64;
        self.batches.push_back(Waiting {
            batch,
            left: messages.len(),
            refused: Vec::new(),
        });
        for message in messages {
            self.by_app
                .entry(message.application_id)
                .or_default()
                .push_back((sequence, message));
        }
    }

    /// Whether any message waits to be indexed.
    pub fn has_work(&self) -> bool {
        !self.by_app.is_empty()
    }

    /// Takes messages one application at a time, in turn, until the next would take the slice past
    /// `max_bytes` (a slice holds at least one message).
    pub fn next_slice(&mut self, max_bytes: usize) -> Slice {
        let mut slice = Slice::default();
        let mut bytes = 0;
        'rounds: while !self.by_app.is_empty() {
            let order: Vec<AppId> = match self.turn {
                Some(last) => self
                    .by_app
                    .range(last + 1..)
                    .chain(self.by_app.range(..=last))
                    .map(|(app, _)| *app)
                    .collect(),
                None => self.by_app.keys().copied().collect(),
            };
            for app in order {
                let waiting = self.by_app.get_mut(&app).expect("listed above");
                let cost = waiting.front().map_or(0, |(_, m)| cost(m));
                if !slice.messages.is_empty() && bytes + cost > max_bytes {
                    break 'rounds;
                }
                let (batch, message) = waiting.pop_front().expect("no empty queue is kept");
                if waiting.is_empty() {
                    self.by_app.remove(&app);
                }
                bytes += cost;
                slice.batches.push(batch);
                slice.messages.push(message);
                self.turn = Some(app);
            }
        }
        slice
    }

    /// Records that a slice went through the index, with the messages it refused.
    pub fn indexed(&mut self, slice: Slice, refusals: &[IndexRefusal]) {
        for (message, batch) in slice.messages.into_iter().zip(slice.batches) {
            let Some(waiting) = self.batches.get_mut((batch - self.front) as usize) else {
                continue;
            };
            waiting.left -= 1;
            let key = (message.application_id, message.chat_number, message.number);
            if let Some(refusal) = refusals.iter().find(|r| r.key == key) {
                waiting.refused.push((refusal.clone(), message));
            }
        }
    }

    /// The oldest batch, once every message of it and of every earlier batch is indexed.
    pub fn pop_done(&mut self) -> Option<Done<B>> {
        if self.batches.front()?.left > 0 {
            return None;
        }
        let waiting = self.batches.pop_front()?;
        self.front += 1;
        Some(Done {
            batch: waiting.batch,
            refused: waiting.refused,
        })
    }
}

fn cost(message: &Message) -> usize {
    message.body.len() + MESSAGE_OVERHEAD_BYTES
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;

    use super::*;

    fn message(app: AppId, number: u64, bytes: usize) -> Message {
        let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        Message {
            application_id: app,
            chat_number: 1,
            number,
            body: "x".repeat(bytes),
            version: 0,
            created_at: at,
            updated_at: at,
            deleted: false,
        }
    }

    fn keys(slice: &Slice) -> Vec<(AppId, u64)> {
        slice
            .messages
            .iter()
            .map(|m| (m.application_id, m.number))
            .collect()
    }

    #[test]
    fn a_small_message_does_not_wait_behind_another_applications_large_ones() {
        let mut queue = IndexQueue::default();
        queue.push(
            "big",
            (1..=1000).map(|n| message(1, n, 64 * 1024)).collect(),
        );
        queue.push("small", vec![message(2, 1, 10)]);
        let first = queue.next_slice(4 << 20);
        assert!(keys(&first).contains(&(2, 1)), "{:?}", keys(&first));
        assert!(
            first.messages.len() < 70,
            "a slice is bounded: {}",
            first.messages.len()
        );
    }

    #[test]
    fn batches_are_done_in_order_once_all_their_messages_are_indexed() {
        let mut queue = IndexQueue::default();
        queue.push("a", vec![message(1, 1, 100), message(1, 2, 100)]);
        queue.push("b", vec![message(2, 1, 100)]);
        queue.push("chats only", Vec::new());
        // Room for two messages: one of each application, so "b" is indexed before "a" is.
        let slice = queue.next_slice(2 * (100 + MESSAGE_OVERHEAD_BYTES));
        assert_eq!(keys(&slice), [(1, 1), (2, 1)]);
        queue.indexed(slice, &[]);
        assert!(queue.pop_done().is_none(), "\"b\" waits for \"a\"");
        let slice = queue.next_slice(1 << 20);
        assert_eq!(keys(&slice), [(1, 2)]);
        queue.indexed(slice, &[]);
        assert!(!queue.has_work());
        let done: Vec<&str> = std::iter::from_fn(|| queue.pop_done().map(|d| d.batch)).collect();
        assert_eq!(done, ["a", "b", "chats only"]);
    }

    #[test]
    fn refusals_stay_with_their_batch() {
        let mut queue = IndexQueue::default();
        queue.push("a", vec![message(1, 1, 1), message(1, 2, 1)]);
        let slice = queue.next_slice(1 << 20);
        let refusal = IndexRefusal {
            key: (1, 1, 2),
            reason: "mapper_parsing_exception".into(),
        };
        queue.indexed(slice, std::slice::from_ref(&refusal));
        let done = queue.pop_done().unwrap();
        assert_eq!(done.refused.len(), 1);
        assert_eq!(done.refused[0].0, refusal);
        assert_eq!(done.refused[0].1.number, 2);
    }

    #[test]
    fn a_message_larger_than_the_budget_still_goes_alone() {
        let mut queue = IndexQueue::default();
        queue.push("a", vec![message(1, 1, 1000), message(1, 2, 1000)]);
        assert_eq!(queue.next_slice(10).messages.len(), 1);
    }
}
