//! The decision log's behaviour, the same tests on both backends: an SQLite file, and a real
//! throwaway PostgreSQL cluster (see `common::pg`; skipped with a `SKIPPED:` line when the server
//! binaries are missing, unless `LADDER_REQUIRE_POSTGRES=1`). Then what only Postgres has to
//! survive: replicas creating the schema at once, a server restart under writes, an unreachable
//! server at start-up, and the CLI (`keys`, `replay`, `train --from-log`) against it.

mod common;

use common::pg::{PASSWORD_ENV, PG_PASSWORD, PgCluster};
use ladder::config::{Config, StoreConfig};
use ladder::store::{DecisionQuery, DecisionRecord, Feedback, Store};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("ladder-store-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn sqlite() -> StoreConfig {
    StoreConfig::sqlite(tempdir().join("log.db"))
}

/// A fresh database on the cluster, with the password inline (in-process: no env var needed).
fn postgres(pg: &PgCluster, db: &str) -> StoreConfig {
    pg.create_db(db);
    StoreConfig {
        url: Some(pg.url_with_password(db)),
        ..StoreConfig::default()
    }
}

fn with_batch(mut cfg: StoreConfig, max_batch: usize) -> StoreConfig {
    cfg.max_batch = max_batch;
    cfg
}

fn rec(i: i64, model: &str) -> DecisionRecord {
    DecisionRecord {
        id: format!("dec_{i}"),
        ts_ms: 1_000 + i,
        outcome: if i % 2 == 0 { "success".into() } else { "escalated".into() },
        final_model: Some(model.into()),
        task: Some(if i % 3 == 0 { "code" } else { "chat" }.into()),
        embedding: (i == 3).then(|| vec![0.5, -1.25]),
        // A NUL character (jsonb cannot hold one) and other escapes in the prompt.
        prompt: Some(format!("prompt {i} \u{0} \"quoted\" \\ back")),
        ..Default::default()
    }
}

fn ids(records: &[DecisionRecord]) -> Vec<&str> {
    records.iter().map(|r| r.id.as_str()).collect()
}

fn q(limit: usize) -> DecisionQuery {
    DecisionQuery {
        limit,
        ..Default::default()
    }
}

async fn append_then_query_with_filters_and_cursor(cfg: StoreConfig) {
    let store = Store::open(&with_batch(cfg.clone(), 4)).unwrap();
    for i in 0..10 {
        store.append(rec(i, if i < 5 { "a" } else { "b" })).await;
    }
    let got = store.get("dec_3".into()).await.unwrap().unwrap();
    assert_eq!(got.embedding, Some(vec![0.5, -1.25]));
    assert!(got.prompt.unwrap().starts_with("prompt 3 "));
    assert!(store.get("nope".into()).await.unwrap().is_none());
    let page = store.list(q(3)).await.unwrap();
    assert_eq!(ids(&page.records), vec!["dec_9", "dec_8", "dec_7"]);
    // Walk every page: each record once, newest first.
    let mut all = ids(&page.records).iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut cursor = page.next_cursor;
    while let Some(c) = cursor {
        let p = store.list(DecisionQuery { cursor: Some(c), ..q(3) }).await.unwrap();
        all.extend(p.records.iter().map(|r| r.id.clone()));
        cursor = p.next_cursor;
    }
    assert_eq!(all, (0..10).rev().map(|i| format!("dec_{i}")).collect::<Vec<_>>());
    let a = store
        .list(DecisionQuery {
            model: Some("a".into()),
            outcome: Some("success".into()),
            ..q(100)
        })
        .await
        .unwrap();
    assert_eq!(ids(&a.records), vec!["dec_4", "dec_2", "dec_0"]);
    assert!(a.next_cursor.is_none());
    let window = store
        .list(DecisionQuery {
            since_ms: Some(1_003),
            until_ms: Some(1_007),
            task: Some("chat".into()),
            ..q(100)
        })
        .await
        .unwrap();
    assert_eq!(ids(&window.records), vec!["dec_5", "dec_4"]);
    assert_eq!(store.scan(Some(1_008)).await.unwrap().len(), 2);
    assert_eq!(ids(&store.scan(None).await.unwrap())[..2], ["dec_0", "dec_1"]);
    store.close().await;
    // Reopen: everything is there, and appends continue after it.
    let store = Store::open(&cfg).unwrap();
    assert_eq!(store.count().await.unwrap(), 10);
    store.append(rec(10, "a")).await;
    assert_eq!(store.list(q(1)).await.unwrap().records[0].id, "dec_10");
    store.close().await;
}

async fn detached_appends_are_flushed(cfg: StoreConfig) {
    let store = Store::open(&with_batch(cfg, 2)).unwrap();
    for i in 0..50 {
        store.append_detached(rec(i, "a"));
    }
    store.flush().await;
    assert_eq!(store.count().await.unwrap(), 50);
    store.close().await;
}

async fn feedback_is_idempotent_per_source(cfg: StoreConfig) {
    let store = Store::open(&cfg).unwrap();
    store.append(rec(1, "a")).await;
    let fb = |source: &str, outcome: &str, score: Option<f64>| Feedback {
        decision_id: "dec_1".into(),
        source: source.into(),
        outcome: outcome.into(),
        score,
        comment: Some("ok".into()),
        ts_ms: 5,
    };
    assert!(store.put_feedback(fb("eval", "success", Some(0.9))).await.unwrap());
    assert!(store.put_feedback(fb("eval", "success", Some(0.9))).await.unwrap());
    assert!(store.put_feedback(fb("eval", "failure", None)).await.unwrap());
    assert!(store.put_feedback(fb("human", "success", None)).await.unwrap());
    let mut got = store.feedback_for("dec_1".into()).await.unwrap();
    got.sort_by(|a, b| a.source.cmp(&b.source));
    assert_eq!(got, vec![fb("eval", "failure", None), fb("human", "success", None)]);
    let mut unknown = fb("eval", "success", None);
    unknown.decision_id = "dec_nope".into();
    assert!(!store.put_feedback(unknown).await.unwrap());
    store.close().await;
    // The offline reader sees the same log.
    let (records, feedback) = ladder::store::read_log(&cfg, None).unwrap();
    assert_eq!(ids(&records), vec!["dec_1"]);
    assert_eq!(feedback.len(), 2);
}

fn config_with(store: &StoreConfig) -> Config {
    let mut c = Config::from_toml(
        r#"
        [[providers]]
        name = "p"
        kind = "openai"
        base_url = "http://127.0.0.1:9/v1"
        [[models]]
        name = "m"
        provider = "p"
        input_price = 1.0
        output_price = 1.0
        context_window = 8000
        quality = { default = 0.8 }
        "#,
    )
    .unwrap();
    c.store = store.clone();
    c.validate().unwrap();
    c
}

/// Keys made by the CLI's functions; spend charged with the records, once per record even when
/// the same record is appended again (as after a lost commit acknowledgement).
async fn keys_are_charged_with_their_records(cfg: StoreConfig) {
    let config = config_with(&cfg);
    let key = ladder::auth::cli::create(&config, "app", Some(1.0), Some(60), None, Some(vec!["m".into()])).unwrap();
    assert!(key.starts_with("lk-"));
    let again = ladder::auth::cli::create(&config, "app", None, None, None, None).unwrap_err();
    assert!(again.to_string().contains("already exists"), "{again}");
    let store = Store::open(&config.store).unwrap();
    let mut total = 0.0;
    for i in 0..6 {
        let mut r = rec(i, "m");
        r.key_name = Some("app".into());
        r.total_cost_usd = 0.001 * (i + 1) as f64;
        total += r.total_cost_usd;
        store.append(r).await;
    }
    let mut dup = rec(2, "m");
    dup.key_name = Some("app".into());
    dup.total_cost_usd = 0.5;
    store.append(dup).await;
    store.close().await;
    let rows = ladder::auth::cli::list(&config).unwrap();
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(
        (row.name.as_str(), row.requests, row.rpm, row.budget_usd),
        ("app", 6, Some(60), Some(1.0))
    );
    assert_eq!(row.models.as_deref(), Some(&["m".to_string()][..]));
    assert!((row.spent_usd - total).abs() < 1e-12, "spent {} vs {total}", row.spent_usd);
    assert_eq!(row.last_used_ms, Some(1_005));
    assert!(ladder::auth::cli::revoke(&config, "app").unwrap());
    assert!(!ladder::auth::cli::revoke(&config, "app").unwrap());
    assert!(ladder::auth::cli::list(&config).unwrap()[0].revoked_ms.is_some());
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::sqlite()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(pg) = super::PgCluster::start() else { return };
                    super::$name(super::postgres(&pg, "log")).await;
                }
            )*
        }
    };
}

both_backends!(
    append_then_query_with_filters_and_cursor,
    detached_appends_are_flushed,
    feedback_is_idempotent_per_source,
    keys_are_charged_with_their_records,
);

/// Replicas starting together create the schema once, without errors.
/// `store.wait_for_commit`: by default `commit` returns only once the record is committed (a
/// reader sees it at once); with `false` it returns at once and the record lands in the
/// background, still never dropped (flush and close wait for it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_waits_for_the_record_unless_configured_not_to() {
    let store = Store::open(&sqlite()).unwrap();
    for i in 0..20 {
        store.commit(rec(i, "a")).await;
        assert_eq!(
            store.count().await.unwrap(),
            i as u64 + 1,
            "commit returned before its record was committed"
        );
    }
    store.close().await;

    let mut cfg = sqlite();
    cfg.wait_for_commit = false;
    let path = cfg.sqlite_path();
    let store = Store::open(&cfg).unwrap();
    for i in 0..300 {
        store.commit(rec(i, "a")).await;
    }
    store.close().await;
    let store = Store::open(&StoreConfig::sqlite(path)).unwrap();
    assert_eq!(store.count().await.unwrap(), 300, "background commits were lost on close");
    store.close().await;
}

/// The SQLite writer leaves checkpoints to a background thread: records reach the main database
/// file (not only the WAL) while the store is open, and `close` checkpoints what is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_wal_is_checkpointed_off_the_writer() {
    let cfg = sqlite();
    let path = cfg.sqlite_path();
    let store = Store::open(&cfg).unwrap();
    for i in 0..500 {
        store.append_detached(rec(i, "a"));
    }
    store.flush().await;
    // The main file alone (copied without its WAL) must hold every record within a few
    // checkpoint periods.
    let rows_in_main_file = |tag: &str| -> i64 {
        let copy = path.with_extension(format!("{tag}.copy"));
        std::fs::copy(&path, &copy).unwrap();
        let conn = rusqlite::Connection::open(&copy).unwrap();
        conn.query_row("SELECT COUNT(*) FROM decisions", [], |r| r.get(0)).unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    let mut k = 0;
    while Instant::now() < deadline {
        k += 1;
        n = rows_in_main_file(&format!("t{k}"));
        if n == 500 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(n, 500, "the WAL was not checkpointed into the database file");
    for i in 500..510 {
        store.append(rec(i, "a")).await;
    }
    store.close().await;
    assert_eq!(rows_in_main_file("closed"), 510, "close() left records only in the WAL");
}

/// Under steady writes a PASSIVE checkpoint never catches up, so SQLite never rewinds the WAL;
/// the checkpointer and the writer must rewind it once it passes `store.wal_max_mb`, or the file
/// (and its index, mapped into the server's memory) grows without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_wal_stays_bounded_under_steady_writes() {
    let mut cfg = sqlite();
    cfg.wal_max_mb = 1;
    let path = cfg.sqlite_path();
    let wal = ladder::store::sqlite::wal_path(&path);
    let store = Store::open(&cfg).unwrap();
    let big = "x".repeat(1000);
    // Steady writes (group commits of 50 records, ~20 MB/s of WAL) until the WAL has stopped
    // growing for 1.5 s while the records kept coming: unbounded, it grows with every commit.
    let started = Instant::now();
    let (mut i, mut plateau_since, mut plateau_size, mut plateau_records) = (0i64, Instant::now(), 0u64, 0i64);
    let stopped_growing = loop {
        for _ in 0..50 {
            let mut r = rec(i, "a");
            r.error = Some(big.clone());
            store.append_detached(r);
            i += 1;
        }
        store.flush().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        let size = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        if size > plateau_size {
            (plateau_since, plateau_size, plateau_records) = (Instant::now(), size, i);
        } else if plateau_since.elapsed() > Duration::from_millis(1500) && i - plateau_records > 2_000 {
            break true;
        }
        if started.elapsed() > Duration::from_secs(30) {
            break false;
        }
    };
    let written = std::fs::metadata(&path).unwrap().len();
    assert!(
        stopped_growing,
        "the WAL kept growing with a 1 MiB cap: {plateau_size} bytes after {i} records (db {written} bytes)"
    );
    store.close().await;
    let n: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("SELECT COUNT(*) FROM decisions", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, i, "records lost across WAL rewinds");
    assert_eq!(std::fs::metadata(&wal).map_or(0, |m| m.len()), 0, "close() leaves the WAL empty");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replicas_create_the_schema_concurrently() {
    let Some(pg) = PgCluster::start() else { return };
    let cfg = postgres(&pg, "race");
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let cfg = cfg.clone();
            std::thread::spawn(move || ladder::store::db::Database::open(&cfg).map(|_| ()))
        })
        .collect();
    for h in handles {
        h.join().unwrap().expect("concurrent schema creation");
    }
    let tables: i64 = pg.with_client("race", |c| {
        c.query_one(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_name IN ('decisions', 'feedback', 'keys')",
            &[],
        )
        .unwrap()
        .get(0)
    });
    assert_eq!(tables, 3);
}

/// The server goes away under writes: appends wait (no response without its record), nothing is
/// dropped, and the writer and the readers reconnect once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_under_writes_loses_nothing() {
    let Some(pg) = PgCluster::start() else { return };
    let store = Store::open(&with_batch(postgres(&pg, "restart"), 4)).unwrap();
    for i in 0..5 {
        store.append(rec(i, "a")).await;
    }
    assert_eq!(store.count().await.unwrap(), 5);
    pg.stop_server();
    let writers: Vec<_> = (5..25)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.append(rec(i, "b")).await })
        })
        .collect();
    for i in 25..30 {
        store.append_detached(rec(i, "c"));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        writers.iter().all(|w| !w.is_finished()),
        "an append returned while the database was down"
    );
    assert!(store.count().await.is_err(), "reads fail while the server is down");
    assert!(pg.start_server(), "restarting postgres:\n{}", pg.server_log());
    let t0 = Instant::now();
    for w in writers {
        tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .expect("append after the restart")
            .unwrap();
    }
    store.flush().await;
    assert!(t0.elapsed() < Duration::from_secs(30));
    assert_eq!(store.count().await.unwrap(), 30);
    let page = store.list(q(500)).await.unwrap();
    let mut got: Vec<String> = page.records.iter().map(|r| r.id.clone()).collect();
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 30);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unreachable_at_start_fails_fast_naming_the_field() {
    let port = common::free_port();
    let cfg = StoreConfig {
        url: Some(format!("postgres://ladder:pw@127.0.0.1:{port}/log")),
        ..StoreConfig::default()
    };
    let t0 = Instant::now();
    let err = match Store::open(&cfg) {
        Ok(_) => panic!("opened a log on a closed port"),
        Err(e) => format!("{e:#}"),
    };
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert!(err.contains("store.url") && err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(!err.contains(":pw@"), "the password leaked into the error: {err}");
    // A password variable that is not set is named too.
    let cfg = StoreConfig {
        url: Some(format!("postgres://ladder@127.0.0.1:{port}/log")),
        password_env: Some("LADDER_TEST_UNSET_PASSWORD_VAR".into()),
        ..StoreConfig::default()
    };
    let err = Store::open(&cfg).err().expect("unset password variable").to_string();
    assert!(
        err.contains("store.password_env") && err.contains("LADDER_TEST_UNSET_PASSWORD_VAR"),
        "{err}"
    );
}

/// `ladder keys`, `ladder replay` and `ladder train --from-log` read the Postgres log named by
/// the config (password through `store.password_env`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cli_reads_the_log_from_the_config() {
    let Some(pg) = PgCluster::start() else { return };
    let db = pg.create_db("cli");
    let dir = tempdir();
    let config = dir.join("ladder.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[store]
url = "{}"
password_env = "{PASSWORD_ENV}"

[classifier]
enabled = false

[[providers]]
name = "p"
kind = "openai"
base_url = "http://127.0.0.1:9/v1"

[[models]]
name = "cheap"
provider = "p"
input_price = 0.1
output_price = 0.2
context_window = 8000
quality = {{ default = 0.7 }}

[[models]]
name = "top"
provider = "p"
input_price = 10.0
output_price = 30.0
context_window = 8000
quality = {{ default = 0.95 }}
"#,
            pg.url(&db)
        ),
    )
    .unwrap();
    let ladder = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ladder"))
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env(PASSWORD_ENV, PG_PASSWORD)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let cfg_arg = config.display().to_string();
    let (ok, key, err) = ladder(&["keys", "create", "--config", &cfg_arg, "--name", "cli-app", "--budget-usd", "2"]);
    assert!(ok, "{err}");
    assert!(key.trim().starts_with("lk-"));
    let (ok, list, err) = ladder(&["keys", "list", "--config", &cfg_arg, "--json"]);
    assert!(ok, "{err}");
    assert!(list.contains("\"cli-app\""), "{list}");
    let (ok, _, err) = ladder(&["keys", "list", "--config", &cfg_arg]);
    assert!(ok, "{err}");

    // Decisions with features: cheap failed a check and top answered (so a label for each).
    assert!(Config::load(&config).unwrap().store.url.is_some());
    let store = Store::open(&StoreConfig {
        url: Some(pg.url_with_password(&db)),
        ..StoreConfig::default()
    })
    .unwrap();
    for i in 0..30 {
        let mut r = rec(i, "top");
        r.id = format!("dec_cli_{i}");
        r.task = Some("code".into());
        r.outcome = "escalated".into();
        r.embedding = Some((0..768).map(|k| ((i * 7 + k) % 13) as f32 / 13.0 - 0.5).collect());
        r.attempts = vec![
            ladder::store::Attempt {
                model: "cheap".into(),
                status: "check_failed".into(),
                ..Default::default()
            },
            ladder::store::Attempt {
                model: "top".into(),
                status: "ok".into(),
                ..Default::default()
            },
        ];
        store.append(r).await;
    }
    store.close().await;
    let (ok, out, err) = ladder(&["replay", "--config", &cfg_arg, "--threshold", "0.9"]);
    assert!(ok, "{err}");
    // (Records without classifier scores are skipped, but they were read from Postgres.)
    assert!(
        out.contains(&format!("decisions from postgres://ladder@127.0.0.1:{}/cli (skipped 30)", pg.port)),
        "{out}"
    );
    assert!(!out.contains(PG_PASSWORD) && !err.contains(PG_PASSWORD));
    let (ok, out, err) = ladder(&[
        "train",
        "--from-log",
        "--config",
        &cfg_arg,
        "--dry-run",
        "--data",
        "/nonexistent-seed-data",
    ]);
    assert!(ok, "{err}\n{out}");
    assert!(out.contains("log: 30 decisions"), "{out}");
    assert!(out.contains("60 labelled examples"), "{out}");
    // Without the password variable, the CLI says which variable is missing.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ladder"))
        .args(["keys", "list", "--config", &cfg_arg])
        .env_remove(PASSWORD_ENV)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(PASSWORD_ENV));
}
