//! The typed, validated configuration: providers, the model catalogue, routing, timeouts, retries,
//! the circuit breaker, the decision log and the classifier.
//!
//! Loaded once from TOML at start-up. Unknown keys are rejected (a typo must not silently disable a
//! setting) and [`Config::validate`] checks every cross-reference, so a bad config fails before the
//! server listens, with a message that names the offending field.

use crate::task::Task;
use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub classifier: ClassifierConfig,
    #[serde(default)]
    pub routing: RoutingConfig,
    #[serde(default)]
    pub timeouts: TimeoutConfig,
    #[serde(default)]
    pub retries: RetryConfig,
    #[serde(default)]
    pub breaker: BreakerConfig,
    #[serde(default)]
    pub checks: CheckConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    pub providers: Vec<ProviderConfig>,
    pub models: Vec<ModelConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: String,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// How long SIGTERM waits for in-flight requests before giving up on them.
    pub shutdown_grace_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:4000".into(),
            max_body_bytes: 4 * 1024 * 1024,
            shutdown_grace_ms: 30_000,
        }
    }
}

/// Where the decision log (and the keys table) lives: an SQLite file (`path`, the default) or a
/// Postgres database (`url`) that several replicas can share.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// SQLite database file (WAL mode); `ladder.db` when neither `path` nor `url` is set.
    pub path: Option<PathBuf>,
    /// Postgres instead of SQLite: `postgres://USER@HOST[:PORT]/DATABASE`.
    pub url: Option<String>,
    /// Name of the environment variable holding the Postgres password (keep it out of the file).
    pub password_env: Option<String>,
    /// How long connecting to Postgres may take before start-up fails (or a reconnection retries).
    pub connect_timeout_ms: u64,
    /// Keep prompt text in decision records; when false only its SHA-256 is kept.
    pub keep_prompts: bool,
    /// Most records committed in one transaction.
    pub max_batch: usize,
    /// Release a response only after its decision record is committed (the default): every
    /// answer a client saw has its record, even across `kill -9`. `false` releases the response
    /// at once and commits in the background (records are still never dropped on a clean
    /// shutdown, but a crash can lose the last batch); it trims the added tail latency.
    pub wait_for_commit: bool,
    /// SQLite: the size in MiB past which the write-ahead log is rewound. Under steady writes
    /// SQLite's non-blocking checkpoints never catch the log up, so it never rewinds by itself;
    /// past this size the writer runs a RESTART checkpoint between two batches, which holds it
    /// for a moment (the frames of the last second, and an fsync), once per this many MiB.
    pub wal_max_mb: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: None,
            url: None,
            password_env: None,
            connect_timeout_ms: 5_000,
            keep_prompts: true,
            max_batch: 256,
            wait_for_commit: true,
            wal_max_mb: 256,
        }
    }
}

impl StoreConfig {
    /// An SQLite log at `path`, other settings default.
    pub fn sqlite(path: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            path: Some(path.into()),
            ..StoreConfig::default()
        }
    }

    /// The SQLite file (meaningful when `url` is not set).
    pub fn sqlite_path(&self) -> PathBuf {
        self.path.clone().unwrap_or_else(|| PathBuf::from("ladder.db"))
    }

    /// Checks the fields without connecting; every message names the field.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.max_batch == 0 {
            bail!("store.max_batch: must be positive");
        }
        if self.wal_max_mb == 0 {
            bail!("store.wal_max_mb: must be positive");
        }
        if let Some(env) = &self.password_env
            && (env.is_empty() || env.contains(char::is_whitespace) || env.contains('='))
        {
            bail!("store.password_env: '{env}' is not an environment variable name");
        }
        let Some(url) = &self.url else {
            if self.password_env.is_some() {
                bail!("store.password_env: only used with store.url (Postgres)");
            }
            return Ok(());
        };
        if self.path.is_some() {
            bail!("store: set either path (SQLite) or url (Postgres), not both");
        }
        let pg = crate::store::pg::parse_url(url)?;
        if pg.get_password().is_some() && self.password_env.is_some() {
            bail!("store.password_env: store.url already has a password; keep only one (preferably the variable)");
        }
        if self.connect_timeout_ms == 0 {
            bail!("store.connect_timeout_ms: must be positive");
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassifierConfig {
    /// Score prompts with the embedding model. When false, `auto` routes on hints and the default task.
    pub enabled: bool,
    /// Sentence-encoder directory (config.json, model.safetensors, tokenizer.json).
    pub model_dir: PathBuf,
    /// Directory holding the trained heads (`current.json` names the active version).
    pub heads_dir: PathBuf,
    /// Inference workers, each running whole batches; 0 (the default) means one per CPU core.
    pub workers: usize,
    /// Threads each worker's forward pass may use. 1 (the default) with one worker per core
    /// runs batches side by side, one per core: 1.7x the distinct-prompt throughput of one
    /// worker splitting every product over both cores (benches/RESULTS.md). N gives each worker
    /// its own N-thread pool; 0 shares the process-wide rayon pool (one batch gets every core:
    /// the lowest latency for a lone prompt on an idle server).
    pub threads_per_worker: usize,
    /// Largest batch one forward pass takes.
    pub max_batch: usize,
    /// Prompts waiting for inference; when full, requests route by the fallback policy instead.
    pub queue_capacity: usize,
    /// Token budget per prompt (the encoder's limit is 256).
    pub max_tokens: usize,
    /// Cached embeddings for repeated prompts (0 disables the cache).
    pub cache_entries: usize,
    /// Precision of the encoder's linear layers: "auto" (int8 where the CPU has AVX-512 VNNI,
    /// else f32), "f32" (the reference) or "int8" (a portable kernel where VNNI is missing;
    /// cosine >= 0.99 to the f32 embeddings, routing metrics unchanged, see benches/RESULTS.md).
    pub precision: crate::classifier::Precision,
}

impl ClassifierConfig {
    /// The number of inference workers to start: `workers`, or one per CPU core when it is 0.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        ClassifierConfig {
            enabled: true,
            model_dir: PathBuf::from("models/all-MiniLM-L6-v2"),
            heads_dir: PathBuf::from("models/heads"),
            workers: 0,
            threads_per_worker: 1,
            max_batch: 32,
            queue_capacity: 512,
            max_tokens: 256,
            cache_entries: 4096,
            precision: crate::classifier::Precision::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// The cost/quality knob: the cheapest model whose P(success) reaches this is picked.
    pub threshold: f64,
    /// Task used by `auto` when there is no hint and no classifier score.
    pub default_task: Task,
    /// Top task probability below which the classification counts as low-confidence.
    pub min_task_confidence: f64,
    /// Explicit per-task chains (model names, cheapest first). Tasks not listed get a chain built
    /// from quality and price.
    pub chains: BTreeMap<Task, Vec<String>>,
    /// Expected completion length, for expected-cost estimates when the caller sets no max.
    pub expected_output_tokens: u64,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            threshold: 0.7,
            default_task: Task::Chat,
            min_task_confidence: 0.35,
            chains: BTreeMap::new(),
            expected_output_tokens: 300,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutConfig {
    /// One upstream attempt, start to last byte (non-streaming).
    pub attempt_ms: u64,
    /// Streaming: time allowed until the first output chunk.
    pub first_byte_ms: u64,
    /// Streaming: longest silence between chunks once output has started.
    pub idle_ms: u64,
    /// The whole chain, all attempts and backoffs included.
    pub total_ms: u64,
    pub connect_ms: u64,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        TimeoutConfig {
            attempt_ms: 60_000,
            first_byte_ms: 20_000,
            idle_ms: 30_000,
            total_ms: 120_000,
            connect_ms: 5_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Retries on the same model (after the first attempt) before moving up the chain.
    pub max_per_model: u32,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// A `retry-after` longer than this moves up the chain instead of waiting.
    pub max_retry_after_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_per_model: 1,
            backoff_base_ms: 100,
            backoff_max_ms: 2_000,
            max_retry_after_ms: 5_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive failed attempts that open a model's breaker.
    pub failure_threshold: u32,
    /// How long an open breaker skips the model before letting one probe through.
    pub cooldown_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            cooldown_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckConfig {
    pub empty_content: bool,
    /// `finish_reason: length` when the caller set no output limit.
    pub truncation: bool,
    /// Invalid JSON when `response_format` asked for JSON.
    pub json: bool,
    /// Answers that open with a refusal ("I'm sorry, but I can't ...").
    pub refusal: bool,
}

impl Default for CheckConfig {
    fn default() -> Self {
        CheckConfig {
            empty_content: true,
            truncation: true,
            json: true,
            refusal: true,
        }
    }
}

/// API keys (see `crate::auth`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Require `Authorization: Bearer <key>` (a virtual key from `ladder keys create`, or the
    /// admin key) on every route but `/healthz`.
    pub enabled: bool,
    /// Name of the environment variable holding the admin key.
    pub admin_key_env: String,
    /// How often the server re-reads the keys table (revocations take effect then).
    pub refresh_ms: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            enabled: true,
            admin_key_env: "LADDER_ADMIN_KEY".into(),
            refresh_ms: 5_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// Any OpenAI-compatible Chat Completions server.
    Openai,
    /// Anthropic Messages API.
    Anthropic,
    /// Google Gemini API (`generateContent` / `streamGenerateContent`).
    Gemini,
}

impl ProviderKind {
    /// The base URL used when a provider of this kind sets none (only kinds with one canonical
    /// endpoint have a default).
    pub fn default_base_url(self) -> Option<&'static str> {
        match self {
            ProviderKind::Gemini => Some("https://generativelanguage.googleapis.com/v1beta"),
            ProviderKind::Openai | ProviderKind::Anthropic => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    /// e.g. `https://api.openai.com/v1` or `https://api.anthropic.com/v1`; optional for kinds with
    /// a default ([`ProviderKind::default_base_url`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Name of the environment variable holding the API key (keys are never written in config).
    #[serde(default)]
    pub api_key_env: Option<String>,
}

impl ProviderConfig {
    /// The configured base URL, else the kind's default.
    pub fn effective_base_url(&self) -> Option<&str> {
        self.base_url.as_deref().or(self.kind.default_base_url())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Catalogue name clients use in `model`.
    pub name: String,
    pub provider: String,
    /// Model id sent upstream (defaults to `name`).
    #[serde(default)]
    pub upstream: Option<String>,
    /// USD per million input tokens.
    pub input_price: f64,
    /// USD per million output tokens.
    pub output_price: f64,
    pub context_window: u64,
    /// Largest completion the model produces.
    #[serde(default)]
    pub max_output_tokens: Option<u64>,
    /// e.g. `tools`, `vision`, `json`.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Expected success rate (0..1) on a typical prompt of each task; `default` covers the rest.
    pub quality: QualityTable,
    /// Explicit fallbacks when a client names this model (else the quality-first chain).
    #[serde(default)]
    pub fallbacks: Option<Vec<String>>,
}

/// Per-task quality. (No `deny_unknown_fields` here: serde does not support it with `flatten`;
/// unknown task names still fail, because the flattened keys must parse as [`Task`].)
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QualityTable {
    pub default: f64,
    #[serde(flatten)]
    pub per_task: BTreeMap<Task, f64>,
}

impl QualityTable {
    pub fn for_task(&self, task: Task) -> f64 {
        self.per_task.get(&task).copied().unwrap_or(self.default)
    }
}

impl ModelConfig {
    pub fn upstream_id(&self) -> &str {
        self.upstream.as_deref().unwrap_or(&self.name)
    }

    pub fn has_capability(&self, cap: &str) -> bool {
        self.capabilities.iter().any(|c| c == cap)
    }

    /// Cost in USD of a call with these token counts.
    pub fn cost_usd(&self, input_tokens: u64, output_tokens: u64) -> f64 {
        (input_tokens as f64 * self.input_price + output_tokens as f64 * self.output_price) / 1e6
    }
}

impl Config {
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
        let config = Config::from_toml(&text).with_context(|| format!("in config {}", path.display()))?;
        Ok(config)
    }

    pub fn from_toml(text: &str) -> anyhow::Result<Config> {
        let config: Config = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        config.validate()?;
        Ok(config)
    }

    pub fn model(&self, name: &str) -> Option<&ModelConfig> {
        self.models.iter().find(|m| m.name == name)
    }

    pub fn provider(&self, name: &str) -> Option<&ProviderConfig> {
        self.providers.iter().find(|p| p.name == name)
    }

    /// Checks cross-references and ranges; every message names the field.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.providers.is_empty() {
            bail!("providers: at least one provider is required");
        }
        if self.models.is_empty() {
            bail!("models: at least one model is required");
        }
        let mut seen = std::collections::HashSet::new();
        for (i, p) in self.providers.iter().enumerate() {
            if !seen.insert(p.name.as_str()) {
                bail!("providers[{i}].name: duplicate provider '{}'", p.name);
            }
            let Some(base_url) = p.effective_base_url() else {
                bail!("providers[{i}].base_url: required for kind '{}'", kind_name(p.kind));
            };
            if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
                bail!("providers[{i}].base_url: '{base_url}' is not an http(s) URL");
            }
            if let Some(env) = &p.api_key_env
                && (env.is_empty() || env.contains(char::is_whitespace))
            {
                bail!("providers[{i}].api_key_env: '{env}' is not an environment variable name");
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, m) in self.models.iter().enumerate() {
            if m.name == "auto" {
                bail!("models[{i}].name: 'auto' is reserved for the router");
            }
            if !seen.insert(m.name.as_str()) {
                bail!("models[{i}].name: duplicate model '{}'", m.name);
            }
            if self.provider(&m.provider).is_none() {
                bail!("models[{i}].provider: unknown provider '{}' (model '{}')", m.provider, m.name);
            }
            if !(m.input_price >= 0.0 && m.input_price.is_finite()) {
                bail!("models[{i}].input_price: must be a non-negative number");
            }
            if !(m.output_price >= 0.0 && m.output_price.is_finite()) {
                bail!("models[{i}].output_price: must be a non-negative number");
            }
            if m.context_window == 0 {
                bail!("models[{i}].context_window: must be positive");
            }
            let check_q = |field: String, q: f64| -> anyhow::Result<()> {
                if !(q > 0.0 && q < 1.0) {
                    bail!("models[{i}].quality.{field}: {q} must be strictly between 0 and 1");
                }
                Ok(())
            };
            check_q("default".into(), m.quality.default)?;
            for (t, q) in &m.quality.per_task {
                check_q(t.to_string(), *q)?;
            }
        }
        for (i, m) in self.models.iter().enumerate() {
            for f in m.fallbacks.iter().flatten() {
                if self.model(f).is_none() {
                    bail!("models[{i}].fallbacks: unknown model '{f}'");
                }
            }
        }
        for (task, chain) in &self.routing.chains {
            if chain.is_empty() {
                bail!("routing.chains.{task}: empty chain");
            }
            for name in chain {
                if self.model(name).is_none() {
                    bail!("routing.chains.{task}: unknown model '{name}'");
                }
            }
        }
        if !(self.routing.threshold > 0.0 && self.routing.threshold < 1.0) {
            bail!("routing.threshold: {} must be strictly between 0 and 1", self.routing.threshold);
        }
        if self.timeouts.total_ms == 0 || self.timeouts.attempt_ms == 0 || self.timeouts.first_byte_ms == 0 {
            bail!("timeouts: attempt_ms, first_byte_ms and total_ms must be positive");
        }
        if self.classifier.max_batch == 0 || self.classifier.queue_capacity == 0 {
            bail!("classifier: max_batch and queue_capacity must be positive");
        }
        if self.server.max_body_bytes < 1024 {
            bail!("server.max_body_bytes: {} is too small (minimum 1024)", self.server.max_body_bytes);
        }
        if self.auth.admin_key_env.is_empty() || self.auth.admin_key_env.contains(char::is_whitespace) {
            bail!(
                "auth.admin_key_env: '{}' is not an environment variable name",
                self.auth.admin_key_env
            );
        }
        self.store.validate()?;
        if self.auth.refresh_ms == 0 {
            bail!("auth.refresh_ms: must be positive");
        }
        self.server
            .listen
            .parse::<std::net::SocketAddr>()
            .map_err(|e| anyhow::anyhow!("server.listen: '{}': {e}", self.server.listen))?;
        Ok(())
    }
}

fn kind_name(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::Openai => "openai",
        ProviderKind::Anthropic => "anthropic",
        ProviderKind::Gemini => "gemini",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [[providers]]
        name = "local"
        kind = "openai"
        base_url = "http://127.0.0.1:9000/v1"
        [[models]]
        name = "small"
        provider = "local"
        input_price = 0.1
        output_price = 0.2
        context_window = 8000
        quality = { default = 0.5, code = 0.4 }
    "#;

    #[test]
    fn loads_a_minimal_config() {
        let c = Config::from_toml(GOOD).unwrap();
        assert_eq!(c.models[0].quality.for_task(Task::Code), 0.4);
        assert_eq!(c.models[0].quality.for_task(Task::Math), 0.5);
        assert_eq!(c.models[0].upstream_id(), "small");
    }

    #[test]
    fn errors_name_the_field() {
        let bad = GOOD.replace("provider = \"local\"", "provider = \"nope\"");
        let e = Config::from_toml(&bad).unwrap_err().to_string();
        assert!(e.contains("models[0].provider"), "{e}");
        let bad = GOOD.replace("code = 0.4", "code = 1.4");
        let e = Config::from_toml(&bad).unwrap_err().to_string();
        assert!(e.contains("models[0].quality.code"), "{e}");
        let bad = GOOD.replace("context_window", "context_windw");
        let e = Config::from_toml(&bad).unwrap_err().to_string();
        assert!(e.contains("context_windw"), "{e}");
        let bad = GOOD.replace("code = 0.4", "poetry = 0.4");
        let e = Config::from_toml(&bad).unwrap_err().to_string();
        assert!(e.contains("poetry"), "{e}");
        let bad = GOOD.replace("base_url = \"http://127.0.0.1:9000/v1\"", "");
        let e = Config::from_toml(&bad).unwrap_err().to_string();
        assert!(e.contains("providers[0].base_url: required for kind 'openai'"), "{e}");
    }

    #[test]
    fn the_example_config_is_valid() {
        let c = Config::from_toml(include_str!("../docs/ladder.example.toml")).unwrap();
        let gemini = c.provider("gemini").unwrap();
        assert_eq!(gemini.kind, ProviderKind::Gemini);
        assert_eq!(gemini.effective_base_url(), ProviderKind::Gemini.default_base_url());
        assert_eq!(c.model("gemini-flash").unwrap().upstream_id(), "gemini-2.5-flash");
    }

    #[test]
    fn gemini_kind_has_a_default_base_url() {
        let gemini = GOOD.replace("kind = \"openai\"", "kind = \"gemini\"\napi_key_env = \"GEMINI_API_KEY\"");
        let c = Config::from_toml(&gemini.replace("base_url = \"http://127.0.0.1:9000/v1\"", "")).unwrap();
        assert_eq!(c.providers[0].kind, ProviderKind::Gemini);
        assert_eq!(
            c.providers[0].effective_base_url(),
            Some("https://generativelanguage.googleapis.com/v1beta")
        );
        let c = Config::from_toml(&gemini).unwrap();
        assert_eq!(c.providers[0].effective_base_url(), Some("http://127.0.0.1:9000/v1"));
        let e = Config::from_toml(&gemini.replace("http://127.0.0.1:9000/v1", "ftp://x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("providers[0].base_url: 'ftp://x' is not an http(s) URL"), "{e}");
        let e = Config::from_toml(&gemini.replace("GEMINI_API_KEY", "GEMINI KEY"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("providers[0].api_key_env"), "{e}");
    }

    #[test]
    fn store_is_sqlite_by_default_or_postgres_by_url() {
        let c = Config::from_toml(GOOD).unwrap();
        assert!(c.store.url.is_none());
        assert_eq!(c.store.sqlite_path(), PathBuf::from("ladder.db"));
        let with = |store: &str| Config::from_toml(&format!("[store]\n{store}\n{GOOD}"));
        let c = with("url = \"postgres://ladder@db.internal:5432/ladder\"\npassword_env = \"LADDER_PG_PASSWORD\"").unwrap();
        assert_eq!(c.store.password_env.as_deref(), Some("LADDER_PG_PASSWORD"));
        for (store, field) in [
            ("url = \"mysql://x@h/db\"", "store.url"),
            ("url = \"postgres://ladder@h/db\"\npath = \"x.db\"", "either path"),
            ("url = \"postgres://ladder:pw@h/db\"\npassword_env = \"PW\"", "store.password_env"),
            ("password_env = \"PW\"", "store.password_env"),
            ("url = \"postgres://ladder@h/db\"\npassword_env = \"A B\"", "store.password_env"),
            ("url = \"postgres://ladder@h/db?sslmode=require\"", "store.url"),
            ("max_batch = 0", "store.max_batch"),
        ] {
            let e = with(store).unwrap_err().to_string();
            assert!(e.contains(field), "{store}: {e}");
        }
    }
}
