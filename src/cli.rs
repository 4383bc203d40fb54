//! The `gamestream` command line. Each subcommand is a thin shell over the library.
//!
//! Exit codes: see [`crate::exit::Exit`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, Config, Mode};
use crate::exit::Exit;

/// Log filter of `dlq` and `offsets` when RUST_LOG is not set: warnings and errors only.
const OPS_LOG_LEVEL: &str = "warn";

#[derive(Debug, Parser)]
#[command(
    name = "gamestream",
    version,
    about = "Real-time game analytics: HTTP ingest → Kafka → exactly-once Postgres and Redis sinks",
    long_about = "gamestream accepts game events over HTTP, publishes them to Kafka, and consumes them \
                  with a supervised actor pipeline into Postgres and Redis, exactly once.\n\n\
                  Configuration is layered: compiled-in defaults (config/default.toml) < --config FILE \
                  < environment (DB_HOST, PORT, ... and GAMESTREAM_SECTION__KEY) < flags."
)]
pub struct Cli {
    /// A TOML file layered over the defaults (same shape as config/default.toml).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override one setting, highest precedence; repeatable. Example: --set logger.batch_size=2000
    #[arg(long = "set", short = 's', global = true, value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub set: Vec<(String, String)>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: the HTTP server and, unless --mode ingest, the consumer pipeline.
    /// Stops gracefully on SIGTERM or Ctrl-C.
    Serve(ServeArgs),
    /// Apply the database migrations (idempotent; safe from several pods at once).
    Migrate,
    /// Create or list the Kafka topics of the contract.
    Topics {
        #[command(subcommand)]
        action: TopicsAction,
    },
    /// Try Kafka, Postgres and Redis; print one line per service; exit 1 if any failed.
    Check,
    /// End-to-end benchmark on the configured services (scratch database and topics):
    /// pipeline throughput per sink next to the raw-fetch and COPY limits, and peak RSS.
    Bench(crate::bench::BenchArgs),
    /// Send generated events to a running server at a steady rate and report successes,
    /// failures, the achieved rate and latency percentiles; exit 1 if any request failed.
    Loadgen(crate::loadgen::LoadgenArgs),
    /// Dead letters: list them, replay them to the raw topic once fixed.
    Dlq {
        #[command(subcommand)]
        action: crate::ops::dlq::DlqAction,
    },
    /// The sinks' committed offsets: show them with lag, reset one sink's.
    Offsets {
        #[command(subcommand)]
        action: crate::ops::offsets::OffsetsAction,
    },
    /// Take over from the old pipeline: plan (read only), apply (adopt its offsets and
    /// state), verify (compare the stores). The runbook is in the README.
    Cutover {
        #[command(subcommand)]
        action: crate::ops::cutover::CutoverAction,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Apply pending migrations at start instead of refusing to run.
    #[arg(long)]
    pub migrate: bool,
    /// Which halves to run (sets `mode`): all, ingest (HTTP only) or consume (pipeline only).
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// HTTP port (sets `http.port`; env PORT).
    #[arg(long)]
    pub port: Option<u16>,
}

#[derive(Debug, Subcommand)]
pub enum TopicsAction {
    /// Create the five contract topics with the configured partition counts, retention.ms and min.insync.replicas; existing topics are reported (with a warning for each setting that differs), never altered.
    Create,
    /// List every topic on the cluster with its partition count.
    List,
}

fn parse_key_value(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!(
            "expected KEY=VALUE (e.g. http.port=8081), got `{raw}`"
        )),
    }
}

impl Cli {
    /// Flags that set configuration, as dotted overrides (after `--set`, so they win).
    fn overrides(&self) -> Vec<(String, String)> {
        let mut overrides = self.set.clone();
        if let Command::Serve(args) = &self.command {
            if let Some(port) = args.port {
                overrides.push(("http.port".to_owned(), port.to_string()));
            }
            if let Some(mode) = args.mode {
                let name = match mode {
                    Mode::All => "all",
                    Mode::Ingest => "ingest",
                    Mode::Consume => "consume",
                };
                overrides.push(("mode".to_owned(), format!("\"{name}\"")));
            }
        }
        overrides
    }

    /// Loads the configuration these arguments and the process environment describe.
    pub fn load_config(&self) -> Result<Config, config::ConfigError> {
        config::load(&config::Sources::from_process_env(
            self.config.clone(),
            self.overrides(),
        ))
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut config = match cli.load_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("gamestream: {e}");
            return Exit::Config.into();
        }
    };
    // The operator tools print their results; the clients' info logs would drown them.
    if matches!(
        cli.command,
        Command::Dlq { .. } | Command::Offsets { .. } | Command::Cutover { .. }
    ) && std::env::var_os("RUST_LOG").is_none()
    {
        config.telemetry.log_level = OPS_LOG_LEVEL.to_owned();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("gamestream: cannot start the async runtime: {e}");
            return Exit::Failure.into();
        }
    };
    // Inside the runtime's context: the OTLP/gRPC exporter's channel lives on it.
    let telemetry = {
        let _context = runtime.enter();
        crate::telemetry::init(&config.telemetry)
    };
    let code = runtime.block_on(run(cli.command, config));
    // Outside block_on, runtime still up: flushing may wait on the gRPC channel.
    telemetry.shutdown();
    code
}

async fn run(command: Command, config: Config) -> ExitCode {
    let result: Result<Exit, Box<dyn std::error::Error>> = match command {
        Command::Serve(args) => crate::daemon::serve(config, args.migrate)
            .await
            .map_err(Into::into),
        Command::Migrate => crate::commands::migrate(&config).await.map_err(Into::into),
        Command::Topics {
            action: TopicsAction::Create,
        } => crate::commands::topics_create(&config)
            .await
            .map_err(Into::into),
        Command::Topics {
            action: TopicsAction::List,
        } => crate::commands::topics_list(&config)
            .await
            .map_err(Into::into),
        Command::Check => crate::commands::check(&config).await.map_err(Into::into),
        Command::Bench(args) => crate::bench::run(&config, &args).await.map_err(Into::into),
        Command::Loadgen(args) => Ok(crate::loadgen::command(args, &config).await),
        Command::Dlq { action } => Ok(crate::ops::dlq::command(action, &config).await),
        Command::Offsets { action } => Ok(crate::ops::offsets::command(action, &config).await),
        Command::Cutover { action } => Ok(crate::ops::cutover::command(action, &config).await),
    };
    match result {
        Ok(exit) => exit.into(),
        Err(e) => {
            let message = format!("{e:#}");
            eprintln!("gamestream: {message}");
            if let Some(hint) = crate::exit::hint(&message) {
                eprintln!("hint: {hint}");
            }
            Exit::Failure.into()
        }
    }
}
