//! What the API's own tests share: a standalone server on port 0 with a fresh data directory. Each test
//! binary uses what it needs of it.
#![allow(dead_code)]

use chatsys_runtime::Running;
use chatsys_settings::{Cli, Command};
use clap::Parser;
use serde_json::Value;

/// A standalone server with its data directory (removed when dropped).
pub struct Server {
    pub running: Running,
    _data: tempfile::TempDir,
}

impl Server {
    pub fn base(&self) -> String {
        format!("http://{}", self.running.addr)
    }
}

/// A standalone server on port 0 with a fresh data directory, configured by its command-line flags.
pub async fn start(flags: &[&str]) -> Server {
    let data = tempfile::tempdir().unwrap();
    let mut args = vec![
        "chatsys-api",
        "standalone",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.path().to_str().unwrap(),
    ];
    args.extend_from_slice(flags);
    let Some(Command::Standalone(args)) = Cli::try_parse_from(args).unwrap().command else {
        unreachable!("a standalone command line");
    };
    let running = chatsys_api::start_standalone(&args).await.unwrap();
    Server {
        running,
        _data: data,
    }
}

/// POSTs a JSON body and reads the answer's JSON.
pub async fn post_json(client: &reqwest::Client, url: String, body: &Value) -> Value {
    client
        .post(url)
        .json(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Creates an application and returns its token.
pub async fn create_token(client: &reqwest::Client, base: &str, name: &str) -> String {
    let created = post_json(
        client,
        format!("{base}/applications"),
        &serde_json::json!({ "name": name }),
    )
    .await;
    created["token"].as_str().unwrap().to_owned()
}
