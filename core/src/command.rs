//! The commands the API publishes and the worker applies. Each one is idempotent and commutative
//! with the others: applying them twice or in another order gives the same rows.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{self, AppId, Chat, Message};
use crate::error::{CoreError, CoreResult};
use crate::plan::{ChatKey, MessageKey};

/// The largest encoded command: a body at its limit and a header of numbers and times (under 400 bytes).
pub const MAX_COMMAND_BYTES: usize = domain::BODY_MAX_BYTES + 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    CreateChat {
        application_id: AppId,
        number: u64,
        at: DateTime<Utc>,
    },
    CreateMessage {
        application_id: AppId,
        chat_number: u64,
        /// Lets a message stored before its chat create that chat row with the right time.
        chat_created_at: DateTime<Utc>,
        number: u64,
        body: String,
        at: DateTime<Utc>,
    },
    EditMessage {
        application_id: AppId,
        chat_number: u64,
        chat_created_at: DateTime<Utc>,
        number: u64,
        body: String,
        version: u64,
        /// The message's creation time, for an edit applied before its creation.
        created_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    /// Leaves a tombstone of the message, whatever order this and its other commands are applied in.
    DeleteMessage {
        application_id: AppId,
        chat_number: u64,
        chat_created_at: DateTime<Utc>,
        number: u64,
        version: u64,
        created_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    /// Leaves a tombstone of the chat, and removes its messages.
    DeleteChat {
        application_id: AppId,
        number: u64,
        created_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    /// Removes what a deleted application still holds (its chats, messages and their index), then the
    /// application itself.
    PurgeApplication { application_id: AppId },
}

impl Command {
    /// A command whose application restores this stored state of a message (and changes nothing when
    /// that state is stored already).
    pub fn restoring(message: &Message) -> Command {
        let m = message;
        if m.deleted {
            Command::DeleteMessage {
                application_id: m.application_id,
                chat_number: m.chat_number,
                chat_created_at: m.created_at,
                number: m.number,
                version: m.version,
                created_at: m.created_at,
                at: m.updated_at,
            }
        } else if m.version == 0 {
            Command::CreateMessage {
                application_id: m.application_id,
                chat_number: m.chat_number,
                chat_created_at: m.created_at,
                number: m.number,
                body: m.body.clone(),
                at: m.created_at,
            }
        } else {
            Command::EditMessage {
                application_id: m.application_id,
                chat_number: m.chat_number,
                chat_created_at: m.created_at,
                number: m.number,
                body: m.body.clone(),
                version: m.version,
                created_at: m.created_at,
                at: m.updated_at,
            }
        }
    }

    /// The chat a `CreateChat` creates, as it stands once created.
    pub fn created_chat(&self) -> Option<Chat> {
        match *self {
            Command::CreateChat {
                application_id,
                number,
                at,
            } => Some(Chat {
                application_id,
                number,
                messages_count: 0,
                created_at: at,
                updated_at: at,
                last_event: 0,
                deleted: false,
            }),
            _ => None,
        }
    }

    /// The message a `CreateMessage` creates, as it stands once created (the inverse of
    /// [`Command::restoring`] for a message never edited).
    pub fn created_message(&self) -> Option<Message> {
        match self {
            Command::CreateMessage {
                application_id,
                chat_number,
                number,
                body,
                at,
                ..
            } => Some(Message {
                application_id: *application_id,
                chat_number: *chat_number,
                number: *number,
                body: body.clone(),
                version: 0,
                created_at: *at,
                updated_at: *at,
                deleted: false,
            }),
            _ => None,
        }
    }

    /// The application the command writes into.
    pub fn application_id(&self) -> AppId {
        match self {
            Command::CreateChat { application_id, .. }
            | Command::CreateMessage { application_id, .. }
            | Command::EditMessage { application_id, .. }
            | Command::DeleteMessage { application_id, .. }
            | Command::DeleteChat { application_id, .. }
            | Command::PurgeApplication { application_id } => *application_id,
        }
    }

    /// The chat this command creates, deletes or writes a message into (none for a whole application).
    pub fn chat_key(&self) -> Option<ChatKey> {
        match self {
            Command::CreateChat {
                application_id,
                number,
                ..
            }
            | Command::DeleteChat {
                application_id,
                number,
                ..
            } => Some((*application_id, *number)),
            Command::CreateMessage {
                application_id,
                chat_number,
                ..
            }
            | Command::EditMessage {
                application_id,
                chat_number,
                ..
            }
            | Command::DeleteMessage {
                application_id,
                chat_number,
                ..
            } => Some((*application_id, *chat_number)),
            Command::PurgeApplication { .. } => None,
        }
    }

    /// The message this command writes, if it writes one.
    pub fn message_key(&self) -> Option<MessageKey> {
        match self {
            Command::CreateChat { .. }
            | Command::DeleteChat { .. }
            | Command::PurgeApplication { .. } => None,
            Command::CreateMessage {
                application_id,
                chat_number,
                number,
                ..
            }
            | Command::EditMessage {
                application_id,
                chat_number,
                number,
                ..
            }
            | Command::DeleteMessage {
                application_id,
                chat_number,
                number,
                ..
            } => Some((*application_id, *chat_number, *number)),
        }
    }

    fn body_mut(&mut self) -> Option<&mut String> {
        match self {
            Command::CreateMessage { body, .. } | Command::EditMessage { body, .. } => Some(body),
            _ => None,
        }
    }

    /// The command as JSON with an empty body, then a line break and the body's own bytes: a command
    /// is never larger than [`MAX_COMMAND_BYTES`], whatever characters its body holds (in JSON, some
    /// take six bytes each), so a byte budget divided by it bounds what a worker holds.
    pub fn encode(&self) -> Vec<u8> {
        let mut header = self.clone();
        let body = header.body_mut().map(std::mem::take);
        let mut encoded = serde_json::to_vec(&header).expect("commands always serialise");
        if let Some(body) = body {
            encoded.push(b'\n');
            encoded.extend_from_slice(body.as_bytes());
        }
        encoded
    }

    /// The application of an encoded command, read from its header alone; `None` when unreadable.
    pub fn application_of(payload: &[u8]) -> Option<AppId> {
        #[derive(Deserialize)]
        struct Header {
            application_id: AppId,
        }
        let header = payload.split(|b| *b == b'\n').next()?;
        serde_json::from_slice::<Header>(header)
            .ok()
            .map(|header| header.application_id)
    }

    /// Decodes and checks a command; a command that fails here can never be applied. A payload that
    /// is JSON alone is read too (commands queued by earlier versions): compact JSON has no raw line
    /// break, so the first one always ends the header.
    pub fn decode(payload: &[u8]) -> CoreResult<Command> {
        let undecodable =
            |e: &dyn std::fmt::Display| CoreError::Rejected(format!("undecodable command: {e}"));
        let (header, body) = match payload.iter().position(|b| *b == b'\n') {
            Some(split) => (&payload[..split], Some(&payload[split + 1..])),
            None => (payload, None),
        };
        let mut command: Command = serde_json::from_slice(header).map_err(|e| undecodable(&e))?;
        if let Some(body) = body {
            let body = std::str::from_utf8(body).map_err(|e| undecodable(&e))?;
            match command.body_mut() {
                Some(slot) if slot.is_empty() => body.clone_into(slot),
                _ => return Err(undecodable(&"a body where the command has none")),
            }
        }
        command.validate()?;
        Ok(command)
    }

    fn validate(&self) -> CoreResult<()> {
        let reject = |why: &str| Err(CoreError::Rejected(why.to_string()));
        let in_range = |n: u64| (1..=i64::MAX as u64).contains(&n);
        match self {
            Command::CreateChat {
                application_id,
                number,
                ..
            }
            | Command::DeleteChat {
                application_id,
                number,
                ..
            } => {
                if !in_range(*application_id) || !in_range(*number) {
                    return reject("number out of range");
                }
            }
            Command::PurgeApplication { application_id } => {
                if !in_range(*application_id) {
                    return reject("number out of range");
                }
            }
            Command::DeleteMessage {
                application_id,
                chat_number,
                number,
                ..
            } => {
                if !in_range(*application_id) || !in_range(*chat_number) || !in_range(*number) {
                    return reject("number out of range");
                }
            }
            Command::CreateMessage {
                application_id,
                chat_number,
                number,
                body,
                ..
            }
            | Command::EditMessage {
                application_id,
                chat_number,
                number,
                body,
                ..
            } => {
                if !in_range(*application_id) || !in_range(*chat_number) || !in_range(*number) {
                    return reject("number out of range");
                }
                if domain::validate_body(body).is_err() {
                    return reject("body empty or over the size limit");
                }
            }
        }
        if let Command::EditMessage { version, .. } | Command::DeleteMessage { version, .. } = self
            && (*version == 0 || *version > i64::MAX as u64)
        {
            return reject("edit version out of range");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> DateTime<Utc> {
        "2026-11-28T00:00:00Z".parse().unwrap()
    }

    #[test]
    fn commands_round_trip_through_their_encoding() {
        let command = Command::EditMessage {
            application_id: 3,
            chat_number: 2,
            chat_created_at: at(),
            number: 9,
            body: "héllo 😀".into(),
            version: 17,
            created_at: at(),
            at: at(),
        };
        assert_eq!(Command::decode(&command.encode()).unwrap(), command);
    }

    #[test]
    fn a_command_is_never_larger_than_its_bound_whatever_its_body_holds() {
        let largest = Command::EditMessage {
            application_id: i64::MAX as u64,
            chat_number: i64::MAX as u64,
            chat_created_at: at(),
            number: i64::MAX as u64,
            // Each of these is six bytes in JSON.
            body: "\u{1}".repeat(domain::BODY_MAX_BYTES),
            version: i64::MAX as u64,
            created_at: at(),
            at: at(),
        };
        let encoded = largest.encode();
        assert!(
            encoded.len() <= MAX_COMMAND_BYTES,
            "{} bytes",
            encoded.len()
        );
        assert_eq!(Command::decode(&encoded).unwrap(), largest);
    }

    #[test]
    fn commands_queued_as_json_alone_are_still_read() {
        let command = Command::CreateMessage {
            application_id: 3,
            chat_number: 2,
            chat_created_at: at(),
            number: 9,
            body: "line one\nline \"two\"".into(),
            at: at(),
        };
        let json = serde_json::to_vec(&command).unwrap();
        assert_eq!(Command::decode(&json).unwrap(), command);
    }

    #[test]
    fn garbage_and_invalid_commands_are_rejected_not_transient() {
        for payload in [
            &b"\xff\x00garbage"[..],
            br#"{"type":"create_chat"}"#,
            br#"{"type":"create_chat","application_id":1,"number":0,"at":"2026-11-28T00:00:00Z"}"#,
            b"{\"type\":\"create_chat\",\"application_id\":1,\"number\":1,\"at\":\"2026-11-28T00:00:00Z\"}\nbody",
        ] {
            let err = Command::decode(payload).unwrap_err();
            assert!(matches!(err, CoreError::Rejected(_)), "{err}");
            assert!(!err.is_transient());
        }
    }
}
