use std::io::Write;

use clap::Parser;

use chatsys_runtime::telemetry;
use chatsys_runtime::{terminated, wiring};
use chatsys_settings::{Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve(cli.serve)) {
        Command::Openapi => println!("{}", chatsys_api::http::openapi::document()),
        Command::Reindex(args) => {
            telemetry::init_logging(&args.log_format);
            let indexed = wiring::reindex(&args).await?;
            tracing::info!(indexed, "every stored message is indexed");
        }
        Command::Migrate(args) => {
            telemetry::init_logging(&args.log_format);
            wiring::migrate(&args).await?;
            tracing::info!("migrations applied");
        }
        Command::Serve(args) => {
            telemetry::init_logging(&args.backends.log_format);
            // Waiting for a backing service is not a failure, but a SIGTERM then ends the wait.
            let running = tokio::select! {
                running = chatsys_api::start(&args) => running?,
                () = terminated() => return Ok(()),
            };
            tracing::info!(addr = %running.addr, version = env!("CARGO_PKG_VERSION"), "chatsys API listening");
            terminated().await;
            running.stop().await;
        }
        Command::Standalone(args) => {
            telemetry::init_logging(&args.log_format);
            let running = chatsys_api::start_standalone(&args).await?;
            let url = format!("http://{}", running.addr);
            // A closed stdout (a supervisor that stopped reading) must not take the server down.
            let _ = writeln!(
                std::io::stdout(),
                "chatsys standalone listening on {url}\ndata directory: {}\ntry: curl -s -X POST {url}/applications -d '{{\"name\":\"my app\"}}'",
                args.data_dir.display()
            );
            terminated().await;
            running.stop().await;
        }
    }
    Ok(())
}
