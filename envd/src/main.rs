//! The `envd` binary: parse flags, become init if we are PID 1, serve.

use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser as _;
use envd::config::EnvdConfig;

fn main() -> anyhow::Result<()> {
    let config = EnvdConfig::parse();
    init_tracing(config.log_json);
    let is_init = std::process::id() == 1;
    if is_init {
        if let Err(e) = envd::pid1::setup(&config) {
            // Keep going: a sandbox with a broken mount or network still
            // serves what it can, and the log says why.
            eprintln!("envd: init setup: {:#}", anyhow::Error::from(e));
        }
        // PID 1 stays behind to reap and power off; the server continues here.
        envd::pid1::fork_server().context("start the server process")?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    runtime.block_on(run(config, is_init))
}

async fn run(config: EnvdConfig, is_init: bool) -> anyhow::Result<()> {
    if config.ensure_default_user && !is_init {
        envd::pid1::ensure_user(&config.default_user).context("create default user")?;
    }
    let addr = config.listen_addr();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind {addr}"))?;
    tracing::info!(%addr, version = envd::ENVD_VERSION, is_init, "envd listening");
    let app = envd::server::app(Arc::new(config), is_init);
    envd::server::serve(listener, app, shutdown_signal())
        .await
        .context("serve")?;
    tracing::info!("envd stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: logs usually land in files or the serial console.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
