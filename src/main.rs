//! The `ladder` command line: `serve`, `fake-provider`, `demo`, `route`, `train`, `eval`, `keys`.

use clap::{Parser, Subcommand};
use ladder::config::{Config, StoreConfig};
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
enum HeadsAction {
    /// All versions, with their held-out metrics; `*` marks the current one.
    List,
    /// Make VERSION current (then reload the server: POST /v1/admin/reload or SIGHUP).
    Rollback { version: String },
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
    /// Manage virtual API keys: create (prints the key once), list, revoke.
    Keys {
        #[command(subcommand)]
        command: ladder::auth::cli::KeysCommand,
    },
    /// Run a local fake of the upstream APIs (OpenAI chat completions, Anthropic Messages, Gemini).
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
        /// Fine-tune the current heads on the outcomes in the decision log (plus the seed data when present).
        #[arg(long)]
        from_log: bool,
        /// Only decisions since this time (RFC 3339 or unix seconds).
        #[arg(long)]
        since: Option<String>,
        /// The server's config: its decision log (`[store]`, SQLite or Postgres) and catalogue.
        #[arg(long)]
        config: Option<PathBuf>,
        /// An SQLite decision log to read instead (default: the config's `[store]`, else ladder.db).
        #[arg(long)]
        db: Option<PathBuf>,
    },
    /// List heads versions, or make an earlier one current again.
    Heads {
        #[command(subcommand)]
        action: HeadsAction,
        #[arg(long, default_value = "models/heads", global = true)]
        heads_dir: PathBuf,
    },
    /// What-if: re-route logged decisions under another threshold, without calling any upstream.
    Replay {
        #[arg(long)]
        threshold: f64,
        #[arg(long)]
        since: Option<String>,
        /// The catalogue to replay under (and its decision log, `[store]`).
        #[arg(long)]
        config: PathBuf,
        /// An SQLite decision log to read instead of the config's `[store]`.
        #[arg(long)]
        db: Option<PathBuf>,
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
        /// Precision of the encoder's linear layers (auto, f32 or int8), as `[classifier] precision`.
        #[arg(long, default_value = "auto")]
        precision: ladder::classifier::Precision,
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
            from_log,
            since,
            config,
            db,
        } => {
            if from_log {
                let config = config.map(|p| Config::load(&p)).transpose()?;
                let store = match (db, &config) {
                    (Some(path), _) => StoreConfig::sqlite(path),
                    (None, Some(c)) => c.store.clone(),
                    (None, None) => StoreConfig::default(),
                };
                let since_ms = since.as_deref().map(parse_since).transpose()?;
                let opts = ladder::training::from_log::FromLogOptions {
                    store,
                    since_ms,
                    config,
                    heads_dir,
                    model_dir,
                    data: ladder::training::data::DataPaths {
                        shared: data,
                        training: training_dir,
                    },
                    dry_run,
                };
                let report = ladder::training::from_log::train_from_log(&opts)?;
                println!("{}", report.table());
                if report.accepted && !dry_run {
                    println!(
                        "wrote {} and made it current; reload a running server with POST /v1/admin/reload or SIGHUP",
                        report.new.manifest.version
                    );
                } else if dry_run {
                    println!("dry run: nothing written");
                }
                return Ok(());
            }
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
        Command::Heads { action, heads_dir } => {
            let store = ladder::classifier::heads::HeadsStore::new(&heads_dir);
            match action {
                HeadsAction::List => {
                    let current = store.current_version().unwrap_or_default();
                    for v in store.versions()? {
                        let h = ladder::classifier::heads::Heads::load(&heads_dir.join(&v));
                        let summary = match h {
                            Ok(h) => {
                                let m = &h.manifest.metrics;
                                let pick = |k: &str| m.get(k).and_then(|x| x.as_f64()).map(|x| format!("{x:.3}")).unwrap_or("-".into());
                                let log = m
                                    .pointer("/log_holdout/log_loss")
                                    .and_then(|x| x.as_f64())
                                    .map(|x| format!(" log-loss {x:.3}"))
                                    .unwrap_or_default();
                                format!(
                                    "created {}  APGR {}  task acc {}{log}",
                                    h.manifest.created_at,
                                    pick("apgr"),
                                    pick("task_accuracy")
                                )
                            }
                            Err(e) => format!("unreadable: {e}"),
                        };
                        println!("{} {v}  {summary}", if v == current { "*" } else { " " });
                    }
                }
                HeadsAction::Rollback { version } => {
                    ladder::classifier::heads::Heads::load(&heads_dir.join(&version))?;
                    store.set_current(&version)?;
                    println!("{version} is current; reload a running server with POST /v1/admin/reload or SIGHUP");
                }
            }
            return Ok(());
        }
        Command::Replay {
            threshold,
            since,
            config,
            db,
        } => {
            let mut config = Config::load(&config)?;
            if !(threshold > 0.0 && threshold < 1.0) {
                anyhow::bail!("--threshold must be strictly between 0 and 1");
            }
            let store = db.map_or_else(|| config.store.clone(), StoreConfig::sqlite);
            let since_ms = since.as_deref().map(parse_since).transpose()?;
            let (mut records, _) = ladder::store::read_log(&store, since_ms)?;
            let log_name = ladder::store::db::Database::from_config(&store)?.describe();
            if config.classifier.enabled
                && let Ok(h) = ladder::classifier::heads::HeadsStore::new(&config.classifier.heads_dir).load_current()
            {
                for r in &mut records {
                    if let Some(s) = r.scores.as_mut() {
                        s.abilities = Some(h.abilities.clone());
                    }
                }
            }
            let logged_threshold = config.routing.threshold;
            config.routing.threshold = threshold;
            let report = ladder::analytics::replay(&config, &records);
            println!(
                "replayed {} decisions from {} (skipped {}) at threshold {threshold} (config: {logged_threshold})",
                report.decisions, log_name, report.skipped
            );
            println!(
                "first choice changed for {} ({:.1}%)",
                report.changed,
                100.0 * report.changed as f64 / report.decisions.max(1) as f64
            );
            println!("{:<20} {:>10} {:>10}", "model", "logged", "replayed");
            let mut models: Vec<&String> = report.picks_before.keys().chain(report.picks_after.keys()).collect();
            models.sort();
            models.dedup();
            for m in models {
                println!(
                    "{m:<20} {:>10} {:>10}",
                    report.picks_before.get(m).unwrap_or(&0),
                    report.picks_after.get(m).unwrap_or(&0)
                );
            }
            println!(
                "mean expected cost  ${:.6} -> ${:.6}",
                report.expected_cost_before_usd, report.expected_cost_after_usd
            );
            println!(
                "mean expected P(success) {:.3} -> {:.3}",
                report.expected_success_before, report.expected_success_after
            );
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
            precision,
        } => {
            return eval_command(
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
                precision,
            );
        }
        Command::Keys { command } => return ladder::auth::cli::run(command),
        _ => {}
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run(cli.command))
}

/// `--since`: RFC 3339 or unix seconds, as milliseconds.
fn parse_since(v: &str) -> anyhow::Result<i64> {
    ladder::server::decisions::parse_time("since", v).map_err(|e| anyhow::anyhow!("{}", e.message))
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
    precision: ladder::classifier::Precision,
) -> anyhow::Result<()> {
    use ladder::training;
    let heads = training::load_heads(&heads_dir, heads.as_deref())?;
    let encoder = ladder::classifier::encoder::Encoder::load_with(&model_dir, 256, precision)?;
    // Embeddings are cached per precision (the f32 file is the one training writes).
    let mut cache = training::EmbeddingCache::in_dir_for(&training_dir.join("cache"), encoder.precision());
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
        v["precision"] = serde_json::json!(encoder.describe());
        println!("{}", serde_json::to_string(&v)?);
    } else {
        println!(
            "heads {} (encoder {})\n{}",
            heads.manifest.version,
            encoder.describe(),
            report.table()
        );
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
        Command::Train { .. } | Command::Eval { .. } | Command::Keys { .. } | Command::Heads { .. } | Command::Replay { .. } => {
            unreachable!("handled before the runtime starts")
        }
    }
}
