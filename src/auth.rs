//! Virtual API keys, the admin key, and per-key limits (budget, rpm, tpm, model allow-list).
//!
//! **Keys.** `ladder keys create` makes a key `lk-<64 hex chars>` (32 bytes from the OS RNG),
//! prints it once, and stores only its SHA-256 in the `keys` table of the decision-log database
//! (`[store]`: the SQLite file, or the Postgres database the replicas share). The admin key is never stored: it is read at start-up from the environment
//! variable named by `auth.admin_key_env`.
//!
//! **Checking a key.** A presented key is hashed and compared as a digest; digests are compared
//! in constant time ([`ct_eq`]). Keys are cached in memory: loaded at start-up, reloaded in the
//! background every `auth.refresh_ms` (revocations take effect then), and looked up in the
//! database on a cache miss (rate-limited), so a key created while the server runs works at once.
//!
//! **Who may call what** ([`middleware`]): with `auth.enabled`, every route but `/healthz` needs
//! `Authorization: Bearer <key>`; `/v1/decisions*`, `/v1/replay` and `/v1/admin/*` need the admin key
//! ([`require_admin`]); everything else takes a virtual key or the admin key. Missing, unknown
//! and revoked keys get 401 `invalid_api_key` in OpenAI's error shape.
//!
//! **Limits** ([`admit`], [`limits`]): a key's `models` are intersected with the request's
//! `ladder.models`; `rpm`, `tpm` and `budget_usd` are checked and reserved before the upstream
//! call and settled with the actual usage when the decision record is finalised. The reservation
//! is the highest expected cost along the chain, so escalation is covered; concurrent requests
//! overspend only by what their actual cost exceeds that estimate (a longer answer than
//! `max_tokens`/`routing.expected_output_tokens`). Spend is persisted in the same transaction as
//! the decision record ([`Charges`]), so it survives restarts and crashes; the increments are
//! atomic, so replicas sharing a Postgres log keep one correct total. Rate limits, and the
//! budget check's view of spend, are per process (a replica learns of another's spend on restart).

pub mod cli;
pub mod limits;

use crate::config::Config;
use crate::config::StoreConfig;
use crate::error::ApiError;
use crate::router::{Decision, RouteRequest};
use crate::server::{AppState, SharedState};
use crate::store::DecisionRecord;
use crate::store::Pool;
use crate::store::db::{Conn, Database, Exec, Row, need, off_runtime};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use limits::{Limits, Refusal, Ticket, Usage};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Prefix of every virtual key.
pub const KEY_PREFIX: &str = "lk-";
/// The name decision records give the admin key (reserved: no virtual key may take it).
pub const ADMIN_NAME: &str = "admin";
/// Shortest admin key accepted.
pub const MIN_ADMIN_KEY_LEN: usize = 16;
/// Longest `Authorization` value looked at.
const MAX_KEY_LEN: usize = 512;

/// SHA-256 of a key.
pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Constant-time equality of two digests (no early exit).
pub fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for i in 0..32 {
        diff |= a[i] ^ b[i];
    }
    std::hint::black_box(diff) == 0
}

/// A new virtual key: `lk-` + 32 bytes from the operating system's RNG, hex-encoded.
pub fn generate_key() -> anyhow::Result<String> {
    use rand::TryRng;
    let mut bytes = [0u8; 32];
    rand::rngs::SysRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| anyhow::anyhow!("the OS random number generator failed: {e}"))?;
    Ok(format!("{KEY_PREFIX}{}", hex::encode(bytes)))
}

/// True for strings shaped like a virtual key (cheap filter before a database lookup).
fn looks_like_key(s: &str) -> bool {
    s.len() == KEY_PREFIX.len() + 64 && s.starts_with(KEY_PREFIX) && s[KEY_PREFIX.len()..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// One virtual key as the server knows it.
#[derive(Debug)]
pub struct VirtualKey {
    pub name: String,
    digest: [u8; 32],
    pub limits: Limits,
    /// Allowed catalogue models (None: all).
    pub models: Option<Vec<String>>,
    revoked: AtomicBool,
    usage: Mutex<Usage>,
}

impl VirtualKey {
    pub fn revoked(&self) -> bool {
        self.revoked.load(Ordering::Relaxed)
    }

    /// Settled spend so far (USD).
    pub fn spent_usd(&self) -> f64 {
        self.usage.lock().map(|u| u.spent_usd).unwrap_or(0.0)
    }
}

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Principal {
    /// Auth is disabled.
    Open,
    Admin,
    Key(Arc<VirtualKey>),
}

impl Principal {
    /// The name recorded in decision records.
    pub fn name(&self) -> Option<String> {
        match self {
            Principal::Open => None,
            Principal::Admin => Some(ADMIN_NAME.to_string()),
            Principal::Key(k) => Some(k.name.clone()),
        }
    }

    pub fn is_admin(&self) -> bool {
        matches!(self, Principal::Admin | Principal::Open)
    }

    /// Apply the key's model allow-list: intersect it with the request's `ladder.models`.
    pub fn restrict(&self, route: &mut RouteRequest) {
        if let Principal::Key(k) = self
            && let Some(allowed) = &k.models
        {
            route.allowed_models = Some(match route.allowed_models.take() {
                None => allowed.clone(),
                Some(asked) => asked.into_iter().filter(|m| allowed.contains(m)).collect(),
            });
        }
    }
}

/// A row of the `keys` table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyRow {
    pub name: String,
    #[serde(skip)]
    pub key_sha256: String,
    pub key_prefix: String,
    pub created_ms: i64,
    pub revoked_ms: Option<i64>,
    pub budget_usd: Option<f64>,
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
    pub models: Option<Vec<String>>,
    pub spent_usd: f64,
    pub requests: i64,
    pub last_used_ms: Option<i64>,
}

const ROW_COLUMNS: &str =
    "name, key_sha256, key_prefix, created_ms, revoked_ms, budget_usd, rpm, tpm, models, spent_usd, requests, last_used_ms";

fn row_of(r: &dyn Row) -> anyhow::Result<KeyRow> {
    Ok(KeyRow {
        name: need(r.text(0)?, "name")?,
        key_sha256: need(r.text(1)?, "key_sha256")?,
        key_prefix: need(r.text(2)?, "key_prefix")?,
        created_ms: need(r.i64(3)?, "created_ms")?,
        revoked_ms: r.i64(4)?,
        budget_usd: r.f64(5)?,
        rpm: r.i64(6)?.map(|v| v.clamp(0, u32::MAX as i64) as u32),
        tpm: r.i64(7)?.map(|v| v.max(0) as u64),
        models: r.text(8)?.and_then(|m| serde_json::from_str(&m).ok()),
        spent_usd: need(r.f64(9)?, "spent_usd")?,
        requests: need(r.i64(10)?, "requests")?,
        last_used_ms: r.i64(11)?,
    })
}

/// Connect to the database `[store]` names, creating the tables if needed (for `ladder keys`).
pub fn open_db(cfg: &StoreConfig) -> anyhow::Result<Box<dyn Conn>> {
    Database::open(cfg)?.connect()
}

pub fn load_rows(ex: &mut dyn Exec) -> anyhow::Result<Vec<KeyRow>> {
    ex.query(&format!("SELECT {ROW_COLUMNS} FROM keys ORDER BY created_ms, name"), &[], row_of)
}

fn load_row_by_hash(ex: &mut dyn Exec, hash_hex: &str) -> anyhow::Result<Option<KeyRow>> {
    ex.query_opt(
        &format!("SELECT {ROW_COLUMNS} FROM keys WHERE key_sha256 = $1"),
        &[hash_hex.into()],
        row_of,
    )
}

/// Spend to add to keys, summed per key over the records a decision-log batch commits. The
/// writer applies it inside the transaction that commits those records, so the records and the
/// spend land together.
#[derive(Debug, Default)]
pub struct Charges(BTreeMap<String, Charge>);

#[derive(Debug, Default)]
struct Charge {
    cost_usd: f64,
    requests: i64,
    last_used_ms: i64,
}

impl Charges {
    pub fn add(&mut self, rec: &DecisionRecord) {
        let Some(name) = &rec.key_name else { return };
        let cost = if rec.total_cost_usd.is_finite() {
            rec.total_cost_usd.max(0.0)
        } else {
            0.0
        };
        let c = self.0.entry(name.clone()).or_insert_with(|| Charge {
            last_used_ms: rec.ts_ms,
            ..Charge::default()
        });
        c.cost_usd += cost;
        c.requests += 1;
        c.last_used_ms = c.last_used_ms.max(rec.ts_ms);
    }

    /// Atomic increments (right when several replicas charge the same key), in key-name order (so
    /// that two replicas' transactions never wait on each other's rows in a cycle).
    pub fn apply(&self, ex: &mut dyn Exec) -> anyhow::Result<()> {
        for (name, c) in &self.0 {
            ex.execute(
                "UPDATE keys SET spent_usd = spent_usd + $2, requests = requests + $3,
                 last_used_ms = CASE WHEN last_used_ms IS NULL OR last_used_ms < $4 THEN $4 ELSE last_used_ms END
                 WHERE name = $1",
                &[name.as_str().into(), c.cost_usd.into(), c.requests.into(), c.last_used_ms.into()],
            )?;
        }
        Ok(())
    }
}

fn key_from_row(row: &KeyRow) -> Option<([u8; 32], Arc<VirtualKey>)> {
    let bytes = hex::decode(&row.key_sha256).ok()?;
    let digest: [u8; 32] = bytes.try_into().ok()?;
    let key = VirtualKey {
        name: row.name.clone(),
        digest,
        limits: Limits {
            budget_usd: row.budget_usd,
            rpm: row.rpm,
            tpm: row.tpm,
        },
        models: row.models.clone(),
        revoked: AtomicBool::new(row.revoked_ms.is_some()),
        usage: Mutex::new(Usage::with_spent(row.spent_usd)),
    };
    Some((digest, Arc::new(key)))
}

/// A token bucket bounding database lookups for unknown keys.
struct MissBucket {
    tokens: f64,
    at: Instant,
}

const MISS_BURST: f64 = 20.0;
const MISS_PER_SEC: f64 = 10.0;

/// Authentication state: the admin key's digest and the cache of virtual keys.
pub struct Auth {
    enabled: bool,
    admin: Option<[u8; 32]>,
    pool: Pool,
    refresh_every: Duration,
    keys: Arc<RwLock<HashMap<[u8; 32], Arc<VirtualKey>>>>,
    last_refresh: Arc<Mutex<Instant>>,
    refreshing: Arc<AtomicBool>,
    misses: Mutex<MissBucket>,
    /// Database lookups in progress, one per unknown digest: concurrent requests with the same
    /// new key wait for one lookup (and spend one miss token) instead of racing for tokens.
    lookups: Mutex<HashMap<[u8; 32], Arc<LookupCell>>>,
}

/// The shared result of one database lookup of an unknown key.
type LookupCell = tokio::sync::OnceCell<Option<Arc<VirtualKey>>>;

impl Auth {
    /// Read the admin key from the environment and load the keys through the decision log's
    /// connection pool (the log creates the table).
    pub fn from_config(config: &Config, pool: Pool) -> anyhow::Result<Auth> {
        let cfg = &config.auth;
        let mut admin = None;
        let mut count = 0;
        let keys = Arc::new(RwLock::new(HashMap::new()));
        if cfg.enabled {
            match std::env::var(&cfg.admin_key_env) {
                Ok(k) if !k.trim().is_empty() => {
                    let k = k.trim();
                    if k.len() < MIN_ADMIN_KEY_LEN {
                        anyhow::bail!(
                            "auth.admin_key_env: the admin key in {} is shorter than {MIN_ADMIN_KEY_LEN} characters",
                            cfg.admin_key_env
                        );
                    }
                    admin = Some(hash_key(k));
                }
                _ => tracing::warn!(
                    var = %cfg.admin_key_env,
                    "auth is enabled but the admin key variable is not set: /v1/decisions and /v1/admin/* are unreachable"
                ),
            }
            let rows = off_runtime(|| pool.run_blocking(|c| load_rows(c)))?;
            let mut map = keys.write().unwrap_or_else(|e| e.into_inner());
            for row in &rows {
                if let Some((d, k)) = key_from_row(row) {
                    if !k.revoked() {
                        count += 1;
                    }
                    map.insert(d, k);
                }
            }
            if admin.is_none() && count == 0 {
                tracing::warn!(
                    "auth is enabled but there is no admin key and no active virtual key: every request will get 401 (create one with `ladder keys create`)"
                );
            }
            tracing::info!(active_keys = count, admin_key = admin.is_some(), "auth enabled");
        } else {
            tracing::warn!("auth is disabled: anyone who can reach the port can use it");
        }
        Ok(Auth {
            enabled: cfg.enabled,
            admin,
            pool,
            refresh_every: Duration::from_millis(cfg.refresh_ms.max(1)),
            keys,
            last_refresh: Arc::new(Mutex::new(Instant::now())),
            refreshing: Arc::new(AtomicBool::new(false)),
            misses: Mutex::new(MissBucket {
                tokens: MISS_BURST,
                at: Instant::now(),
            }),
            lookups: Mutex::new(HashMap::new()),
        })
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Number of cached keys that are not revoked.
    pub fn active_keys(&self) -> usize {
        self.keys.read().map(|m| m.values().filter(|k| !k.revoked()).count()).unwrap_or(0)
    }

    fn cached(&self, digest: &[u8; 32]) -> Option<Arc<VirtualKey>> {
        self.keys.read().ok().and_then(|m| m.get(digest).cloned())
    }

    /// Reload the table in the background when the cache is older than `refresh_ms`.
    fn maybe_refresh(&self) {
        let stale = self.last_refresh.lock().map(|t| t.elapsed() >= self.refresh_every).unwrap_or(true);
        if !stale || self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (keys, pool, last, flag) = (
            self.keys.clone(),
            self.pool.clone(),
            self.last_refresh.clone(),
            self.refreshing.clone(),
        );
        tokio::task::spawn_blocking(move || {
            match pool.run_blocking(|c| load_rows(c)) {
                Ok(rows) => merge_rows(&keys, &rows),
                Err(e) => tracing::warn!(error = %e, "reloading API keys failed; keeping the cached ones"),
            }
            if let Ok(mut t) = last.lock() {
                *t = Instant::now();
            }
            flag.store(false, Ordering::Release);
        });
    }

    fn take_miss_token(&self) -> bool {
        let Ok(mut b) = self.misses.lock() else { return false };
        let now = Instant::now();
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * MISS_PER_SEC).min(MISS_BURST);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// A key missing from the cache: look it up in the database (a key created by the CLI a
    /// moment ago). Rate-limited so that a flood of bad keys cannot become a flood of queries;
    /// concurrent misses on the same digest share one lookup, so a burst of requests with a
    /// freshly created key is one query, not a race for the rate limiter's tokens.
    async fn lookup_miss(&self, token: &str, digest: [u8; 32]) -> Option<Arc<VirtualKey>> {
        if !looks_like_key(token) {
            return None;
        }
        let cell = {
            let mut inflight = self.lookups.lock().unwrap_or_else(|e| e.into_inner());
            inflight.entry(digest).or_default().clone()
        };
        let found = cell.get_or_init(|| self.query_key(digest)).await.clone();
        let mut inflight = self.lookups.lock().unwrap_or_else(|e| e.into_inner());
        if inflight.get(&digest).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            inflight.remove(&digest);
        }
        found
    }

    /// One rate-limited database lookup of a key by its digest; a hit joins the cache.
    async fn query_key(&self, digest: [u8; 32]) -> Option<Arc<VirtualKey>> {
        if let Some(k) = self.cached(&digest) {
            return Some(k); // another lookup of the same key finished in the meantime
        }
        if !self.take_miss_token() {
            return None;
        }
        let hash_hex = hex::encode(digest);
        let row = self
            .pool
            .run(move |c| load_row_by_hash(c, &hash_hex))
            .await
            .map_err(|e| tracing::warn!(error = %e, "looking up an API key failed"))
            .ok()??;
        let (d, key) = key_from_row(&row)?;
        let mut map = self.keys.write().unwrap_or_else(|e| e.into_inner());
        Some(map.entry(d).or_insert(key).clone())
    }

    /// Who is calling, from `Authorization: Bearer <key>`.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        if !self.enabled {
            return Ok(Principal::Open);
        }
        let token = bearer(headers)?;
        let digest = hash_key(token);
        if let Some(a) = &self.admin
            && ct_eq(a, &digest)
        {
            return Ok(Principal::Admin);
        }
        self.maybe_refresh();
        let key = match self.cached(&digest) {
            Some(k) => Some(k),
            None => self.lookup_miss(token, digest).await,
        };
        match key {
            Some(k) if ct_eq(&k.digest, &digest) => {
                if k.revoked() {
                    Err(unauthorized("This API key has been revoked."))
                } else {
                    Ok(Principal::Key(k))
                }
            }
            _ => Err(unauthorized("Incorrect API key provided.")),
        }
    }

    /// Ok for the admin key (or when auth is off); 401 for no or an unknown key, 403 for a
    /// virtual key.
    pub fn check_admin(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if !self.enabled {
            return Ok(());
        }
        let token = bearer(headers)?;
        let digest = hash_key(token);
        if let Some(a) = &self.admin
            && ct_eq(a, &digest)
        {
            return Ok(());
        }
        match self.cached(&digest) {
            Some(k) if ct_eq(&k.digest, &digest) && !k.revoked() => Err(admin_required()),
            _ => Err(unauthorized("Incorrect API key provided.")),
        }
    }
}

/// Merge a fresh read of the table into the cache: new keys are added, revocations applied,
/// deleted rows dropped. A known key keeps its in-memory usage (this process's settled spend is
/// ahead of the table by what is still queued for commit) unless the table's spend is higher:
/// then other replicas sharing the log have spent too, and the budget check takes it in.
fn merge_rows(keys: &RwLock<HashMap<[u8; 32], Arc<VirtualKey>>>, rows: &[KeyRow]) {
    let mut map = keys.write().unwrap_or_else(|e| e.into_inner());
    let mut seen = std::collections::HashSet::new();
    for row in rows {
        let Some((d, fresh)) = key_from_row(row) else { continue };
        seen.insert(d);
        match map.get(&d) {
            Some(k) => {
                if fresh.revoked() {
                    k.revoked.store(true, Ordering::Relaxed);
                }
                if let Ok(mut u) = k.usage.lock()
                    && row.spent_usd > u.spent_usd
                {
                    u.spent_usd = row.spent_usd;
                }
            }
            None => {
                map.insert(d, fresh);
            }
        }
    }
    map.retain(|d, _| seen.contains(d));
}

fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let Some(v) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Err(unauthorized(
            "You didn't provide an API key. Send it in an Authorization header using Bearer auth (Authorization: Bearer YOUR_KEY).",
        ));
    };
    let v = v
        .to_str()
        .map_err(|_| unauthorized("The Authorization header is not valid text."))?;
    let token = v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
        .map(str::trim)
        .ok_or_else(|| unauthorized("The Authorization header must use Bearer auth (Authorization: Bearer YOUR_KEY)."))?;
    if token.is_empty() || token.len() > MAX_KEY_LEN {
        return Err(unauthorized("Incorrect API key provided."));
    }
    Ok(token)
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "invalid_request_error", "invalid_api_key", message)
}

fn admin_required() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "invalid_request_error",
        "admin_key_required",
        "This endpoint needs the admin key; virtual keys cannot use it.",
    )
}

/// For handlers that need the admin key (e.g. `/v1/admin/*`). The [`middleware`] already checks
/// it for those paths; calling it again is harmless.
pub fn require_admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    state.auth.check_admin(headers)
}

/// Paths only the admin key may use (the log, its stats, replay, `/v1/admin/*`).
pub fn admin_only(path: &str) -> bool {
    path == "/v1/decisions"
        || path.starts_with("/v1/decisions/")
        || path == "/v1/replay"
        || path == "/v1/admin"
        || path.starts_with("/v1/admin/")
}

/// Paths open to everyone.
fn public(path: &str) -> bool {
    path == "/healthz"
}

/// The authentication layer: resolves the [`Principal`] (inserted as a request extension) or
/// answers 401/403 before the handler (and before the body is read).
pub async fn middleware(State(state): State<SharedState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if !state.auth.enabled() || public(path) {
        req.extensions_mut().insert(Principal::Open);
        return next.run(req).await;
    }
    let admin_path = admin_only(path);
    let principal = match state.auth.authenticate(req.headers()).await {
        Ok(p) => p,
        Err(e) => {
            let mut resp = e.into_response();
            resp.headers_mut()
                .insert(axum::http::header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return resp;
        }
    };
    if admin_path && !principal.is_admin() {
        return admin_required().into_response();
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

/// A request's reservation against its key's limits; settled when the decision record is
/// finalised ([`Reservation::settle`]). Dropping it unsettled releases it.
pub struct Reservation {
    key: Arc<VirtualKey>,
    ticket: Option<Ticket>,
}

impl Reservation {
    /// Replace the reservation by the record's actual cost and tokens.
    pub fn settle(mut self, record: &DecisionRecord) {
        let tokens: u64 = record.attempts.iter().map(|a| a.prompt_tokens + a.completion_tokens).sum();
        if let Some(t) = self.ticket.take()
            && let Ok(mut u) = self.key.usage.lock()
        {
            u.settle(t, record.total_cost_usd, tokens);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(t) = self.ticket.take()
            && let Ok(mut u) = self.key.usage.lock()
        {
            u.settle(t, 0.0, 0);
        }
    }
}

/// A refused admission: 429 with `rate_limit_exceeded` (and `retry-after`) or
/// `insufficient_quota`.
fn refused(key: &VirtualKey, r: Refusal) -> ApiError {
    let name = &key.name;
    match r {
        Refusal::Rpm { limit, retry_after } => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "requests",
            "rate_limit_exceeded",
            format!(
                "Rate limit reached for key '{name}': {limit} requests per minute. Retry in {:.1} s.",
                retry_after.as_secs_f64()
            ),
        )
        .with_retry_after(Some(retry_after)),
        Refusal::Tpm {
            limit,
            needed,
            retry_after,
        } => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "tokens",
            "rate_limit_exceeded",
            match retry_after {
                Some(d) => format!(
                    "Rate limit reached for key '{name}': {limit} tokens per minute (this request needs ~{needed}). Retry in {:.1} s.",
                    d.as_secs_f64()
                ),
                None => format!(
                    "Request too large for key '{name}': ~{needed} tokens (prompt + max output) exceed its limit of {limit} tokens per minute."
                ),
            },
        )
        .with_retry_after(retry_after),
        Refusal::Budget {
            budget,
            spent,
            reserved,
            needed,
        } => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "insufficient_quota",
            "insufficient_quota",
            format!(
                "Key '{name}' has exceeded its budget: ${spent:.6} spent and ${reserved:.6} reserved of ${budget:.6}; this request may cost up to ${needed:.6}."
            ),
        ),
    }
}

/// Check and reserve a chat request against its key's limits. `Ok(None)` when there is nothing
/// to account (no key, the admin key, or a key without limits).
pub fn admit(principal: &Principal, config: &Config, route: &RouteRequest, decision: &Decision) -> Result<Option<Reservation>, ApiError> {
    let Principal::Key(key) = principal else { return Ok(None) };
    if !key.limits.any() {
        return Ok(None);
    }
    let tokens = route
        .prompt_tokens
        .saturating_add(route.max_output_tokens.unwrap_or(config.routing.expected_output_tokens));
    // The most this request is expected to cost if it climbs the whole chain.
    let cost = decision
        .chain
        .iter()
        .filter_map(|m| decision.candidates.iter().find(|c| &c.model == m))
        .map(|c| c.expected_cost_usd)
        .fold(0.0, f64::max);
    let mut usage = key.usage.lock().unwrap_or_else(|e| e.into_inner());
    match usage.admit(&key.limits, Instant::now(), tokens, cost) {
        Ok(ticket) => Ok(Some(Reservation {
            key: key.clone(),
            ticket: Some(ticket),
        })),
        Err(r) => Err(refused(key, r)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_well_formed_and_hash_stably() {
        let a = generate_key().unwrap();
        let b = generate_key().unwrap();
        assert_ne!(a, b);
        assert!(looks_like_key(&a), "{a}");
        assert_eq!(a.len(), 67);
        assert_eq!(hash_key(&a), hash_key(&a));
        assert!(ct_eq(&hash_key(&a), &hash_key(&a)));
        assert!(!ct_eq(&hash_key(&a), &hash_key(&b)));
        assert!(!looks_like_key("lk-xyz"));
        assert!(!looks_like_key(&a.replace("lk-", "sk-")));
    }

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h).unwrap_err().status, StatusCode::UNAUTHORIZED);
        h.insert("authorization", HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h).unwrap_err().code, "invalid_api_key");
        h.insert("authorization", HeaderValue::from_static("Bearer  lk-abc "));
        assert_eq!(bearer(&h).unwrap(), "lk-abc");
        h.insert("authorization", HeaderValue::from_static("Bearer "));
        assert!(bearer(&h).is_err());
    }

    /// 60 requests with a key created a moment ago, all missing the cache at once: they share
    /// one database lookup, so none is refused by the lookup rate limiter (burst 20).
    #[tokio::test]
    async fn a_burst_with_a_new_key_shares_one_lookup() {
        let dir = std::env::temp_dir().join(format!("ladder-auth-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("log.db");
        let config: Config = Config::from_toml(&format!(
            "[store]\npath = {:?}\n[auth]\nadmin_key_env = \"LADDER_TEST_NO_SUCH_VAR\"\n[[providers]]\nname = \"p\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:1/v1\"\n[[models]]\nname = \"m\"\nprovider = \"p\"\ninput_price = 1.0\noutput_price = 1.0\ncontext_window = 1000\nquality = {{ default = 0.8 }}\n",
            db.display().to_string()
        ))
        .unwrap();
        let store = crate::store::Store::open(&config.store).unwrap();
        let auth = Auth::from_config(&config, store.pool()).unwrap();
        let key = cli::create(&config, "fresh", None, None, None, None).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_str(&format!("Bearer {key}")).unwrap());
        let results = futures::future::join_all((0..60).map(|_| auth.authenticate(&headers))).await;
        let refused = results.iter().filter(|r| r.is_err()).count();
        assert_eq!(refused, 0, "{refused} of 60 requests with a valid new key were refused");
        // A flood of unknown keys is still bounded by the rate limiter.
        let unknown: Vec<HeaderMap> = (0..60)
            .map(|_| {
                let mut h = HeaderMap::new();
                h.insert(
                    "authorization",
                    HeaderValue::from_str(&format!("Bearer {}", generate_key().unwrap())).unwrap(),
                );
                h
            })
            .collect();
        let results = futures::future::join_all(unknown.iter().map(|h| auth.authenticate(h))).await;
        assert!(results.iter().all(|r| r.is_err()));
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn admin_paths() {
        assert!(admin_only("/v1/decisions"));
        assert!(admin_only("/v1/decisions/dec_1"));
        assert!(admin_only("/v1/admin/reload"));
        assert!(admin_only("/v1/decisions/stats"));
        assert!(admin_only("/v1/replay"));
        assert!(!admin_only("/v1/feedback"));
        assert!(!admin_only("/v1/decisionsx"));
        assert!(!admin_only("/v1/chat/completions"));
        assert!(public("/healthz"));
    }
}
