//! The outcome loop end to end, with real processes and the real classifier: the cheap model
//! fails a class of prompts (regular expressions) that the shipped heads think it can do; traffic
//! through Ladder logs escalations and feedback; `ladder train --from-log` fine-tunes the heads;
//! after `POST /v1/admin/reload` the same class of prompts goes straight to a rung that succeeds,
//! and the escalation rate measured through `/v1/decisions/stats` drops. Also: feedback
//! validation and idempotency, reload under load, and rollback.

mod common;

use common::{ADMIN_KEY, client, start_on_free_port};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;

const REGEX_TOPICS: &[&str] = &[
    "email addresses",
    "US phone numbers like (555) 123-4567",
    "ISO 8601 dates",
    "hex colour codes such as #1a2B3c",
    "IPv4 addresses",
    "UUIDs",
    "UK postcodes",
    "URLs with an optional port",
    "HTML opening tags",
    "semantic version strings like 1.2.3-beta",
    "credit card numbers with optional spaces",
    "times in 24-hour HH:MM format",
    "Twitter handles",
    "MAC addresses",
    "floating point numbers with an optional exponent",
    "words that start and end with the same letter",
];

const OTHER_CODE: &[&str] = &[
    "reverses a singly linked list in place",
    "merges two sorted arrays into one sorted array",
    "computes the nth Fibonacci number iteratively",
    "reads a CSV file and sums the second column",
    "checks whether a binary tree is balanced",
    "removes duplicates from a list while keeping order",
    "counts word frequencies in a text file",
    "implements binary search over a sorted vector",
    "flattens a nested list of integers",
    "returns the longest common prefix of a list of strings",
    "converts a Roman numeral to an integer",
    "rotates a matrix by 90 degrees",
    "finds the kth largest element with a heap",
    "serialises a struct to JSON and back",
    "retries an HTTP request with exponential backoff",
    "parses command-line flags into a config struct",
];

fn regex_prompt(i: usize, phase: usize) -> String {
    let topic = REGEX_TOPICS[i % REGEX_TOPICS.len()];
    let templates: [&str; 4] = if phase == 1 {
        [
            "Write a regex that matches {}.",
            "I need a regular expression for {}, please explain each part.",
            "regex to validate {}?",
            "Give me a Python re pattern that captures {}.",
        ]
    } else {
        [
            "Could you build a regex for {}?",
            "What regular expression would match {}?",
            "Help me with a regex: it should accept {} and nothing else.",
            "JavaScript regex for {} please",
        ]
    };
    templates[(i / REGEX_TOPICS.len()) % 4].replace("{}", topic)
}

fn other_prompt(i: usize, phase: usize) -> String {
    let task = OTHER_CODE[i % OTHER_CODE.len()];
    let lang = ["Python", "Rust", "Go", "TypeScript"][(i / OTHER_CODE.len() + phase) % 4];
    format!("Write a {lang} function that {task}.")
}

struct Rig {
    dir: PathBuf,
    config: PathBuf,
    heads_dir: PathBuf,
    url: String,
    http: reqwest::Client,
    _fake: common::Proc,
    _ladder: common::Proc,
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

async fn rig() -> Rig {
    let repo = std::env::current_dir().unwrap();
    let model_dir = repo.join("models/all-MiniLM-L6-v2");
    assert!(
        model_dir.join("model.safetensors").exists(),
        "encoder weights missing: run scripts/setup.sh"
    );
    let dir = std::env::temp_dir().join(format!("ladder-learning-{}", uuid::Uuid::new_v4().simple()));
    let heads_dir = dir.join("heads");
    copy_dir(&repo.join("models/heads"), &heads_dir);
    let http = client();
    let scenario = dir.join("scenario.toml");
    std::fs::write(
        &scenario,
        "[models.cheap-up]\nability = 1.0\nfails_on = [\"regex\", \"regular expression\"]\nbad_answer = \"refusal\"\n[models.strong-up]\nability = 1.0\n",
    )
    .unwrap();
    let (fake, fake_port) = start_on_free_port(&http, &dir, "fake", &[], |port| {
        vec![
            "fake-provider".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--scenario".into(),
            scenario.display().to_string(),
        ]
    })
    .await;
    let config = dir.join("ladder.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[store]
path = "{db}"
[auth]
enabled = false
[classifier]
model_dir = "{model}"
heads_dir = "{heads}"
[routing]
threshold = 0.7
[checks]
refusal = true
[[providers]]
name = "fake"
kind = "openai"
base_url = "http://127.0.0.1:{fake_port}/v1"
[[models]]
name = "cheap"
provider = "fake"
upstream = "cheap-up"
input_price = 0.5
output_price = 1.5
context_window = 16000
quality = {{ default = 0.85, code = 0.88 }}
[[models]]
name = "strong"
provider = "fake"
upstream = "strong-up"
input_price = 10.0
output_price = 30.0
context_window = 128000
quality = {{ default = 0.95, code = 0.96 }}
"#,
            db = dir.join("ladder.db").display(),
            model = model_dir.display(),
            heads = heads_dir.display(),
        ),
    )
    .unwrap();
    let cfg = config.display().to_string();
    let (ladder, port) = start_on_free_port(&http, &dir, "ladder", &[], |port| {
        vec![
            "serve".into(),
            "--config".into(),
            cfg.clone(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
        ]
    })
    .await;
    Rig {
        dir,
        config,
        heads_dir,
        url: format!("http://127.0.0.1:{port}"),
        http,
        _fake: fake,
        _ladder: ladder,
    }
}

impl Rig {
    async fn chat(&self, prompt: &str) -> (String, String, Value) {
        let r = self
            .http
            .post(format!("{}/v1/chat/completions", self.url))
            .json(&json!({"model": "auto", "messages": [{"role": "user", "content": prompt}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let id = r.headers()["x-ladder-decision-id"].to_str().unwrap().to_string();
        let model = r.headers()["x-ladder-model"].to_str().unwrap().to_string();
        (id, model, r.json().await.unwrap())
    }

    async fn get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.url))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(ADMIN_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    fn ladder(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_ladder")).args(args).output().unwrap()
    }
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test]
async fn training_from_the_log_fixes_a_class_of_escalations() {
    let rig = rig().await;

    // Phase 1: the shipped heads send regex prompts to the cheap model, which refuses them.
    let t1 = now_secs();
    let mut regex_first_cheap = 0;
    for i in 0..48 {
        let (id, model, _) = rig.chat(&regex_prompt(i, 1)).await;
        let rec = rig.get(&format!("/v1/decisions/{id}")).await;
        if rec["chain"][0] == "cheap" {
            regex_first_cheap += 1;
        }
        assert_eq!(model, "strong", "the cheap model refuses regex prompts; they must end on strong");
        if i % 4 == 0 {
            // A client confirming the strong model's answer was good.
            let (status, _) = rig
                .post("/v1/feedback", json!({"decision_id": id, "outcome": "success", "source": "eval"}))
                .await;
            assert_eq!(status, 200);
        }
    }
    // Other code prompts are the cheap model's to serve (a few may start a rung higher when the
    // classifier flags them as out of distribution).
    let mut other_cheap_1 = 0;
    for i in 0..32 {
        let (_, model, _) = rig.chat(&other_prompt(i, 1)).await;
        other_cheap_1 += (model == "cheap") as usize;
    }
    assert!(other_cheap_1 >= 24, "{other_cheap_1}/32 other code prompts on cheap");
    assert!(
        regex_first_cheap >= 40,
        "the shipped heads should think regex prompts are easy: {regex_first_cheap}/48 went to cheap first"
    );
    let phase1 = rig.get(&format!("/v1/decisions/stats?since={t1}")).await;
    let rate1 = phase1["total"]["escalation_rate"].as_f64().unwrap();
    assert!(rate1 > 0.45, "{phase1}");

    // Train from the log (no seed data: fine-tune on the log alone), then reload.
    let heads = rig.heads_dir.display().to_string();
    let out = rig.ladder(&[
        "train",
        "--from-log",
        "--config",
        &rig.config.display().to_string(),
        "--heads-dir",
        &heads,
        "--data",
        "/nonexistent",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "train failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("new heads are not worse"), "{stdout}");
    let (status, reloaded) = rig.post("/v1/admin/reload", json!({})).await;
    assert_eq!(status, 200, "{reloaded}");
    assert_ne!(reloaded["previous"], reloaded["version"]);

    // Phase 2: new wordings of the same class go straight to strong; other code stays cheap.
    let t2 = now_secs();
    let mut regex_straight = 0;
    for i in 0..32 {
        let (id, _, _) = rig.chat(&regex_prompt(i, 2)).await;
        let rec = rig.get(&format!("/v1/decisions/{id}")).await;
        assert_eq!(rec["scores"]["heads_version"], reloaded["version"]);
        if rec["chain"][0] == "strong" {
            regex_straight += 1;
        }
    }
    let mut other_cheap = 0;
    for i in 0..16 {
        let (_, model, _) = rig.chat(&other_prompt(i, 2)).await;
        other_cheap += (model == "cheap") as usize;
    }
    let phase2 = rig.get(&format!("/v1/decisions/stats?since={t2}&group_by=model")).await;
    let rate2 = phase2["total"]["escalation_rate"].as_f64().unwrap();
    eprintln!(
        "escalation rate {rate1:.2} -> {rate2:.2}; regex straight to strong {regex_straight}/32; other code on cheap {other_cheap}/16"
    );
    assert!(
        regex_straight >= 24,
        "after retraining most regex prompts should skip the cheap rung: {regex_straight}/32"
    );
    assert!(
        other_cheap >= 12,
        "other code prompts should still go to the cheap model: {other_cheap}/16"
    );
    assert!(rate2 < rate1 / 2.0, "escalation rate should drop: {rate1} -> {rate2}");
    let _ = std::fs::remove_dir_all(&rig.dir);
}

#[tokio::test]
async fn feedback_is_validated_idempotent_and_404s_for_unknown_decisions() {
    let rig = rig().await;
    let (id, _, _) = rig.chat("Write a Python function that adds two numbers.").await;
    let body = json!({"decision_id": id, "outcome": "failure", "score": 0.2, "comment": "wrong answer"});
    let (s1, v1) = rig.post("/v1/feedback", body.clone()).await;
    let (s2, v2) = rig.post("/v1/feedback", body).await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(v1, v2, "the same feedback twice is the same state");
    let (s, e) = rig
        .post("/v1/feedback", json!({"decision_id": "dec_nope", "outcome": "success"}))
        .await;
    assert_eq!(s, 404, "{e}");
    for bad in [
        json!({"decision_id": id, "outcome": "meh"}),
        json!({"decision_id": id, "outcome": "success", "score": 1.5}),
        json!({"decision_id": id}),
        json!({"decision_id": id, "outcome": "success", "extra": 1}),
    ] {
        let (s, e) = rig.post("/v1/feedback", bad.clone()).await;
        assert_eq!(s, 400, "{bad} -> {e}");
        assert!(e["error"]["message"].as_str().is_some());
    }
    let _ = std::fs::remove_dir_all(&rig.dir);
}

#[tokio::test]
async fn reload_under_load_fails_no_request_and_rollback_restores_a_version() {
    let rig = rig().await;
    let versions_before: Vec<String> = std::fs::read_dir(&rig.heads_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let original = versions_before[0].clone();
    // A second version to switch between: a copy of the current one under another name.
    let other = format!("{original}-copy");
    copy_dir(&rig.heads_dir.join(&original), &rig.heads_dir.join(&other));
    let manifest_path = rig.heads_dir.join(&other).join("manifest.json");
    let mut manifest: Value = serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    manifest["version"] = json!(other);
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();

    let url = rig.url.clone();
    let load = tokio::spawn(async move {
        let http = client();
        let mut statuses = Vec::new();
        for i in 0..60 {
            let r = http
                .post(format!("{url}/v1/chat/completions"))
                .json(&json!({"model": "auto", "messages": [{"role": "user", "content": format!("Explain recursion with example number {i}.")}]}))
                .send()
                .await
                .unwrap();
            statuses.push(r.status().as_u16());
        }
        statuses
    });
    let heads = rig.heads_dir.display().to_string();
    for k in 0..6 {
        let target = if k % 2 == 0 { &other } else { &original };
        let out = rig.ladder(&["heads", "rollback", target, "--heads-dir", &heads]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let (s, v) = rig.post("/v1/admin/reload", json!({})).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["version"], json!(target));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let statuses = load.await.unwrap();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let list = rig.ladder(&["heads", "list", "--heads-dir", &heads]);
    let listing = String::from_utf8_lossy(&list.stdout);
    assert!(listing.contains(&format!("* {original}")), "{listing}");
    let (s, _) = rig.post("/v1/admin/reload", json!({})).await;
    assert_eq!(s, 200);
    // SIGHUP reloads too.
    let out = rig.ladder(&["heads", "rollback", &other, "--heads-dir", &heads]);
    assert!(out.status.success());
    let hup = Command::new("kill")
        .args(["-HUP", &rig._ladder.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let mut reloaded = false;
    for _ in 0..100 {
        let h = rig.get("/healthz").await;
        if h["classifier"]["heads_version"] == json!(other) {
            reloaded = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(reloaded, "SIGHUP did not reload the heads");
    let out = rig.ladder(&["heads", "rollback", "no-such-version", "--heads-dir", &heads]);
    assert!(!out.status.success());
    let _ = std::fs::remove_dir_all(&rig.dir);
}
