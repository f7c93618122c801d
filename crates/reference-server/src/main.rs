//! The `kiln` binary: `kiln serve` runs the control plane; the other subcommands are the
//! operator CLI (they talk to a server's API, or to its database for `kiln user add`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kiln_server::client::{Client, ClientArgs, print_nodes, print_tasks};
use kiln_server::config::{Config, ServeArgs};
use kiln_server::server;

/// Kiln: run coding-agent tasks on demand.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the control plane (API, UI, node protocol, pool and runner).
    Serve(ServeArgs),
    /// Users (operators: works on the database directly).
    #[command(subcommand)]
    User(UserCommand),
    /// Tasks.
    #[command(subcommand)]
    Task(TaskCommand),
    /// Nodes.
    #[command(subcommand)]
    Node(NodeCommand),
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create a user (if needed) and print a new API token for it.
    Add {
        /// The user's name.
        name: String,
        /// The token's name.
        #[arg(long, default_value = "cli")]
        token_name: String,
        #[command(flatten)]
        serve: ServeArgs,
    },
    /// Print a one-time browser login link for a user (created if needed).
    LoginLink {
        /// The user's name.
        #[arg(default_value = server::ADMIN_USER)]
        name: String,
        #[command(flatten)]
        serve: ServeArgs,
    },
}

#[derive(Debug, Subcommand)]
enum TaskCommand {
    /// Create a task and run it now, following its status and messages until it ends.
    Run {
        /// The project's id or name.
        project: String,
        /// What the agent should do.
        description: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List tasks.
    List {
        /// Only this project (id or name).
        #[arg(long)]
        project: Option<String>,
        /// Only these statuses (comma separated).
        #[arg(long)]
        status: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// List your nodes with their state and warm deadline.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

fn resolve(args: ServeArgs) -> Result<Config, String> {
    Config::resolve(args).map_err(|e| e.to_string())
}

async fn operator_state(args: ServeArgs) -> Result<kiln_server::AppState, String> {
    let config = resolve(args)?;
    let store = server::open_store(&config)
        .await
        .map_err(|e| e.to_string())?;
    let key = server::load_secret_key(&config).map_err(|e| e.to_string())?;
    let provider = server::provider(&config).map_err(|e| e.to_string())?;
    Ok(
        server::assemble(&config, store, provider, key, &config.public_url)
            .await
            .map_err(|e| e.to_string())?
            .state,
    )
}

async fn run(cli: Cli) -> Result<ExitCode, String> {
    let mut out = std::io::stdout();
    match cli.command {
        Command::Serve(args) => {
            let config = resolve(args)?;
            let provider = server::provider(&config).map_err(|e| e.to_string())?;
            server::serve(config, provider, shutdown_signal())
                .await
                .map_err(|e| e.to_string())?;
        }
        Command::User(UserCommand::Add {
            name,
            token_name,
            serve,
        }) => {
            let state = operator_state(serve).await?;
            let user = kiln_server::auth::ensure_user(&state, &name)
                .await
                .map_err(|e| e.message)?;
            let (_, secret) = kiln_server::auth::issue_token(&state, user.id, &token_name, None)
                .await
                .map_err(|e| e.message)?;
            println!("{secret}");
        }
        Command::User(UserCommand::LoginLink { name, serve }) => {
            let state = operator_state(serve).await?;
            let link = server::login_link(&state, &name)
                .await
                .map_err(|e| e.message)?;
            println!("{link}");
        }
        Command::Task(TaskCommand::Run {
            project,
            description,
            client,
        }) => {
            let task = Client::new(&client)
                .run_task(&project, &description, &mut out)
                .await
                .map_err(|e| e.to_string())?;
            if task.status != kiln_core::TaskStatus::Completed {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Task(TaskCommand::List {
            project,
            status,
            client,
        }) => {
            let tasks = Client::new(&client)
                .tasks(project.as_deref(), status.as_deref())
                .await
                .map_err(|e| e.to_string())?;
            print_tasks(&tasks, &mut out);
        }
        Command::Node(NodeCommand::List { client }) => {
            let nodes = Client::new(&client)
                .nodes()
                .await
                .map_err(|e| e.to_string())?;
            print_nodes(&nodes, &mut out);
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli).await {
        Ok(code) => code,
        Err(message) => {
            eprintln!("kiln: {message}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
