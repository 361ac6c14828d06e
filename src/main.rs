//! The `ladder` command line: `serve`, `fake-provider`, `demo`, `route`, `train`, `eval`.

use clap::{Parser, Subcommand};
use ladder::config::Config;
use ladder::server::{AppState, serve, shutdown_signal};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(name = "ladder", version, about = "Ladder: a self-hosted smart LLM router")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the router.
    Serve {
        #[arg(long)]
        config: PathBuf,
        /// Overrides server.listen.
        #[arg(long)]
        listen: Option<String>,
    },
    /// Run a local fake of the upstream APIs (OpenAI chat completions and Anthropic Messages).
    FakeProvider {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: String,
        /// Scenario TOML scripting per-model behaviour (faults, latency, ability).
        #[arg(long)]
        scenario: Option<PathBuf>,
    },
    /// Run the router with a fake provider fleet and an example catalogue (no API keys needed).
    Demo {
        #[arg(long, default_value = "127.0.0.1:4000")]
        listen: String,
        /// Exit after the guided tour instead of serving.
        #[arg(long)]
        tour_only: bool,
    },
    /// Print the routing decision for a prompt (no server, no upstream call).
    Route {
        prompt: String,
        /// Config whose catalogue to route over (default: the demo catalogue).
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        system: Option<String>,
        /// Task hint.
        #[arg(long)]
        task: Option<String>,
        #[arg(long)]
        min_quality: Option<f64>,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("LADDER_LOG").unwrap_or_else(|_| "ladder=info,warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run(cli.command))
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve { config, listen } => {
            let mut config = Config::load(&config)?;
            if let Some(l) = listen {
                config.server.listen = l;
                config.validate()?;
            }
            let listen = config.server.listen.clone();
            let state = Arc::new(AppState::build(config)?);
            let listener = tokio::net::TcpListener::bind(&listen).await.map_err(|e| anyhow::anyhow!("binding {listen}: {e}"))?;
            tracing::info!(addr = %listener.local_addr()?, classifier = %state.scorer.describe(), "ladder listening");
            serve(state, listener, shutdown_signal()).await
        }
        Command::FakeProvider { listen, scenario } => {
            let scenario = match scenario {
                Some(p) => ladder::fake_provider::Scenario::load(&p)?,
                None => ladder::fake_provider::Scenario::default(),
            };
            let listener = tokio::net::TcpListener::bind(&listen).await.map_err(|e| anyhow::anyhow!("binding {listen}: {e}"))?;
            tracing::info!(addr = %listener.local_addr()?, "fake provider listening");
            ladder::fake_provider::serve(listener, scenario, shutdown_signal()).await
        }
        Command::Demo { listen, tour_only } => ladder::demo::run(&listen, tour_only).await,
        Command::Route { prompt, config, system, task, min_quality } => {
            let config = match config {
                Some(p) => Config::load(&p)?,
                None => ladder::demo::demo_config(
                    "127.0.0.1:1",
                    &std::env::temp_dir().join("ladder-route.db"),
                    std::path::Path::new("models/all-MiniLM-L6-v2"),
                    std::path::Path::new("models/heads"),
                )?,
            };
            let mut messages = Vec::new();
            if let Some(s) = system {
                messages.push(serde_json::json!({"role": "system", "content": s}));
            }
            messages.push(serde_json::json!({"role": "user", "content": prompt}));
            let mut body = serde_json::json!({"model": "auto", "messages": messages});
            if task.is_some() || min_quality.is_some() {
                body["ladder"] = serde_json::json!({"task": task, "min_quality": min_quality});
            }
            let decision = ladder::server::chat::route_decision(config, &body).await?;
            println!("{}", serde_json::to_string_pretty(&decision)?);
            Ok(())
        }
    }
}
