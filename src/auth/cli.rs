//! `ladder keys create|list|revoke`: virtual key management against the database named by a
//! config's `[store]` (the SQLite file or the shared Postgres database). Safe to run while the
//! servers are up (the server picks new keys up on first use and revocations within
//! `auth.refresh_ms`).

use super::{ADMIN_NAME, KeyRow, generate_key, hash_key, load_rows, open_db};
use crate::config::Config;
use crate::store::db::{Conn, off_runtime};
use anyhow::{Context, bail};
use std::path::PathBuf;

#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Create a key and print it (once: only its SHA-256 is stored).
    Create {
        #[arg(long)]
        config: PathBuf,
        /// A unique name (letters, digits, `-`, `_`, `.`); decision records name the key by it.
        #[arg(long)]
        name: String,
        /// Total spend allowed, in USD.
        #[arg(long)]
        budget_usd: Option<f64>,
        /// Requests per rolling minute.
        #[arg(long)]
        rpm: Option<u32>,
        /// Tokens (prompt + completion) per rolling minute.
        #[arg(long)]
        tpm: Option<u64>,
        /// Catalogue models the key may use (comma-separated); default all.
        #[arg(long, value_delimiter = ',')]
        models: Option<Vec<String>>,
    },
    /// List keys (never the keys themselves): limits, spend, status.
    List {
        #[arg(long)]
        config: PathBuf,
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by name (the server refuses it within `auth.refresh_ms`).
    Revoke {
        #[arg(long)]
        config: PathBuf,
        name: String,
    },
}

/// Run `f` on a connection to the config's database (off any async thread: see
/// [`off_runtime`]).
fn with_db<T: Send>(config: &Config, f: impl FnOnce(&mut dyn Conn) -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
    off_runtime(|| {
        let mut conn = open_db(&config.store)?;
        f(conn.as_mut())
    })
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

fn fmt_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// Create a key; returns it (the caller prints it).
#[allow(clippy::too_many_arguments)]
pub fn create(
    config: &Config,
    name: &str,
    budget_usd: Option<f64>,
    rpm: Option<u32>,
    tpm: Option<u64>,
    models: Option<Vec<String>>,
) -> anyhow::Result<String> {
    if !valid_name(name) {
        bail!("--name: '{name}' must be 1-64 characters of letters, digits, '-', '_' or '.'");
    }
    if name == ADMIN_NAME {
        bail!("--name: '{ADMIN_NAME}' is reserved for the admin key");
    }
    if let Some(b) = budget_usd
        && !(b > 0.0 && b.is_finite())
    {
        bail!("--budget-usd: must be a positive number, got {b}");
    }
    if rpm == Some(0) {
        bail!("--rpm: must be at least 1");
    }
    if tpm == Some(0) {
        bail!("--tpm: must be at least 1");
    }
    if let Some(ms) = &models {
        if ms.is_empty() {
            bail!("--models: give at least one model");
        }
        for m in ms {
            if config.model(m).is_none() {
                let names: Vec<&str> = config.models.iter().map(|m| m.name.as_str()).collect();
                bail!("--models: '{m}' is not in the catalogue ({})", names.join(", "));
            }
        }
    }
    let key = generate_key()?;
    let hash = hex::encode(hash_key(&key));
    let prefix = key[..super::KEY_PREFIX.len() + 6].to_string();
    let models_json = models.as_ref().map(serde_json::to_string).transpose()?;
    // One statement: two CLIs (or hosts) creating the same name cannot both succeed.
    let inserted = with_db(config, |conn| {
        conn.execute(
            "INSERT INTO keys (name, key_sha256, key_prefix, created_ms, budget_usd, rpm, tpm, models)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (name) DO NOTHING",
            &[
                name.into(),
                hash.as_str().into(),
                prefix.as_str().into(),
                now_ms().into(),
                budget_usd.into(),
                rpm.map(i64::from).into(),
                tpm.map(|t| t.min(i64::MAX as u64) as i64).into(),
                models_json.as_deref().into(),
            ],
        )
        .context("storing the key")
    })?;
    if inserted == 0 {
        bail!("a key named '{name}' already exists (names stay taken after revocation); pick another name");
    }
    Ok(key)
}

/// Revoke a key; false when there is no such key or it was already revoked.
pub fn revoke(config: &Config, name: &str) -> anyhow::Result<bool> {
    let n = with_db(config, |conn| {
        conn.execute(
            "UPDATE keys SET revoked_ms = $2 WHERE name = $1 AND revoked_ms IS NULL",
            &[name.into(), now_ms().into()],
        )
    })?;
    Ok(n == 1)
}

pub fn list(config: &Config) -> anyhow::Result<Vec<KeyRow>> {
    with_db(config, |conn| load_rows(conn))
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// Run a `ladder keys` subcommand.
pub fn run(cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Create {
            config,
            name,
            budget_usd,
            rpm,
            tpm,
            models,
        } => {
            let config = Config::load(&config)?;
            let key = create(&config, &name, budget_usd, rpm, tpm, models)?;
            eprintln!("created key '{name}'; it is shown only this once, store it now:");
            println!("{key}");
        }
        KeysCommand::List { config, json } => {
            let config = Config::load(&config)?;
            let rows = list(&config)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            println!(
                "{:<20} {:<12} {:<8} {:<21} {:>12} {:>12} {:>6} {:>9} {:>9}  models",
                "name", "prefix", "status", "created", "budget_usd", "spent_usd", "rpm", "tpm", "requests"
            );
            for r in rows {
                println!(
                    "{:<20} {:<12} {:<8} {:<21} {:>12} {:>12.6} {:>6} {:>9} {:>9}  {}",
                    r.name,
                    r.key_prefix,
                    if r.revoked_ms.is_some() { "revoked" } else { "active" },
                    fmt_ms(r.created_ms),
                    opt(r.budget_usd),
                    r.spent_usd,
                    opt(r.rpm),
                    opt(r.tpm),
                    r.requests,
                    r.models.map_or_else(|| "all".to_string(), |m| m.join(",")),
                );
            }
        }
        KeysCommand::Revoke { config, name } => {
            let config = Config::load(&config)?;
            if revoke(&config, &name)? {
                println!("revoked key '{name}'");
            } else {
                bail!("no active key named '{name}'");
            }
        }
    }
    Ok(())
}
