//! Starts the system under test as real processes on fresh resources, and removes them afterwards.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use sqlx::mysql::MySqlPoolOptions;
use sqlx::{AssertSqlSafe, MySqlPool};
use tokio::process::{Child, Command};

use crate::client;

/// Where the backing services answer. Loopback only: the bench and the fault suite drive local services.
#[derive(Debug, Clone, clap::Args)]
pub struct Endpoints {
    /// MySQL server, without a database name; each run creates and drops its own database.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "mysql://root@127.0.0.1:3306"
    )]
    pub database_url: String,
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,
}

impl Endpoints {
    /// The server URL with `database` as its path.
    pub fn database(&self, database: &str) -> String {
        let server = match self.database_url.find("://").map(|scheme| scheme + 3) {
            Some(host_start) => match self.database_url[host_start..].find('/') {
                Some(path_start) => &self.database_url[..host_start + path_start],
                None => &self.database_url,
            },
            None => &self.database_url,
        };
        format!("{server}/{database}")
    }

    pub fn check_loopback(&self) -> anyhow::Result<()> {
        for url in [&self.database_url, &self.redis_url, &self.amqp_url] {
            let host = url.split("://").nth(1).unwrap_or(url);
            let host = host.rsplit('@').next().unwrap_or(host);
            if !(host.starts_with("127.")
                || host.starts_with("localhost")
                || host.starts_with("[::1]"))
            {
                bail!("{url} is not a loopback address");
            }
        }
        Ok(())
    }

    pub async fn server_pool(&self) -> anyhow::Result<MySqlPool> {
        let url = self.database("");
        MySqlPoolOptions::new()
            .max_connections(2)
            .connect(&url)
            .await
            .with_context(|| format!("connecting to {url}"))
    }
}

/// `KEY=VALUE`, for `--env`: extra environment for the chatsys processes.
pub fn parse_env(pair: &str) -> Result<(String, String), String> {
    match pair.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{pair:?} is not KEY=VALUE")),
    }
}

/// A name nobody else uses, e.g. `chatsys_bench_3f9a1c0d`.
pub fn unique_name(stem: &str) -> String {
    format!("{stem}_{:08x}", rand::random::<u32>())
}

pub fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Api,
    Worker,
    /// A second API replica on the same resources, started only when a scenario asks for it.
    SecondApi,
}

impl Role {
    fn binary(self) -> &'static str {
        match self {
            Role::Api | Role::SecondApi => "chatsys-api",
            Role::Worker => "chatsys-worker",
        }
    }

    /// Names its log files.
    fn name(self) -> &'static str {
        match self {
            Role::Api => "chatsys-api",
            Role::SecondApi => "chatsys-api-2",
            Role::Worker => "chatsys-worker",
        }
    }
}

struct Process {
    listen: SocketAddr,
    child: Option<Child>,
    /// Highest VmHWM of the instances already stopped.
    past_peak_kib: u64,
    starts: u32,
}

/// Settings for one system under test.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Keep the database, queues, Redis keys and logs afterwards.
    pub keep: bool,
    /// Extra environment for both processes, e.g. a smaller batch size.
    pub env: Vec<(String, String)>,
}

/// The API and the worker on their own database, queue, Redis prefix and data directory.
pub struct System {
    pub endpoints: Endpoints,
    pub database: String,
    pub queue: String,
    pub redis_prefix: String,
    pub data_dir: PathBuf,
    options: Options,
    api: Process,
    worker: Process,
    second_api: Process,
    removed: bool,
}

const READY_WITHIN: Duration = Duration::from_secs(90);

impl System {
    pub async fn start(endpoints: Endpoints, options: Options) -> anyhow::Result<Self> {
        endpoints.check_loopback()?;
        let database = unique_name("chatsys_bench");
        let data_dir = std::env::temp_dir().join(&database);
        std::fs::create_dir_all(&data_dir)?;
        let server = endpoints.server_pool().await?;
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE `{database}`")))
            .execute(&server)
            .await?;
        server.close().await;
        let mut system = Self {
            queue: format!("{database}.commands"),
            redis_prefix: database.clone(),
            database,
            data_dir,
            endpoints,
            options,
            api: Process {
                listen: free_port()?,
                child: None,
                past_peak_kib: 0,
                starts: 0,
            },
            worker: Process {
                listen: free_port()?,
                child: None,
                past_peak_kib: 0,
                starts: 0,
            },
            second_api: Process {
                listen: free_port()?,
                child: None,
                past_peak_kib: 0,
                starts: 0,
            },
            removed: false,
        };
        // The API first, so that its migrations are done before the worker starts.
        system.start_role(Role::Api).await?;
        system.start_role(Role::Worker).await?;
        Ok(system)
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.api.listen
    }

    /// Where the second API replica listens (once started with `start_role(Role::SecondApi)`).
    pub fn second_api_addr(&self) -> SocketAddr {
        self.second_api.listen
    }

    /// Where the worker serves `/healthz`, `/readyz` and `/metrics`.
    pub fn worker_addr(&self) -> SocketAddr {
        self.worker.listen
    }

    pub fn database_url(&self) -> String {
        self.endpoints.database(&self.database)
    }

    pub async fn pool(&self) -> anyhow::Result<MySqlPool> {
        Ok(MySqlPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&self.database_url())
            .await?)
    }

    fn process(&mut self, role: Role) -> &mut Process {
        match role {
            Role::Api => &mut self.api,
            Role::Worker => &mut self.worker,
            Role::SecondApi => &mut self.second_api,
        }
    }

    fn process_of(&self, role: Role) -> &Process {
        match role {
            Role::Api => &self.api,
            Role::Worker => &self.worker,
            Role::SecondApi => &self.second_api,
        }
    }

    pub fn pid(&self, role: Role) -> Option<u32> {
        self.process_of(role).child.as_ref().and_then(Child::id)
    }

    /// Spawns the process and waits for its `/readyz`.
    pub async fn start_role(&mut self, role: Role) -> anyhow::Result<()> {
        let binary = binary_path(role.binary())?;
        let environment = self.environment();
        let data_dir = self.data_dir.clone();
        let process = self.process(role);
        if process.child.is_some() {
            bail!("{} is already running", role.binary());
        }
        process.starts += 1;
        let log_path = data_dir.join(format!("{}.{}.log", role.name(), process.starts));
        let args: &[&str] = match role {
            Role::Api | Role::SecondApi => &["serve"],
            Role::Worker => &[],
        };
        let child = spawn_ready(&binary, args, environment, process.listen, &log_path).await?;
        process.child = Some(child);
        Ok(())
    }

    /// A variable of the extra environment the processes were given.
    pub fn env_value(&self, name: &str) -> Option<&str> {
        self.options
            .env
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    fn environment(&self) -> Vec<(String, String)> {
        let mut environment = vec![
            ("DATABASE_URL".to_owned(), self.database_url()),
            ("REDIS_URL".to_owned(), self.endpoints.redis_url.clone()),
            ("AMQP_URL".to_owned(), self.endpoints.amqp_url.clone()),
            ("CHATSYS_QUEUE".to_owned(), self.queue.clone()),
            ("CHATSYS_REDIS_PREFIX".to_owned(), self.redis_prefix.clone()),
            // Shared: the API searches the index the worker writes.
            (
                "CHATSYS_DATA_DIR".to_owned(),
                self.data_dir.join("data").display().to_string(),
            ),
            ("CHATSYS_LOG_FORMAT".to_owned(), "json".to_owned()),
            ("RUST_LOG".to_owned(), "warn".to_owned()),
        ];
        environment.extend(self.options.env.iter().cloned());
        environment
    }

    /// SIGKILL, then reap.
    pub async fn kill(&mut self, role: Role) -> anyhow::Result<()> {
        let process = self.process(role);
        if let Some(mut child) = process.child.take() {
            process.past_peak_kib = process
                .past_peak_kib
                .max(child.id().map_or(0, peak_rss_kib));
            child.start_kill()?;
            child.wait().await?;
        }
        Ok(())
    }

    /// SIGTERM, and SIGKILL when it has not exited within `grace`.
    pub async fn stop(&mut self, role: Role, grace: Duration) -> anyhow::Result<()> {
        let process = self.process(role);
        if let Some(child) = process.child.as_mut()
            && let Some(pid) = child.id()
        {
            process.past_peak_kib = process.past_peak_kib.max(peak_rss_kib(pid));
            // SAFETY: plain kill(2) on our own child's pid, which is not yet reaped.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
            if tokio::time::timeout(grace, child.wait()).await.is_ok() {
                process.child = None;
            }
        }
        self.kill(role).await
    }

    /// The highest resident set of any instance of `role` so far, in bytes.
    pub fn peak_rss_bytes(&self, role: Role) -> u64 {
        let process = self.process_of(role);
        let current = process
            .child
            .as_ref()
            .and_then(Child::id)
            .map_or(0, peak_rss_kib);
        process.past_peak_kib.max(current) * 1024
    }

    /// Whether the process has exited on its own.
    pub fn has_exited(&mut self, role: Role) -> bool {
        match self.process(role).child.as_mut() {
            Some(child) => !matches!(child.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// Stops both processes and removes the database, queues, Redis keys and data directory (unless kept).
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.stop(Role::Api, Duration::from_secs(5)).await?;
        self.stop(Role::SecondApi, Duration::from_secs(5)).await?;
        self.stop(Role::Worker, Duration::from_secs(10)).await?;
        self.removed = true;
        if self.options.keep {
            eprintln!(
                "kept database {}, queue {}, Redis prefix {}, logs in {}",
                self.database,
                self.queue,
                self.redis_prefix,
                self.data_dir.display()
            );
            return Ok(());
        }
        remove_resources(
            &self.endpoints,
            &self.database,
            &self.queue,
            &self.redis_prefix,
            &self.data_dir,
        )
        .await
    }
}

impl Drop for System {
    /// After a panic or an early return: the children die with their handles; the rest is removed here.
    fn drop(&mut self) {
        if self.removed || self.options.keep {
            return;
        }
        for process in [&mut self.api, &mut self.worker] {
            if let Some(child) = process.child.as_mut() {
                let _ = child.start_kill();
            }
        }
        let (endpoints, database, queue, prefix, data_dir) = (
            self.endpoints.clone(),
            self.database.clone(),
            self.queue.clone(),
            self.redis_prefix.clone(),
            self.data_dir.clone(),
        );
        let removed = chatsys_scratch::off_runtime(async move {
            remove_resources(&endpoints, &database, &queue, &prefix, &data_dir).await
        });
        match removed {
            Some(Ok(())) => {}
            Some(Err(error)) => eprintln!("cleanup of {} incomplete: {error:#}", self.database),
            None => eprintln!("cleanup of {} did not finish", self.database),
        }
    }
}

async fn remove_resources(
    endpoints: &Endpoints,
    database: &str,
    queue: &str,
    redis_prefix: &str,
    data_dir: &Path,
) -> anyhow::Result<()> {
    let mut failures = Vec::new();
    if let Err(error) = drop_database(endpoints, database).await {
        failures.push(format!("database: {error:#}"));
    }
    // Every queue a run may have used, with `--env CHATSYS_QUEUE_SHARDS=…` up to its largest value.
    let queues = chatsys_scratch::command_queue_names(queue);
    if let Err(error) = crate::raw::remove_queues(&endpoints.amqp_url, &queues).await {
        failures.push(format!("queues: {error:#}"));
    }
    if let Err(error) = chatsys_scratch::unlink_keys(&endpoints.redis_url, redis_prefix).await {
        failures.push(format!("redis keys: {error:#}"));
    }
    let _ = std::fs::remove_dir_all(data_dir);
    if failures.is_empty() {
        Ok(())
    } else {
        bail!(failures.join("; "))
    }
}

/// Drops `database` on the endpoints' server, if it exists.
pub async fn drop_database(endpoints: &Endpoints, database: &str) -> anyhow::Result<()> {
    Ok(chatsys_scratch::drop_database(&endpoints.database(""), database).await?)
}

/// `chatsys-api` or `chatsys-worker` next to the running executable.
fn binary_path(name: &str) -> anyhow::Result<PathBuf> {
    let executable = std::env::current_exe()?;
    let directory = executable
        .parent()
        .context("executable without a directory")?;
    let path = directory.join(name);
    if !path.exists() {
        bail!(
            "{} not found: build it first (e.g. cargo build --bins)",
            path.display()
        );
    }
    Ok(path)
}

/// VmHWM of a live process in KiB; zero when it cannot be read.
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

/// The resident set of a process now, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| parse_kib(&status, field))
        .unwrap_or(0)
}

fn parse_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Starts a binary of ours listening on `listen`, dying with the bench, its output in `log_path`, and
/// waits until it answers `/readyz` (killing it when it does not).
async fn spawn_ready(
    binary: &Path,
    args: &[&str],
    environment: Vec<(String, String)>,
    listen: SocketAddr,
    log_path: &Path,
) -> anyhow::Result<Child> {
    let log = std::fs::File::create(log_path)?;
    let mut command = Command::new(binary);
    command
        .args(args)
        .envs(environment)
        .env("CHATSYS_LISTEN", listen.to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe; it makes the child die with the bench even on SIGKILL.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let ready = tokio::select! {
        ready = client::wait_for_ok(listen, "/readyz", READY_WITHIN) => ready,
        exit = wait_exit(&mut child) => Err(anyhow::anyhow!("exited with {exit}")),
    };
    if let Err(error) = ready {
        let _ = child.kill().await;
        bail!(
            "{} did not become ready: {error:#}\n{}",
            binary.display(),
            log_tail(log_path)
        );
    }
    Ok(child)
}

/// The standalone server on a data directory of its own, removed when it is dropped.
pub struct Standalone {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    child: Child,
}

impl Standalone {
    pub async fn start(env: Vec<(String, String)>) -> anyhow::Result<Self> {
        let data_dir = std::env::temp_dir().join(unique_name("chatsys_standalone"));
        std::fs::create_dir_all(&data_dir)?;
        let addr = free_port()?;
        let data = data_dir.join("data");
        let data = data
            .to_str()
            .context("a data directory that is not UTF-8")?;
        let child = spawn_ready(
            &binary_path("chatsys-api")?,
            &["standalone", "--data-dir", data],
            env,
            addr,
            &data_dir.join("chatsys-api.log"),
        )
        .await?;
        Ok(Standalone {
            addr,
            data_dir,
            child,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

async fn wait_exit(child: &mut Child) -> String {
    match child.wait().await {
        Ok(status) => status.to_string(),
        Err(error) => error.to_string(),
    }
}

/// The last lines of a process log, without the frames of a backtrace (the message comes before them).
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| !is_backtrace_frame(line))
        .collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn is_backtrace_frame(line: &str) -> bool {
    let line = line.trim_start();
    line.starts_with("at ")
        || line
            .split_once(": ")
            .is_some_and(|(index, _)| index.parse::<u32>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(database_url: &str) -> Endpoints {
        Endpoints {
            database_url: database_url.to_owned(),
            redis_url: "redis://127.0.0.1:6379".to_owned(),
            amqp_url: "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned(),
        }
    }

    #[test]
    fn the_database_replaces_any_path_of_the_server_url() {
        assert_eq!(
            endpoints("mysql://root@127.0.0.1:3306").database("x"),
            "mysql://root@127.0.0.1:3306/x"
        );
        assert_eq!(
            endpoints("mysql://root@127.0.0.1:3306/old").database("x"),
            "mysql://root@127.0.0.1:3306/x"
        );
    }

    #[test]
    fn only_loopback_services_are_accepted() {
        assert!(
            endpoints("mysql://root@127.0.0.1:3306")
                .check_loopback()
                .is_ok()
        );
        assert!(
            endpoints("mysql://root:pw@db.example:3306")
                .check_loopback()
                .is_err()
        );
    }

    #[test]
    fn env_pairs_split_at_the_first_equals_sign() {
        assert_eq!(parse_env("A=b=c"), Ok(("A".to_owned(), "b=c".to_owned())));
        assert!(parse_env("novalue").is_err());
        assert!(parse_env("=x").is_err());
    }

    #[test]
    fn backtrace_frames_are_left_out_of_a_log_tail() {
        assert!(is_backtrace_frame("   0: anyhow::error::msg"));
        assert!(is_backtrace_frame("             at /src/lib.rs:10:14"));
        assert!(!is_backtrace_frame(
            "Error: search unavailable: Schema error"
        ));
        assert!(!is_backtrace_frame(r#"{"level":"WARN","message":"x"}"#));
    }

    #[test]
    fn vm_hwm_is_read_in_kib() {
        let status = "Name:\tx\nVmPeak:\t  9000 kB\nVmHWM:\t    4242 kB\nVmRSS:\t 100 kB\n";
        assert_eq!(parse_kib(status, "VmHWM:"), Some(4242));
    }
}
