//! The SQLite backend: one file in WAL mode, `synchronous=NORMAL` (a committed transaction
//! survives a process crash; only an OS crash can lose the last commits). WAL lets readers run
//! beside the single writer, and `ladder keys` beside a running server.

use super::db::{ColumnTypes, Conn, Exec, Param, Row};
use anyhow::Context;
use rusqlite::Connection;
use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use std::path::Path;
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
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // NORMAL in WAL mode: a committed transaction survives a process crash (kill -9); only an OS
    // crash or power loss can lose the last commits.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(SqliteConn(conn))
}

pub struct SqliteConn(Connection);

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
}
