//! Standalone mode killed with SIGKILL in the middle of a stream of writes: after a restart on the same
//! data directory, every message that got a 201 is there with its number and body, the counts are exact,
//! and numbering continues without reusing a number.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

struct Server {
    child: Child,
    base: String,
}

/// A server left running by a failed assertion is killed with the test.
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(data_dir: &std::path::Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatsys-api"))
        .args(["standalone", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chatsys-api standalone");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    for line in stdout.by_ref() {
        let line = line.expect("read the banner");
        if let Some(url) = line.strip_prefix("chatsys standalone listening on ") {
            // Keep reading what the server prints, as a terminal would.
            std::thread::spawn(move || stdout.for_each(drop));
            return Server {
                child,
                base: url.trim().to_string(),
            };
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the standalone server exited before printing where it listens");
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn json_of(response: reqwest::Response) -> Value {
    response.json().await.expect("a JSON body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_loses_no_acknowledged_message_and_reuses_no_number() {
    let data = tempfile::tempdir().unwrap();
    let http = client();
    let mut server = start(data.path());
    let app = json_of(
        http.post(format!("{}/applications", server.base))
            .json(&json!({"name": "crash"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let token = app["token"].as_str().unwrap().to_string();
    let chat_url = format!("{}/applications/{token}/chats", server.base);
    assert_eq!(http.post(&chat_url).send().await.unwrap().status(), 201);

    // Eight writers post as fast as they can; the process is killed while they do.
    let acknowledged: Arc<Mutex<BTreeMap<u64, String>>> = Arc::default();
    let mut writers = Vec::new();
    for writer in 0..8 {
        let (http, url, acknowledged) = (
            http.clone(),
            format!("{chat_url}/1/messages"),
            acknowledged.clone(),
        );
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let body = format!("writer {writer} message {i}");
                let Ok(response) = http.post(&url).json(&json!({"body": body})).send().await else {
                    return;
                };
                if response.status() != 201 {
                    return;
                }
                let Ok(created) = response.json::<Value>().await else {
                    return;
                };
                let number = created["number"].as_u64().unwrap();
                let previous = acknowledged.lock().unwrap().insert(number, body);
                assert!(previous.is_none(), "number {number} was handed out twice");
            }
        }));
    }
    let started = Instant::now();
    while acknowledged.lock().unwrap().len() < 200 && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.child.kill().expect("SIGKILL");
    server.child.wait().unwrap();
    for writer in writers {
        writer.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() >= 20,
        "only {} writes before the kill",
        acknowledged.len()
    );

    let server = start(data.path());
    let messages_url = format!("{}/applications/{token}/chats/1/messages", server.base);
    let deadline = Instant::now() + Duration::from_secs(30);
    let stored: BTreeMap<u64, String> = loop {
        let mut stored = BTreeMap::new();
        let mut after = 0;
        loop {
            let page = json_of(
                http.get(format!("{messages_url}?limit=1000&after={after}"))
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            let page = page.as_array().unwrap().clone();
            for m in &page {
                stored.insert(
                    m["number"].as_u64().unwrap(),
                    m["body"].as_str().unwrap().to_string(),
                );
            }
            match page.last() {
                Some(last) if page.len() == 1000 => after = last["number"].as_u64().unwrap(),
                _ => break,
            }
        }
        if acknowledged.keys().all(|n| stored.contains_key(n)) || Instant::now() > deadline {
            break stored;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for (number, body) in &acknowledged {
        assert_eq!(
            stored.get(number),
            Some(body),
            "message {number} was acknowledged and then lost"
        );
    }
    let chat = json_of(
        http.get(format!("{}/applications/{token}/chats/1", server.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        chat["messages_count"].as_u64().unwrap(),
        stored.len() as u64,
        "count matches the rows"
    );

    let next = json_of(
        http.post(&messages_url)
            .json(&json!({"body": "after the restart"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let max_before = *stored.keys().max().unwrap();
    assert!(
        next["number"].as_u64().unwrap() > max_before,
        "numbering continues above {max_before}: {next}"
    );
}
