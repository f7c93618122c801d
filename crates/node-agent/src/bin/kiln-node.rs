//! `kiln-node`: the agent host on a node. Configured by environment variables; see
//! [`kiln_node::config::NodeConfig`]. Exits 0 when the control plane stops the node.
//!
//! `kiln-node git-credential <action>` is the git credential helper `kiln-node` gives its own
//! git commands ([`kiln_node::credentials`]); it is not meant to be run by hand.

use std::process::ExitCode;
use std::sync::Arc;

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some(kiln_node::credentials::HELPER_SUBCOMMAND) {
        // Git's credential helper: stdout is the answer to git, so nothing else goes there.
        let action = args.next();
        return ExitCode::from(kiln_node::credentials::run_helper(
            action.as_deref(),
            &mut std::io::stdin(),
            &mut std::io::stdout(),
        ));
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = match kiln_node::config::NodeConfig::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("kiln-node: {e}");
            return ExitCode::from(2);
        }
    };
    let routes = match kiln_node::outbox::OutboxRoutes::open_from_env(&config).await {
        Ok(routes) => Arc::new(routes),
        Err(e) => {
            eprintln!("kiln-node: outbox: {e}");
            return ExitCode::from(2);
        }
    };
    let drain = config.destroy_drain;
    let node = match kiln_node::Node::start(config, routes.clone()).await {
        Ok(node) => node,
        Err(e) => {
            eprintln!("kiln-node: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stop = node.stop_handle();
    tokio::spawn(async move {
        shutdown_signal().await;
        stop.send_replace(true);
    });
    match node.run().await {
        Ok(exit) => {
            // Give undelivered messages a last chance; whatever is left stays on disk.
            let left = routes.drain(drain).await;
            tracing::info!(?exit, undelivered = left, "kiln-node exiting");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kiln-node: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
