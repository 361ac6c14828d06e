//! Classifier tests against the real encoder weights (installed by `scripts/fetch-model.sh`,
//! which the README's set-up and `.ci/run` run) and the committed heads under `models/heads`.

use ladder::classifier::encoder::Encoder;
use ladder::classifier::{Classifier, Precision, Scorer};
use ladder::config::{ClassifierConfig, Config};
use ladder::router::{self, RouteRequest, ScoreSource};
use ladder::task::Task;
use ladder::wire::RoutingText;
use std::path::Path;
use std::sync::Arc;

const MODEL_DIR: &str = "models/all-MiniLM-L6-v2";

fn encoder() -> Encoder {
    assert!(
        Path::new(MODEL_DIR).join("model.safetensors").exists(),
        "encoder weights missing: run scripts/fetch-model.sh (the README's set-up command does)"
    );
    Encoder::load(Path::new(MODEL_DIR), 256).unwrap()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// The sentence-transformers fixtures: (text, embedding, token count with [CLS]/[SEP]).
fn reference_embeddings() -> Vec<(String, Vec<f32>, usize)> {
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("tests/fixtures/reference_embeddings.json").unwrap()).unwrap();
    let items = fixture["items"].as_array().unwrap();
    assert!(items.len() >= 20);
    items
        .iter()
        .map(|item| {
            let embedding = item["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            let n_tokens = item["n_tokens"].as_u64().unwrap() as usize;
            (item["text"].as_str().unwrap().to_string(), embedding, n_tokens)
        })
        .collect()
}

#[test]
fn embeddings_match_sentence_transformers() {
    let items = reference_embeddings();
    let enc = encoder();
    let mut long = 0;
    let mut worst = 1.0f64;
    for (text, reference, n_tokens) in &items {
        let (text, n_tokens) = (text.as_str(), *n_tokens);
        let tok = enc.tokenize_text(text).unwrap();
        assert_eq!(enc.count_tokens(text).unwrap() + 2, n_tokens, "token count differs for {text:?}");
        assert_eq!(tok.truncated, n_tokens > 256, "{text:?}");
        long += (n_tokens > 256) as usize;
        let ours = enc.embed(&[tok.ids.as_slice()]).unwrap().remove(0);
        let c = cosine(&ours, reference);
        worst = worst.min(c);
        assert!(c >= 0.999, "cosine {c} for {text:?}");
        let norm: f32 = ours.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
    }
    assert!(long >= 1, "the fixture must exercise truncation");
    eprintln!("worst cosine over {} sentences: {worst:.6}", items.len());
}

/// The int8 encoder against the f32 one and against sentence-transformers, on the parity fixtures
/// (20+ sentences, one over the 256-token window) and on routing features (sentence + focus) of a
/// padded batch: cosine >= 0.99 everywhere.
#[test]
fn int8_embeddings_stay_close_to_f32_and_sentence_transformers() {
    let items = reference_embeddings();
    let f32_enc = encoder();
    let int8 = Encoder::load_with(Path::new(MODEL_DIR), 256, Precision::Int8).unwrap();
    assert_eq!(int8.precision(), Precision::Int8);
    let (mut worst_f32, mut worst_st, mut sum) = (1.0f64, 1.0f64, 0.0f64);
    let mut toks = Vec::new();
    for (text, reference, _) in &items {
        let tok = int8.tokenize_text(text).unwrap();
        let q = int8.embed(&[tok.ids.as_slice()]).unwrap().remove(0);
        let f = f32_enc.embed(&[tok.ids.as_slice()]).unwrap().remove(0);
        let (c_f32, c_st) = (cosine(&q, &f), cosine(&q, reference));
        assert!(c_f32 >= 0.99, "int8 vs f32: cosine {c_f32} for {text:?}");
        assert!(c_st >= 0.99, "int8 vs sentence-transformers: cosine {c_st} for {text:?}");
        worst_f32 = worst_f32.min(c_f32);
        worst_st = worst_st.min(c_st);
        sum += c_f32;
        toks.push(tok);
    }
    eprintln!(
        "int8 over {} sentences: worst cosine to f32 {worst_f32:.5} (mean {:.5}), to sentence-transformers {worst_st:.5}",
        items.len(),
        sum / items.len() as f64
    );
    // Routing features of one padded batch: both halves (sentence, focus) close to f32.
    let refs: Vec<_> = toks.iter().collect();
    let (fq, ff) = (int8.features(&refs).unwrap(), f32_enc.features(&refs).unwrap());
    let half = ladder::classifier::encoder::EMBEDDING_DIM;
    for (q, f) in fq.iter().zip(&ff) {
        for (a, b) in [(&q[..half], &f[..half]), (&q[half..], &f[half..])] {
            let c = cosine(a, b);
            assert!(c >= 0.99, "int8 vs f32 features: cosine {c}");
        }
    }
}

#[test]
fn batched_embeddings_equal_single_ones() {
    let enc = encoder();
    let texts = [
        "short",
        "a somewhat longer sentence about routing language model requests",
        "fn main() { println!(\"hi\"); }",
    ];
    let batch = enc.embed_texts(&texts).unwrap();
    for (t, b) in texts.iter().zip(&batch) {
        let single = enc.embed_texts(&[t]).unwrap().remove(0);
        assert!(cosine(b, &single) > 0.99999, "padding changed the embedding of {t:?}");
    }
}

#[test]
fn prompt_truncation_keeps_head_and_tail_and_says_so() {
    let enc = encoder();
    let long_user = format!(
        "Please translate the following into German. {} End of text: thanks!",
        "The weather was fine and we walked along the river. ".repeat(80)
    );
    let t = enc.tokenize_prompt("You are a careful translator.", &long_user).unwrap();
    assert!(t.truncated);
    assert_eq!(t.ids.len(), 256);
    let short = enc.tokenize_prompt("You are terse.", "hello").unwrap();
    assert!(!short.truncated);
}

fn classifier_config() -> ClassifierConfig {
    ClassifierConfig {
        model_dir: MODEL_DIR.into(),
        heads_dir: "models/heads".into(),
        ..Default::default()
    }
}

fn catalogue() -> Config {
    Config::from_toml(
        r#"
        [classifier]
        enabled = false
        [[providers]]
        name = "p"
        kind = "openai"
        base_url = "http://127.0.0.1:1/v1"
        [[models]]
        name = "cheap"
        provider = "p"
        input_price = 0.6
        output_price = 0.6
        context_window = 32000
        quality = { default = 0.7, math = 0.65 }
        [[models]]
        name = "strong"
        provider = "p"
        input_price = 10.0
        output_price = 30.0
        context_window = 128000
        quality = { default = 0.9, math = 0.92 }
        "#,
    )
    .unwrap()
}

async fn score(c: &Classifier, text: &str) -> ladder::router::Scores {
    c.score(&RoutingText {
        system: String::new(),
        last_user: text.into(),
    })
    .await
    .unwrap()
    .0
}

#[tokio::test]
async fn shipped_heads_send_hard_math_higher_than_easy_math() {
    let c = Classifier::load(&classifier_config(), 0.35).unwrap();
    let easy = score(&c, "What is 7 + 5?").await;
    let hard = score(&c, "A bakery sells muffins in boxes of 6 and 10. On Monday it sold 3 more boxes of 10 than boxes of 6, and 174 muffins in total. On Tuesday it sold twice as many boxes of 6 as on Monday, and the total number of muffins increased by 25% compared with Monday. How many boxes of 10 were sold on Tuesday?").await;
    assert_eq!(hard.top_task().0, Task::Math, "{:?}", hard.task_probs);
    assert!(
        hard.difficulty > easy.difficulty + 0.3,
        "hard {} vs easy {}",
        hard.difficulty,
        easy.difficulty
    );
    let config = catalogue();
    let req = RouteRequest {
        model: "auto".into(),
        task_hint: Some(Task::Math),
        prompt_tokens: 100,
        ..Default::default()
    };
    let d_easy = router::decide(&config, &req, &easy).unwrap();
    let d_hard = router::decide(&config, &req, &hard).unwrap();
    assert_eq!(d_easy.chain[0], "cheap", "{}", d_easy.reason);
    assert_eq!(d_hard.chain[0], "strong", "{}", d_hard.reason);
}

#[tokio::test]
async fn task_head_recognises_clear_prompts() {
    let c = Classifier::load(&classifier_config(), 0.35).unwrap();
    let cases = [
        ("Translate into Spanish: 'Where is the train station?'", Task::Translation),
        (
            "Write a Python function that returns the n-th Fibonacci number iteratively.",
            Task::Code,
        ),
        (
            "Write a short poem about autumn leaves falling on a quiet lake.",
            Task::CreativeWriting,
        ),
        (
            "Summarize the following article in three bullet points: The city council voted on Tuesday to expand the bike lane network by 40 km over the next two years, citing a 30% rise in cycling since 2022. Opponents argued the plan removes parking.",
            Task::Summarization,
        ),
    ];
    for (prompt, task) in cases {
        let s = score(&c, prompt).await;
        assert_eq!(s.top_task().0, task, "{prompt}: {:?}", s.task_probs);
        assert_eq!(s.source, ScoreSource::Classifier);
        assert!(s.heads_version.is_some());
    }
}

#[tokio::test]
async fn queue_full_degrades_to_the_fallback_policy_instead_of_stalling() {
    let cfg = ClassifierConfig {
        queue_capacity: 1,
        workers: 1,
        max_batch: 1,
        cache_entries: 0,
        ..classifier_config()
    };
    let scorer = Arc::new(Scorer::from_config(&cfg, 0.35).unwrap());
    let mut handles = Vec::new();
    for i in 0..24 {
        let s = scorer.clone();
        handles.push(tokio::spawn(async move {
            let text = RoutingText {
                system: String::new(),
                last_user: format!("prompt number {i}: {}", "words ".repeat(150)),
            };
            s.score(&text, Some(Task::Code), Task::Chat).await.0
        }));
    }
    let mut degraded = 0;
    let mut scored = 0;
    for h in handles {
        let s = h.await.unwrap();
        match &s.source {
            ScoreSource::Degraded { reason } => {
                assert!(reason.contains("queue full"), "{reason}");
                assert_eq!(s.top_task().0, Task::Code, "the hint stands in");
                degraded += 1;
            }
            ScoreSource::Classifier => scored += 1,
            other => panic!("{other:?}"),
        }
    }
    assert!(degraded > 0 && scored > 0, "degraded {degraded}, scored {scored}");
}

#[tokio::test]
async fn repeated_prompts_hit_the_cache_and_score_identically() {
    let c = Classifier::load(&classifier_config(), 0.35).unwrap();
    let a = score(&c, "Explain the difference between TCP and UDP.").await;
    let b = score(&c, "Explain the difference between TCP and UDP.").await;
    assert_eq!(a.task_probs, b.task_probs);
    assert_eq!(a.difficulty, b.difficulty);
}

/// The thread layout of the inference pool (per-core workers, one worker splitting every product
/// over several threads, the shared rayon pool) changes where the work runs, never the result:
/// every product column and attention head is computed whole by one thread.
#[tokio::test]
async fn scores_do_not_depend_on_the_inference_thread_layout() {
    let prompts = [
        "Write a Rust function that parses an ISO 8601 date.",
        "What is 7 + 5?",
        "Traduis en anglais : « le chat dort sur le canapé ».",
        "Summarize the plot of Hamlet in two sentences.",
    ];
    let mut runs = Vec::new();
    for (workers, threads_per_worker) in [(2, 1), (1, 2), (1, 0)] {
        let cfg = ClassifierConfig {
            workers,
            threads_per_worker,
            cache_entries: 0,
            ..classifier_config()
        };
        let c = Arc::new(Classifier::load(&cfg, 0.35).unwrap());
        // Concurrent submissions, so that batches form and both workers take some.
        let handles: Vec<_> = prompts
            .iter()
            .map(|p| {
                let c = c.clone();
                let p = p.to_string();
                tokio::spawn(async move { score(&c, &p).await })
            })
            .collect();
        let mut scores = Vec::new();
        for h in handles {
            scores.push(h.await.unwrap());
        }
        runs.push(((workers, threads_per_worker), scores));
    }
    let (_, reference) = &runs[0];
    for (layout, scores) in &runs[1..] {
        for ((a, b), prompt) in reference.iter().zip(scores).zip(prompts) {
            for (pa, pb) in a.task_probs.iter().zip(&b.task_probs) {
                assert!(
                    (pa - pb).abs() < 1e-4,
                    "{layout:?} {prompt}: {:?} vs {:?}",
                    a.task_probs,
                    b.task_probs
                );
            }
            assert!((a.difficulty - b.difficulty).abs() < 1e-4, "{layout:?} {prompt}");
        }
    }
}
