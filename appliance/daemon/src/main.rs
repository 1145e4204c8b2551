//! The `lelantos` binary: wiring only.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "lelantos",
    version,
    about = "Self-hosted E2B-compatible microVM sandbox appliance"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Report which VM drivers work on this host, and why.
    Doctor {
        /// Guest kernel for the KVM probe boot (default: from the built image manifest).
        #[arg(long, env = "LELANTOS_KERNEL")]
        kernel: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: logs usually land in files or the serial console.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Command::Doctor { kernel, json } => {
            let report = lelantos::doctor::run(kernel.as_deref()).await;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", lelantos::doctor::render(&report));
            }
        }
    }
    Ok(())
}
