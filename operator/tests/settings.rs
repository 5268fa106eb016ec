//! The operator writes the binaries' settings as a command line and environment variables; the binaries
//! read them with `chatsys-settings`' parsers. This parses every container the operator renders with
//! those same parsers, so a misspelt variable, a value a binary refuses, or a port the binary does not
//! listen on fails here instead of in a crash-looping pod.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;

use chatsys_operator::kinds::{Child, ChildKind};
use chatsys_settings::{Cli, Command, WorkerArgs};
use clap::{CommandFactory, Parser};
use common::{FIXTURES, build_fixture, containers, of_kind};
use serde_json::Value;

/// The environment a container starts with, as the kubelet builds it: the ConfigMaps of `envFrom`,
/// then `env` in order with `$(NAME)` references expanded. Values from Secrets are stand-ins.
fn environment(container: &Value, built: &[Child]) -> BTreeMap<String, String> {
    let mut environment = BTreeMap::new();
    for source in container["envFrom"].as_array().into_iter().flatten() {
        let name = &source["configMapRef"]["name"];
        let config_map = of_kind(built, ChildKind::ConfigMap)
            .into_iter()
            .find(|c| &c["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("envFrom names the missing ConfigMap {name}"));
        for (key, value) in config_map["data"].as_object().into_iter().flatten() {
            environment.insert(key.clone(), value.as_str().expect("a string").to_string());
        }
    }
    for var in container["env"].as_array().into_iter().flatten() {
        let name = var["name"].as_str().expect("a name").to_string();
        let value = match var["value"].as_str() {
            Some(value) => environment.iter().fold(value.to_string(), |value, (n, v)| {
                value.replace(&format!("$({n})"), v)
            }),
            None => format!("from-secret-{}", name.to_lowercase()),
        };
        environment.insert(name, value);
    }
    environment
}

/// Every variable the container's environment sets that only serves to compose another's value.
fn helpers(container: &Value) -> Vec<String> {
    let env = container["env"].as_array().cloned().unwrap_or_default();
    env.iter()
        .filter_map(|var| var["name"].as_str())
        .filter(|name| {
            env.iter().any(|other| {
                other["value"]
                    .as_str()
                    .is_some_and(|v| v.contains(&format!("$({name})")))
            })
        })
        .map(str::to_string)
        .collect()
}

/// The command line that gives `command` (a binary's parser, or one of its subcommands) what the
/// environment holds for it, one `--flag=value` per variable it reads.
fn flags(command: &clap::Command, environment: &BTreeMap<String, String>) -> Vec<String> {
    command
        .get_arguments()
        .filter_map(|arg| {
            let name = arg.get_env()?.to_str()?;
            let value = environment.get(name)?;
            Some(format!("--{}={value}", arg.get_long()?))
        })
        .collect()
}

/// Every environment variable `command` or any of its subcommands reads.
fn variables_read(command: &clap::Command) -> Vec<String> {
    command
        .get_arguments()
        .filter_map(|arg| arg.get_env().and_then(OsStr::to_str).map(str::to_string))
        .chain(command.get_subcommands().flat_map(variables_read))
        .collect()
}

/// What a container running one of the binaries is told, parsed by that binary's parser.
enum Parsed {
    Api(Command),
    Worker(WorkerArgs),
}

fn parse(container: &Value, built: &[Child]) -> Parsed {
    let program = container["command"][0].as_str().expect("a command");
    let args: Vec<String> = container["args"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| a.as_str().expect("a string").to_string())
        .collect();
    let environment = environment(container, built);
    let binary = match program.rsplit('/').next() {
        Some("chatsys-api") => Cli::command(),
        Some("chatsys-worker") => WorkerArgs::command(),
        other => panic!("a container runs {other:?}, not a chatsys binary"),
    };
    let read = variables_read(&binary);
    let helpers = helpers(container);
    for name in environment.keys() {
        assert!(
            read.contains(name) || helpers.contains(name),
            "{program} reads no variable {name}, and no other variable is composed from it"
        );
    }
    let runs = match args.first() {
        Some(sub) => binary
            .find_subcommand(sub)
            .unwrap_or_else(|| panic!("{program} has no subcommand {sub}"))
            .clone(),
        None => binary.clone(),
    };
    let argv: Vec<String> = std::iter::once(program.to_string())
        .chain(args.clone())
        .chain(flags(&runs, &environment))
        .collect();
    let refused = |e: clap::Error| -> ! { panic!("{program} refuses {argv:?}: {e}") };
    match binary.get_name() {
        "chatsys-api" => {
            let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| refused(e));
            Parsed::Api(cli.command.unwrap_or(Command::Serve(cli.serve)))
        }
        _ => Parsed::Worker(WorkerArgs::try_parse_from(&argv).unwrap_or_else(|e| refused(e))),
    }
}

fn container_port(container: &Value) -> Option<u16> {
    container["ports"][0]["containerPort"]
        .as_u64()
        .map(|p| u16::try_from(p).expect("a port"))
}

#[test]
fn every_rendered_container_is_accepted_by_its_binarys_own_parser() {
    for fixture in FIXTURES {
        let (cs, built) = build_fixture(fixture);
        let workloads = of_kind(&built, ChildKind::Deployment)
            .into_iter()
            .chain(of_kind(&built, ChildKind::Job))
            .collect::<Vec<_>>();
        let mut parsed = 0;
        for workload in &workloads {
            for container in containers(workload) {
                match parse(container, &built) {
                    Parsed::Api(Command::Serve(serve)) => {
                        assert_eq!(Some(serve.listen.port()), container_port(container));
                        assert!(
                            !serve.backends.migrate,
                            "{fixture}: replicas must not migrate"
                        );
                        serve.backends.database_url().expect("a database URL");
                        serve.backends.redis_url().expect("a Redis URL");
                        serve.backends.amqp_url().expect("an AMQP URL");
                        assert!(serve.backends.opensearch_url.is_some());
                        assert_eq!(
                            serve.access.cors_allowed_origins, cs.spec.api.cors.allowed_origins,
                            "{fixture}: the API serves the pages of the origins the spec allows"
                        );
                        assert!(
                            serve.access.admin_key.is_some(),
                            "{fixture}: the API has an admin key"
                        );
                    }
                    Parsed::Api(Command::Migrate(migrate)) => {
                        migrate.database_url().expect("a database URL");
                    }
                    Parsed::Api(other) => panic!("{fixture}: the API runs as {other:?}"),
                    Parsed::Worker(worker) => {
                        assert_eq!(Some(worker.listen.port()), container_port(container));
                        let batch = &cs.spec.worker.batch;
                        assert_eq!(
                            (
                                worker.batch_size as i64,
                                worker.batch_wait_ms as i64,
                                worker.batch_bytes as i64,
                                i64::from(worker.prefetch),
                                worker.prefetch_bytes as i64,
                                i64::from(worker.max_attempts),
                            ),
                            (
                                i64::from(batch.size),
                                i64::from(batch.wait_ms),
                                batch.max_bytes,
                                i64::from(batch.prefetch),
                                batch.prefetch_bytes,
                                i64::from(batch.max_attempts),
                            ),
                            "{fixture}: the worker's batch settings"
                        );
                        worker.backends.amqp_url().expect("an AMQP URL");
                    }
                }
                parsed += 1;
            }
        }
        assert_eq!(
            parsed, 3,
            "{fixture}: the API, the worker and the migration"
        );
    }
}
