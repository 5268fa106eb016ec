use chatsys_operator::error::{Error, Result};
use chatsys_operator::scope::Scope;
use chatsys_operator::{controller, leader::LeaderElection, render, server};
use clap::{ArgAction, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "chatsys-operator",
    version,
    about = "Reconciles ChatSystem resources into running chat systems"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (the default).
    Run(RunArgs),
    /// Print the ChatSystem CustomResourceDefinition.
    Crd,
    /// Print every manifest the operator would apply for a ChatSystem, with no cluster.
    Render {
        /// ChatSystem YAML file, one or more documents; `-` reads standard input.
        #[arg(short = 'f', long = "filename")]
        file: String,
    },
}

#[derive(Parser)]
struct RunArgs {
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "CHATSYS_OPERATOR_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Reconcile only while holding the Lease, so several replicas can run.
    #[arg(long, env = "CHATSYS_LEADER_ELECTION", default_value_t = true, action = ArgAction::Set)]
    leader_election: bool,
    /// Log lines as JSON objects or as plain text; the level comes from RUST_LOG.
    #[arg(long, env = "CHATSYS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
    /// Namespace of the Lease: the operator's own.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pod_namespace: String,
    /// Namespaces to watch, separated by commas; empty: every namespace. With a list, the operator
    /// needs permissions in those namespaces only (the chart's `watchNamespaces`).
    #[arg(long, env = "CHATSYS_WATCH_NAMESPACES", default_value = "")]
    watch_namespaces: String,
    /// Identity in the Lease and in events; the host name when unset.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Crd) => chatsys_operator::crd_yaml()
            .map(|yaml| print!("{yaml}"))
            .map_err(Error::from),
        Some(Command::Render { file }) => render::read(&file).and_then(|systems| {
            for cs in systems {
                print!("{}", render::render(cs)?);
            }
            Ok(())
        }),
        Some(Command::Run(args)) => run(args),
        None => run(RunArgs::parse_from(["chatsys-operator"])),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("chatsys-operator: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> Result<()> {
    init_logging(args.log_format);
    // Several crates in the graph bring a rustls backend; name the one to use.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Runtime::new()
        .map_err(Error::Serve)?
        .block_on(run_async(args))
}

async fn run_async(args: RunArgs) -> Result<()> {
    let metrics =
        chatsys_operator::metrics::install().map_err(|e| Error::Metrics(e.to_string()))?;
    let watches = Arc::new(server::WatchHealth::default());
    let server = tokio::spawn(server::serve(args.listen, metrics, watches.clone()));
    let config = kube::Config::infer().await?;
    let identity = args.pod_name.clone().unwrap_or_else(host_name);
    info!(listen = %args.listen, leader_election = args.leader_election, %identity, "starting");
    let controller = controller::run(
        client(&config, WATCH_READ_TIMEOUT)?,
        client(&config, CALL_TIMEOUT)?,
        Some(identity.clone()),
        Scope::parse(&args.watch_namespaces),
        watches,
        shutdown_signal(),
    );
    let outcome = if args.leader_election {
        let election = LeaderElection::new(
            client(&config, LEASE_CALL_TIMEOUT)?,
            &args.pod_namespace,
            identity,
        );
        tokio::select! {
            acquired = election.acquire() => acquired?,
            () = shutdown_signal() => return Ok(()),
        }
        // Losing the lease ends the process: a restart is the simplest way to stop every reconcile at once.
        let outcome = tokio::select! {
            () = controller => Ok(()),
            lost = election.keep() => Err(lost),
        };
        if outcome.is_ok()
            && let Err(error) = election.release().await
        {
            error!(%error, "releasing the leader lease");
        }
        outcome
    } else {
        controller.await;
        Ok(())
    };
    server.abort();
    if let Err(error) = &outcome {
        error!(%error, "stopping");
    }
    outcome
}

/// A watch is closed by the server after at most 290 s; a read silent for longer means a lost connection.
const WATCH_READ_TIMEOUT: Duration = Duration::from_secs(295);
/// Reads and writes of a reconcile: a hung call must not hold a resource's reconcile forever.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Well inside the renew deadline, so a hung renewal fails in time for the next try.
const LEASE_CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// A client whose every call ends: kube's default read timeout is none.
fn client(config: &kube::Config, read_timeout: Duration) -> Result<kube::Client> {
    let mut config = config.clone();
    config.connect_timeout = Some(Duration::from_secs(10));
    config.read_timeout = Some(read_timeout);
    config.write_timeout = Some(Duration::from_secs(10));
    Ok(kube::Client::try_from(config)?)
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = interrupt => {},
            _ = terminate.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "chatsys-operator".to_string())
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
