//! `GET …/chats/{number}/messages/search?q=…` (and its alias `key`), and
//! `GET /applications/{token}/messages/search?q=…` across an application's chats.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::checks::{assert_found_message, walk};
use crate::target::{
    CATCH_UP, Target, encode, eventually, message_path, messages_path, search_path,
};

fn bodies(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .map(|message| message["body"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Polls a search until it finds exactly the `expected` bodies (in any order); returns the results in
/// the order the search gives them.
async fn search_eventually(target: &Target, path: &str, expected: &[&str]) -> Vec<Value> {
    let expected: BTreeSet<&str> = expected.iter().copied().collect();
    eventually(CATCH_UP, || async {
        let reply = target.get(path).await;
        reply.expect_status(200);
        let results = reply.items();
        for message in &results {
            assert_found_message(message);
        }
        assert!(
            matches!(reply.header("search-order"), Some("newest" | "relevance")),
            "Search-Order: {}",
            reply.describe()
        );
        let found = bodies(&results);
        if found.iter().map(String::as_str).collect::<BTreeSet<_>>() == expected
            && found.len() == expected.len()
        {
            Ok(results)
        } else {
            Err(format!("{path} found {found:?}, want {expected:?}"))
        }
    })
    .await
}

async fn chat_with(target: &Target, token: &str, bodies: &[&str]) -> u64 {
    let chat = target.create_chat(token).await;
    for body in bodies {
        target.create_message(token, chat, body).await;
    }
    chat
}

/// Matching ignores case and finds the query anywhere in a body, inside words too.
pub async fn partial_match_ignores_case(target: &Target) {
    let token = target.create_token().await;
    let chat = chat_with(
        target,
        &token,
        &[
            "Hello Rustaceans",
            "the RUSTACEAN meetup",
            "python snakes",
            "mid-word: trustacean?",
        ],
    )
    .await;
    let all_three = [
        "Hello Rustaceans",
        "the RUSTACEAN meetup",
        "mid-word: trustacean?",
    ];
    search_eventually(target, &search_path(&token, chat, "ustac"), &all_three).await;
    search_eventually(target, &search_path(&token, chat, "RUSTAC"), &all_three).await;
    search_eventually(
        target,
        &search_path(&token, chat, "rUsTaCeAnS"),
        &["Hello Rustaceans"],
    )
    .await;
    search_eventually(
        target,
        &search_path(&token, chat, "hello rust"),
        &["Hello Rustaceans"],
    )
    .await;
    search_eventually(
        target,
        &search_path(&token, chat, "nakes"),
        &["python snakes"],
    )
    .await;
    search_eventually(target, &search_path(&token, chat, "cobol"), &[]).await;
}

/// Queries of one and two characters match too.
pub async fn short_queries_match(target: &Target) {
    let token = target.create_token().await;
    let chat = chat_with(target, &token, &["xq", "Qi", "ab", "zz", "a"]).await;
    search_eventually(target, &search_path(&token, chat, "q"), &["xq", "Qi"]).await;
    search_eventually(target, &search_path(&token, chat, "Z"), &["zz"]).await;
    search_eventually(target, &search_path(&token, chat, "a"), &["ab", "a"]).await;
    search_eventually(target, &search_path(&token, chat, "xq"), &["xq"]).await;
    search_eventually(target, &search_path(&token, chat, "AB"), &["ab"]).await;
}

/// A chat's search never returns another chat's or another application's messages.
pub async fn search_is_scoped_to_the_chat(target: &Target) {
    let token = target.create_token().await;
    let other_token = target.create_token().await;
    let chat = chat_with(target, &token, &["needle in chat one", "hay"]).await;
    let sibling = chat_with(target, &token, &["needle in chat two"]).await;
    let stranger = chat_with(target, &other_token, &["needle in another application"]).await;
    assert_eq!(chat, 1);
    assert_eq!(
        stranger, 1,
        "the other application's chat has the same number"
    );
    // Each chat finds its own first, so the scoping below is checked against indexed messages.
    search_eventually(
        target,
        &search_path(&token, sibling, "needle"),
        &["needle in chat two"],
    )
    .await;
    search_eventually(
        target,
        &search_path(&other_token, stranger, "needle"),
        &["needle in another application"],
    )
    .await;
    search_eventually(
        target,
        &search_path(&token, chat, "needle"),
        &["needle in chat one"],
    )
    .await;
    search_eventually(
        target,
        &search_path(&token, chat, "another application"),
        &[],
    )
    .await;
}

/// Matches come newest first, as chats show them, whatever how often a body names the query; with
/// `order=relevance` the body where the query weighs most comes first. The answer names its order.
pub async fn matches_come_newest_first_or_by_relevance(target: &Target) {
    let long_body = "a long message about many other things, boats and trains and weather and lunch, \
                     which mentions ferris only once somewhere in the middle of all this text";
    let token = target.create_token().await;
    let chat = chat_with(
        target,
        &token,
        &[long_body, "unrelated", "ferris ferris ferris"],
    )
    .await;
    let found = search_eventually(
        target,
        &search_path(&token, chat, "ferris"),
        &[long_body, "ferris ferris ferris"],
    )
    .await;
    assert_eq!(bodies(&found), ["ferris ferris ferris", long_body]);
    let numbers: Vec<u64> = found.iter().filter_map(|m| m["number"].as_u64()).collect();
    assert_eq!(numbers, [3, 1]);
    let newest = target.get(&search_path(&token, chat, "ferris")).await;
    assert_eq!(newest.header("search-order"), Some("newest"));
    let path = format!("{}&order=relevance", search_path(&token, chat, "ferris"));
    let ranked = target.get(&path).await;
    ranked.expect_status(200);
    assert_eq!(ranked.header("search-order"), Some("relevance"));
    assert_eq!(
        bodies(&ranked.items()),
        ["ferris ferris ferris", long_body],
        "{}",
        ranked.describe()
    );
    let walked = walk(target, &format!("{path}&limit=1"), 1).await;
    assert_eq!(
        walked,
        ranked.items(),
        "relevance pages walk the same order"
    );
    target
        .get(&format!(
            "{}&order=oldest",
            search_path(&token, chat, "ferris")
        ))
        .await
        .expect_error(400, "invalid_query");
}

pub async fn key_is_an_alias_of_q(target: &Target) {
    let token = target.create_token().await;
    let chat = chat_with(target, &token, &["alias target", "other"]).await;
    let by_q = search_eventually(
        target,
        &search_path(&token, chat, "alias"),
        &["alias target"],
    )
    .await;
    let by_key = format!("{}/search?key=alias", messages_path(&token, chat));
    assert_eq!(
        search_eventually(target, &by_key, &["alias target"]).await,
        by_q
    );
}

/// Results are paginated by `limit` and the `after` cursor `Link` gives; a cursor this search did not
/// give is 400.
pub async fn results_are_paginated(target: &Target) {
    let token = target.create_token().await;
    let chat = chat_with(
        target,
        &token,
        &[
            "page",
            "page page",
            "no match here",
            "a page among other words",
            "pages",
            "page page page",
            "nothing",
            "paged out",
        ],
    )
    .await;
    let matching = [
        "page",
        "page page",
        "a page among other words",
        "pages",
        "page page page",
        "paged out",
    ];
    let path = search_path(&token, chat, "page");
    let ranked = search_eventually(target, &format!("{path}&limit=1000"), &matching).await;
    let newest_first: Vec<&str> = matching.iter().rev().copied().collect();
    assert_eq!(bodies(&ranked), newest_first, "newest first");
    target
        .get(&format!("{path}&after=1.2.3"))
        .await
        .expect_error(400, "invalid_query");
    let walked = walk(target, &format!("{path}&limit=2"), 2).await;
    assert_eq!(walked, ranked, "pages of 2 differ from the whole ranking");
    let first_page = target.get(&format!("{path}&limit=4")).await;
    first_page.expect_status(200);
    assert_eq!(first_page.items(), ranked[..4], "{}", first_page.describe());
    let after = ranked[3]["number"].as_u64().expect("a number");
    let rest = target.get(&format!("{path}&limit=4&after={after}")).await;
    rest.expect_status(200);
    assert_eq!(rest.items(), ranked[4..], "{}", rest.describe());
    assert!(
        rest.next_link().is_none(),
        "a next link on the last page: {}",
        rest.describe()
    );
}

/// Bodies and queries from every Unicode plane; case folding beyond ASCII.
pub async fn unicode_queries_match(target: &Target) {
    let token = target.create_token().await;
    let chat = chat_with(
        target,
        &token,
        &[
            "こんにちは日本語の世界",
            "smile 😀 please",
            "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math letters",
            "Straße ÜBER alles",
            "plain ascii",
        ],
    )
    .await;
    search_eventually(
        target,
        &search_path(&token, chat, "日本語"),
        &["こんにちは日本語の世界"],
    )
    .await;
    search_eventually(
        target,
        &search_path(&token, chat, "😀"),
        &["smile 😀 please"],
    )
    .await;
    search_eventually(
        target,
        &search_path(&token, chat, "𝔘𝔫𝔦"),
        &["𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math letters"],
    )
    .await;
    search_eventually(
        target,
        &search_path(&token, chat, "über"),
        &["Straße ÜBER alles"],
    )
    .await;
    search_eventually(
        target,
        &search_path(&token, chat, "straße"),
        &["Straße ÜBER alles"],
    )
    .await;
}

/// Characters meaningful to SQL (`'`, `%`, `_`) or to a query language (`*`) are never wildcards: a
/// result always contains the query.
pub async fn queries_are_literal(target: &Target) {
    let token = target.create_token().await;
    let injected = "it's ' OR '1'='1 -- really";
    let chat = chat_with(
        target,
        &token,
        &[injected, "100% sure", "snake_case", "nothing special"],
    )
    .await;
    search_eventually(
        target,
        &search_path(&token, chat, "' OR '1'='1"),
        &[injected],
    )
    .await;
    search_eventually(
        target,
        &search_path(&token, chat, "special"),
        &["nothing special"],
    )
    .await;
    search_eventually(target, &search_path(&token, chat, "sure"), &["100% sure"]).await;
    search_eventually(target, &search_path(&token, chat, "snake"), &["snake_case"]).await;
    for (query, only_possible) in [
        ("%", Some("100% sure")),
        ("_", Some("snake_case")),
        ("*", None),
        ("%_%", None),
    ] {
        let reply = target.get(&search_path(&token, chat, query)).await;
        reply.expect_status(200);
        let found = bodies(&reply.items());
        assert!(
            found
                .iter()
                .all(|body| Some(body.as_str()) == only_possible),
            "{query:?} matched bodies without it: {found:?}"
        );
    }
}

/// After an edit the new body is found and the old one is not.
pub async fn search_follows_edits(target: &Target) {
    let token = target.create_token().await;
    let chat = chat_with(target, &token, &["draft with walrus"]).await;
    search_eventually(
        target,
        &search_path(&token, chat, "walrus"),
        &["draft with walrus"],
    )
    .await;
    let edited = target
        .put(
            &message_path(&token, chat, 1),
            &json!({ "body": "final with pelican" }),
        )
        .await;
    edited.expect_status(200);
    search_eventually(
        target,
        &search_path(&token, chat, "pelican"),
        &["final with pelican"],
    )
    .await;
    search_eventually(target, &search_path(&token, chat, "walrus"), &[]).await;
}

/// A page's cursor is the number of its last message, so the walk goes on when that message is edited
/// and matches no more.
pub async fn a_walk_survives_an_edit_of_a_pages_last_message(target: &Target) {
    let token = target.create_token().await;
    let chat = chat_with(target, &token, &["otter one", "otter two", "otter three"]).await;
    let path = search_path(&token, chat, "otter");
    search_eventually(target, &path, &["otter one", "otter two", "otter three"]).await;
    let first = target.get(&format!("{path}&limit=1")).await;
    first.expect_status(200);
    assert_eq!(bodies(&first.items()), ["otter three"]);
    let next = first.next_link().expect("a next page");
    target
        .put(
            &message_path(&token, chat, 3),
            &json!({ "body": "edited away" }),
        )
        .await
        .expect_status(200);
    search_eventually(target, &path, &["otter one", "otter two"]).await;
    let rest = target.get(&next).await;
    rest.expect_status(200);
    assert_eq!(bodies(&rest.items()), ["otter two"], "{}", rest.describe());
}

pub async fn an_empty_query_is_400(target: &Target) {
    let token = target.create_token().await;
    let chat = chat_with(target, &token, &["something"]).await;
    let base = format!("{}/search", messages_path(&token, chat));
    for query in [
        "",
        "?q=",
        "?key=",
        "?q",
        "?limit=10",
        "?after=1",
        "?q=%22%22",
        "?q=%20%20",
    ] {
        target
            .get(&format!("{base}{query}"))
            .await
            .expect_error(400, "invalid_query");
    }
    target.get(&format!("{base}?q=x")).await.expect_status(200);
}

/// Every word must be found (each still a part of a word), and a quoted phrase is found as written, in
/// its order.
pub async fn every_word_must_match_and_phrases_keep_their_order(target: &Target) {
    let token = target.create_token().await;
    let chat = chat_with(
        target,
        &token,
        &[
            "the message race was close",
            "a race, then a message",
            "message only",
            "race only",
        ],
    )
    .await;
    search_eventually(
        target,
        &search_path(&token, chat, "message race"),
        &["the message race was close", "a race, then a message"],
    )
    .await;
    search_eventually(
        target,
        &search_path(&token, chat, "ssag  RAC"),
        &["the message race was close", "a race, then a message"],
    )
    .await;
    search_eventually(
        target,
        &search_path(&token, chat, "\"message race\""),
        &["the message race was close"],
    )
    .await;
    search_eventually(target, &search_path(&token, chat, "\"race message\""), &[]).await;
    search_eventually(target, &search_path(&token, chat, "message lost"), &[]).await;
}

/// Text is compared after Unicode normalisation and full case folding: an accent written as one
/// character or as a letter and a combining mark is the same, and `İ`, `ß` fold as they should.
pub async fn normalisation_and_case_folding(target: &Target) {
    let token = target.create_token().await;
    let chat = chat_with(
        target,
        &token,
        &[
            "un caf\u{e9} composed",
            "un cafe\u{301} decomposed",
            "MEET IN \u{130}STANBUL",
            "STRASSE",
            "plain cafe",
        ],
    )
    .await;
    let both = ["un caf\u{e9} composed", "un cafe\u{301} decomposed"];
    search_eventually(target, &search_path(&token, chat, "caf\u{e9}"), &both).await;
    search_eventually(target, &search_path(&token, chat, "CAFE\u{301}"), &both).await;
    search_eventually(
        target,
        &search_path(&token, chat, "istanbul"),
        &["MEET IN \u{130}STANBUL"],
    )
    .await;
    search_eventually(
        target,
        &search_path(&token, chat, "stra\u{df}e"),
        &["STRASSE"],
    )
    .await;
}

/// One search across every chat of the application, each hit naming its chat, newest first through
/// chats; another application's messages never come.
pub async fn an_application_wide_search_names_each_chat(target: &Target) {
    let token = target.create_token().await;
    let other = target.create_token().await;
    let first = chat_with(target, &token, &["kestrel one", "nothing"]).await;
    let second = chat_with(target, &token, &["kestrel two", "kestrel three"]).await;
    chat_with(target, &other, &["kestrel elsewhere"]).await;
    let path = format!(
        "/applications/{token}/messages/search?q={}",
        encode("KESTREL")
    );
    let found = search_eventually(
        target,
        &path,
        &["kestrel one", "kestrel two", "kestrel three"],
    )
    .await;
    let places: Vec<(u64, u64)> = found
        .iter()
        .map(|m| {
            (
                m["chat_number"].as_u64().unwrap(),
                m["number"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        places,
        [(second, 2), (second, 1), (first, 1)],
        "newest first across chats"
    );
    let walked = walk(target, &format!("{path}&limit=1"), 1).await;
    assert_eq!(walked, found, "pages of one walk the same order");
    let per_chat = target.get(&search_path(&token, second, "kestrel")).await;
    per_chat.expect_status(200);
    assert!(
        per_chat
            .items()
            .iter()
            .all(|m| m["chat_number"].as_u64() == Some(second)),
        "{}",
        per_chat.describe()
    );
    target
        .get(&format!(
            "/applications/{token}/messages/search?q=x&after=7"
        ))
        .await
        .expect_error(400, "invalid_query");
}
