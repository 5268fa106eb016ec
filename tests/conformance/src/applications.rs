//! `POST /applications`, `GET /applications`, `GET|PUT /applications/{token}`.

use std::collections::HashSet;

use futures::future::join_all;
use reqwest::Method;
use reqwest::header::AUTHORIZATION;
use serde_json::{Value, json};

use crate::checks::{assert_application, assert_location, timestamp, walk};
use crate::target::{Target, application_path, token_of, unique};

pub async fn create_returns_201_with_the_application(target: &Target) {
    let name = unique("created");
    let reply = target.post("/applications", &json!({ "name": name })).await;
    reply.expect_status(201);
    let application = reply.json();
    assert_application(&application);
    assert_eq!(application["name"], name.as_str(), "{}", reply.describe());
    assert_eq!(application["chats_count"], 0, "{}", reply.describe());
    assert_location(&reply, &application_path(&token_of(&application)));
    let content_type = reply.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/json"),
        "{}",
        reply.describe()
    );
}

pub async fn tokens_are_distinct(target: &Target) {
    const APPLICATIONS: usize = 20;
    let applications = join_all((0..APPLICATIONS).map(|_| target.create_application())).await;
    let tokens: HashSet<String> = applications.iter().map(token_of).collect();
    assert_eq!(tokens.len(), APPLICATIONS, "tokens repeat: {tokens:?}");
    for application in &applications {
        assert_application(application);
    }
}

pub async fn get_returns_the_application(target: &Target) {
    let created = target.create_application().await;
    let reply = target.get(&application_path(&token_of(&created))).await;
    reply.expect_status(200);
    let read = reply.json();
    assert_application(&read);
    assert_eq!(read, created, "GET differs from the 201 body");
}

pub async fn rename_returns_200_and_is_read_back(target: &Target) {
    let created = target.create_application().await;
    let path = application_path(&token_of(&created));
    let new_name = unique("renamed");
    let reply = target.put(&path, &json!({ "name": new_name })).await;
    reply.expect_status(200);
    let renamed = reply.json();
    assert_application(&renamed);
    assert_eq!(renamed["name"], new_name.as_str(), "{}", reply.describe());
    assert_eq!(renamed["token"], created["token"], "{}", reply.describe());
    assert_eq!(
        renamed["created_at"],
        created["created_at"],
        "{}",
        reply.describe()
    );
    assert!(
        timestamp(&renamed, "updated_at") >= timestamp(&created, "updated_at"),
        "updated_at went back: {}",
        reply.describe()
    );
    let read = target.get(&path).await;
    read.expect_status(200);
    assert_eq!(
        read.json(),
        renamed,
        "GET after the PUT differs: {}",
        read.describe()
    );
}

/// 1 to 255 Unicode scalar values, whatever their UTF-8 length; SQL-looking names are just names.
pub async fn valid_names_are_stored_verbatim(target: &Target) {
    let names = [
        "a".to_owned(),
        "é".repeat(255),
        "😀".repeat(255),
        "𝔘".repeat(255),
        "Robert'); DROP TABLE applications;--".to_owned(),
        "\" OR 1=1 -- %_ \\ \n\t<script>".to_owned(),
        "  padded  ".to_owned(),
    ];
    for name in &names {
        let reply = target.post("/applications", &json!({ "name": name })).await;
        reply.expect_status(201);
        assert_eq!(reply.json()["name"], name.as_str(), "{}", reply.describe());
        let path = application_path(&token_of(&reply.json()));
        let read = target.get(&path).await;
        read.expect_status(200);
        assert_eq!(read.json()["name"], name.as_str(), "{}", read.describe());
        let renamed = target.put(&path, &json!({ "name": name })).await;
        renamed.expect_status(200);
        assert_eq!(
            renamed.json()["name"],
            name.as_str(),
            "{}",
            renamed.describe()
        );
    }
}

fn invalid_name_bodies() -> Vec<Value> {
    vec![
        json!({ "name": "" }),
        json!({ "name": " " }),
        json!({ "name": "\t\n  " }),
        json!({ "name": "\u{3000}\u{a0}" }),
        json!({ "name": "a".repeat(256) }),
        json!({ "name": "😀".repeat(256) }),
        json!({ "name": null }),
        json!({ "name": 42 }),
        json!({ "name": true }),
        json!({ "name": ["x"] }),
        json!({ "name": { "first": "x" } }),
        json!({}),
        json!({ "title": "x" }),
    ]
}

fn wrong_shape_bodies() -> Vec<Value> {
    vec![
        json!([]),
        json!(["name"]),
        json!("name"),
        json!(42),
        json!(null),
        json!(true),
    ]
}

pub async fn invalid_names_are_422(target: &Target) {
    let path = application_path(&target.create_token().await);
    for body in invalid_name_bodies() {
        for (method, path) in [
            (Method::POST, "/applications"),
            (Method::PUT, path.as_str()),
        ] {
            let reply = target.send_json(method, path, &body).await;
            reply.expect_error(422, "invalid_field");
            assert!(
                reply.error_message().contains("name"),
                "the message does not name the field: {}",
                reply.describe()
            );
        }
    }
    for body in wrong_shape_bodies() {
        for (method, path) in [
            (Method::POST, "/applications"),
            (Method::PUT, path.as_str()),
        ] {
            target
                .send_json(method, path, &body)
                .await
                .expect_error(422, "invalid_field");
        }
    }
}

pub async fn unknown_tokens_are_404(target: &Target) {
    let unknown = application_path(&"A".repeat(32));
    target.get(&unknown).await.expect_error(404, "not_found");
    target
        .put(&unknown, &json!({ "name": "x" }))
        .await
        .expect_error(404, "not_found");
}

pub async fn listing_requires_the_admin_key(target: &Target) {
    let Some(key) = &target.admin_key else {
        // A system without an admin key lists nothing to anyone, and says how to enable listing.
        let reply = target.get("/applications").await;
        reply.expect_error(403, "forbidden");
        assert!(
            reply.error_message().contains("chatsys_admin_key"),
            "{}",
            reply.describe()
        );
        return;
    };
    target
        .get("/applications")
        .await
        .expect_error(401, "unauthorized");
    for wrong in [
        format!("Bearer {key}x"),
        "Bearer ".to_owned(),
        "Bearer wrong".to_owned(),
        format!("Basic {key}"),
        key.clone(),
    ] {
        let request = target
            .request(Method::GET, "/applications")
            .header(AUTHORIZATION, wrong);
        target.send(request).await.expect_error(401, "unauthorized");
    }
    target
        .get_as_admin("/applications")
        .await
        .expect_status(200)
        .items();
}

/// Applications are listed in creation order; `after=<token>` continues after that application.
pub async fn list_is_in_creation_order_and_paginated(target: &Target) {
    let mut tokens = Vec::new();
    for _ in 0..3 {
        tokens.push(target.create_token().await);
    }
    let listed = walk(
        target,
        &format!("/applications?after={}&limit=5", tokens[0]),
        5,
    )
    .await;
    for application in &listed {
        assert_application(application);
    }
    let listed_tokens: Vec<String> = listed.iter().map(token_of).collect();
    let distinct: HashSet<&String> = listed_tokens.iter().collect();
    assert_eq!(
        distinct.len(),
        listed_tokens.len(),
        "an application listed twice: {listed_tokens:?}"
    );
    assert!(
        !listed_tokens.contains(&tokens[0]),
        "after=<token> includes that application"
    );
    let position = |token: &String| listed_tokens.iter().position(|listed| listed == token);
    let second =
        position(&tokens[1]).unwrap_or_else(|| panic!("{} missing after {}", tokens[1], tokens[0]));
    let third =
        position(&tokens[2]).unwrap_or_else(|| panic!("{} missing after {}", tokens[2], tokens[0]));
    assert!(
        second < third,
        "applications not in creation order: {listed_tokens:?}"
    );

    let first_page = target.get_as_admin("/applications?limit=1").await;
    first_page.expect_status(200);
    assert_eq!(first_page.items().len(), 1, "{}", first_page.describe());
    assert!(
        first_page.next_link().is_some(),
        "no next link while more applications exist: {}",
        first_page.describe()
    );
}
