//! Batch planning: turns the commands of one batch into the rows to upsert, merging commands that touch
//! the same row so each row is written once per batch. Pure, so every rule is tested without a database.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, SubsecRound, Utc};

use crate::command::Command;
use crate::domain::{AppId, Message};

pub type ChatKey = (AppId, u64);
pub type MessageKey = (AppId, u64, u64);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatRow {
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Deleted by a command of the batch: once deleted, a chat stays deleted.
    pub deleted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRow {
    pub body: String,
    pub version: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// A tombstone (no body): once deleted, a message stays deleted, whatever version comes later.
    pub deleted: bool,
}

/// Rows keyed and sorted by primary key: every transaction locks rows in the same order, which keeps
/// concurrent workers from deadlocking on each other.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchPlan {
    pub chats: BTreeMap<ChatKey, ChatRow>,
    pub messages: BTreeMap<MessageKey, MessageRow>,
    /// Deleted applications whose chats and messages are to be removed.
    pub purges: BTreeSet<AppId>,
}

impl BatchPlan {
    pub fn is_empty(&self) -> bool {
        self.chats.is_empty() && self.messages.is_empty() && self.purges.is_empty()
    }

    /// Splits the plan's messages by what the batch inserted (`inserted`: new rows per chat). In a chat
    /// where every planned row was new, the store holds exactly what the plan wrote, returned as written;
    /// the keys of other chats met existing rows, which may hold a newer edit, and must be read back.
    pub fn written_or_to_read(
        &self,
        inserted: &BTreeMap<ChatKey, i64>,
    ) -> (Vec<Message>, Vec<&MessageKey>) {
        let mut planned: BTreeMap<ChatKey, i64> = BTreeMap::new();
        for (app, chat, _) in self.messages.keys() {
            *planned.entry((*app, *chat)).or_default() += 1;
        }
        let mut written = Vec::new();
        let mut to_read = Vec::new();
        for (key @ &(application_id, chat_number, number), row) in &self.messages {
            let chat = (application_id, chat_number);
            if inserted.get(&chat) == planned.get(&chat) {
                written.push(Message {
                    application_id,
                    chat_number,
                    number,
                    body: row.body.clone(),
                    version: row.version,
                    created_at: row.created_at,
                    updated_at: row.updated_at,
                    deleted: row.deleted,
                });
            } else {
                to_read.push(key);
            }
        }
        (written, to_read)
    }

    /// The message rows in groups that each fit one INSERT statement, in key order: at most
    /// `STATEMENT_ROWS` rows and `STATEMENT_BODY_BYTES` of bodies, so a batch of large messages stays
    /// under the database's packet limit (4 MiB by default on the oldest MySQL we meet) and its
    /// placeholder limit.
    pub fn message_statements(&self) -> Vec<Vec<(&MessageKey, &MessageRow)>> {
        let mut statements: Vec<Vec<(&MessageKey, &MessageRow)>> = Vec::new();
        let mut bytes = 0;
        for row in &self.messages {
            let size = row.1.body.len();
            match statements.last_mut() {
                Some(statement)
                    if statement.len() < STATEMENT_ROWS && bytes + size <= STATEMENT_BODY_BYTES =>
                {
                    statement.push(row);
                    bytes += size;
                }
                _ => {
                    statements.push(vec![row]);
                    bytes = size;
                }
            }
        }
        statements
    }

    pub fn applications(&self) -> Vec<AppId> {
        let mut apps: Vec<AppId> = self.chats.keys().map(|(app, _)| *app).collect();
        apps.dedup();
        apps
    }
}

pub const STATEMENT_ROWS: usize = 1000;
pub const STATEMENT_BODY_BYTES: usize = 2 * 1024 * 1024;

pub fn plan_batch<'a>(commands: impl IntoIterator<Item = &'a Command>) -> BatchPlan {
    let mut plan = BatchPlan::default();
    for command in commands {
        match command {
            Command::CreateChat {
                application_id,
                number,
                at,
            } => {
                touch_chat(&mut plan, (*application_id, *number), *at, *at, false);
            }
            Command::DeleteChat {
                application_id,
                number,
                created_at,
                at,
            } => {
                touch_chat(
                    &mut plan,
                    (*application_id, *number),
                    *created_at,
                    *at,
                    true,
                );
            }
            Command::DeleteMessage {
                application_id,
                chat_number,
                chat_created_at,
                number,
                version,
                created_at,
                at,
            } => plan_message(
                &mut plan,
                (*application_id, *chat_number, *number),
                *chat_created_at,
                *created_at,
                MessageRow {
                    body: String::new(),
                    version: *version,
                    created_at: *created_at,
                    updated_at: *at,
                    deleted: true,
                },
            ),
            Command::PurgeApplication { application_id } => {
                plan.purges.insert(*application_id);
            }
            Command::CreateMessage {
                application_id,
                chat_number,
                chat_created_at,
                number,
                body,
                at,
            } => plan_message(
                &mut plan,
                (*application_id, *chat_number, *number),
                *chat_created_at,
                *at,
                MessageRow {
                    body: body.clone(),
                    version: 0,
                    created_at: *at,
                    updated_at: *at,
                    deleted: false,
                },
            ),
            Command::EditMessage {
                application_id,
                chat_number,
                chat_created_at,
                number,
                body,
                version,
                created_at,
                at,
            } => plan_message(
                &mut plan,
                (*application_id, *chat_number, *number),
                *chat_created_at,
                *created_at,
                MessageRow {
                    body: body.clone(),
                    version: *version,
                    created_at: *created_at,
                    updated_at: *at,
                    deleted: false,
                },
            ),
        }
    }
    plan
}

/// Plans a message's row and its chat's, so that a chat row exists whichever command lands first;
/// `touched_at` is the time the chat's `updated_at` may move to.
fn plan_message(
    plan: &mut BatchPlan,
    (app, chat, number): MessageKey,
    chat_created_at: DateTime<Utc>,
    touched_at: DateTime<Utc>,
    row: MessageRow,
) {
    touch_chat(plan, (app, chat), chat_created_at, touched_at, false);
    merge_message(plan, (app, chat, number), row);
}

fn touch_chat(
    plan: &mut BatchPlan,
    key: ChatKey,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    deleted: bool,
) {
    plan.chats
        .entry(key)
        .and_modify(|row| {
            row.created_at = row.created_at.min(created_at);
            row.updated_at = row.updated_at.max(updated_at);
            row.deleted |= deleted;
        })
        .or_insert(ChatRow {
            created_at,
            updated_at,
            deleted,
        });
}

/// The highest version's body wins, except that a delete stays, whatever its version; the creation
/// time is the earliest seen.
fn merge_message(plan: &mut BatchPlan, key: MessageKey, mut incoming: MessageRow) {
    // Stores keep microseconds: a plan holds what they will hold, whatever precision a command carried.
    incoming.created_at = incoming.created_at.trunc_subsecs(6);
    incoming.updated_at = incoming.updated_at.trunc_subsecs(6);
    plan.messages
        .entry(key)
        .and_modify(|row| {
            let created_at = row.created_at.min(incoming.created_at);
            let deleted = row.deleted || incoming.deleted;
            if incoming.version > row.version {
                *row = incoming.clone();
            }
            row.created_at = created_at;
            if deleted {
                row.deleted = true;
                row.body.clear();
            }
        })
        .or_insert(incoming);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    fn create(number: u64, body: &str, at: i64) -> Command {
        Command::CreateMessage {
            application_id: 1,
            chat_number: 1,
            chat_created_at: t(0),
            number,
            body: body.into(),
            at: t(at),
        }
    }

    fn edit(number: u64, body: &str, version: u64, at: i64) -> Command {
        Command::EditMessage {
            application_id: 1,
            chat_number: 1,
            chat_created_at: t(0),
            number,
            body: body.into(),
            version,
            created_at: t(1),
            at: t(at),
        }
    }

    #[test]
    fn the_newest_edit_wins_in_any_order_and_keeps_the_creation_time() {
        let commands = [
            create(1, "first", 1),
            edit(1, "second", 5, 3),
            edit(1, "third", 9, 4),
        ];
        let orders = [[0, 1, 2], [2, 1, 0], [1, 2, 0], [2, 0, 1]];
        for order in orders {
            let plan = plan_batch(order.iter().map(|i| &commands[*i]));
            let row = &plan.messages[&(1, 1, 1)];
            assert_eq!(row.body, "third", "order {order:?}");
            assert_eq!(row.version, 9);
            assert_eq!(row.created_at, t(1));
            assert_eq!(row.updated_at, t(4));
        }
    }

    fn delete(number: u64, version: u64, at: i64) -> Command {
        Command::DeleteMessage {
            application_id: 1,
            chat_number: 1,
            chat_created_at: t(0),
            number,
            version,
            created_at: t(1),
            at: t(at),
        }
    }

    /// A delete racing an edit ends deleted, in every order and whichever has the higher version.
    #[test]
    fn a_delete_stays_whatever_order_and_version_its_edits_come_in() {
        for (delete_version, edit_version) in [(9, 5), (5, 9)] {
            let commands = [
                create(1, "first", 1),
                edit(1, "edited", edit_version, 3),
                delete(1, delete_version, 4),
            ];
            for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0], [2, 0, 1], [0, 2, 1]] {
                let plan = plan_batch(order.iter().map(|i| &commands[*i]));
                let row = &plan.messages[&(1, 1, 1)];
                assert!(
                    row.deleted,
                    "order {order:?}, versions {delete_version}/{edit_version}"
                );
                assert_eq!(row.body, "", "a tombstone keeps no body");
                assert_eq!(row.version, 9);
            }
        }
    }

    #[test]
    fn a_redelivered_create_never_reverts_an_edit() {
        let plan = plan_batch(&[edit(1, "edited", 3, 5), create(1, "original", 1)]);
        assert_eq!(plan.messages[&(1, 1, 1)].body, "edited");
    }

    #[test]
    fn messages_also_plan_their_chat_so_a_chat_row_exists_whichever_command_lands_first() {
        let plan = plan_batch(&[create(1, "a", 2), create(2, "b", 3)]);
        assert_eq!(plan.chats.len(), 1);
        assert_eq!(
            plan.chats[&(1, 1)],
            ChatRow {
                created_at: t(0),
                updated_at: t(3),
                deleted: false,
            }
        );
        assert_eq!(plan.messages.len(), 2);
        assert_eq!(plan.applications(), vec![1]);
    }

    #[test]
    fn rows_come_out_in_key_order() {
        let commands: Vec<Command> = [5u64, 2, 9, 1].iter().map(|n| create(*n, "x", 1)).collect();
        let plan = plan_batch(&commands);
        let numbers: Vec<u64> = plan.messages.keys().map(|k| k.2).collect();
        assert_eq!(numbers, vec![1, 2, 5, 9]);
    }

    #[test]
    fn large_bodies_split_a_batch_into_statements_under_the_packet_limit() {
        let big = "x".repeat(64 * 1024);
        let commands: Vec<Command> = (1..=1000).map(|n| create(n, &big, 1)).collect();
        let plan = plan_batch(&commands);
        let statements = plan.message_statements();
        assert!(statements.len() > 1);
        for statement in &statements {
            let bytes: usize = statement.iter().map(|(_, row)| row.body.len()).sum();
            assert!(
                bytes <= STATEMENT_BODY_BYTES,
                "{bytes} bytes in one statement"
            );
        }
        let numbers: Vec<u64> = statements.iter().flatten().map(|(key, _)| key.2).collect();
        assert_eq!(numbers, (1..=1000).collect::<Vec<_>>());
    }

    #[test]
    fn small_bodies_share_statements_up_to_the_row_limit() {
        let commands: Vec<Command> = (1..=2500).map(|n| create(n, "hi", 1)).collect();
        let sizes: Vec<usize> = plan_batch(&commands)
            .message_statements()
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(sizes, vec![STATEMENT_ROWS, STATEMENT_ROWS, 500]);
    }

    #[test]
    fn only_chats_that_met_existing_rows_are_read_back() {
        let other_chat = Command::CreateMessage {
            application_id: 1,
            chat_number: 2,
            chat_created_at: t(0),
            number: 1,
            body: "elsewhere".into(),
            at: t(1),
        };
        let plan = plan_batch(&[create(1, "new", 1), create(2, "redelivered", 2), other_chat]);
        // Chat 1 inserted one of its two rows; chat 2 inserted its only row.
        let inserted = BTreeMap::from([((1, 1), 1), ((1, 2), 1)]);
        let (written, to_read) = plan.written_or_to_read(&inserted);
        assert_eq!(to_read, vec![&(1, 1, 1), &(1, 1, 2)]);
        assert_eq!(written.len(), 1);
        assert_eq!((written[0].chat_number, written[0].number), (2, 1));
        assert_eq!(written[0].body, "elsewhere");
        assert_eq!(written[0].created_at, t(1));
    }
}
