//! Per-key usage accounting: requests and tokens in a rolling one-minute window (rpm, tpm) and
//! dollars reserved and spent against a budget.
//!
//! Admission is reserve-then-settle: [`Usage::admit`] checks every limit and reserves the
//! request's estimated tokens and cost in one step (under the key's lock, so concurrent requests
//! see each other's reservations); [`Usage::settle`] replaces the estimate with what the request
//! actually used. A request is admitted only if `spent + reserved + its reservation <= budget`, so
//! concurrent requests can overspend only by what their actual cost exceeds their reservation.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The rolling window of `rpm` and `tpm`.
pub const WINDOW: Duration = Duration::from_secs(60);

/// A key's limits (each optional).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    /// Total spend allowed over the key's life, in USD.
    pub budget_usd: Option<f64>,
    /// Requests per rolling minute.
    pub rpm: Option<u32>,
    /// Tokens (estimated prompt + expected completion at admission, actual once settled) per
    /// rolling minute.
    pub tpm: Option<u64>,
}

impl Limits {
    pub fn any(&self) -> bool {
        self.budget_usd.is_some() || self.rpm.is_some() || self.tpm.is_some()
    }
}

#[derive(Debug, Clone)]
struct Entry {
    at: Instant,
    id: u64,
    tokens: u64,
}

/// What one key has used. Lives behind the key's mutex.
#[derive(Debug, Default)]
pub struct Usage {
    /// Settled spend (loaded from the database at start-up).
    pub spent_usd: f64,
    /// Reservations of requests in flight.
    pub reserved_usd: f64,
    window: VecDeque<Entry>,
    window_tokens: u64,
    next_id: u64,
}

/// A request's reservation, returned by [`Usage::admit`] and consumed by [`Usage::settle`].
#[derive(Debug)]
pub struct Ticket {
    id: u64,
    pub tokens: u64,
    pub cost_usd: f64,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    Rpm {
        limit: u32,
        retry_after: Duration,
    },
    Tpm {
        limit: u64,
        needed: u64,
        /// None when the request alone exceeds the limit (waiting does not help).
        retry_after: Option<Duration>,
    },
    Budget {
        budget: f64,
        spent: f64,
        reserved: f64,
        needed: f64,
    },
}

impl Usage {
    pub fn with_spent(spent_usd: f64) -> Usage {
        Usage {
            spent_usd,
            ..Default::default()
        }
    }

    /// Requests and tokens in the window ending at `now`.
    pub fn in_window(&mut self, now: Instant) -> (usize, u64) {
        self.prune(now);
        (self.window.len(), self.window_tokens)
    }

    fn prune(&mut self, now: Instant) {
        while let Some(e) = self.window.front() {
            if now.saturating_duration_since(e.at) >= WINDOW {
                self.window_tokens = self.window_tokens.saturating_sub(e.tokens);
                self.window.pop_front();
            } else {
                break;
            }
        }
    }

    fn expires_in(e: &Entry, now: Instant) -> Duration {
        (e.at + WINDOW).saturating_duration_since(now)
    }

    /// Check every limit and, if all pass, reserve `tokens` and `cost_usd`. `now` must not go
    /// backwards between calls.
    pub fn admit(&mut self, limits: &Limits, now: Instant, tokens: u64, cost_usd: f64) -> Result<Ticket, Refusal> {
        self.prune(now);
        if let Some(rpm) = limits.rpm {
            let rpm_n = rpm as usize;
            if self.window.len() >= rpm_n {
                // Room opens when the entry that puts the window at the limit expires.
                let idx = self.window.len() - rpm_n;
                let retry_after = self.window.get(idx).map_or(WINDOW, |e| Self::expires_in(e, now));
                return Err(Refusal::Rpm { limit: rpm, retry_after });
            }
        }
        if let Some(tpm) = limits.tpm
            && self.window_tokens.saturating_add(tokens) > tpm
        {
            let retry_after = if tokens > tpm {
                None
            } else {
                let mut freed = 0u64;
                let mut when = None;
                for e in &self.window {
                    freed += e.tokens;
                    if self.window_tokens - freed + tokens <= tpm {
                        when = Some(Self::expires_in(e, now));
                        break;
                    }
                }
                when
            };
            return Err(Refusal::Tpm {
                limit: tpm,
                needed: tokens,
                retry_after,
            });
        }
        if let Some(budget) = limits.budget_usd
            && self.spent_usd + self.reserved_usd + cost_usd > budget * (1.0 + 1e-12)
        {
            return Err(Refusal::Budget {
                budget,
                spent: self.spent_usd,
                reserved: self.reserved_usd,
                needed: cost_usd,
            });
        }
        let id = self.next_id;
        self.next_id += 1;
        self.window.push_back(Entry { at: now, id, tokens });
        self.window_tokens += tokens;
        self.reserved_usd += cost_usd;
        Ok(Ticket { id, tokens, cost_usd })
    }

    /// Replace a reservation by what the request actually used.
    pub fn settle(&mut self, ticket: Ticket, cost_usd: f64, tokens: u64) {
        self.reserved_usd = (self.reserved_usd - ticket.cost_usd).max(0.0);
        if self.reserved_usd < 1e-15 {
            self.reserved_usd = 0.0;
        }
        if cost_usd.is_finite() && cost_usd > 0.0 {
            self.spent_usd += cost_usd;
        }
        if let Some(e) = self.window.iter_mut().find(|e| e.id == ticket.id) {
            self.window_tokens = self.window_tokens - e.tokens + tokens;
            e.tokens = tokens;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(budget: Option<f64>, rpm: Option<u32>, tpm: Option<u64>) -> Limits {
        Limits {
            budget_usd: budget,
            rpm,
            tpm,
        }
    }

    #[test]
    fn rpm_refuses_the_extra_request_until_the_oldest_expires() {
        let l = limits(None, Some(3), None);
        let mut u = Usage::default();
        let t0 = Instant::now();
        for i in 0..3 {
            u.admit(&l, t0 + Duration::from_secs(i * 10), 1, 0.0).unwrap();
        }
        match u.admit(&l, t0 + Duration::from_secs(30), 1, 0.0) {
            Err(Refusal::Rpm { limit: 3, retry_after }) => assert_eq!(retry_after, Duration::from_secs(30)),
            other => panic!("{other:?}"),
        }
        // The first entry expires at t0 + 60 s.
        assert!(u.admit(&l, t0 + Duration::from_secs(59), 1, 0.0).is_err());
        u.admit(&l, t0 + Duration::from_secs(60), 1, 0.0).unwrap();
    }

    #[test]
    fn tpm_counts_estimates_then_actuals() {
        let l = limits(None, None, Some(1000));
        let mut u = Usage::default();
        let t0 = Instant::now();
        let a = u.admit(&l, t0, 600, 0.0).unwrap();
        // 600 + 600 > 1000.
        match u.admit(&l, t0, 600, 0.0) {
            Err(Refusal::Tpm { retry_after: Some(d), .. }) => assert_eq!(d, WINDOW),
            other => panic!("{other:?}"),
        }
        // The first request used only 100 tokens: room again.
        u.settle(a, 0.0, 100);
        u.admit(&l, t0, 600, 0.0).unwrap();
        assert_eq!(u.in_window(t0), (2, 700));
        // A request larger than the limit can never pass.
        match u.admit(&l, t0, 5000, 0.0) {
            Err(Refusal::Tpm { retry_after: None, .. }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn budget_reserves_then_settles() {
        let l = limits(Some(1.0), None, None);
        let mut u = Usage::with_spent(0.5);
        let t0 = Instant::now();
        let a = u.admit(&l, t0, 0, 0.3).unwrap();
        // 0.5 spent + 0.3 reserved + 0.3 > 1.0.
        assert!(matches!(u.admit(&l, t0, 0, 0.3), Err(Refusal::Budget { .. })));
        u.admit(&l, t0, 0, 0.2).unwrap();
        u.settle(a, 0.1, 0);
        assert!((u.spent_usd - 0.6).abs() < 1e-12);
        assert!((u.reserved_usd - 0.2).abs() < 1e-12);
        u.admit(&l, t0, 0, 0.2).unwrap();
        assert!(u.admit(&l, t0, 0, 0.01).is_err());
    }

    /// Many threads admitting and settling at once never reserve past the budget.
    #[test]
    fn concurrent_admissions_never_exceed_the_budget() {
        use std::sync::{Arc, Mutex};
        let l = Arc::new(limits(Some(1.0), None, None));
        let u = Arc::new(Mutex::new(Usage::default()));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (l, u) = (l.clone(), u.clone());
                std::thread::spawn(move || {
                    let mut admitted = 0;
                    for _ in 0..1000 {
                        let t = u.lock().unwrap().admit(&l, Instant::now(), 0, 0.01);
                        if let Ok(t) = t {
                            admitted += 1;
                            let mut g = u.lock().unwrap();
                            assert!(g.spent_usd + g.reserved_usd <= 1.0 + 1e-9);
                            g.settle(t, 0.01, 0);
                        }
                    }
                    admitted
                })
            })
            .collect();
        let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert!((99..=100).contains(&total), "{total}");
        assert!(u.lock().unwrap().spent_usd <= 1.0 + 1e-9);
    }
}
