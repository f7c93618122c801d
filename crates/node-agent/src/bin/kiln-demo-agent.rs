//! `kiln-demo-agent`: an offline ACP agent speaking JSON-RPC on stdin/stdout.
//! See [`kiln_node::demo`] for what it does and how to configure it.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // stdout carries the protocol: logs go to stderr.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KILN_DEMO_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match kiln_node::demo::run_stdio().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kiln-demo-agent: {e:?}");
            std::process::ExitCode::FAILURE
        }
    }
}
