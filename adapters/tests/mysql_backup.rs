//! The operator's backup and restore scripts (`operator/scripts/*.sh`), run as their containers run
//! them (`sh <script>` with the environment), against the real MariaDB, whose `mysqldump` and `mysql`
//! stand in for the MySQL image's. The S3 scripts go to a local S3 server (moto's, from
//! `.ci/tools.sh`). Each test drops the databases it made, passed or failed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use chatsys_adapters::mysql::MySqlStore;
use chatsys_core::command::Command as StoreCommand;
use chatsys_core::domain::{Application, Chat, Message, Page};
use chatsys_core::ports::Store;
use chrono::{SubsecRound, Utc};
use sqlx::Connection;

// Only databases are made here; the rest of the scratch crate goes unused.
#[allow(dead_code)]
use chatsys_scratch as scratch;
use scratch::Scratch;

use scratch::{mysql_admin as admin, mysql_server as server};

/// A database name like the other suites' (`chatsys_t<seconds>_<random>`), which their sweep of
/// databases over an hour old removes if the process dies before the scratch can. Registered with
/// `scratch` first; not created (a restore creates its own).
fn database_name(scratch: &mut Scratch) -> String {
    let name = format!(
        "chatsys_t{}_{:08x}",
        Utc::now().timestamp(),
        rand::random::<u32>()
    );
    scratch.owns_database(&server(), &name);
    name
}

/// A migrated database, empty.
async fn migrated(scratch: &mut Scratch) -> (String, MySqlStore) {
    let name = database_name(scratch);
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE `{name}`")))
        .execute(&mut admin().await)
        .await
        .unwrap();
    let store = store(&name);
    store.migrate().await.unwrap();
    (name, store)
}

fn store(database: &str) -> MySqlStore {
    MySqlStore::connect(&format!("{}/{database}", server()), 2).unwrap()
}

/// A migrated database holding three applications of three chats of four messages each, written by
/// the store's own write path, with an edit, a deleted message and a deleted chat among them, and
/// bodies a dump must quote right.
async fn seeded(scratch: &mut Scratch) -> (String, MySqlStore) {
    let (name, store) = migrated(scratch).await;
    // MySQL keeps microseconds.
    let at = Utc::now().trunc_subsecs(6);
    for a in 1..=3 {
        let app = store
            .create_application(
                &chatsys_core::domain::generate_token(),
                &format!("app {a} «ü»"),
                at,
            )
            .await
            .unwrap()
            .id;
        let mut commands = Vec::new();
        for chat in 1..=3 {
            commands.push(StoreCommand::CreateChat {
                application_id: app,
                number: chat,
                at,
            });
            for number in 1..=4 {
                commands.push(StoreCommand::CreateMessage {
                    application_id: app,
                    chat_number: chat,
                    chat_created_at: at,
                    number,
                    body: format!(
                        "app {a} chat {chat} message {number}: it's \"quoted\"\\ \n 🦀 ;--"
                    ),
                    at,
                });
            }
        }
        store.apply(&commands).await.unwrap();
        let later = at + chrono::Duration::seconds(1);
        store
            .apply(&[
                StoreCommand::EditMessage {
                    application_id: app,
                    chat_number: 1,
                    chat_created_at: at,
                    number: 2,
                    body: "edited".into(),
                    version: 1,
                    created_at: at,
                    at: later,
                },
                StoreCommand::DeleteMessage {
                    application_id: app,
                    chat_number: 1,
                    chat_created_at: at,
                    number: 3,
                    version: 2,
                    created_at: at,
                    at: later,
                },
                StoreCommand::DeleteChat {
                    application_id: app,
                    number: 3,
                    created_at: at,
                    at: later,
                },
            ])
            .await
            .unwrap();
    }
    (name, store)
}

/// Every application, with every chat and its messages (tombstones included), as the store reads them.
async fn everything(store: &MySqlStore) -> Vec<(Application, Vec<(Chat, Vec<Message>)>)> {
    let mut all = Vec::new();
    for application in store.list_applications(None, 1000).await.unwrap() {
        let mut chats = Vec::new();
        for chat in store
            .list_chats(application.id, Page::first(1000).scan())
            .await
            .unwrap()
        {
            let messages = store
                .list_messages(application.id, chat.number, Page::first(1000).scan())
                .await
                .unwrap()
                .messages;
            chats.push((chat, messages));
        }
        all.push((application, chats));
    }
    all
}

async fn tables(database: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT CAST(table_name AS CHAR) FROM information_schema.tables WHERE table_schema = ? \
         ORDER BY table_name",
    )
    .bind(database)
    .fetch_all(&mut admin().await)
    .await
    .unwrap()
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../operator/scripts")
        .join(name)
}

/// The MySQL client variables of the test server's URL (`mysql://user[:password]@host[:port]`).
fn mysql_env() -> Vec<(&'static str, String)> {
    let server = server();
    let rest = server.strip_prefix("mysql://").expect("a mysql:// URL");
    let (user_info, host_port) = rest.split_once('@').expect("a URL with a user");
    let (user, password) = user_info.split_once(':').unwrap_or((user_info, ""));
    let (host, port) = host_port.split_once(':').unwrap_or((host_port, "3306"));
    vec![
        ("MYSQL_HOST", host.into()),
        ("MYSQL_PORT", port.trim_end_matches('/').into()),
        ("MYSQL_USER", user.into()),
        ("MYSQL_PWD", password.into()),
    ]
}

/// Runs `sh <script>` with `env` (and the MySQL client variables), as its container does.
fn run(name: &str, env: &[(&str, &str)]) -> Output {
    let mut command = Command::new("sh");
    command.arg(script(name));
    for (key, value) in mysql_env() {
        command.env(key, value);
    }
    command.envs(env.iter().copied());
    let output = command.output().expect("sh runs");
    eprintln!(
        "{name}: {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn backup(dir: &Path, database: &str, name: &str, keep: u32) -> Output {
    run(
        "mysql-backup.sh",
        &[
            ("MYSQL_DATABASE", database),
            ("BACKUP_DIR", dir.to_str().unwrap()),
            ("BACKUP_NAME", name),
            ("BACKUP_KEEP", &keep.to_string()),
        ],
    )
}

fn restore(dir: &Path, database: &str, name: &str) -> Output {
    run(
        "mysql-restore.sh",
        &[
            ("MYSQL_DATABASE", database),
            ("BACKUP_DIR", dir.to_str().unwrap()),
            ("BACKUP_NAME", name),
        ],
    )
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The files of a backup directory, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn pairs(names: &[&str]) -> Vec<String> {
    names
        .iter()
        .flat_map(|name| [format!("{name}.sql.gz"), format!("{name}.sql.gz.sha256")])
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restored_into_a_fresh_database_holds_every_application_chat_and_message() {
    let mut scratch = Scratch::default();
    let (source, source_store) = seeded(&mut scratch).await;
    let before = everything(&source_store).await;
    assert_eq!(before.len(), 3);
    let dir = tempfile::tempdir().unwrap();

    let written = backup(dir.path(), &source, "chatsys-20250101T000000Z", 7);
    assert!(written.status.success());
    let stdout = String::from_utf8(written.stdout).unwrap();
    assert_eq!(
        stdout.trim(),
        format!(
            "mysql-backup: wrote {}/chatsys-20250101T000000Z.sql.gz",
            dir.path().display()
        ),
        "one line names the backup"
    );
    assert_eq!(files(dir.path()), pairs(&["chatsys-20250101T000000Z"]));

    let target = database_name(&mut scratch);
    assert!(
        restore(dir.path(), &target, "chatsys-20250101T000000Z")
            .status
            .success()
    );
    let after = everything(&store(&target)).await;
    assert_eq!(
        after, before,
        "every application, chat and message comes back as it was"
    );
    assert_eq!(
        tables(&target).await,
        tables(&source).await,
        "no marker left"
    );
    // The restored schema is the one the migrations wrote: a new release migrates it as usual.
    store(&target).migrate().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_or_incomplete_backup_is_refused_and_the_database_left_untouched() {
    let mut scratch = Scratch::default();
    let (source, _) = seeded(&mut scratch).await;
    let dir = tempfile::tempdir().unwrap();
    let name = "chatsys-20250101T000000Z";
    assert!(backup(dir.path(), &source, name, 7).status.success());
    let dump = dir.path().join(format!("{name}.sql.gz"));
    let checksum = dir.path().join(format!("{name}.sql.gz.sha256"));
    let good = std::fs::read(&dump).unwrap();

    // The target: migrated, empty, as an operator's migration Job leaves a new database.
    let (target, target_store) = migrated(&mut scratch).await;
    let target_tables = tables(&target).await;
    let refused = |output: Output, why: &str| {
        assert!(!output.status.success(), "{why}: restored");
        assert!(stderr(&output).contains(why), "{why}: {}", stderr(&output));
    };

    // One byte flipped in the middle of the dump.
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x01;
    std::fs::write(&dump, &flipped).unwrap();
    refused(
        restore(dir.path(), &target, name),
        "does not match its checksum",
    );

    // Cut short, with a checksum that matches what is left: gzip finds it incomplete.
    std::fs::write(&dump, &good[..good.len() - 64]).unwrap();
    let sum = Command::new("sha256sum")
        .arg(format!("{name}.sql.gz"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    std::fs::write(&checksum, sum.stdout).unwrap();
    refused(
        restore(dir.path(), &target, name),
        "is not a whole gzip file",
    );

    // No checksum: a backup never finished.
    std::fs::write(&dump, &good).unwrap();
    std::fs::remove_file(&checksum).unwrap();
    refused(restore(dir.path(), &target, name), "sha256 is missing");

    assert_eq!(tables(&target).await, target_tables, "no table made");
    assert!(everything(&target_store).await.is_empty(), "no row loaded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_beyond_the_number_kept_and_leftovers_of_failed_runs_are_removed() {
    let mut scratch = Scratch::default();
    let (source, _) = seeded(&mut scratch).await;
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (1..=5)
        .map(|n| format!("chatsys-2025010{n}T000000Z"))
        .collect();
    for (n, name) in names.iter().enumerate() {
        if n == 4 {
            // What runs that died leave: a temporary, and a dump whose checksum was never written.
            std::fs::write(dir.path().join("chatsys-x.sql.gz.partial"), "half").unwrap();
            std::fs::write(dir.path().join("chatsys-20240101T000000Z.sql.gz"), "half").unwrap();
        }
        assert!(backup(dir.path(), &source, name, 3).status.success());
    }
    assert_eq!(
        files(dir.path()),
        pairs(&[&names[2], &names[3], &names[4]]),
        "the newest 3 complete backups, nothing else"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_dump_fails_the_backup_and_writes_nothing() {
    let mut scratch = Scratch::default();
    let missing = database_name(&mut scratch);
    let dir = tempfile::tempdir().unwrap();
    let output = backup(dir.path(), &missing, "chatsys-20250101T000000Z", 3);
    assert!(!output.status.success(), "a backup of nothing succeeded");
    assert!(stderr(&output).contains("mysqldump failed"));
    assert!(files(dir.path()).is_empty(), "{:?}", files(dir.path()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_refuses_a_database_holding_data_unless_resuming_itself() {
    let mut scratch = Scratch::default();
    let (source, source_store) = seeded(&mut scratch).await;
    let before = everything(&source_store).await;
    let dir = tempfile::tempdir().unwrap();
    let name = "chatsys-20250101T000000Z";
    assert!(backup(dir.path(), &source, name, 7).status.success());

    // Over the live database itself.
    let output = restore(dir.path(), &source, name);
    assert!(!output.status.success(), "restored over live data");
    assert!(
        stderr(&output).contains("already holds chatsys data"),
        "{}",
        stderr(&output)
    );
    assert_eq!(everything(&source_store).await, before, "data untouched");

    // A restore that died halfway: its marker, and part of the dump (here a row the dump does not
    // hold). Run again, it resumes and ends with exactly the backup.
    let (target, target_store) = migrated(&mut scratch).await;
    let sha256 = std::fs::read_to_string(dir.path().join(format!("{name}.sql.gz.sha256"))).unwrap();
    let sha256 = sha256.split(' ').next().unwrap();
    let mut conn = sqlx::MySqlConnection::connect(&format!("{}/{target}", server()))
        .await
        .unwrap();
    for statement in [
        "CREATE TABLE _chatsys_restore (backup VARCHAR(255) NOT NULL, sha256 CHAR(64) NOT NULL)"
            .to_string(),
        format!("INSERT INTO _chatsys_restore VALUES ('{name}', '{sha256}')"),
        "INSERT INTO applications (token, name, created_at, updated_at) \
         VALUES ('half', 'half', NOW(), NOW())"
            .to_string(),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    // Meanwhile no backup is taken of the half-loaded database.
    let output = backup(dir.path(), &target, "chatsys-20250102T000000Z", 7);
    assert!(
        !output.status.success(),
        "backed up a half-restored database"
    );
    assert!(stderr(&output).contains("a restore into"));

    assert!(restore(dir.path(), &target, name).status.success());
    assert_eq!(everything(&target_store).await, before);
    assert_eq!(
        tables(&target).await,
        tables(&source).await,
        "no marker left"
    );

    // The marker of another backup is not this restore's to resume.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE `{target}`._chatsys_restore (backup VARCHAR(255) NOT NULL, sha256 CHAR(64) NOT NULL)"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO `{target}`._chatsys_restore VALUES ('chatsys-other', '{sha256}')"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    let output = restore(dir.path(), &target, name);
    assert!(!output.status.success(), "resumed another backup's restore");
    assert!(
        stderr(&output).contains("the marker of another restore"),
        "{}",
        stderr(&output)
    );
}

/// moto's S3 server on a free port, stopped when dropped.
struct S3Server {
    child: Child,
    endpoint: String,
}

impl S3Server {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server (installed by .ci/tools.sh, with .tools/bin on PATH)");
        let server = S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("moto_server did not listen on {port}");
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The object keys under `prefix/` in the bucket, sorted.
fn bucket_keys(env: &[(&str, &str)], prefix: &str) -> Vec<String> {
    let listing = Command::new("aws")
        .envs(env.iter().copied())
        .args(["s3", "ls", "--recursive"])
        .arg(format!("s3://{}/{prefix}/", env_value(env, "S3_BUCKET")))
        .args(["--endpoint-url", env_value(env, "S3_ENDPOINT")])
        .output()
        .unwrap();
    let mut keys: Vec<String> = String::from_utf8(listing.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| line.split_whitespace().nth(3))
        .map(|key| key.trim_start_matches(&format!("{prefix}/")).to_string())
        .collect();
    keys.sort();
    keys
}

fn env_value<'a>(env: &[(&str, &'a str)], key: &str) -> &'a str {
    env.iter().find(|(k, _)| *k == key).unwrap().1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_go_to_an_s3_bucket_keep_the_newest_there_and_come_back_to_restore() {
    let mut scratch = Scratch::default();
    let (source, source_store) = seeded(&mut scratch).await;
    let before = everything(&source_store).await;
    let s3 = S3Server::start();
    let local = tempfile::tempdir().unwrap();
    let aws: Vec<(&str, &str)> = vec![
        ("AWS_ACCESS_KEY_ID", "chatsys"),
        ("AWS_SECRET_ACCESS_KEY", "chatsys"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
        ("S3_ENDPOINT", &s3.endpoint),
        ("S3_BUCKET", "chatsys-backups"),
        ("S3_PREFIX", "prod/mysql/"),
    ];
    let made = Command::new("aws")
        .envs(aws.iter().copied())
        .args([
            "s3",
            "mb",
            "s3://chatsys-backups",
            "--endpoint-url",
            &s3.endpoint,
        ])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", stderr(&made));
    // An upload that died after its dump: no checksum.
    let orphan = local.path().join("orphan");
    std::fs::write(&orphan, "half").unwrap();
    let copied = Command::new("aws")
        .envs(aws.iter().copied())
        .args(["s3", "cp"])
        .arg(&orphan)
        .args([
            "s3://chatsys-backups/prod/mysql/chatsys-20240101T000000Z.sql.gz",
            "--endpoint-url",
            &s3.endpoint,
        ])
        .output()
        .unwrap();
    assert!(copied.status.success(), "{}", stderr(&copied));
    std::fs::remove_file(orphan).unwrap();

    let names: Vec<String> = (1..=4)
        .map(|n| format!("chatsys-2025010{n}T000000Z"))
        .collect();
    let dir = local.path().to_str().unwrap();
    for name in &names {
        assert!(backup(local.path(), &source, name, 1).status.success());
        let mut env = aws.clone();
        env.extend([
            ("BACKUP_DIR", dir),
            ("BACKUP_NAME", name),
            ("BACKUP_KEEP", "2"),
        ]);
        assert!(run("backup-s3-upload.sh", &env).status.success());
    }
    assert_eq!(
        bucket_keys(&aws, "prod/mysql"),
        pairs(&[&names[2], &names[3]]),
        "the newest 2 complete backups in the bucket, nothing else"
    );

    let restored = tempfile::tempdir().unwrap();
    let into = restored.path().to_str().unwrap();
    let mut env = aws.clone();
    env.extend([("BACKUP_DIR", into), ("BACKUP_NAME", names[0].as_str())]);
    let output = run("backup-s3-download.sh", &env);
    assert!(!output.status.success(), "downloaded a pruned backup");
    assert!(files(restored.path()).is_empty());

    let mut env = aws.clone();
    env.extend([("BACKUP_DIR", into), ("BACKUP_NAME", names[3].as_str())]);
    assert!(run("backup-s3-download.sh", &env).status.success());
    assert_eq!(files(restored.path()), pairs(&[&names[3]]));
    let target = database_name(&mut scratch);
    assert!(
        restore(restored.path(), &target, &names[3])
            .status
            .success()
    );
    assert_eq!(everything(&store(&target)).await, before);
}
