//! The command line (CONTRACT §2).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "keygate", version, about = "API-key authentication gateway")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve {
        #[arg(long, env = "KEYGATE_CONFIG", value_name = "PATH")]
        config: PathBuf,
    },
    /// Validate a config file and print the effective config with secrets redacted.
    CheckConfig {
        #[arg(long, env = "KEYGATE_CONFIG", value_name = "PATH")]
        config: PathBuf,
    },
    /// Run a small upstream that answers every request with a JSON description of it.
    Echo {
        #[arg(long, default_value = "127.0.0.1:9000", value_name = "ADDR")]
        listen: SocketAddr,
    },
}
