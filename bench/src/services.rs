//! Stopping and starting the shared MariaDB, Redis and RabbitMQ for the fault suite, with the commands CI uses.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::Command;
use tokio::time::Instant;

use crate::system::Endpoints;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    MariaDb,
    Redis,
    RabbitMq,
}

const UP_WITHIN: Duration = Duration::from_secs(90);

impl Service {
    pub const ALL: [Service; 3] = [Service::MariaDb, Service::Redis, Service::RabbitMq];

    pub fn name(self) -> &'static str {
        match self {
            Service::MariaDb => "MariaDB",
            Service::Redis => "Redis",
            Service::RabbitMq => "RabbitMQ",
        }
    }

    /// Whether a client can connect and get an answer.
    pub async fn is_up(self, endpoints: &Endpoints) -> bool {
        let probe = async {
            match self {
                Service::MariaDb => {
                    let pool = endpoints.server_pool().await?;
                    sqlx::query("SELECT 1").execute(&pool).await?;
                    pool.close().await;
                }
                Service::Redis => {
                    let client = redis::Client::open(endpoints.redis_url.as_str())?;
                    let mut connection = client.get_multiplexed_async_connection().await?;
                    redis::cmd("PING")
                        .query_async::<String>(&mut connection)
                        .await?;
                }
                Service::RabbitMq => {
                    let connection = crate::raw::amqp_connect(&endpoints.amqp_url).await?;
                    crate::raw::amqp_close(connection, "probe").await;
                }
            }
            anyhow::Ok(())
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(5), probe).await,
            Ok(Ok(()))
        )
    }

    /// Stops the service and waits until it no longer answers.
    pub async fn stop(self, endpoints: &Endpoints) -> anyhow::Result<()> {
        match self {
            Service::MariaDb => run(&["mysqladmin", "-uroot", "shutdown"]).await?,
            Service::Redis => run(&["redis-cli", "-h", "127.0.0.1", "shutdown", "nosave"]).await?,
            Service::RabbitMq => run(&["rabbitmqctl", "stop_app"]).await?,
        }
        let deadline = Instant::now() + UP_WITHIN;
        while self.is_up(endpoints).await {
            if Instant::now() > deadline {
                bail!("{} still answers after being stopped", self.name());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Starts the service and waits until it answers.
    pub async fn start(self, endpoints: &Endpoints) -> anyhow::Result<()> {
        match self {
            Service::MariaDb => {
                run(&[
                    "start-stop-daemon",
                    "--start",
                    "--oknodo",
                    "--background",
                    "--exec",
                    "/usr/sbin/mariadbd",
                ])
                .await?
            }
            Service::Redis => {
                run(&[
                    "redis-server",
                    "--daemonize",
                    "yes",
                    "--bind",
                    "127.0.0.1",
                    "-::1",
                    "--port",
                    "6379",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    "/var/lib/redis",
                    "--logfile",
                    "/var/log/redis/ci.log",
                ])
                .await?
            }
            Service::RabbitMq => {
                // start_app needs the node running; when the whole node is gone, start it instead.
                if run(&["rabbitmqctl", "start_app"]).await.is_err() {
                    run(&["rabbitmq-server", "-detached"]).await?;
                }
            }
        }
        self.wait_up(endpoints).await
    }

    pub async fn wait_up(self, endpoints: &Endpoints) -> anyhow::Result<()> {
        let deadline = Instant::now() + UP_WITHIN;
        while !self.is_up(endpoints).await {
            if Instant::now() > deadline {
                bail!(
                    "{} does not answer {UP_WITHIN:?} after its start",
                    self.name()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    /// Starts the service when it does not answer: the fault suite never leaves a shared service stopped.
    pub async fn ensure_up(self, endpoints: &Endpoints) -> anyhow::Result<()> {
        if self.is_up(endpoints).await {
            return Ok(());
        }
        self.start(endpoints).await
    }
}

/// The type of every queue of the shared RabbitMQ (`quorum`, `classic` …) with its name, from
/// `rabbitmqctl`: a passive declare does not tell the type.
pub async fn queue_types() -> anyhow::Result<Vec<(String, String)>> {
    #[derive(serde::Deserialize)]
    struct Listed {
        name: String,
        r#type: String,
    }
    let listed = output(&[
        "rabbitmqctl",
        "list_queues",
        "-q",
        "--formatter",
        "json",
        "name",
        "type",
    ])
    .await?;
    let queues: Vec<Listed> =
        serde_json::from_slice(&listed).context("reading rabbitmqctl's list of queues")?;
    Ok(queues.into_iter().map(|q| (q.name, q.r#type)).collect())
}

async fn run(command: &[&str]) -> anyhow::Result<()> {
    output(command).await.map(drop)
}

/// What the command printed, once it succeeded.
async fn output(command: &[&str]) -> anyhow::Result<Vec<u8>> {
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        Command::new(command[0])
            .args(&command[1..])
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .with_context(|| format!("{} did not finish in 120 s", command.join(" ")))?
    .with_context(|| format!("running {}", command[0]))?;
    if !output.status.success() {
        bail!(
            "{} failed with {}: {}{}",
            command.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output.stdout)
}

/// Starts every service that does not answer when dropped, so that a scenario that fails or panics never
/// leaves a shared service stopped.
pub struct RestoreOnDrop {
    pub endpoints: Endpoints,
}

impl Drop for RestoreOnDrop {
    fn drop(&mut self) {
        let endpoints = self.endpoints.clone();
        // A thread of its own: this may run inside the runtime, which cannot be blocked on.
        let restore = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                for service in Service::ALL {
                    service.ensure_up(&endpoints).await?;
                }
                anyhow::Ok(())
            })
        });
        if let Ok(Err(error)) = restore.join() {
            eprintln!("could not restore a service: {error:#}");
        }
    }
}
