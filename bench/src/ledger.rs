//! What the API acknowledged, and the check that MySQL holds exactly that.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use sqlx::MySqlPool;

/// A message that got a 201.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckedMessage {
    pub token: Arc<str>,
    pub chat: u64,
    pub number: u64,
    pub body: String,
}

/// Every chat and message creation that got a 201.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    pub chats: Vec<(Arc<str>, u64)>,
    pub messages: Vec<AckedMessage>,
}

/// The rows that matter, read from MySQL.
#[derive(Debug, Default)]
pub struct Stored {
    /// (token, chat, number) to body.
    pub messages: HashMap<(String, u64, u64), String>,
    pub chats: HashSet<(String, u64)>,
    /// Counts that differ from the rows, already described.
    pub count_drift: Vec<String>,
}

pub async fn read_stored(pool: &MySqlPool) -> anyhow::Result<Stored> {
    let messages: Vec<(String, i64, i64, String)> = sqlx::query_as(
        "SELECT a.token, CAST(m.chat_number AS SIGNED), CAST(m.number AS SIGNED), m.body \
         FROM messages m JOIN applications a ON a.id = m.application_id",
    )
    .fetch_all(pool)
    .await?;
    let chats: Vec<(String, i64)> =
        sqlx::query_as("SELECT a.token, CAST(c.number AS SIGNED) FROM chats c JOIN applications a ON a.id = c.application_id")
            .fetch_all(pool)
            .await?;
    let chat_drift: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT token, number, counted, actual FROM ( \
           SELECT a.token, CAST(c.number AS SIGNED) AS number, CAST(c.messages_count AS SIGNED) AS counted, \
           (SELECT COUNT(*) FROM messages m \
            WHERE m.application_id = c.application_id AND m.chat_number = c.number) AS actual \
           FROM chats c JOIN applications a ON a.id = c.application_id) t \
         WHERE counted <> actual",
    )
    .fetch_all(pool)
    .await?;
    let application_drift: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT token, counted, actual FROM ( \
           SELECT a.token, CAST(a.chats_count AS SIGNED) AS counted, \
           (SELECT COUNT(*) FROM chats c WHERE c.application_id = a.id) AS actual \
           FROM applications a) t \
         WHERE counted <> actual",
    )
    .fetch_all(pool)
    .await?;
    let mut count_drift: Vec<String> = chat_drift
        .into_iter()
        .map(|(token, chat, counted, actual)| {
            format!("chat {chat} of {token}: messages_count {counted}, {actual} messages stored")
        })
        .collect();
    count_drift.extend(
        application_drift
            .into_iter()
            .map(|(token, counted, actual)| {
                format!("application {token}: chats_count {counted}, {actual} chats stored")
            }),
    );
    Ok(Stored {
        messages: messages
            .into_iter()
            .map(|(token, chat, number, body)| ((token, chat as u64, number as u64), body))
            .collect(),
        chats: chats
            .into_iter()
            .map(|(token, number)| (token, number as u64))
            .collect(),
        count_drift,
    })
}

/// Everything wrong between what was acknowledged and what is stored; empty when they agree.
pub fn check(ledger: &Ledger, stored: &Stored) -> Vec<String> {
    let mut problems = Vec::new();
    let mut chats_seen = HashSet::new();
    for (token, number) in &ledger.chats {
        if !chats_seen.insert((token.clone(), *number)) {
            problems.push(format!(
                "chat number {number} of {token} was given to two creations"
            ));
        }
        if !stored.chats.contains(&(token.to_string(), *number)) {
            problems.push(format!(
                "chat {number} of {token} got a 201 but is not stored"
            ));
        }
    }
    let mut messages_seen = HashSet::new();
    for message in &ledger.messages {
        let key = (message.token.to_string(), message.chat, message.number);
        let place = format!(
            "message {} of chat {} of {}",
            message.number, message.chat, message.token
        );
        if !messages_seen.insert(key.clone()) {
            problems.push(format!("{place} was given to two creations"));
        }
        match stored.messages.get(&key) {
            None => problems.push(format!("{place} got a 201 but is not stored")),
            Some(body) if *body != message.body => problems.push(format!(
                "{place} is stored with body {body:?}, acknowledged with {:?}",
                message.body
            )),
            Some(_) => {}
        }
    }
    problems.extend(stored.count_drift.iter().cloned());
    problems
}

/// Stored messages of the ledger's chats that no 201 acknowledged: with every create retried under
/// its idempotency key until answered, each is a message created twice.
pub fn unacknowledged_messages(ledger: &Ledger, stored: &Stored) -> Vec<String> {
    let acknowledged: HashSet<(String, u64, u64)> = ledger
        .messages
        .iter()
        .map(|m| (m.token.to_string(), m.chat, m.number))
        .collect();
    let chats: HashSet<(String, u64)> = ledger
        .chats
        .iter()
        .map(|(token, chat)| (token.to_string(), *chat))
        .collect();
    let mut extra: Vec<String> = stored
        .messages
        .keys()
        .filter(|(token, chat, _)| chats.contains(&(token.clone(), *chat)))
        .filter(|key| !acknowledged.contains(*key))
        .map(|(token, chat, number)| {
            format!(
                "message {number} of chat {chat} of {token} is stored but was never acknowledged"
            )
        })
        .collect();
    extra.sort();
    extra
}

/// The first `limit` problems, and how many more there were.
pub fn summarize(problems: &[String], limit: usize) -> String {
    let mut lines: Vec<String> = problems.iter().take(limit).cloned().collect();
    if problems.len() > limit {
        lines.push(format!("… and {} more", problems.len() - limit));
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acked(chat: u64, number: u64, body: &str) -> AckedMessage {
        AckedMessage {
            token: Arc::from("t"),
            chat,
            number,
            body: body.to_owned(),
        }
    }

    fn stored(messages: &[(u64, u64, &str)]) -> Stored {
        Stored {
            messages: messages
                .iter()
                .map(|&(chat, number, body)| (("t".to_owned(), chat, number), body.to_owned()))
                .collect(),
            chats: [("t".to_owned(), 1)].into_iter().collect(),
            count_drift: Vec::new(),
        }
    }

    #[test]
    fn agreeing_ledger_and_rows_have_no_problems() {
        let ledger = Ledger {
            chats: vec![(Arc::from("t"), 1)],
            messages: vec![acked(1, 1, "a"), acked(1, 2, "b")],
        };
        assert!(
            check(
                &ledger,
                &stored(&[
                    (1, 1, "a"),
                    (1, 2, "b"),
                    (1, 3, "unacknowledged but stored")
                ])
            )
            .is_empty()
        );
    }

    #[test]
    fn a_number_given_twice_is_caught_by_the_body_of_the_second() {
        let ledger = Ledger {
            chats: vec![],
            messages: vec![acked(1, 1, "first"), acked(1, 1, "second")],
        };
        let problems = check(&ledger, &stored(&[(1, 1, "first")]));
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems
                .iter()
                .any(|problem| problem.contains("two creations"))
        );
        assert!(
            problems
                .iter()
                .any(|problem| problem.contains("\"second\""))
        );
    }

    #[test]
    fn a_lost_message_and_a_lost_chat_are_reported() {
        let ledger = Ledger {
            chats: vec![(Arc::from("t"), 2)],
            messages: vec![acked(1, 5, "x")],
        };
        let problems = check(&ledger, &stored(&[]));
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn count_drift_is_a_problem() {
        let mut rows = stored(&[]);
        rows.count_drift
            .push("chat 1 of t: messages_count 2, 1 messages stored".to_owned());
        assert_eq!(check(&Ledger::default(), &rows).len(), 1);
    }
}
