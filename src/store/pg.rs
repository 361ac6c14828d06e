//! The Postgres backend, for several replicas sharing one decision log.
//!
//! - Schema: the same tables as SQLite ([`super::db::SCHEMA`]: `decisions` with an identity `seq`
//!   for cursors that mean the same on every replica, the record as `jsonb`, the embedding as
//!   `bytea`; `feedback`; `keys`), created with `IF NOT EXISTS` under a transaction-scoped
//!   advisory lock, so replicas starting together do not race on the catalog.
//! - Connections come from the synchronous `postgres` crate (it drives `tokio-postgres` on a
//!   small runtime of its own inside each call): the store uses them only on its writer thread
//!   and on tokio's blocking pool. A connection is never dropped on an async thread either
//!   (closing one blocks): see [`PgConn`]'s `Drop`.
//! - Statements are prepared once per connection and cached.
//! - No TLS in this build: `sslmode=require` is refused at start-up (use a local socket, a
//!   private network, or a TLS-terminating proxy such as pgbouncer).

use super::db::{ColumnTypes, Conn, Exec, Param, Row};
use crate::config::StoreConfig;
use anyhow::{Context, bail};
use bytes::{BufMut, BytesMut};
use postgres::config::{Host, SslMode};
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::{FromSql, IsNull, ToSql, Type};
use postgres::{GenericClient, NoTls, Statement};
use std::collections::HashMap;
use std::error::Error;
use std::time::Duration;

/// Column types for the shared schema ([`super::db::SCHEMA`]): an identity `seq` (one sequence
/// for every replica, so cursors mean the same everywhere), the record as `jsonb`.
pub const TYPES: ColumnTypes = ColumnTypes {
    seq: "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
    int: "BIGINT",
    real: "DOUBLE PRECISION",
    json: "JSONB",
    blob: "BYTEA",
};

/// Advisory lock key held while creating the schema ("ladder" in ASCII), so that replicas
/// starting at the same moment queue instead of racing on the catalog.
pub const SCHEMA_LOCK: i64 = 0x6c61_6464_6572;

/// Parse and check `store.url` (no connection). Errors name the field.
pub fn parse_url(url: &str) -> anyhow::Result<postgres::Config> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        bail!("store.url: must be a postgres:// or postgresql:// URL");
    }
    let config: postgres::Config = url.parse().map_err(|e| anyhow::anyhow!("store.url: {e}"))?;
    if config.get_hosts().is_empty() {
        bail!("store.url: no host (postgres://USER@HOST[:PORT]/DATABASE)");
    }
    if config.get_user().is_none() {
        bail!("store.url: no user (postgres://USER@HOST[:PORT]/DATABASE)");
    }
    if !matches!(config.get_ssl_mode(), SslMode::Disable | SslMode::Prefer) {
        bail!(
            "store.url: sslmode=require is not supported (this build has no TLS for Postgres); use a local socket, a private network or a TLS-terminating proxy"
        );
    }
    Ok(config)
}

/// The URL without its password.
fn describe(config: &postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => String::new(),
    };
    let port = config.get_ports().first().map(|p| format!(":{p}")).unwrap_or_default();
    format!(
        "postgres://{}@{host}{port}/{}",
        config.get_user().unwrap_or_default(),
        config.get_dbname().unwrap_or_default()
    )
}

/// A Postgres database to connect to (the URL plus the password from `store.password_env`).
#[derive(Clone)]
pub struct Target {
    config: postgres::Config,
    description: String,
}

impl Target {
    pub fn new(url: &str, cfg: &StoreConfig) -> anyhow::Result<Target> {
        let mut config = parse_url(url)?;
        if let Some(var) = &cfg.password_env {
            match std::env::var(var) {
                Ok(p) if !p.is_empty() => {
                    config.password(p);
                }
                _ => bail!("store.password_env: the environment variable {var} is not set"),
            }
        }
        config
            .application_name("ladder")
            .connect_timeout(Duration::from_millis(cfg.connect_timeout_ms.max(1)))
            // A dead server or network is noticed within about a minute even mid-query.
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .keepalives_interval(Duration::from_secs(10))
            .keepalives_retries(3);
        let description = describe(&config);
        Ok(Target { config, description })
    }

    pub fn connect(&self) -> anyhow::Result<PgConn> {
        let client = self
            .config
            .connect(NoTls)
            .map_err(|e| anyhow::anyhow!("store.url: cannot connect to {}: {}", self.description, error_text(&e)))?;
        Ok(PgConn {
            client: Some(client),
            statements: HashMap::new(),
        })
    }

    pub fn describe(&self) -> String {
        self.description.clone()
    }
}

/// The error with its causes (the `postgres` crate's top-level message is often just "db error").
fn error_text(e: &postgres::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

pub struct PgConn {
    /// Always `Some` until dropped.
    client: Option<postgres::Client>,
    statements: HashMap<String, Statement>,
}

impl Drop for PgConn {
    fn drop(&mut self) {
        // Closing blocks on the client's own runtime, which panics on an async thread: hand the
        // client to a plain thread there.
        if let Some(client) = self.client.take()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            std::thread::spawn(move || drop(client));
        }
    }
}

/// Statements on a client or an open transaction, with the connection's statement cache.
struct On<'a, C: GenericClient> {
    client: &'a mut C,
    statements: &'a mut HashMap<String, Statement>,
}

impl<C: GenericClient> On<'_, C> {
    fn statement(&mut self, sql: &str) -> anyhow::Result<Statement> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql).map_err(|e| anyhow::anyhow!("{}", error_text(&e)))?;
        self.statements.insert(sql.to_string(), s.clone());
        Ok(s)
    }
}

impl<C: GenericClient> Exec for On<'_, C> {
    fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> anyhow::Result<u64> {
        let stmt = self.statement(sql)?;
        let params: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        self.client
            .execute(&stmt, &params)
            .map_err(|e| anyhow::anyhow!("{}", error_text(&e)))
    }

    fn for_each(&mut self, sql: &str, params: &[Param<'_>], f: &mut dyn FnMut(&dyn Row) -> anyhow::Result<()>) -> anyhow::Result<()> {
        let stmt = self.statement(sql)?;
        let mut rows = self
            .client
            .query_raw(&stmt, params.iter())
            .map_err(|e| anyhow::anyhow!("{}", error_text(&e)))?;
        while let Some(row) = rows.next().map_err(|e| anyhow::anyhow!("{}", error_text(&e)))? {
            f(&row)?;
        }
        Ok(())
    }
}

impl PgConn {
    fn on(&mut self) -> anyhow::Result<On<'_, postgres::Client>> {
        Ok(On {
            client: self.client.as_mut().context("the Postgres connection is closed")?,
            statements: &mut self.statements,
        })
    }
}

impl Exec for PgConn {
    fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> anyhow::Result<u64> {
        self.on()?.execute(sql, params)
    }

    fn for_each(&mut self, sql: &str, params: &[Param<'_>], f: &mut dyn FnMut(&dyn Row) -> anyhow::Result<()>) -> anyhow::Result<()> {
        self.on()?.for_each(sql, params, f)
    }
}

impl Conn for PgConn {
    fn transaction(&mut self, f: &mut dyn FnMut(&mut dyn Exec) -> anyhow::Result<()>) -> anyhow::Result<()> {
        let client = self.client.as_mut().context("the Postgres connection is closed")?;
        let mut tx = client.transaction().map_err(|e| anyhow::anyhow!("{}", error_text(&e)))?;
        f(&mut On {
            client: &mut tx,
            statements: &mut self.statements,
        })?;
        tx.commit().map_err(|e| anyhow::anyhow!("commit: {}", error_text(&e)))
    }

    fn is_broken(&self) -> bool {
        self.client.as_ref().is_none_or(|c| c.is_closed())
    }
}

type BoxError = Box<dyn Error + Sync + Send>;

impl ToSql for Param<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        match *self {
            Param::Null => Ok(IsNull::Yes),
            Param::I64(v) if *ty == Type::INT4 => i32::try_from(v)?.to_sql(ty, out),
            Param::I64(v) => v.to_sql(ty, out),
            Param::F64(v) => v.to_sql(ty, out),
            Param::Text(s) => s.to_sql(ty, out),
            Param::Bytes(b) => b.to_sql(ty, out),
            Param::Json(s) if *ty == Type::JSONB => {
                out.put_u8(1); // jsonb binary format version
                put_jsonb_text(out, s);
                Ok(IsNull::No)
            }
            Param::Json(s) => s.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    fn to_sql_checked(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        let ok = match self {
            Param::Null => true,
            Param::I64(_) => *ty == Type::INT8 || *ty == Type::INT4,
            Param::F64(_) => *ty == Type::FLOAT8,
            Param::Text(_) => <&str as ToSql>::accepts(ty),
            Param::Bytes(_) => *ty == Type::BYTEA,
            Param::Json(_) => *ty == Type::JSONB || *ty == Type::JSON || <&str as ToSql>::accepts(ty),
        };
        if !ok {
            return Err(format!("cannot bind {self:?} to a parameter of type {ty}").into());
        }
        self.to_sql(ty, out)
    }
}

/// JSON text for a `jsonb` value. `jsonb` rejects the escape `\u0000` (a NUL character, which
/// `text` cannot hold either) that a prompt may contain; it becomes U+FFFD so that such a record
/// is still written rather than retried forever.
fn put_jsonb_text(out: &mut BytesMut, s: &str) {
    let b = s.as_bytes();
    let (mut i, mut start) = (0, 0);
    while i < b.len() {
        if b[i] == b'\\' {
            if b[i + 1..].starts_with(b"u0000") {
                out.put_slice(&b[start..i]);
                out.put_slice(b"\\ufffd");
                i += 6;
                start = i;
            } else {
                i += 2; // an escape pair: `\\` or `\"` must not start a match
            }
        } else {
            i += 1;
        }
    }
    out.put_slice(&b[start..]);
}

/// `json`/`jsonb` read back as text.
struct JsonText(String);

impl<'a> FromSql<'a> for JsonText {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        let raw = if *ty == Type::JSONB {
            match raw.split_first() {
                Some((1, rest)) => rest,
                _ => return Err("unsupported jsonb format version".into()),
            }
        } else {
            raw
        };
        Ok(JsonText(std::str::from_utf8(raw)?.to_string()))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB || *ty == Type::JSON
    }
}

impl Row for postgres::Row {
    fn i64(&self, i: usize) -> anyhow::Result<Option<i64>> {
        let ty = self.columns()[i].type_();
        Ok(if *ty == Type::INT4 {
            self.try_get::<_, Option<i32>>(i)?.map(i64::from)
        } else if *ty == Type::INT2 {
            self.try_get::<_, Option<i16>>(i)?.map(i64::from)
        } else {
            self.try_get(i)?
        })
    }

    fn f64(&self, i: usize) -> anyhow::Result<Option<f64>> {
        let ty = self.columns()[i].type_();
        Ok(if *ty == Type::FLOAT4 {
            self.try_get::<_, Option<f32>>(i)?.map(f64::from)
        } else {
            self.try_get(i)?
        })
    }

    fn text(&self, i: usize) -> anyhow::Result<Option<String>> {
        let ty = self.columns()[i].type_();
        Ok(if <JsonText as FromSql>::accepts(ty) {
            self.try_get::<_, Option<JsonText>>(i)?.map(|j| j.0)
        } else {
            self.try_get(i)?
        })
    }

    fn bytes(&self, i: usize) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self.try_get(i)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_escapes_become_replacement_characters_and_nothing_else_changes() {
        let text = |s: &str| {
            let mut out = BytesMut::new();
            put_jsonb_text(&mut out, s);
            String::from_utf8(out.to_vec()).unwrap()
        };
        let json = serde_json::to_string(&serde_json::json!({"p": "a\u{0}b", "q": "\\u0000 literal", "r": "\"\\"})).unwrap();
        let back: serde_json::Value = serde_json::from_str(&text(&json)).unwrap();
        assert_eq!(back["p"], "a\u{fffd}b");
        assert_eq!(back["q"], "\\u0000 literal", "an escaped backslash is not an escape");
        assert_eq!(back["r"], "\"\\");
        assert_eq!(text("plain"), "plain");
    }

    #[test]
    fn urls_are_checked_and_described_without_password() {
        assert!(parse_url("mysql://x@h/db").unwrap_err().to_string().starts_with("store.url:"));
        assert!(
            parse_url("postgres://u@h/db?sslmode=require")
                .unwrap_err()
                .to_string()
                .contains("sslmode")
        );
        assert!(parse_url("postgres:///db").unwrap_err().to_string().contains("no host"));
        let c = parse_url("postgresql://ladder:secret@db.internal:6543/log").unwrap();
        assert_eq!(describe(&c), "postgres://ladder@db.internal:6543/log");
        let c = parse_url("postgres://ladder@%2Fvar%2Frun%2Fpostgresql/log").unwrap();
        assert_eq!(describe(&c), "postgres://ladder@/var/run/postgresql:5432/log");
    }
}
