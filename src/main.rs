use std::process::ExitCode;

/// mimalloc: fewer cycles per allocation than glibc's malloc on the request path, and less
/// memory per cached key (both measured; BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use keygate::cli::{Cli, Command};
use keygate::config::{Config, LogConfig};
use keygate::{app, client, echo, huge_pages, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match Config::load(&config) {
            Ok(cfg) => {
                print!("{}", cfg.redacted_yaml());
                eprintln!("{}: OK", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", config.display());
                ExitCode::from(2)
            }
        },
        Command::Serve { config } => {
            let cfg = match Config::load(&config) {
                Ok(cfg) => cfg,
                Err(e) => {
                    eprintln!("keygate: {}: {e}", config.display());
                    return ExitCode::from(2);
                }
            };
            let _log_writer = telemetry::init_logging(&cfg.log);
            // Before the caches and pools take their memory (see `keygate::huge_pages`).
            match huge_pages::disable_for_this_process() {
                Ok(()) => tracing::debug!("transparent huge pages off for this process"),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot turn transparent huge pages off; a cache filling from empty may stall requests while the kernel zeroes huge pages")
                }
            }
            run_async(app::run(cfg, config))
        }
        Command::Echo { listen } => {
            let _log_writer = telemetry::init_logging(&LogConfig::default());
            run_async(async move { echo::run(listen).await.map_err(|e| e.to_string()) })
        }
        Command::Client(command) => client::run(*command),
    }
}

fn run_async(fut: impl std::future::Future<Output = Result<(), String>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keygate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("keygate: {e}");
            ExitCode::FAILURE
        }
    }
}
