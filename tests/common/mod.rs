//! Harness for the gateway integration tests: runs `ladder fake-provider` and `ladder serve` as
//! real processes on loopback ports and talks to them over HTTP.
//!
//! Every [`Gateway`] owns a temp directory (config, scenario, SQLite log, process logs), a fake
//! provider and a router wired to it, so tests are independent and run in parallel. Processes are
//! killed on drop; when the test is failing, their logs are printed first.

#![allow(dead_code)]

pub mod pg;

use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a process may take to answer `GET /healthz`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The admin key every router under test gets (`LADDER_ADMIN_KEY`); [`client`] sends it.
pub const ADMIN_KEY: &str = "lk-test-admin-key-0123456789abcdef0123456789abcdef";

/// The upstream model ids (scenario keys) behind the catalogue.
pub const UP_CHEAP: &str = "fake-cheap";
pub const UP_MID: &str = "fake-mid";
pub const UP_TOP: &str = "fake-top";

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// One catalogue model of the test config.
#[derive(Debug, Clone)]
pub struct ModelOpts {
    pub name: &'static str,
    pub provider: &'static str,
    pub upstream: &'static str,
    pub input_price: f64,
    pub output_price: f64,
    pub context_window: u64,
    pub capabilities: Vec<&'static str>,
    pub quality_default: f64,
    pub quality_math: f64,
    pub fallbacks: Option<Vec<&'static str>>,
}

/// Knobs of the router config the tests change.
#[derive(Debug, Clone)]
pub struct Opts {
    pub models: Vec<ModelOpts>,
    pub attempt_ms: u64,
    pub first_byte_ms: u64,
    pub idle_ms: u64,
    pub total_ms: u64,
    pub connect_ms: u64,
    pub max_per_model: u32,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    pub max_retry_after_ms: u64,
    pub failure_threshold: u32,
    pub cooldown_ms: u64,
    pub max_body_bytes: usize,
    pub shutdown_grace_ms: u64,
    /// Scenario TOML the fake provider starts with.
    pub scenario: String,
    /// `[auth] enabled` (the router always gets [`ADMIN_KEY`] as its admin key).
    pub auth: bool,
    /// `[auth] refresh_ms`.
    pub auth_refresh_ms: u64,
    /// `api_key_env` of the fake providers.
    pub provider_key_env: Option<&'static str>,
    /// `api_key_env` of the Gemini-kind fake provider, when it differs from `provider_key_env`.
    pub gemini_key_env: Option<&'static str>,
    /// Extra environment variables for the router process.
    pub env: Vec<(String, String)>,
    /// A Postgres decision log (`[store] url`, password from [`pg::PASSWORD_ENV`], which the
    /// caller puts in `env`) instead of the SQLite file in the test's directory.
    pub store_url: Option<String>,
}

impl Default for Opts {
    /// Three rungs: `cheap` (OpenAI kind), `mid` (Anthropic kind), `top` (OpenAI kind), with rising
    /// quality and price. `cheap` is bad at math, so `auto` with a math hint starts at `mid`.
    fn default() -> Self {
        Opts {
            models: vec![
                ModelOpts {
                    name: "cheap",
                    provider: "fake-openai",
                    upstream: UP_CHEAP,
                    input_price: 0.1,
                    output_price: 0.2,
                    context_window: 2_000,
                    capabilities: vec!["json"],
                    quality_default: 0.75,
                    quality_math: 0.3,
                    fallbacks: None,
                },
                ModelOpts {
                    name: "mid",
                    provider: "fake-anthropic",
                    upstream: UP_MID,
                    input_price: 1.0,
                    output_price: 5.0,
                    context_window: 8_000,
                    capabilities: vec!["tools"],
                    quality_default: 0.85,
                    quality_math: 0.8,
                    fallbacks: None,
                },
                ModelOpts {
                    name: "top",
                    provider: "fake-openai",
                    upstream: UP_TOP,
                    input_price: 10.0,
                    output_price: 30.0,
                    context_window: 32_000,
                    capabilities: vec!["json", "tools", "vision"],
                    quality_default: 0.95,
                    quality_math: 0.9,
                    fallbacks: None,
                },
            ],
            attempt_ms: 3_000,
            first_byte_ms: 3_000,
            idle_ms: 3_000,
            total_ms: 10_000,
            connect_ms: 1_000,
            max_per_model: 1,
            backoff_base_ms: 10,
            backoff_max_ms: 50,
            max_retry_after_ms: 3_000,
            failure_threshold: 1_000,
            cooldown_ms: 60_000,
            max_body_bytes: 1024 * 1024,
            shutdown_grace_ms: 10_000,
            scenario: "seed = 1\n".into(),
            auth: true,
            auth_refresh_ms: 5_000,
            provider_key_env: None,
            gemini_key_env: None,
            env: Vec::new(),
            store_url: None,
        }
    }
}

impl Opts {
    /// The default catalogue with `mid` on the Gemini-kind provider (and able to take tools,
    /// images and JSON): `cheap` (OpenAI) < `mid` (Gemini) < `top` (OpenAI).
    pub fn gemini_mid() -> Self {
        let mut opts = Opts::default();
        let mid = opts.model_mut("mid");
        mid.provider = "fake-gemini";
        mid.capabilities = vec!["tools", "vision", "json"];
        opts
    }

    pub fn model_mut(&mut self, name: &str) -> &mut ModelOpts {
        self.models
            .iter_mut()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no model {name} in the test catalogue"))
    }

    /// The router config (TOML).
    pub fn render(&self, listen_port: u16, fake_port: u16, dead_port: u16, db: &Path) -> String {
        let mut s = format!(
            r#"
[server]
listen = "127.0.0.1:{listen_port}"
max_body_bytes = {max_body}
shutdown_grace_ms = {grace}

[store]
{store}

[classifier]
enabled = false

[routing]
threshold = 0.7
default_task = "chat"

[timeouts]
attempt_ms = {attempt}
first_byte_ms = {first_byte}
idle_ms = {idle}
total_ms = {total}
connect_ms = {connect}

[retries]
max_per_model = {max_per_model}
backoff_base_ms = {backoff_base}
backoff_max_ms = {backoff_max}
max_retry_after_ms = {max_retry_after}

[breaker]
failure_threshold = {threshold}
cooldown_ms = {cooldown}

[auth]
enabled = {auth}
refresh_ms = {auth_refresh}

[[providers]]
name = "fake-openai"
kind = "openai"
base_url = "http://127.0.0.1:{fake_port}/v1"
{key_env}
[[providers]]
name = "fake-anthropic"
kind = "anthropic"
base_url = "http://127.0.0.1:{fake_port}/v1"
{key_env}
[[providers]]
name = "fake-gemini"
kind = "gemini"
base_url = "http://127.0.0.1:{fake_port}/v1beta"
{gemini_key_env}
# Nothing listens here: connection refused.
[[providers]]
name = "dead"
kind = "openai"
base_url = "http://127.0.0.1:{dead_port}/v1"
[[providers]]
name = "dead-anthropic"
kind = "anthropic"
base_url = "http://127.0.0.1:{dead_port}/v1"
"#,
            max_body = self.max_body_bytes,
            grace = self.shutdown_grace_ms,
            store = match &self.store_url {
                Some(url) => format!("url = \"{url}\"\npassword_env = \"{}\"", pg::PASSWORD_ENV),
                None => format!("path = \"{}\"", db.display()),
            },
            attempt = self.attempt_ms,
            first_byte = self.first_byte_ms,
            idle = self.idle_ms,
            total = self.total_ms,
            connect = self.connect_ms,
            max_per_model = self.max_per_model,
            backoff_base = self.backoff_base_ms,
            backoff_max = self.backoff_max_ms,
            max_retry_after = self.max_retry_after_ms,
            threshold = self.failure_threshold,
            cooldown = self.cooldown_ms,
            auth = self.auth,
            auth_refresh = self.auth_refresh_ms,
            key_env = self
                .provider_key_env
                .map(|v| format!("api_key_env = \"{v}\"\n"))
                .unwrap_or_default(),
            gemini_key_env = self
                .gemini_key_env
                .or(self.provider_key_env)
                .map(|v| format!("api_key_env = \"{v}\"\n"))
                .unwrap_or_default(),
        );
        for m in &self.models {
            let caps: Vec<String> = m.capabilities.iter().map(|c| format!("\"{c}\"")).collect();
            s.push_str(&format!(
                r#"
[[models]]
name = "{}"
provider = "{}"
upstream = "{}"
input_price = {:?}
output_price = {:?}
context_window = {}
capabilities = [{}]
quality = {{ default = {:?}, math = {:?} }}
"#,
                m.name,
                m.provider,
                m.upstream,
                m.input_price,
                m.output_price,
                m.context_window,
                caps.join(", "),
                m.quality_default,
                m.quality_math,
            ));
            if let Some(f) = &m.fallbacks {
                let f: Vec<String> = f.iter().map(|n| format!("\"{n}\"")).collect();
                s.push_str(&format!("fallbacks = [{}]\n", f.join(", ")));
            }
        }
        s
    }
}

/// A child process with its output going to files.
pub struct Proc {
    pub name: &'static str,
    pub child: Child,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    exited: Option<ExitStatus>,
}

impl Proc {
    fn spawn(name: &'static str, dir: &Path, args: &[String], env: &[(String, String)]) -> Proc {
        let stdout = dir.join(format!("{name}.stdout.log"));
        let stderr = dir.join(format!("{name}.stderr.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_ladder"))
            .args(args)
            .current_dir(dir)
            .env("LADDER_LOG", "ladder=debug,warn")
            .env("LADDER_ADMIN_KEY", ADMIN_KEY)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("ALL_PROXY")
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .env_remove("all_proxy")
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).expect("create stdout log"))
            .stderr(File::create(&stderr).expect("create stderr log"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        Proc {
            name,
            child,
            stdout,
            stderr,
            exited: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has ended.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("try_wait");
        }
        self.exited
    }

    /// Wait (polling) up to `timeout` for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.try_exit() {
                return Some(s);
            }
            if t0.elapsed() > timeout {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Send SIGTERM (through `kill(1)`).
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -TERM {} failed", self.pid());
    }

    pub fn logs(&self) -> String {
        let out = std::fs::read_to_string(&self.stdout).unwrap_or_default();
        let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        format!("----- {} stdout -----\n{out}----- {} stderr -----\n{err}", self.name, self.name)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The HTTP client the tests use (no proxies, bounded time), authenticated with [`ADMIN_KEY`].
pub fn client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {ADMIN_KEY}")).expect("header"),
    );
    reqwest::Client::builder()
        .no_proxy()
        .default_headers(headers)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client")
}

/// A client that sends no credentials.
pub fn bare_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client")
}

async fn wait_healthy(http: &reqwest::Client, proc_: &mut Proc, url: &str) -> Result<(), String> {
    let t0 = Instant::now();
    loop {
        if let Some(status) = proc_.try_exit() {
            return Err(format!("{} exited during start-up ({status})\n{}", proc_.name, proc_.logs()));
        }
        if let Ok(r) = http.get(format!("{url}/healthz")).timeout(Duration::from_secs(2)).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if t0.elapsed() > READY_TIMEOUT {
            return Err(format!("{} not healthy after {READY_TIMEOUT:?}\n{}", proc_.name, proc_.logs()));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Spawn a process on a fresh port and wait until it is healthy; retries with another port when
/// the first one was taken in the meantime (another test may grab a just-released port).
pub async fn start_on_free_port(
    http: &reqwest::Client,
    dir: &Path,
    name: &'static str,
    env: &[(String, String)],
    mut args_for: impl FnMut(u16) -> Vec<String>,
) -> (Proc, u16) {
    let mut last = String::new();
    for _ in 0..3 {
        let port = free_port();
        let mut p = Proc::spawn(name, dir, &args_for(port), env);
        match wait_healthy(http, &mut p, &format!("http://127.0.0.1:{port}")).await {
            Ok(()) => return (p, port),
            Err(e) => {
                let bind_failed = e.contains("binding 127.0.0.1");
                last = e;
                if !bind_failed {
                    break;
                }
            }
        }
    }
    panic!("could not start {name}:\n{last}");
}

/// A fake provider and a router in front of it.
pub struct Gateway {
    pub dir: PathBuf,
    pub fake: Proc,
    pub ladder: Proc,
    pub fake_url: String,
    /// The router's base URL (`http://127.0.0.1:PORT`).
    pub url: String,
    pub db_path: PathBuf,
    pub http: reqwest::Client,
    /// The router's config file (for `ladder keys` and restarts).
    pub config_path: PathBuf,
    /// The router's extra environment.
    pub env: Vec<(String, String)>,
}

impl Gateway {
    pub async fn start() -> Gateway {
        Self::start_with(Opts::default()).await
    }

    pub async fn start_with(opts: Opts) -> Gateway {
        let dir = std::env::temp_dir().join(format!("ladder-gateway-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        let http = client();

        let scenario_path = dir.join("scenario.toml");
        std::fs::write(&scenario_path, &opts.scenario).expect("write scenario");
        let (fake, fake_port) = start_on_free_port(&http, &dir, "fake-provider", &[], |port| {
            vec![
                "fake-provider".into(),
                "--listen".into(),
                format!("127.0.0.1:{port}"),
                "--scenario".into(),
                scenario_path.display().to_string(),
            ]
        })
        .await;

        let db_path = dir.join("decisions.db");
        let config_path = dir.join("ladder.toml");
        let dead_port = free_port();
        let (ladder, port) = start_on_free_port(&http, &dir, "ladder", &opts.env, |port| {
            std::fs::write(&config_path, opts.render(port, fake_port, dead_port, &db_path)).expect("write config");
            vec!["serve".into(), "--config".into(), config_path.display().to_string()]
        })
        .await;

        Gateway {
            dir,
            fake,
            ladder,
            fake_url: format!("http://127.0.0.1:{fake_port}"),
            url: format!("http://127.0.0.1:{port}"),
            db_path,
            http,
            config_path,
            env: opts.env.clone(),
        }
    }

    /// Run `ladder keys ARGS --config <this router's config>` to completion.
    pub fn keys_cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_ladder"))
            .arg("keys")
            .args(args)
            .arg("--config")
            .arg(&self.config_path)
            .current_dir(&self.dir)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .output()
            .expect("running ladder keys")
    }

    /// `ladder keys create --name NAME EXTRA...`; returns the printed key.
    pub fn create_key(&self, name: &str, extra: &[&str]) -> String {
        let mut args = vec!["create", "--name", name];
        args.extend_from_slice(extra);
        let out = self.keys_cli(&args);
        assert!(
            out.status.success(),
            "ladder keys create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8").trim().to_string()
    }

    /// `kill -9` the router and wait for it to be gone.
    pub async fn kill9_ladder(&mut self) {
        let _ = self.ladder.child.kill();
        assert!(self.ladder.wait_exit(Duration::from_secs(10)).await.is_some(), "ladder did not die");
    }

    /// Start a new router on the same config and database (after [`Gateway::kill9_ladder`] or an
    /// exit), on a new port; `url` follows it. Its logs go to `ladder-N.*.log`.
    pub async fn restart_ladder(&mut self) {
        if self.ladder.try_exit().is_none() {
            self.kill9_ladder().await;
        }
        let old = std::mem::replace(&mut self.ladder.stdout, PathBuf::new());
        let n = (1..).find(|i| !self.dir.join(format!("ladder-{i}.stdout.log")).exists()).unwrap();
        let _ = std::fs::rename(&old, self.dir.join(format!("ladder-{n}.stdout.log")));
        let _ = std::fs::rename(&self.ladder.stderr, self.dir.join(format!("ladder-{n}.stderr.log")));
        let config = self.config_path.display().to_string();
        let (ladder, port) = start_on_free_port(&self.http, &self.dir, "ladder", &self.env, |port| {
            vec![
                "serve".into(),
                "--config".into(),
                config.clone(),
                "--listen".into(),
                format!("127.0.0.1:{port}"),
            ]
        })
        .await;
        self.ladder = ladder;
        self.url = format!("http://127.0.0.1:{port}");
    }

    /// `POST /v1/chat/completions` (non-streaming or not: the body decides), read whole.
    pub async fn chat(&self, body: &Value) -> Reply {
        self.chat_with(body, &[]).await
    }

    pub async fn chat_with(&self, body: &Value, headers: &[(&str, &str)]) -> Reply {
        let mut rb = self.http.post(format!("{}/v1/chat/completions", self.url)).json(body);
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        let t0 = Instant::now();
        let resp = rb.send().await.expect("POST /v1/chat/completions");
        Reply::read(resp, t0).await
    }

    /// POST raw bytes to a router path.
    pub async fn post_raw(&self, path: &str, body: Vec<u8>, content_type: &str) -> Reply {
        let t0 = Instant::now();
        let resp = self
            .http
            .post(format!("{}{path}", self.url))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        Reply::read(resp, t0).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Reply {
        self.post_raw(path, serde_json::to_vec(body).expect("json"), "application/json")
            .await
    }

    /// GET a router path.
    pub async fn get(&self, path: &str) -> Reply {
        let t0 = Instant::now();
        let resp = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        Reply::read(resp, t0).await
    }

    /// A streaming chat request, read to the end of the body.
    pub async fn stream(&self, body: &Value) -> StreamReply {
        self.stream_with(body, &[]).await
    }

    pub async fn stream_with(&self, body: &Value, headers: &[(&str, &str)]) -> StreamReply {
        let mut body = body.clone();
        body["stream"] = json!(true);
        let mut rb = self.http.post(format!("{}/v1/chat/completions", self.url)).json(&body);
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        let t0 = Instant::now();
        let resp = rb.send().await.expect("POST stream");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let raw = resp.text().await.expect("reading the stream body to its end");
        StreamReply::parse(status, headers, raw, t0.elapsed())
    }

    /// `GET /v1/decisions/{id}`, which must exist.
    pub async fn decision(&self, id: &str) -> Value {
        let r = self.get(&format!("/v1/decisions/{id}")).await;
        assert_eq!(r.status, 200, "GET /v1/decisions/{id}: {}", r.text);
        r.body
    }

    /// The ids of every record in the decision log, read through `GET /v1/decisions` page by
    /// page (newest first).
    pub async fn decision_ids(&self) -> Vec<String> {
        let mut ids = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/decisions?limit=500&cursor={c}"),
                None => "/v1/decisions?limit=500".to_string(),
            };
            let page = self.get(&path).await;
            assert_eq!(page.status, 200, "GET {path}: {}", page.text);
            for r in page.body["data"].as_array().expect("data") {
                ids.push(r["id"].as_str().expect("id").to_string());
            }
            match page.body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => return ids,
            }
        }
    }

    /// The number of rows in the decision log's SQLite file (read while the router runs).
    pub fn count_records(&self) -> i64 {
        let conn = rusqlite::Connection::open(&self.db_path).expect("open the decision log");
        conn.busy_timeout(Duration::from_secs(10)).expect("busy timeout");
        conn.query_row("SELECT COUNT(*) FROM decisions", [], |r| r.get(0))
            .expect("count the decisions")
    }

    /// The decision record of a reply (from its `x-ladder-decision-id`).
    pub async fn record_of(&self, headers: &HeaderMap) -> Value {
        let id = header(headers, "x-ladder-decision-id").expect("x-ladder-decision-id header");
        let rec = self.decision(&id).await;
        assert_eq!(rec["id"], json!(id));
        rec
    }

    /// Replace the fake provider's scenario (JSON); resets its sequence counters.
    pub async fn set_scenario(&self, scenario: Value) {
        let r = self
            .http
            .put(format!("{}/_fake/scenario", self.fake_url))
            .json(&scenario)
            .send()
            .await
            .expect("PUT /_fake/scenario");
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        assert!(status.is_success(), "PUT /_fake/scenario {scenario}: {status} {text}");
    }

    pub async fn fake_stats(&self) -> Value {
        self.http
            .get(format!("{}/_fake/stats", self.fake_url))
            .send()
            .await
            .expect("GET /_fake/stats")
            .json()
            .await
            .expect("stats JSON")
    }

    /// Requests that reached an upstream model of the fake.
    pub async fn upstream_requests(&self, upstream: &str) -> u64 {
        self.fake_stats().await["models"][upstream]["requests"].as_u64().unwrap_or(0)
    }

    /// The fake's log of recent requests (oldest first).
    pub async fn fake_requests_log(&self) -> Vec<Value> {
        let v: Value = self
            .http
            .get(format!("{}/_fake/requests", self.fake_url))
            .send()
            .await
            .expect("GET /_fake/requests")
            .json()
            .await
            .expect("JSON");
        v["requests"].as_array().cloned().unwrap_or_default()
    }

    /// `ladder.circuit` of a model in `GET /v1/models`.
    pub async fn circuit(&self, model: &str) -> String {
        let r = self.get("/v1/models").await;
        assert_eq!(r.status, 200);
        let m = r.body["data"]
            .as_array()
            .expect("data")
            .iter()
            .find(|m| m["id"] == json!(model))
            .cloned();
        m.unwrap_or_else(|| panic!("model {model} not in /v1/models: {}", r.text))["ladder"]["circuit"]
            .as_str()
            .expect("circuit")
            .to_string()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("===== gateway test failed; temp dir kept at {} =====", self.dir.display());
            eprintln!("{}", self.fake.logs());
            eprintln!("{}", self.ladder.logs());
        } else {
            // Processes first, then their files.
            let _ = self.ladder.child.kill();
            let _ = self.ladder.child.wait();
            let _ = self.fake.child.kill();
            let _ = self.fake.child.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// A whole, non-streamed reply.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    /// The body as JSON (`Null` when it is not JSON).
    pub body: Value,
    pub text: String,
    pub elapsed: Duration,
}

impl Reply {
    async fn read(resp: reqwest::Response, t0: Instant) -> Reply {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("reading the response body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
            text,
            elapsed: t0.elapsed(),
        }
    }

    pub fn header(&self, name: &str) -> Option<String> {
        header(&self.headers, name)
    }

    /// `x-ladder-model`.
    pub fn model(&self) -> Option<String> {
        self.header("x-ladder-model")
    }

    /// `x-ladder-attempts`.
    pub fn attempts(&self) -> usize {
        self.header("x-ladder-attempts")
            .expect("x-ladder-attempts header")
            .parse()
            .expect("x-ladder-attempts is a number")
    }

    /// `choices[0].message.content`.
    pub fn content(&self) -> String {
        self.body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_else(|| panic!("no content in {}", self.text))
            .to_string()
    }

    /// Assert the OpenAI error shape and return `(type, code, message)`.
    pub fn api_error(&self) -> (String, String, String) {
        let e = &self.body["error"];
        assert!(e.is_object(), "not an OpenAI error body: {}", self.text);
        let message = e["message"]
            .as_str()
            .unwrap_or_else(|| panic!("error.message missing: {}", self.text));
        let kind = e["type"].as_str().unwrap_or_else(|| panic!("error.type missing: {}", self.text));
        let code = e["code"].as_str().unwrap_or_else(|| panic!("error.code missing: {}", self.text));
        assert!(!message.is_empty());
        (kind.to_string(), code.to_string(), message.to_string())
    }
}

/// A streamed reply, read to its end and split into SSE events.
#[derive(Debug)]
pub struct StreamReply {
    pub status: u16,
    pub headers: HeaderMap,
    pub raw: String,
    /// The `data:` payload of every event, in order.
    pub events: Vec<String>,
    pub elapsed: Duration,
}

impl StreamReply {
    fn parse(status: u16, headers: HeaderMap, raw: String, elapsed: Duration) -> StreamReply {
        let mut events = Vec::new();
        for block in raw.split("\n\n") {
            let data: Vec<&str> = block
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if !data.is_empty() {
                events.push(data.join("\n"));
            }
        }
        StreamReply {
            status,
            headers,
            raw,
            events,
            elapsed,
        }
    }

    pub fn header(&self, name: &str) -> Option<String> {
        header(&self.headers, name)
    }

    pub fn model(&self) -> Option<String> {
        self.header("x-ladder-model")
    }

    pub fn attempts(&self) -> usize {
        self.header("x-ladder-attempts")
            .expect("x-ladder-attempts header")
            .parse()
            .expect("x-ladder-attempts is a number")
    }

    /// The body read as a whole reply (for a stream request answered with an error).
    pub fn as_reply(&self) -> Reply {
        Reply {
            status: self.status,
            headers: self.headers.clone(),
            body: serde_json::from_str(&self.raw).unwrap_or(Value::Null),
            text: self.raw.clone(),
            elapsed: self.elapsed,
        }
    }

    /// True when the last event is `[DONE]`.
    pub fn done(&self) -> bool {
        self.events.last().is_some_and(|e| e == "[DONE]")
    }

    /// Every event but `[DONE]`, parsed as JSON.
    pub fn chunks(&self) -> Vec<Value> {
        self.events
            .iter()
            .filter(|e| *e != "[DONE]")
            .map(|e| serde_json::from_str(e).unwrap_or_else(|err| panic!("event is not JSON ({err}): {e}")))
            .collect()
    }

    /// The streamed content, concatenated.
    pub fn content(&self) -> String {
        self.chunks()
            .iter()
            .flat_map(|c| c["choices"].as_array().cloned().unwrap_or_default())
            .filter_map(|ch| ch["delta"]["content"].as_str().map(str::to_string))
            .collect()
    }
}

/// `model:status[:error_kind]` for each attempt of a decision record, for compact assertions.
pub fn attempt_summary(record: &Value) -> Vec<String> {
    record["attempts"]
        .as_array()
        .unwrap_or_else(|| panic!("record has no attempts: {record}"))
        .iter()
        .map(|a| {
            let mut s = format!("{}:{}", a["model"].as_str().unwrap_or("?"), a["status"].as_str().unwrap_or("?"));
            if let Some(k) = a["error_kind"].as_str() {
                s.push(':');
                s.push_str(k);
            }
            s
        })
        .collect()
}

/// The `skipped` reason of a candidate in a decision record (None when it was eligible).
pub fn skipped(record: &Value, model: &str) -> Option<String> {
    let c = record["candidates"]
        .as_array()
        .unwrap_or_else(|| panic!("record has no candidates: {record}"))
        .iter()
        .find(|c| c["model"] == json!(model))
        .unwrap_or_else(|| panic!("no candidate {model} in {record}"));
    c["skipped"].as_str().map(str::to_string)
}

/// The record's chain as strings.
pub fn chain(record: &Value) -> Vec<String> {
    record["chain"]
        .as_array()
        .expect("chain")
        .iter()
        .map(|m| m.as_str().expect("model name").to_string())
        .collect()
}

/// A one-user-message request.
pub fn req(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

/// A scenario in which `upstream` always behaves as `behavior` (the others answer normally).
pub fn always(upstream: &str, behavior: Value) -> Value {
    json!({"seed": 1, "models": {upstream: {"fail_rate": 1.0, "fail_with": behavior}}})
}

pub fn status(code: u16) -> Value {
    json!({"kind": "status", "status": code})
}

/// `usage` of a completion or chunk as `(prompt, completion, total)`; each must be present.
pub fn usage_of(v: &Value) -> (u64, u64, u64) {
    let u = &v["usage"];
    (
        u["prompt_tokens"]
            .as_u64()
            .unwrap_or_else(|| panic!("usage.prompt_tokens missing: {v}")),
        u["completion_tokens"]
            .as_u64()
            .unwrap_or_else(|| panic!("usage.completion_tokens missing: {v}")),
        u["total_tokens"]
            .as_u64()
            .unwrap_or_else(|| panic!("usage.total_tokens missing: {v}")),
    )
}

/// A well-formed non-streamed OpenAI completion from `model` (status, shape, content, usage,
/// `x-ladder-model`).
pub fn assert_openai_completion(r: &Reply, model: &str) {
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("content-type").as_deref(), Some("application/json"));
    let b = &r.body;
    assert!(b["id"].as_str().is_some_and(|s| !s.is_empty()), "id: {b}");
    assert_eq!(b["object"], "chat.completion");
    assert!(b["created"].as_u64().is_some_and(|c| c > 0), "created: {b}");
    assert_eq!(b["model"], json!(model));
    assert_eq!(b["choices"][0]["index"], 0);
    assert_eq!(b["choices"][0]["message"]["role"], "assistant");
    assert!(!r.content().trim().is_empty(), "empty content: {b}");
    assert_eq!(b["choices"][0]["finish_reason"], "stop");
    let (p, c, t) = usage_of(b);
    assert!(p > 0 && c > 0, "usage: {b}");
    assert_eq!(t, p + c);
    assert_eq!(r.model().as_deref(), Some(model));
}

/// A well-formed OpenAI stream from `model`: chunks, content, a finish reason, the usage chunk
/// last when asked for, and one `[DONE]` at the end.
pub fn assert_stream_shape(s: &StreamReply, model: &str, with_usage: bool) {
    assert_eq!(s.status, 200, "{}", s.raw);
    assert_eq!(s.header("content-type").as_deref(), Some("text/event-stream"));
    assert_eq!(s.model().as_deref(), Some(model));
    assert!(s.done(), "stream does not end with [DONE]: {}", s.raw);
    assert_eq!(s.events.iter().filter(|e| *e == "[DONE]").count(), 1);
    let chunks = s.chunks();
    assert!(chunks.len() >= 2, "{}", s.raw);
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk", "{c}");
        assert_eq!(c["model"], json!(model), "{c}");
        assert!(c.get("error").is_none(), "{c}");
    }
    assert!(!s.content().trim().is_empty(), "no streamed content: {}", s.raw);
    assert!(
        chunks.iter().any(|c| c["choices"][0]["finish_reason"] == "stop"),
        "no finish_reason chunk: {}",
        s.raw
    );
    let usage_chunks: Vec<&Value> = chunks.iter().filter(|c| c.get("usage").is_some_and(|u| !u.is_null())).collect();
    if with_usage {
        assert_eq!(usage_chunks.len(), 1, "expected one usage chunk: {}", s.raw);
        let u = usage_chunks[0];
        assert_eq!(u, chunks.last().unwrap(), "the usage chunk comes last");
        assert_eq!(u["choices"], json!([]));
        let (p, c, t) = usage_of(u);
        assert!(p > 0 && c > 0 && t == p + c, "{u}");
    } else {
        assert!(usage_chunks.is_empty(), "usage chunk sent without include_usage: {}", s.raw);
    }
}

/// A stream from `model` that broke after output started: content, then an explicit error event
/// (`stream_interrupted`) last, and no `[DONE]`.
pub fn assert_stream_error_end(s: &StreamReply, model: &str) {
    assert_eq!(s.status, 200);
    assert_eq!(s.model().as_deref(), Some(model));
    assert!(!s.done(), "a broken stream must not end with [DONE]: {}", s.raw);
    assert!(!s.raw.contains("[DONE]"), "{}", s.raw);
    let chunks = s.chunks();
    let last = chunks.last().expect("events");
    let e = &last["error"];
    assert!(e.is_object(), "the last event is not an error: {}", s.raw);
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(e["type"], "server_error");
    assert_eq!(e["code"], "stream_interrupted");
    assert!(chunks[..chunks.len() - 1].iter().all(|c| c.get("error").is_none()));
    assert!(!s.content().is_empty(), "output should have started before the failure: {}", s.raw);
}

/// Run the assertions in `check`; a failure becomes a line in `problems` (prefixed with `what`)
/// instead of ending the test, for tests that report many cases at once.
pub fn check(problems: &mut Vec<String>, what: &str, check: impl FnOnce()) {
    if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(check)) {
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into());
        problems.push(format!("{what}: {msg}"));
    }
}
