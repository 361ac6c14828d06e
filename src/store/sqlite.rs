//! The SQLite backend: one file in WAL mode, `synchronous=NORMAL` (a committed transaction
//! survives a process crash; only an OS crash can lose the last commits). WAL lets readers run
//! beside the single writer, and `ladder keys` beside a running server.
//!
//! The writer never checkpoints: [`connect_writer`] turns SQLite's auto-checkpoint off on its
//! connection and a [`Checkpointer`] thread copies the WAL into the database file (PASSIVE, so it
//! never blocks the writer) every [`CHECKPOINT_EVERY`]. A checkpoint is the only step that
//! fsyncs in this mode; run on the writer, it stalled every response waiting for its record's
//! commit (p99 5.4 ms vs 1.4 ms added latency at 1000 req/s, see `benches/RESULTS.md`).
//!
//! A PASSIVE checkpoint copies the frames that exist when it starts; under steady writes new
//! ones always follow, so the log is never fully copied and SQLite never rewinds it: the WAL
//! (and its index, mapped into memory) would grow without bound. A blocking checkpoint from the
//! checkpointer thread cannot fix that without stalling the writer for a whole checkpoint (it
//! needs a moment with no writer). So the two take turns: once a PASSIVE checkpoint leaves the
//! WAL larger than `store.wal_max_mb`, the checkpointer raises a [`WalReset`] flag and pauses;
//! the writer, between two batches (after releasing the last one's responses, see
//! [`Conn::upkeep`]), runs a RESTART checkpoint, which only has the frames committed since the
//! checkpointer's last PASSIVE pass left to copy (it repeats them until few are left), and the
//! next transaction rewinds the WAL to its start. The file keeps its size (about `wal_max_mb`)
//! and is emptied at shutdown.

use super::db::{ColumnTypes, Conn, Exec, Param, Row};
use anyhow::Context;
use rusqlite::Connection;
use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Column types for the shared schema ([`super::db::SCHEMA`]).
pub const TYPES: ColumnTypes = ColumnTypes {
    seq: "INTEGER PRIMARY KEY AUTOINCREMENT",
    int: "INTEGER",
    real: "REAL",
    json: "TEXT",
    blob: "BLOB",
};

/// Open (creating the file and its folder if needed).
pub fn connect(path: &Path) -> anyhow::Result<SqliteConn> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let conn = Connection::open(path).with_context(|| format!("opening decision log {}", path.display()))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // NORMAL in WAL mode: a committed transaction survives a process crash (kill -9); only an OS
    // crash or power loss can lose the last commits.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(SqliteConn(conn, None))
}

/// The writer's connection: [`connect`] with auto-checkpoint off (the [`Checkpointer`] does it),
/// which rewinds the WAL itself when the checkpointer asks ([`WalReset`], [`Conn::upkeep`]).
pub fn connect_writer(path: &Path, reset: Option<WalReset>) -> anyhow::Result<SqliteConn> {
    let mut conn = connect(path)?;
    conn.0.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.1 = reset;
    Ok(conn)
}

/// "The WAL is over its bound": raised by the [`Checkpointer`], which then stops checkpointing,
/// and lowered by the writer once it has run the RESTART checkpoint.
#[derive(Clone, Default)]
pub struct WalReset(Arc<AtomicBool>);

/// How long a statement waits for a lock before failing with SQLITE_BUSY.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the writer's WAL reset waits for readers before giving up (the checkpointer asks
/// again a second later): responses waiting for their records wait with it.
const WAL_RESET_WAIT: Duration = Duration::from_millis(20);

/// Before asking the writer to rewind, the checkpointer repeats PASSIVE checkpoints (at most
/// this many) until fewer than [`CATCH_UP_FRAMES`] frames are left uncopied.
const CATCH_UP_PASSES: usize = 8;
const CATCH_UP_FRAMES: i64 = 256;

/// Checkpoint periods the checkpointer waits for the writer to rewind the WAL before it does it
/// itself (the writer rewinds between batches, so an idle writer never would).
const IDLE_TAKEOVER_PERIODS: u32 = 3;

/// How often the [`Checkpointer`] moves the WAL into the database file.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(1000);

/// A thread that checkpoints the WAL off the writer's path; it stops (after a last checkpoint)
/// when this handle is dropped.
pub struct Checkpointer {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
    reset: WalReset,
}

impl Checkpointer {
    pub fn spawn(path: &Path, every: Duration, wal_max_bytes: u64) -> anyhow::Result<Checkpointer> {
        let conn = connect(path)?;
        // A WAL frame: a 24-byte header and one page.
        let frame_bytes = 24 + conn.0.query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))?.max(512) as u64;
        let reset = WalReset::default();
        let flag = reset.clone();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new().name("ladder-store-checkpoint".into()).spawn(move || {
            let mut waited = 0;
            loop {
                let last = !matches!(stopped.recv_timeout(every), Err(std::sync::mpsc::RecvTimeoutError::Timeout));
                // While the writer has a rewind to do, stay out of its way; if it has written
                // nothing for a few periods (idle: no batch, so no upkeep), rewind for it.
                if flag.0.load(Ordering::Acquire) && !last {
                    waited += 1;
                    if waited >= IDLE_TAKEOVER_PERIODS {
                        if let Err(e) = checkpoint(&conn.0, "RESTART") {
                            tracing::warn!(error = %e, "decision log WAL rewind failed; retrying later");
                        }
                        flag.0.store(false, Ordering::Release);
                        waited = 0;
                    }
                    continue;
                }
                waited = 0;
                // The last checkpoint, after the writer has stopped, also empties the WAL.
                if last {
                    if let Err(e) = checkpoint(&conn.0, "TRUNCATE") {
                        tracing::warn!(error = %e, "decision log final checkpoint failed");
                    }
                    break;
                }
                // Errors are retried next time (the records are safe in the WAL meanwhile). The
                // frame count, not the file's size, says how much the WAL holds (a rewound WAL
                // keeps its file size). Over the bound, catch up first, so that the writer's
                // RESTART finds little left to copy: each pass copies what arrived during the last.
                for pass in 0..=CATCH_UP_PASSES {
                    match checkpoint(&conn.0, "PASSIVE") {
                        Ok((_, log, _)) if pass == 0 && log.max(0) as u64 * frame_bytes <= wal_max_bytes => break,
                        Ok((_, log, done)) if log - done > CATCH_UP_FRAMES => {}
                        Ok(_) => {
                            flag.0.store(true, Ordering::Release);
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "decision log checkpoint failed; retrying later");
                            if pass > 0 {
                                flag.0.store(true, Ordering::Release); // over the bound already
                            }
                            break;
                        }
                    }
                    if pass == CATCH_UP_PASSES {
                        flag.0.store(true, Ordering::Release);
                    }
                }
            }
        })?;
        Ok(Checkpointer { stop, thread, reset })
    }

    /// The flag the writer's connection watches ([`connect_writer`]).
    pub fn wal_reset(&self) -> WalReset {
        self.reset.clone()
    }

    /// Run a last checkpoint and wait for it (blocking: call it off the async runtime).
    pub fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}

/// `PRAGMA wal_checkpoint(MODE)`: (busy, frames in the WAL, frames copied to the database).
fn checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<(i64, i64, i64)> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })
}

/// The WAL file next to the database at `path` (SQLite names it `<file>-wal`).
pub fn wal_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push("-wal");
    name.into()
}

/// A connection; the writer's also watches the checkpointer's [`WalReset`].
pub struct SqliteConn(Connection, Option<WalReset>);

/// Statements on a connection or on an open transaction (which derefs to its connection).
struct On<'a>(&'a Connection);

/// `$1` placeholders as SQLite's numbered `?1` (the shared SQL has no other `$`).
fn sqlite_sql(sql: &str) -> String {
    sql.replace('$', "?")
}

impl rusqlite::ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match *self {
            Param::Null => ToSqlOutput::Owned(Value::Null),
            Param::I64(v) => ToSqlOutput::Owned(Value::Integer(v)),
            Param::F64(v) => ToSqlOutput::Owned(Value::Real(v)),
            Param::Text(s) | Param::Json(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Param::Bytes(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
        })
    }
}

impl Row for rusqlite::Row<'_> {
    fn i64(&self, i: usize) -> anyhow::Result<Option<i64>> {
        Ok(self.get(i)?)
    }
    fn f64(&self, i: usize) -> anyhow::Result<Option<f64>> {
        Ok(self.get(i)?)
    }
    fn text(&self, i: usize) -> anyhow::Result<Option<String>> {
        Ok(self.get(i)?)
    }
    fn bytes(&self, i: usize) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self.get(i)?)
    }
}

impl Exec for On<'_> {
    fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> anyhow::Result<u64> {
        let mut stmt = self.0.prepare_cached(&sqlite_sql(sql))?;
        Ok(stmt.execute(rusqlite::params_from_iter(params.iter()))? as u64)
    }

    fn for_each(&mut self, sql: &str, params: &[Param<'_>], f: &mut dyn FnMut(&dyn Row) -> anyhow::Result<()>) -> anyhow::Result<()> {
        let mut stmt = self.0.prepare_cached(&sqlite_sql(sql))?;
        let mut rows = stmt.query(rusqlite::params_from_iter(params.iter()))?;
        while let Some(row) = rows.next()? {
            f(row)?;
        }
        Ok(())
    }
}

impl Exec for SqliteConn {
    fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> anyhow::Result<u64> {
        On(&self.0).execute(sql, params)
    }

    fn for_each(&mut self, sql: &str, params: &[Param<'_>], f: &mut dyn FnMut(&dyn Row) -> anyhow::Result<()>) -> anyhow::Result<()> {
        On(&self.0).for_each(sql, params, f)
    }
}

impl Conn for SqliteConn {
    fn transaction(&mut self, f: &mut dyn FnMut(&mut dyn Exec) -> anyhow::Result<()>) -> anyhow::Result<()> {
        let tx = self.0.transaction()?;
        f(&mut On(&tx))?;
        tx.commit()?;
        Ok(())
    }

    fn is_broken(&self) -> bool {
        false
    }

    fn upkeep(&mut self) {
        let Some(reset) = self.1.as_ref() else { return };
        if !reset.0.load(Ordering::Acquire) {
            return;
        }
        let started = std::time::Instant::now();
        // Readers still in the WAL (a long `train --from-log` scan, say) make RESTART wait: bound
        // that wait, since every response waiting for a record waits with it.
        let _ = self.0.busy_timeout(WAL_RESET_WAIT);
        let result = checkpoint(&self.0, "RESTART");
        let _ = self.0.busy_timeout(BUSY_TIMEOUT);
        reset.0.store(false, Ordering::Release);
        match result {
            Ok((0, _, _)) => tracing::debug!(took_ms = started.elapsed().as_millis() as u64, "decision log WAL rewound"),
            Ok(_) => tracing::warn!("decision log WAL could not be rewound (readers busy); retrying"),
            Err(e) => tracing::warn!(error = %e, "decision log WAL reset failed; retrying"),
        }
    }
}
