//! Assertions on the shapes the contract promises, shared by the cases.

use std::collections::BTreeSet;

use chrono::{DateTime, FixedOffset};
use serde_json::Value;

use crate::target::{Reply, Target};

/// A walk through a paginated list never takes more pages than this.
const MAX_PAGES: usize = 200;

pub fn timestamp(item: &Value, field: &str) -> DateTime<FixedOffset> {
    let text = item[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} is not a string in {item}"));
    assert!(
        text.ends_with('Z'),
        "{field} is not UTC with a Z suffix: {text} in {item}"
    );
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|error| panic!("{field} is not RFC 3339 ({error}): {item}"))
}

/// `created_at` and `updated_at` are RFC 3339 UTC and an item is never updated before it was created.
pub fn assert_timestamps(item: &Value) {
    let created_at = timestamp(item, "created_at");
    let updated_at = timestamp(item, "updated_at");
    assert!(
        updated_at >= created_at,
        "updated_at before created_at in {item}"
    );
}

fn assert_fields(item: &Value, fields: &[&str]) {
    let object = item
        .as_object()
        .unwrap_or_else(|| panic!("not a JSON object: {item}"));
    let present: BTreeSet<&str> = object.keys().map(String::as_str).collect();
    let expected: BTreeSet<&str> = fields.iter().copied().collect();
    assert_eq!(present, expected, "fields of {item}");
}

pub fn assert_application(application: &Value) {
    assert_fields(
        application,
        &["token", "name", "chats_count", "created_at", "updated_at"],
    );
    let token = application["token"].as_str().expect("token is a string");
    assert!(
        token.chars().count() >= 22,
        "token shorter than 22 characters: {token}"
    );
    assert!(
        token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "token is not URL-safe: {token}"
    );
    assert!(
        application["name"].is_string(),
        "name is not a string: {application}"
    );
    assert!(
        application["chats_count"].is_u64(),
        "chats_count is not a count: {application}"
    );
    assert_timestamps(application);
}

pub fn assert_chat(chat: &Value) {
    assert_fields(
        chat,
        &[
            "number",
            "messages_count",
            "created_at",
            "updated_at",
            "last_event_id",
        ],
    );
    assert!(
        chat["number"].as_u64().is_some_and(|n| n >= 1),
        "number is not positive: {chat}"
    );
    assert!(
        chat["messages_count"].is_u64(),
        "messages_count is not a count: {chat}"
    );
    assert!(
        chat["last_event_id"].is_u64(),
        "last_event_id is not a change number: {chat}"
    );
    assert_timestamps(chat);
}

pub fn assert_message(message: &Value) {
    assert_fields(message, &["number", "body", "created_at", "updated_at"]);
    assert!(
        message["number"].as_u64().is_some_and(|n| n >= 1),
        "number is not positive: {message}"
    );
    assert!(
        message["body"].is_string(),
        "body is not a string: {message}"
    );
    assert_timestamps(message);
}

/// A message a search found: a message that names its chat.
pub fn assert_found_message(message: &Value) {
    assert_fields(
        message,
        &["chat_number", "number", "body", "created_at", "updated_at"],
    );
    assert!(
        message["chat_number"].as_u64().is_some_and(|n| n >= 1),
        "chat_number is not positive: {message}"
    );
    assert!(
        message["number"].as_u64().is_some_and(|n| n >= 1),
        "number is not positive: {message}"
    );
    assert_timestamps(message);
}

/// The Location header of a 201 names the created resource.
pub fn assert_location(reply: &Reply, expected: &str) {
    assert_eq!(
        reply.header("location"),
        Some(expected),
        "Location: {}",
        reply.describe()
    );
}

/// Follows `Link: rel="next"` from `first_path` to the last page and returns every item in order.
/// Every page but the last must be full (`limit` items) and the last one must have no Link.
pub async fn walk(target: &Target, first_path: &str, limit: usize) -> Vec<Value> {
    let mut items = Vec::new();
    let mut path = first_path.to_owned();
    for page_index in 0..MAX_PAGES {
        let reply = target.get_as_admin(&path).await;
        reply.expect_status(200);
        let page = reply.items();
        assert!(
            page.len() <= limit,
            "a page longer than its limit {limit}: {}",
            reply.describe()
        );
        assert!(
            page_index == 0 || !page.is_empty(),
            "a Link rel=\"next\" led to an empty page (the previous page was the last): {}",
            reply.describe()
        );
        items.extend(page.iter().cloned());
        match reply.next_link() {
            Some(next) => {
                assert_eq!(
                    page.len(),
                    limit,
                    "a page before the last is not full: {}",
                    reply.describe()
                );
                path = next;
            }
            None => return items,
        }
    }
    panic!("more than {MAX_PAGES} pages from {first_path}")
}
