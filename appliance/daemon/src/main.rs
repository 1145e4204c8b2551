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
    /// Run the appliance: E2B REST API and sandbox proxy on one listener.
    Serve(ServeArgs),
    /// Report which VM drivers work on this host, and why.
    Doctor {
        /// Guest kernel for the KVM probe boot (default: from the built image manifest).
        #[arg(long, env = "LELANTOS_KERNEL")]
        kernel: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show what the template reconciler last concluded, per template.
    Status {
        /// Where the appliance keeps its state.
        #[arg(long, env = "LELANTOS_DATA_DIR", default_value = "/var/lib/lelantos")]
        data_dir: PathBuf,
    },
    /// Manage API keys (`X-API-Key`); only their hashes are stored.
    Keys {
        /// Where the appliance keeps its state.
        #[arg(
            long,
            global = true,
            env = "LELANTOS_DATA_DIR",
            default_value = "/var/lib/lelantos"
        )]
        data_dir: PathBuf,
        #[command(subcommand)]
        action: KeysAction,
    },
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Config file (default: the built-in defaults, as in config/lelantos.yaml).
    #[arg(long, env = "LELANTOS_CONFIG")]
    config: Option<PathBuf>,
    /// Where state, VM disks and built images live (`data_dir`).
    #[arg(long, env = "LELANTOS_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// REST API + sandbox proxy address (`listen.api`).
    #[arg(long, env = "LELANTOS_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// Prometheus address (`listen.metrics`), or `none`.
    #[arg(long, env = "LELANTOS_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// Template definitions (`templates_dir`).
    #[arg(long, env = "LELANTOS_TEMPLATES_DIR")]
    templates_dir: Option<PathBuf>,
    /// A built guest image manifest (`lelantos-image build` prints its path).
    #[arg(long, env = "LELANTOS_IMAGE_MANIFEST")]
    image_manifest: Option<PathBuf>,
    /// Static envd binary to build the guest image from, when no manifest is given.
    #[arg(long, env = "LELANTOS_ENVD")]
    envd: Option<PathBuf>,
}

impl ServeArgs {
    fn overrides(self) -> anyhow::Result<lelantos::serve::Overrides> {
        let metrics_listen = match self.metrics_listen.as_deref() {
            None => None,
            Some("none" | "") => Some(None),
            Some(addr) => Some(Some(addr.parse().map_err(|e| {
                anyhow::anyhow!("--metrics-listen {addr}: {e} (or `none`)")
            })?)),
        };
        Ok(lelantos::serve::Overrides {
            config: self.config,
            data_dir: self.data_dir,
            listen: self.listen,
            metrics_listen,
            templates_dir: self.templates_dir,
            image_manifest: self.image_manifest,
            envd: self.envd,
        })
    }
}

#[derive(Debug, Subcommand)]
enum KeysAction {
    /// Create a key; the key itself is the last line printed.
    Create {
        /// A name to recognise the key by.
        #[arg(long, default_value = "default")]
        name: String,
    },
    /// List keys (never the keys themselves).
    List,
    /// Revoke a key by id or hint.
    Revoke {
        /// Key id, or its hint (`abcd`, `lel_…abcd`).
        key: String,
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
        Command::Serve(args) => lelantos::serve::run(args.overrides()?).await?,
        Command::Doctor { kernel, json } => {
            let report = lelantos::doctor::run(kernel.as_deref()).await;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", lelantos::doctor::render(&report));
            }
        }
        Command::Status { data_dir } => {
            lelantos::reconcile::cli::print_status(&mut std::io::stdout().lock(), &data_dir)?;
        }
        Command::Keys { data_dir, action } => match action {
            KeysAction::Create { name } => lelantos::keys::cli::create(&data_dir, &name)?,
            KeysAction::List => lelantos::keys::cli::list(&data_dir)?,
            KeysAction::Revoke { key } => lelantos::keys::cli::revoke(&data_dir, &key)?,
        },
    }
    Ok(())
}
