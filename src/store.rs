//! The decision log: one record per chat request, in an embedded SQLite database (WAL mode).
//!
//! Writes go through a single writer thread that group-commits whatever is queued (up to
//! `store.max_batch` records per transaction). A handler hands its record to [`Store::append`],
//! which waits only for the commit of the batch its record landed in, so a client never gets a
//! response whose record is not in the database, and a record is never dropped: the queue applies
//! backpressure instead of discarding, and a failing write is retried until it succeeds.
//! [`Store::close`] drains the queue and flushes on shutdown.
//!
//! Reads (`/v1/decisions`) use their own connections on the blocking pool, which WAL lets run
//! beside the writer. Records are stored as JSON next to a few indexed columns used for filtering;
//! the prompt embedding, when the classifier produced one, is kept as a little-endian f32 blob so
//! that retraining never needs the upstream again.

use crate::router::{Candidate, Scores};
use anyhow::Context;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
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
    path: PathBuf,
    readers: Arc<Mutex<Vec<Connection>>>,
    writer: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    /// Detached records still waiting for room in the queue; [`Store::flush`] waits for them.
    waiting: Arc<(AtomicUsize, tokio::sync::Notify)>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS decisions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    ts_ms INTEGER NOT NULL,
    task TEXT,
    final_model TEXT,
    outcome TEXT NOT NULL,
    total_cost_usd REAL NOT NULL,
    record TEXT NOT NULL,
    embedding BLOB
);
CREATE INDEX IF NOT EXISTS decisions_ts ON decisions(ts_ms);
CREATE INDEX IF NOT EXISTS decisions_model ON decisions(final_model, seq);
CREATE INDEX IF NOT EXISTS decisions_task ON decisions(task, seq);
CREATE INDEX IF NOT EXISTS decisions_outcome ON decisions(outcome, seq);
CREATE TABLE IF NOT EXISTS feedback (
    decision_id TEXT NOT NULL,
    source TEXT NOT NULL,
    outcome TEXT NOT NULL,
    score REAL,
    comment TEXT,
    ts_ms INTEGER NOT NULL,
    PRIMARY KEY (decision_id, source)
);
";

fn open(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open(path).with_context(|| format!("opening decision log {}", path.display()))?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // NORMAL in WAL mode: a committed transaction survives a process crash (kill -9); only an OS
    // crash or power loss can lose the last commits.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

impl Store {
    /// Open (or create) the log and start the writer thread.
    pub fn open(path: &Path, max_batch: usize) -> anyhow::Result<Store> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let conn = open(path)?;
        conn.execute_batch(SCHEMA).context("creating the decision log schema")?;
        conn.execute_batch(crate::auth::SCHEMA).context("creating the keys table")?;
        let (tx, rx) = mpsc::channel(max_batch.max(1) * 8);
        let max_batch = max_batch.max(1);
        let handle = std::thread::Builder::new()
            .name("ladder-store-writer".into())
            .spawn(move || writer_loop(conn, rx, max_batch))?;
        Ok(Store {
            tx,
            path: path.to_path_buf(),
            readers: Arc::new(Mutex::new(Vec::new())),
            writer: Arc::new(Mutex::new(Some(handle))),
            waiting: Arc::new((AtomicUsize::new(0), tokio::sync::Notify::new())),
        })
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

    fn with_reader<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> anyhow::Result<T> + Send + 'static,
    ) -> impl std::future::Future<Output = anyhow::Result<T>> {
        let readers = self.readers.clone();
        let path = self.path.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let conn = readers.lock().ok().and_then(|mut r| r.pop());
                let conn = match conn {
                    Some(c) => c,
                    None => open(&path)?,
                };
                let out = f(&conn);
                if let Ok(mut r) = readers.lock()
                    && r.len() < 8
                {
                    r.push(conn);
                }
                out
            })
            .await?
        }
    }

    pub async fn get(&self, id: String) -> anyhow::Result<Option<DecisionRecord>> {
        self.with_reader(move |conn| {
            let row: Option<(String, Option<Vec<u8>>)> = conn
                .query_row("SELECT record, embedding FROM decisions WHERE id = ?1", params![id], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?;
            row.map(|(json, emb)| decode(&json, emb)).transpose()
        })
        .await
    }

    pub async fn list(&self, q: DecisionQuery) -> anyhow::Result<DecisionPage> {
        self.with_reader(move |conn| {
            let mut sql = String::from("SELECT seq, record, embedding FROM decisions WHERE 1=1");
            let mut args: Vec<rusqlite::types::Value> = Vec::new();
            if let Some(c) = q.cursor {
                sql.push_str(" AND seq < ?");
                args.push(c.into());
            }
            if let Some(s) = q.since_ms {
                sql.push_str(" AND ts_ms >= ?");
                args.push(s.into());
            }
            if let Some(u) = q.until_ms {
                sql.push_str(" AND ts_ms < ?");
                args.push(u.into());
            }
            if let Some(m) = q.model {
                sql.push_str(" AND final_model = ?");
                args.push(m.into());
            }
            if let Some(t) = q.task {
                sql.push_str(" AND task = ?");
                args.push(t.into());
            }
            if let Some(o) = q.outcome {
                sql.push_str(" AND outcome = ?");
                args.push(o.into());
            }
            sql.push_str(" ORDER BY seq DESC LIMIT ?");
            args.push(((q.limit + 1) as i64).into());
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, Option<Vec<u8>>>(2)?))
            })?;
            let mut records = Vec::new();
            let mut seqs = Vec::new();
            for row in rows {
                let (seq, json, emb) = row?;
                seqs.push(seq);
                records.push(decode(&json, emb)?);
            }
            let next_cursor = if records.len() > q.limit {
                records.truncate(q.limit);
                seqs.get(q.limit.saturating_sub(1)).copied()
            } else {
                None
            };
            Ok(DecisionPage { records, next_cursor })
        })
        .await
    }

    /// All records (oldest first) from `since_ms`, for training and replay.
    pub async fn scan(&self, since_ms: Option<i64>) -> anyhow::Result<Vec<DecisionRecord>> {
        self.with_reader(move |conn| {
            let mut stmt = conn.prepare("SELECT record, embedding FROM decisions WHERE ts_ms >= ?1 ORDER BY seq")?;
            let rows = stmt.query_map(params![since_ms.unwrap_or(i64::MIN)], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Option<Vec<u8>>>(1)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (json, emb) = row?;
                out.push(decode(&json, emb)?);
            }
            Ok(out)
        })
        .await
    }

    /// Attach feedback to a decision (replacing this source's earlier feedback on it). Returns
    /// false when the decision does not exist.
    pub async fn put_feedback(&self, fb: Feedback) -> anyhow::Result<bool> {
        self.with_reader(move |conn| {
            let exists: bool = conn.query_row(
                "SELECT EXISTS(SELECT 1 FROM decisions WHERE id = ?1)",
                params![fb.decision_id],
                |r| r.get(0),
            )?;
            if !exists {
                return Ok(false);
            }
            conn.execute(
                "INSERT OR REPLACE INTO feedback (decision_id, source, outcome, score, comment, ts_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![fb.decision_id, fb.source, fb.outcome, fb.score, fb.comment, fb.ts_ms],
            )?;
            Ok(true)
        })
        .await
    }

    pub async fn feedback_for(&self, decision_id: String) -> anyhow::Result<Vec<Feedback>> {
        self.with_reader(move |conn| read_feedback(conn, Some(&decision_id))).await
    }

    pub async fn count(&self) -> anyhow::Result<u64> {
        self.with_reader(|conn| Ok(conn.query_row("SELECT COUNT(*) FROM decisions", [], |r| r.get::<_, i64>(0))? as u64))
            .await
    }
}

fn read_feedback(conn: &Connection, decision_id: Option<&str>) -> anyhow::Result<Vec<Feedback>> {
    let mut stmt = conn.prepare(
        "SELECT decision_id, source, outcome, score, comment, ts_ms FROM feedback WHERE ?1 IS NULL OR decision_id = ?1 ORDER BY ts_ms",
    )?;
    let rows = stmt.query_map(params![decision_id], |r| {
        Ok(Feedback {
            decision_id: r.get(0)?,
            source: r.get(1)?,
            outcome: r.get(2)?,
            score: r.get(3)?,
            comment: r.get(4)?,
            ts_ms: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Read the whole log (records from `since_ms`, oldest first, and all feedback) without a running
/// server: for `ladder train --from-log` and `ladder replay`.
pub fn read_log(path: &Path, since_ms: Option<i64>) -> anyhow::Result<(Vec<DecisionRecord>, Vec<Feedback>)> {
    if !path.exists() {
        anyhow::bail!("decision log {} does not exist", path.display());
    }
    let conn = open(path)?;
    conn.execute_batch(SCHEMA)?;
    let mut stmt = conn.prepare("SELECT record, embedding FROM decisions WHERE ts_ms >= ?1 ORDER BY seq")?;
    let rows = stmt.query_map(params![since_ms.unwrap_or(i64::MIN)], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, Option<Vec<u8>>>(1)?))
    })?;
    let mut records = Vec::new();
    for row in rows {
        let (json, emb) = row?;
        records.push(decode(&json, emb)?);
    }
    let feedback = read_feedback(&conn, None)?;
    Ok((records, feedback))
}

fn decode(json: &str, emb: Option<Vec<u8>>) -> anyhow::Result<DecisionRecord> {
    let mut rec: DecisionRecord = serde_json::from_str(json).context("decoding a decision record")?;
    rec.embedding = emb.map(|b| b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect());
    Ok(rec)
}

fn writer_loop(mut conn: Connection, mut rx: mpsc::Receiver<WriteOp>, max_batch: usize) {
    let mut batch: Vec<WriteOp> = Vec::with_capacity(max_batch);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let mut delay = Duration::from_millis(10);
        loop {
            match write_batch(&mut conn, &batch) {
                Ok(()) => break,
                Err(e) => {
                    // Never drop: keep the batch and retry (disk full, locked database...).
                    tracing::error!(error = %e, "decision log write failed; retrying");
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
    }
}

fn write_batch(conn: &mut Connection, batch: &[WriteOp]) -> anyhow::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT OR REPLACE INTO decisions (id, ts_ms, task, final_model, outcome, total_cost_usd, record, embedding)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        for op in batch {
            if let WriteOp::Record(rec, _) = op {
                let json = serde_json::to_string(rec)?;
                let emb: Option<Vec<u8>> = rec.embedding.as_ref().map(|e| e.iter().flat_map(|f| f.to_le_bytes()).collect());
                stmt.execute(params![
                    rec.id,
                    rec.ts_ms,
                    rec.task,
                    rec.final_model,
                    rec.outcome,
                    rec.total_cost_usd,
                    json,
                    emb
                ])?;
                // The key's spend commits with its record.
                crate::auth::charge(&tx, rec)?;
            }
        }
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: i64, model: &str) -> DecisionRecord {
        DecisionRecord {
            id: format!("dec_{i}"),
            ts_ms: 1_000 + i,
            outcome: if i % 2 == 0 { "success".into() } else { "escalated".into() },
            final_model: Some(model.into()),
            embedding: (i == 3).then(|| vec![0.5, -1.25]),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn append_then_query_with_filters_and_cursor() {
        let dir = tempdir();
        let store = Store::open(&dir.join("log.db"), 4).unwrap();
        for i in 0..10 {
            store.append(rec(i, if i < 5 { "a" } else { "b" })).await;
        }
        let got = store.get("dec_3".into()).await.unwrap().unwrap();
        assert_eq!(got.embedding, Some(vec![0.5, -1.25]));
        assert!(store.get("nope".into()).await.unwrap().is_none());
        let page = store
            .list(DecisionQuery {
                limit: 3,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            page.records.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            vec!["dec_9", "dec_8", "dec_7"]
        );
        let page2 = store
            .list(DecisionQuery {
                limit: 3,
                cursor: page.next_cursor,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(page2.records[0].id, "dec_6");
        let a = store
            .list(DecisionQuery {
                limit: 100,
                model: Some("a".into()),
                outcome: Some("success".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(a.records.len(), 3);
        assert!(a.next_cursor.is_none());
        let since = store
            .list(DecisionQuery {
                limit: 100,
                since_ms: Some(1_008),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(since.records.len(), 2);
        store.close().await;
        // Reopen: everything is there.
        let store = Store::open(&dir.join("log.db"), 4).unwrap();
        assert_eq!(store.count().await.unwrap(), 10);
    }

    #[tokio::test]
    async fn detached_appends_are_flushed() {
        let dir = tempdir();
        let store = Store::open(&dir.join("log.db"), 2).unwrap();
        for i in 0..50 {
            store.append_detached(rec(i, "a"));
        }
        store.flush().await;
        assert_eq!(store.count().await.unwrap(), 50);
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("ladder-store-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
