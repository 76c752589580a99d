//! The `strata` binary.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use strata_client::{
    format::Format,
    shell::{self, ShellOptions},
};
use strata_server::config::Config;

#[derive(Parser)]
#[command(
    name = "strata",
    version,
    about = "Strata: a distributed time-series database"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every role in one process, with data on local disk.
    Standalone {
        /// A TOML configuration file (see docs/config/).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where data lives (default ./strata-data).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// gRPC listen address (default 127.0.0.1:8831).
        #[arg(long)]
        grpc_addr: Option<std::net::SocketAddr>,
        /// HTTP listen address (default 127.0.0.1:5440).
        #[arg(long)]
        http_addr: Option<std::net::SocketAddr>,
    },
    /// Run SQL against a Strata node: `-e`, `-f`, or an interactive shell.
    Sql {
        /// The node's gRPC address.
        #[arg(long, default_value = "127.0.0.1:8831")]
        endpoint: String,
        /// Statements to run.
        #[arg(short = 'e', long = "execute", conflicts_with = "file")]
        execute: Option<String>,
        /// A file of statements to run.
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// Output format: table, csv or json.
        #[arg(long, default_value = "table")]
        format: Format,
        /// The database to start in.
        #[arg(short = 'd', long, default_value = "public")]
        database: String,
    },
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

async fn standalone(
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    grpc_addr: Option<std::net::SocketAddr>,
    http_addr: Option<std::net::SocketAddr>,
) -> Result<(), String> {
    let mut cfg = Config::load(config.as_deref(), std::env::vars()).map_err(|e| e.to_string())?;
    if let Some(d) = data_dir {
        cfg.server.data_dir = d;
    }
    if let Some(a) = grpc_addr {
        cfg.server.grpc_addr = a;
    }
    if let Some(a) = http_addr {
        cfg.server.http_addr = a;
    }
    init_logging(&cfg.log.level);
    strata_server::standalone::run(cfg)
        .await
        .map_err(|e| e.to_string())
}

async fn sql(
    endpoint: String,
    execute: Option<String>,
    file: Option<PathBuf>,
    format: Format,
    database: String,
) -> Result<(), String> {
    let opts = ShellOptions {
        endpoint,
        database,
        format,
    };
    let text = match (execute, file) {
        (Some(sql), _) => Some(sql),
        (None, Some(path)) => Some(
            std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        ),
        (None, None) => None,
    };
    match text {
        Some(sql) => shell::run_batch(&opts, &sql)
            .await
            .map_err(|e| e.to_string()),
        None => shell::run_interactive(&opts)
            .await
            .map_err(|e| e.to_string()),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Standalone {
            config,
            data_dir,
            grpc_addr,
            http_addr,
        } => standalone(config, data_dir, grpc_addr, http_addr).await,
        Command::Sql {
            endpoint,
            execute,
            file,
            format,
            database,
        } => sql(endpoint, execute, file, format, database).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::FAILURE
        }
    }
}
