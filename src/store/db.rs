//! The database behind the decision log, as two backends behind one small interface.
//!
//! [`Database`] says where the log lives (an enum over the two backends: an SQLite file, or a
//! Postgres server) and opens [`Conn`]ections to it. Everything above this module (the writer's
//! group commit, the queries behind `/v1/decisions`, feedback, keys) is written once against
//! [`Exec`]: SQL with `$1`-style parameters, [`Param`] values in, [`Row`]s out. The SQL is the
//! common subset both databases speak (`ON CONFLICT ... DO NOTHING/UPDATE`, `COALESCE`, ...);
//! only the schema (DDL) is per backend, in [`super::sqlite`] and [`super::pg`].
//!
//! Connections do blocking I/O: the store uses them on its writer thread and on tokio's blocking
//! pool, never on an async worker thread (the `postgres` crate runs its own small runtime inside
//! each call, which would panic there).

use super::{pg, sqlite};
use crate::config::StoreConfig;
use anyhow::Context;
use std::path::PathBuf;

/// A query parameter.
#[derive(Debug, Clone, Copy)]
pub enum Param<'a> {
    Null,
    I64(i64),
    F64(f64),
    Text(&'a str),
    Bytes(&'a [u8]),
    /// A JSON document (text): `jsonb` in Postgres, `TEXT` in SQLite.
    Json(&'a str),
}

impl From<i64> for Param<'_> {
    fn from(v: i64) -> Self {
        Param::I64(v)
    }
}

impl From<f64> for Param<'_> {
    fn from(v: f64) -> Self {
        Param::F64(v)
    }
}

impl<'a> From<&'a str> for Param<'a> {
    fn from(v: &'a str) -> Self {
        Param::Text(v)
    }
}

impl<'a, T: Into<Param<'a>>> From<Option<T>> for Param<'a> {
    fn from(v: Option<T>) -> Self {
        v.map_or(Param::Null, Into::into)
    }
}

/// One result row. Getters return `None` for SQL NULL; integer and float columns of any width
/// are accepted, and a `jsonb` column reads as text.
pub trait Row {
    fn i64(&self, i: usize) -> anyhow::Result<Option<i64>>;
    fn f64(&self, i: usize) -> anyhow::Result<Option<f64>>;
    fn text(&self, i: usize) -> anyhow::Result<Option<String>>;
    fn bytes(&self, i: usize) -> anyhow::Result<Option<Vec<u8>>>;
}

/// A non-NULL value, or an error naming the column.
pub fn need<T>(v: Option<T>, column: &str) -> anyhow::Result<T> {
    v.ok_or_else(|| anyhow::anyhow!("column {column} is NULL"))
}

/// Runs SQL (written with `$1`, `$2`... placeholders) on a connection or inside a transaction.
pub trait Exec {
    /// Rows changed.
    fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> anyhow::Result<u64>;
    /// Calls `f` on each row as it is read.
    fn for_each(&mut self, sql: &str, params: &[Param<'_>], f: &mut dyn FnMut(&dyn Row) -> anyhow::Result<()>) -> anyhow::Result<()>;
}

impl dyn Exec + '_ {
    /// All rows, each mapped by `f`.
    pub fn query<T>(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
        mut f: impl FnMut(&dyn Row) -> anyhow::Result<T>,
    ) -> anyhow::Result<Vec<T>> {
        let mut out = Vec::new();
        self.for_each(sql, params, &mut |r| {
            out.push(f(r)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// The first row, if any, mapped by `f`.
    pub fn query_opt<T>(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
        f: impl FnMut(&dyn Row) -> anyhow::Result<T>,
    ) -> anyhow::Result<Option<T>> {
        Ok(self.query(sql, params, f)?.into_iter().next())
    }
}

/// A connection to the log's database.
pub trait Conn: Exec + Send {
    /// Runs `f` in one transaction: committed when it returns `Ok`, rolled back otherwise.
    fn transaction(&mut self, f: &mut dyn FnMut(&mut dyn Exec) -> anyhow::Result<()>) -> anyhow::Result<()>;
    /// True once the connection is unusable (the server closed it): drop it and connect again.
    fn is_broken(&self) -> bool;
    /// Housekeeping the writer runs between batches, after releasing the last batch's waiters
    /// (SQLite: keep the WAL under its bound).
    fn upkeep(&mut self) {}
}

/// Where the decision log (and the keys table) lives.
#[derive(Clone)]
pub enum Database {
    /// An embedded SQLite file (WAL mode).
    Sqlite(PathBuf),
    /// A Postgres database several replicas may share.
    Postgres(Box<pg::Target>),
}

impl Database {
    /// The database `[store]` names (reads `store.password_env`; does not connect).
    pub fn from_config(cfg: &StoreConfig) -> anyhow::Result<Database> {
        Ok(match &cfg.url {
            Some(url) => Database::Postgres(Box::new(pg::Target::new(url, cfg)?)),
            None => Database::Sqlite(cfg.sqlite_path()),
        })
    }

    /// Connect once and create the schema if it is missing (idempotent, safe when several
    /// processes start at once). Fails fast when the database cannot be reached.
    pub fn open(cfg: &StoreConfig) -> anyhow::Result<Database> {
        let db = Database::from_config(cfg)?;
        let (types, lock) = match &db {
            Database::Sqlite(_) => (&sqlite::TYPES, None),
            Database::Postgres(_) => (&pg::TYPES, Some(pg::SCHEMA_LOCK)),
        };
        off_runtime(|| create_schema(db.connect()?.as_mut(), types, lock))?;
        Ok(db)
    }

    /// A new connection.
    pub fn connect(&self) -> anyhow::Result<Box<dyn Conn>> {
        Ok(match self {
            Database::Sqlite(path) => Box::new(sqlite::connect(path)?),
            Database::Postgres(t) => Box::new(t.connect()?),
        })
    }

    /// A connection for the log's single writer (SQLite: one that leaves checkpoints to
    /// [`Database::maintenance`]).
    pub fn connect_writer(&self, maintenance: Option<&sqlite::Checkpointer>) -> anyhow::Result<Box<dyn Conn>> {
        Ok(match self {
            Database::Sqlite(path) => Box::new(sqlite::connect_writer(path, maintenance.map(|m| m.wal_reset()))?),
            Database::Postgres(t) => Box::new(t.connect()?),
        })
    }

    /// Background upkeep while the log is open (SQLite: the WAL checkpointer, which keeps the WAL
    /// near `wal_max_bytes` with the writer's help), stopped when the returned handle is dropped.
    pub fn maintenance(&self, wal_max_bytes: u64) -> anyhow::Result<Option<sqlite::Checkpointer>> {
        Ok(match self {
            Database::Sqlite(path) => Some(sqlite::Checkpointer::spawn(path, sqlite::CHECKPOINT_EVERY, wal_max_bytes)?),
            Database::Postgres(_) => None,
        })
    }

    /// For messages: the file, or the URL without its password.
    pub fn describe(&self) -> String {
        match self {
            Database::Sqlite(path) => path.display().to_string(),
            Database::Postgres(t) => t.describe(),
        }
    }
}

/// The log's tables, for both backends; `{seq}`, `{int}`, `{real}`, `{json}` and `{blob}` are
/// each backend's [`ColumnTypes`].
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS decisions (
    seq {seq},
    id TEXT NOT NULL UNIQUE,
    ts_ms {int} NOT NULL,
    task TEXT,
    final_model TEXT,
    outcome TEXT NOT NULL,
    total_cost_usd {real} NOT NULL,
    record {json} NOT NULL,
    embedding {blob}
);
CREATE INDEX IF NOT EXISTS decisions_ts ON decisions(ts_ms);
CREATE INDEX IF NOT EXISTS decisions_model ON decisions(final_model, seq);
CREATE INDEX IF NOT EXISTS decisions_task ON decisions(task, seq);
CREATE INDEX IF NOT EXISTS decisions_outcome ON decisions(outcome, seq);
CREATE TABLE IF NOT EXISTS feedback (
    decision_id TEXT NOT NULL,
    source TEXT NOT NULL,
    outcome TEXT NOT NULL,
    score {real},
    comment TEXT,
    ts_ms {int} NOT NULL,
    PRIMARY KEY (decision_id, source)
);
CREATE TABLE IF NOT EXISTS keys (
    name TEXT PRIMARY KEY,
    key_sha256 TEXT NOT NULL UNIQUE,
    key_prefix TEXT NOT NULL,
    created_ms {int} NOT NULL,
    revoked_ms {int},
    budget_usd {real},
    rpm {int},
    tpm {int},
    models TEXT,
    spent_usd {real} NOT NULL DEFAULT 0,
    requests {int} NOT NULL DEFAULT 0,
    last_used_ms {int}
);
";

/// How a backend spells the schema's column types.
pub struct ColumnTypes {
    /// The `decisions.seq` column: an ever-increasing primary key (the cursor).
    pub seq: &'static str,
    pub int: &'static str,
    pub real: &'static str,
    pub json: &'static str,
    pub blob: &'static str,
}

/// Create the tables and indexes that are missing, in one transaction; with `advisory_lock`
/// (Postgres), under that transaction-scoped lock, so that processes starting together queue.
fn create_schema(conn: &mut dyn Conn, types: &ColumnTypes, advisory_lock: Option<i64>) -> anyhow::Result<()> {
    let schema = SCHEMA
        .replace("{seq}", types.seq)
        .replace("{int}", types.int)
        .replace("{real}", types.real)
        .replace("{json}", types.json)
        .replace("{blob}", types.blob);
    conn.transaction(&mut |tx| {
        if let Some(key) = advisory_lock {
            tx.for_each("SELECT pg_advisory_xact_lock($1)", &[Param::I64(key)], &mut |_| Ok(()))?;
        }
        for stmt in schema.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            tx.execute(stmt, &[])?;
        }
        Ok(())
    })
    .context("creating the decision log schema")
}

/// Run blocking database work from any context: inline on a plain thread, on a scoped thread
/// when called from inside a tokio runtime (start-up code runs there).
pub fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| match s.spawn(f).join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        })
    } else {
        f()
    }
}
