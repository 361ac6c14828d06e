//! The decision log: one record per chat request, in an embedded SQLite database (WAL mode) or
//! in a Postgres database that several replicas share (`[store] url`).
//!
//! Writes go through a single writer thread per process that group-commits whatever is queued (up
//! to `store.max_batch` records per transaction). A handler hands its record to [`Store::append`],
//! which waits only for the commit of the batch its record landed in, so a client never gets a
//! response whose record is not in the database, and a record is never dropped: the queue applies
//! backpressure instead of discarding, and a failing write is retried with backoff until it
//! succeeds (reconnecting when the connection was lost). A key's spend is charged in the
//! transaction that commits its records. [`Store::close`] drains the queue and flushes on
//! shutdown.
//!
//! Reads (`/v1/decisions`, feedback, keys) use a small [`Pool`] of connections on the blocking
//! pool, beside the writer. Records are stored as JSON next to a few indexed columns used for
//! filtering; the prompt embedding, when the classifier produced one, is kept as a little-endian
//! f32 blob so that retraining never needs the upstream again.
//!
//! The backends ([`db::Database`]: SQLite or Postgres) share every query below; see [`db`].

pub mod db;
pub mod pg;
pub mod sqlite;

use crate::config::StoreConfig;
use crate::router::{Candidate, Scores};
use anyhow::Context;
use db::{Conn, Database, Exec, Param, need, off_runtime};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// One upstream attempt (or a rung skipped without one).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Attempt {
    pub model: String,
    pub provider: String,
    /// `ok`, `error`, `check_failed`, `skipped`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// Machine-readable failure kind (`http_429`, `timeout_attempt`, `empty_content`, `circuit_open`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The upstream's `retry-after` / `retry-after-ms` on an error response, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// Milliseconds since the request arrived when the attempt started.
    pub started_ms: u64,
    pub latency_ms: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
}

/// Everything Ladder knows about one request, as logged and as served by `/v1/decisions/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct DecisionRecord {
    pub id: String,
    /// Unix milliseconds when the request arrived.
    pub ts_ms: i64,
    /// RFC 3339 form of `ts_ms`.
    pub created_at: String,
    pub requested_model: String,
    pub stream: bool,
    /// Hints as the client sent them (header and body).
    pub hints: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scores: Option<Scores>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    #[serde(default)]
    pub candidates: Vec<Candidate>,
    #[serde(default)]
    pub chain: Vec<String>,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub attempts: Vec<Attempt>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_model: Option<String>,
    /// `success`, `escalated` (succeeded on a later rung), `degraded` (returned a response that
    /// failed checks, nothing better left), `failed`, `rejected` (client error before any attempt),
    /// `stream_failed` (broke after output started), `client_disconnected`.
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub http_status: u16,
    pub total_cost_usd: f64,
    pub latency_ms: u64,
    pub prompt_tokens_estimate: u64,
    /// The conversation text, or None when `store.keep_prompts` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    pub prompt_sha256: String,
    /// The name of the API key the request came with (never the key itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,
    /// Capabilities the request needed (`tools`, `vision`, `json`), for replay.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<String>,
    /// The caller's output limit, for replay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u64>,
    /// The embedding is stored beside the record, not inside its JSON.
    #[serde(skip)]
    pub embedding: Option<Vec<f32>>,
}

/// Filters for listing decisions.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct DecisionQuery {
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub model: Option<String>,
    pub task: Option<String>,
    pub outcome: Option<String>,
    pub limit: usize,
    /// Return records older than this cursor (from a previous page's `next_cursor`).
    pub cursor: Option<i64>,
}

/// An outcome a client (or an evaluator) attached to a decision with `POST /v1/feedback`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Feedback {
    pub decision_id: String,
    /// Who said it; feedback is idempotent per (decision, source).
    pub source: String,
    /// `success` or `failure`.
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    pub ts_ms: i64,
}

pub struct DecisionPage {
    pub records: Vec<DecisionRecord>,
    pub next_cursor: Option<i64>,
}

enum WriteOp {
    Record(Box<DecisionRecord>, Option<oneshot::Sender<()>>),
    Flush(oneshot::Sender<()>),
}

/// Handle to the decision log. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<WriteOp>,
    pool: Pool,
    writer: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    /// Whether [`Store::commit`] waits for the record's commit (`store.wait_for_commit`).
    wait_for_commit: bool,
    /// SQLite's WAL checkpointer (stops when the last clone is dropped or on [`Store::close`]).
    maintenance: Arc<Mutex<Option<sqlite::Checkpointer>>>,
    /// Detached records still waiting for room in the queue; [`Store::flush`] waits for them.
    waiting: Arc<(AtomicUsize, tokio::sync::Notify)>,
}

/// Idle connections kept for reads.
const POOL_IDLE: usize = 8;

/// Connections for reads and small writes (feedback, keys), used on blocking threads. Cheap to
/// clone; the store and the key cache share one.
#[derive(Clone)]
pub struct Pool {
    db: Database,
    idle: Arc<Mutex<Vec<Box<dyn Conn>>>>,
}

impl Pool {
    pub fn new(db: Database) -> Pool {
        Pool {
            db,
            idle: Arc::new(Mutex::new(Vec::new())),
        }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Run `f` with a connection on tokio's blocking pool.
    pub async fn run<T: Send + 'static>(&self, f: impl FnMut(&mut dyn Conn) -> anyhow::Result<T> + Send + 'static) -> anyhow::Result<T> {
        let pool = self.clone();
        tokio::task::spawn_blocking(move || pool.run_blocking(f)).await?
    }

    /// Run `f` with a connection on this thread (not an async one: see [`db::off_runtime`]).
    /// When the connection turns out to be dead (the server restarted), `f` runs once more on a
    /// new one, so `f` must be safe to repeat (reads and upserts are).
    pub fn run_blocking<T>(&self, mut f: impl FnMut(&mut dyn Conn) -> anyhow::Result<T>) -> anyhow::Result<T> {
        let mut fresh = false;
        loop {
            let pooled = self.idle.lock().ok().and_then(|mut idle| idle.pop());
            let mut conn = match pooled {
                Some(c) => c,
                None => {
                    fresh = true;
                    self.db.connect()?
                }
            };
            let out = f(conn.as_mut());
            if conn.is_broken() {
                if out.is_err() && !fresh {
                    continue;
                }
                return out;
            }
            if let Ok(mut idle) = self.idle.lock()
                && idle.len() < POOL_IDLE
            {
                idle.push(conn);
            }
            return out;
        }
    }
}

/// A record ready to insert: its JSON and its embedding's bytes (encoded once per batch, however
/// many times the batch is retried).
struct Pending<'a> {
    rec: &'a DecisionRecord,
    json: String,
    embedding: Option<Vec<u8>>,
}

impl Pending<'_> {
    fn new(rec: &DecisionRecord) -> Pending<'_> {
        let json = serde_json::to_string(rec).unwrap_or_else(|e| {
            // Not expected (every field serialises); keep what identifies the request.
            tracing::error!(error = %e, id = %rec.id, "encoding a decision record failed");
            serde_json::json!({"id": rec.id, "ts_ms": rec.ts_ms, "outcome": rec.outcome, "http_status": rec.http_status,
                "total_cost_usd": rec.total_cost_usd, "key_name": rec.key_name, "error": format!("record not encodable: {e}")})
            .to_string()
        });
        let embedding = rec.embedding.as_ref().map(|e| e.iter().flat_map(|f| f.to_le_bytes()).collect());
        Pending { rec, json, embedding }
    }
}

impl Store {
    /// Open (or create) the log named by `[store]` and start the writer thread. Fails when the
    /// database cannot be reached or its schema cannot be created.
    pub fn open(cfg: &StoreConfig) -> anyhow::Result<Store> {
        let db = Database::open(cfg)?;
        let maintenance = off_runtime(|| db.maintenance(cfg.wal_max_mb.saturating_mul(1 << 20)))?;
        let conn = off_runtime(|| db.connect_writer(maintenance.as_ref()))?;
        let max_batch = cfg.max_batch.max(1);
        let (tx, rx) = mpsc::channel(max_batch * 8);
        let writer_db = db.clone();
        let handle = std::thread::Builder::new()
            .name("ladder-store-writer".into())
            .spawn(move || writer_loop(writer_db, conn, rx, max_batch))?;
        Ok(Store {
            tx,
            pool: Pool::new(db),
            writer: Arc::new(Mutex::new(Some(handle))),
            maintenance: Arc::new(Mutex::new(maintenance)),
            wait_for_commit: cfg.wait_for_commit,
            waiting: Arc::new((AtomicUsize::new(0), tokio::sync::Notify::new())),
        })
    }

    /// The read pool (shared with the key cache).
    pub fn pool(&self) -> Pool {
        self.pool.clone()
    }

    /// The record of a request whose response is about to be released: [`Store::append`] (wait
    /// for the commit) unless `store.wait_for_commit = false`, then [`Store::append_detached`].
    pub async fn commit(&self, record: DecisionRecord) {
        if self.wait_for_commit {
            self.append(record).await
        } else {
            self.append_detached(record)
        }
    }

    /// Queue a record and wait until it is committed.
    pub async fn append(&self, record: DecisionRecord) {
        let (done_tx, done_rx) = oneshot::channel();
        if self.tx.send(WriteOp::Record(Box::new(record), Some(done_tx))).await.is_err() {
            tracing::error!("decision log writer is gone; record not written");
            return;
        }
        let _ = done_rx.await;
    }

    /// Queue a record without waiting (for drop guards, which cannot await). Never drops: if the
    /// queue is full it hands the record to a task that waits for room.
    pub fn append_detached(&self, record: DecisionRecord) {
        match self.tx.try_send(WriteOp::Record(Box::new(record), None)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(op)) => {
                let tx = self.tx.clone();
                let waiting = self.waiting.clone();
                waiting.0.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let _ = tx.send(op).await;
                    waiting.0.fetch_sub(1, Ordering::SeqCst);
                    waiting.1.notify_waiters();
                });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => tracing::error!("decision log writer is gone; record not written"),
        }
    }

    /// Wait until everything queued so far is committed (detached records waiting for room
    /// included).
    pub async fn flush(&self) {
        loop {
            let notified = self.waiting.1.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.waiting.0.load(Ordering::SeqCst) == 0 {
                break;
            }
            notified.await;
        }
        let (done_tx, done_rx) = oneshot::channel();
        if self.tx.send(WriteOp::Flush(done_tx)).await.is_ok() {
            let _ = done_rx.await;
        }
    }

    /// Flush, then stop the writer (other clones can no longer write).
    pub async fn close(self) {
        self.flush().await;
        let maintenance = self.maintenance.lock().ok().and_then(|mut m| m.take());
        if let Some(m) = maintenance {
            let _ = tokio::task::spawn_blocking(move || m.stop()).await; // a last checkpoint
        }
        let handle = self.writer.lock().ok().and_then(|mut h| h.take());
        drop(self.tx);
        if let Some(h) = handle {
            // The writer exits when every sender is gone; other clones may still hold one, so do
            // not wait forever.
            let _ = tokio::task::spawn_blocking(move || {
                let deadline = std::time::Instant::now() + Duration::from_secs(2);
                while !h.is_finished() && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
            .await;
        }
    }

    pub async fn get(&self, id: String) -> anyhow::Result<Option<DecisionRecord>> {
        self.pool.run(move |c| get(c, &id)).await
    }

    pub async fn list(&self, q: DecisionQuery) -> anyhow::Result<DecisionPage> {
        self.pool.run(move |c| list(c, &q)).await
    }

    /// All records (oldest first) from `since_ms`, for training and replay.
    pub async fn scan(&self, since_ms: Option<i64>) -> anyhow::Result<Vec<DecisionRecord>> {
        self.pool.run(move |c| scan(c, since_ms)).await
    }

    /// Attach feedback to a decision (replacing this source's earlier feedback on it). Returns
    /// false when the decision does not exist.
    pub async fn put_feedback(&self, fb: Feedback) -> anyhow::Result<bool> {
        self.pool.run(move |c| put_feedback(c, &fb)).await
    }

    pub async fn feedback_for(&self, decision_id: String) -> anyhow::Result<Vec<Feedback>> {
        self.pool.run(move |c| read_feedback(c, Some(&decision_id))).await
    }

    pub async fn count(&self) -> anyhow::Result<u64> {
        self.pool.run(|c| count(c)).await
    }
}

// The queries, written once for both backends (`$n` placeholders; see `db`).

const INSERT_DECISION: &str = "INSERT INTO decisions (id, ts_ms, task, final_model, outcome, total_cost_usd, record, embedding)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING";

fn decode_row(r: &dyn db::Row, record: usize) -> anyhow::Result<DecisionRecord> {
    decode(&need(r.text(record)?, "record")?, r.bytes(record + 1)?)
}

fn get(ex: &mut dyn Exec, id: &str) -> anyhow::Result<Option<DecisionRecord>> {
    ex.query_opt("SELECT record, embedding FROM decisions WHERE id = $1", &[id.into()], |r| {
        decode_row(r, 0)
    })
}

fn list<'a>(ex: &mut dyn Exec, q: &'a DecisionQuery) -> anyhow::Result<DecisionPage> {
    let mut sql = String::from("SELECT seq, record, embedding FROM decisions WHERE 1=1");
    let mut args: Vec<Param<'a>> = Vec::new();
    let mut filter = |condition: &str, value: Param<'a>| {
        args.push(value);
        sql.push_str(&format!(" AND {condition} ${}", args.len()));
    };
    if let Some(c) = q.cursor {
        filter("seq <", c.into());
    }
    if let Some(s) = q.since_ms {
        filter("ts_ms >=", s.into());
    }
    if let Some(u) = q.until_ms {
        filter("ts_ms <", u.into());
    }
    if let Some(m) = &q.model {
        filter("final_model =", m.as_str().into());
    }
    if let Some(t) = &q.task {
        filter("task =", t.as_str().into());
    }
    if let Some(o) = &q.outcome {
        filter("outcome =", o.as_str().into());
    }
    args.push(((q.limit + 1) as i64).into());
    sql.push_str(&format!(" ORDER BY seq DESC LIMIT ${}", args.len()));
    let mut rows = ex.query(&sql, &args, |r| Ok((need(r.i64(0)?, "seq")?, decode_row(r, 1)?)))?;
    let next_cursor = if rows.len() > q.limit {
        rows.truncate(q.limit);
        rows.last().map(|(seq, _)| *seq)
    } else {
        None
    };
    Ok(DecisionPage {
        records: rows.into_iter().map(|(_, r)| r).collect(),
        next_cursor,
    })
}

fn scan(ex: &mut dyn Exec, since_ms: Option<i64>) -> anyhow::Result<Vec<DecisionRecord>> {
    ex.query(
        "SELECT record, embedding FROM decisions WHERE ts_ms >= $1 ORDER BY seq",
        &[since_ms.unwrap_or(i64::MIN).into()],
        |r| decode_row(r, 0),
    )
}

fn put_feedback(ex: &mut dyn Exec, fb: &Feedback) -> anyhow::Result<bool> {
    let exists = ex.query_opt("SELECT seq FROM decisions WHERE id = $1", &[fb.decision_id.as_str().into()], |_| {
        Ok(())
    })?;
    if exists.is_none() {
        return Ok(false);
    }
    ex.execute(
        "INSERT INTO feedback (decision_id, source, outcome, score, comment, ts_ms) VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (decision_id, source) DO UPDATE
         SET outcome = excluded.outcome, score = excluded.score, comment = excluded.comment, ts_ms = excluded.ts_ms",
        &[
            fb.decision_id.as_str().into(),
            fb.source.as_str().into(),
            fb.outcome.as_str().into(),
            fb.score.into(),
            fb.comment.as_deref().into(),
            fb.ts_ms.into(),
        ],
    )?;
    Ok(true)
}

fn read_feedback(ex: &mut dyn Exec, decision_id: Option<&str>) -> anyhow::Result<Vec<Feedback>> {
    const COLUMNS: &str = "SELECT decision_id, source, outcome, score, comment, ts_ms FROM feedback";
    let (sql, params) = match decision_id {
        Some(id) => (format!("{COLUMNS} WHERE decision_id = $1 ORDER BY ts_ms"), vec![id.into()]),
        None => (format!("{COLUMNS} ORDER BY ts_ms"), vec![]),
    };
    ex.query(&sql, &params, |r| {
        Ok(Feedback {
            decision_id: need(r.text(0)?, "decision_id")?,
            source: need(r.text(1)?, "source")?,
            outcome: need(r.text(2)?, "outcome")?,
            score: r.f64(3)?,
            comment: r.text(4)?,
            ts_ms: need(r.i64(5)?, "ts_ms")?,
        })
    })
}

fn count(ex: &mut dyn Exec) -> anyhow::Result<u64> {
    let n = ex.query_opt("SELECT COUNT(*) FROM decisions", &[], |r| need(r.i64(0)?, "count"))?;
    Ok(n.unwrap_or(0).max(0) as u64)
}

/// Read the whole log (records from `since_ms`, oldest first, and all feedback) without a running
/// server: for `ladder train --from-log` and `ladder replay`.
pub fn read_log(cfg: &StoreConfig, since_ms: Option<i64>) -> anyhow::Result<(Vec<DecisionRecord>, Vec<Feedback>)> {
    if cfg.url.is_none() && !cfg.sqlite_path().exists() {
        anyhow::bail!("decision log {} does not exist", cfg.sqlite_path().display());
    }
    let db = Database::open(cfg)?;
    off_runtime(|| {
        let mut conn = db.connect()?;
        let records = scan(conn.as_mut(), since_ms)?;
        let feedback = read_feedback(conn.as_mut(), None)?;
        Ok((records, feedback))
    })
}

fn decode(json: &str, emb: Option<Vec<u8>>) -> anyhow::Result<DecisionRecord> {
    let mut rec: DecisionRecord = serde_json::from_str(json).context("decoding a decision record")?;
    rec.embedding = emb.map(|b| b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect());
    Ok(rec)
}

fn writer_loop(db: Database, conn: Box<dyn Conn>, mut rx: mpsc::Receiver<WriteOp>, max_batch: usize) {
    let mut conn = Some(conn);
    let mut batch: Vec<WriteOp> = Vec::with_capacity(max_batch);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let rows: Vec<Pending<'_>> = batch
            .iter()
            .filter_map(|op| match op {
                WriteOp::Record(rec, _) => Some(Pending::new(rec)),
                WriteOp::Flush(_) => None,
            })
            .collect();
        let mut delay = Duration::from_millis(10);
        loop {
            let result = match conn.as_mut() {
                Some(c) => write_batch(c.as_mut(), &rows),
                None => match db.connect() {
                    Ok(c) => {
                        tracing::info!(db = %db.describe(), "decision log writer reconnected");
                        conn = Some(c);
                        continue;
                    }
                    Err(e) => Err(e),
                },
            };
            match result {
                Ok(()) => {
                    if delay > Duration::from_millis(10) {
                        tracing::info!(records = rows.len(), "decision log write succeeded after retrying");
                    }
                    break;
                }
                Err(e) => {
                    // Never drop: keep the batch and retry (disk full, locked database, lost
                    // connection...). A dead connection is replaced.
                    if conn.as_ref().is_some_and(|c| c.is_broken()) {
                        conn = None;
                    }
                    tracing::error!(error = %format!("{e:#}"), records = rows.len(), "decision log write failed; retrying");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
        for op in batch.drain(..) {
            match op {
                WriteOp::Record(_, Some(done)) | WriteOp::Flush(done) => {
                    let _ = done.send(());
                }
                WriteOp::Record(_, None) => {}
            }
        }
        if let Some(c) = conn.as_mut() {
            c.upkeep();
        }
    }
}

/// One transaction: the records, then their keys' spend. A record already in the log (a retried
/// batch whose commit had landed before the connection dropped) is neither written nor charged
/// twice.
fn write_batch(conn: &mut dyn Conn, rows: &[Pending<'_>]) -> anyhow::Result<()> {
    conn.transaction(&mut |tx| {
        let mut charges = crate::auth::Charges::default();
        for row in rows {
            let rec = row.rec;
            let inserted = tx.execute(
                INSERT_DECISION,
                &[
                    rec.id.as_str().into(),
                    rec.ts_ms.into(),
                    rec.task.as_deref().into(),
                    rec.final_model.as_deref().into(),
                    rec.outcome.as_str().into(),
                    rec.total_cost_usd.into(),
                    Param::Json(&row.json),
                    row.embedding.as_deref().map_or(Param::Null, Param::Bytes),
                ],
            )?;
            if inserted == 1 {
                charges.add(rec);
            }
        }
        charges.apply(tx)
    })
}
