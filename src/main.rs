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
    /// Fit new classifier heads from the seed data and write a new heads version.
    Train {
        /// The shared data folder (routellm-outcomes, routerbench-zs).
        #[arg(long, default_value = "../shared/data")]
        data: PathBuf,
        #[arg(long, default_value = "training")]
        training_dir: PathBuf,
        #[arg(long, default_value = "models/all-MiniLM-L6-v2")]
        model_dir: PathBuf,
        #[arg(long, default_value = "models/heads")]
        heads_dir: PathBuf,
        /// Prompts sampled per dataset source for the task head.
        #[arg(long, default_value_t = 100)]
        per_source: usize,
        /// Print the comparison without writing anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// Evaluate the current heads: task accuracy, router metrics (APGR, CPT, ECE), cost-quality curve.
    Eval {
        #[arg(long, default_value = "../shared/data")]
        data: PathBuf,
        #[arg(long, default_value = "training")]
        training_dir: PathBuf,
        #[arg(long, default_value = "models/all-MiniLM-L6-v2")]
        model_dir: PathBuf,
        #[arg(long, default_value = "models/heads")]
        heads_dir: PathBuf,
        /// A heads version (default: CURRENT).
        #[arg(long)]
        heads: Option<String>,
        /// Evaluate on this outcome file (routellm-outcomes format) instead of the validation splits.
        #[arg(long)]
        outcomes: Option<PathBuf>,
        #[arg(long)]
        weak: Option<String>,
        #[arg(long)]
        strong: Option<String>,
        /// Print one JSON object (apgr, cpt50, cpt80, ece, n, ...).
        #[arg(long)]
        json: bool,
        /// Where to write the cost-quality curve (SVG).
        #[arg(long, default_value = "training/reports/cost-quality.svg")]
        plot: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("LADDER_LOG").unwrap_or_else(|_| "ladder=info,warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Train {
            data,
            training_dir,
            model_dir,
            heads_dir,
            per_source,
            dry_run,
        } => {
            let opts = ladder::training::TrainOptions {
                data: ladder::training::data::DataPaths {
                    shared: data,
                    training: training_dir,
                },
                model_dir,
                heads_dir,
                max_tokens: 256,
                dry_run,
                per_source,
            };
            ladder::training::train(&opts)?;
            return Ok(());
        }
        Command::Eval {
            data,
            training_dir,
            model_dir,
            heads_dir,
            heads,
            outcomes,
            weak,
            strong,
            json,
            plot,
        } => {
            return eval_command(data, training_dir, model_dir, heads_dir, heads, outcomes, weak, strong, json, plot);
        }
        _ => {}
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run(cli.command))
}

#[allow(clippy::too_many_arguments)]
fn eval_command(
    data: PathBuf,
    training_dir: PathBuf,
    model_dir: PathBuf,
    heads_dir: PathBuf,
    heads: Option<String>,
    outcomes: Option<PathBuf>,
    weak: Option<String>,
    strong: Option<String>,
    json: bool,
    plot: PathBuf,
) -> anyhow::Result<()> {
    use ladder::training;
    let heads = training::load_heads(&heads_dir, heads.as_deref())?;
    let encoder = ladder::classifier::encoder::Encoder::load(&model_dir, 256)?;
    let mut cache = training::EmbeddingCache::in_dir(&training_dir.join("cache"));
    let report = match &outcomes {
        Some(file) => training::evaluate_file(&heads, &encoder, &mut cache, file, weak.as_deref(), strong.as_deref(), 256)?,
        None => {
            let paths = training::data::DataPaths {
                shared: data,
                training: training_dir,
            };
            if !paths.shared_available() {
                anyhow::bail!("no outcome data at {} (pass --data or --outcomes FILE)", paths.shared.display());
            }
            training::evaluate_heads(&heads, &encoder, &mut cache, &paths, 256)?
        }
    };
    if json {
        let mut v = report.to_json();
        v["heads_version"] = serde_json::json!(heads.manifest.version);
        println!("{}", serde_json::to_string(&v)?);
    } else {
        println!("heads {}\n{}", heads.manifest.version, report.table());
    }
    if outcomes.is_none() {
        let mut series: Vec<(&str, &training::eval::RouterMetrics)> = report.routers.iter().map(|(n, m)| (n.as_str(), m)).collect();
        if let Some((n, m)) = report.baselines.first() {
            series.push((n.as_str(), m));
        }
        if let Some(dir) = plot.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(
            &plot,
            training::eval::curves_svg("Ladder on RouteLLM validation splits (Mixtral-8x7B vs GPT-4)", &series),
        )?;
        if !json {
            println!("cost-quality curve written to {}", plot.display());
        }
    }
    Ok(())
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
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .map_err(|e| anyhow::anyhow!("binding {listen}: {e}"))?;
            tracing::info!(addr = %listener.local_addr()?, classifier = %state.scorer.describe(), "ladder listening");
            serve(state, listener, shutdown_signal()).await
        }
        Command::FakeProvider { listen, scenario } => {
            let scenario = match scenario {
                Some(p) => ladder::fake_provider::Scenario::load(&p)?,
                None => ladder::fake_provider::Scenario::default(),
            };
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .map_err(|e| anyhow::anyhow!("binding {listen}: {e}"))?;
            tracing::info!(addr = %listener.local_addr()?, "fake provider listening");
            ladder::fake_provider::serve(listener, scenario, shutdown_signal()).await
        }
        Command::Demo { listen, tour_only } => ladder::demo::run(&listen, tour_only).await,
        Command::Route {
            prompt,
            config,
            system,
            task,
            min_quality,
        } => {
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
        Command::Train { .. } | Command::Eval { .. } => unreachable!("handled before the runtime starts"),
    }
}
