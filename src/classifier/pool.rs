//! The inference pool: dedicated OS threads that batch queued prompts through the encoder.
//!
//! [`Pool::submit`] checks the embedding cache, then `try_send`s the job onto a bounded queue
//! (failing fast with [`ScoreError::QueueFull`] rather than stalling the request), and awaits a
//! oneshot reply. A worker blocks for the first job, then drains whatever else is queued up to
//! `max_batch` — dynamic batching: under load, batches grow by themselves; when idle, a lone
//! prompt runs at once with no batching delay.

use super::ScoreError;
use super::encoder::Encoder;
use super::heads::{HeadOutput, Heads};
use crate::config::ClassifierConfig;
use crate::wire::RoutingText;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::oneshot;

pub struct PoolOutput {
    pub head: HeadOutput,
    pub embedding: Vec<f32>,
    pub truncated: bool,
    pub heads_version: String,
    pub ood_threshold: f32,
    pub abilities: Arc<crate::router::Abilities>,
}

struct Job {
    system: String,
    user: String,
    key: u64,
    reply: oneshot::Sender<Result<(Vec<f32>, bool), String>>,
}

/// FIFO-evicted map from prompt hash to (embedding, truncated).
struct Cache {
    map: HashMap<u64, (Arc<Vec<f32>>, bool)>,
    order: VecDeque<u64>,
    capacity: usize,
}

impl Cache {
    fn get(&self, key: u64) -> Option<(Arc<Vec<f32>>, bool)> {
        self.map.get(&key).cloned()
    }

    fn put(&mut self, key: u64, emb: Arc<Vec<f32>>, truncated: bool) {
        if self.capacity == 0 || self.map.contains_key(&key) {
            return;
        }
        if self.map.len() >= self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.map.remove(&old);
        }
        self.map.insert(key, (emb, truncated));
        self.order.push_back(key);
    }
}

pub struct Pool {
    tx: SyncSender<Job>,
    depth: Arc<AtomicUsize>,
    cache: Arc<Mutex<Cache>>,
    heads: Arc<RwLock<Arc<Heads>>>,
}

impl Pool {
    pub fn start(encoder: Encoder, heads: Arc<RwLock<Arc<Heads>>>, cfg: &ClassifierConfig) -> anyhow::Result<Pool> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(cfg.queue_capacity);
        let rx = Arc::new(Mutex::new(rx));
        let depth = Arc::new(AtomicUsize::new(0));
        let cache = Arc::new(Mutex::new(Cache {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity: cfg.cache_entries,
        }));
        let encoder = Arc::new(encoder);
        for i in 0..cfg.worker_count() {
            let (rx, depth, cache, encoder) = (rx.clone(), depth.clone(), cache.clone(), encoder.clone());
            let max_batch = cfg.max_batch;
            // A worker with its own threads runs its forward passes inside its own rayon pool,
            // so that the matrix products' column split and the attention tasks stay on them.
            let own_threads = match cfg.threads_per_worker {
                0 => None,
                n => Some(
                    rayon::ThreadPoolBuilder::new()
                        .num_threads(n)
                        .thread_name(move |t| format!("ladder-classifier-{i}-{t}"))
                        .build()?,
                ),
            };
            std::thread::Builder::new()
                .name(format!("ladder-classifier-{i}"))
                .spawn(move || match own_threads {
                    Some(threads) => threads.install(|| worker(rx, depth, cache, encoder, max_batch)),
                    None => worker(rx, depth, cache, encoder, max_batch),
                })?;
        }
        Ok(Pool { tx, depth, cache, heads })
    }

    pub fn queue_depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    pub async fn submit(&self, text: &RoutingText) -> Result<PoolOutput, ScoreError> {
        let key = {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            text.system.hash(&mut h);
            0xffu8.hash(&mut h);
            text.last_user.hash(&mut h);
            h.finish()
        };
        let cached = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(key);
        let (embedding, truncated) = match cached {
            Some((emb, truncated)) => ((*emb).clone(), truncated),
            None => {
                let (reply, rx) = oneshot::channel();
                let job = Job {
                    system: text.system.clone(),
                    user: text.last_user.clone(),
                    key,
                    reply,
                };
                self.depth.fetch_add(1, Ordering::Relaxed);
                match self.tx.try_send(job) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => {
                        self.depth.fetch_sub(1, Ordering::Relaxed);
                        return Err(ScoreError::QueueFull);
                    }
                    Err(TrySendError::Disconnected(_)) => {
                        self.depth.fetch_sub(1, Ordering::Relaxed);
                        return Err(ScoreError::Failed("inference threads stopped".into()));
                    }
                }
                rx.await
                    .map_err(|_| ScoreError::Failed("inference thread dropped the job".into()))?
                    .map_err(ScoreError::Failed)?
            }
        };
        let heads = self.heads.read().unwrap_or_else(|e| e.into_inner()).clone();
        let head = heads.predict(&embedding);
        Ok(PoolOutput {
            head,
            embedding,
            truncated,
            heads_version: heads.manifest.version.clone(),
            ood_threshold: heads.manifest.ood_threshold,
            abilities: heads.abilities.clone(),
        })
    }
}

fn worker(rx: Arc<Mutex<Receiver<Job>>>, depth: Arc<AtomicUsize>, cache: Arc<Mutex<Cache>>, encoder: Arc<Encoder>, max_batch: usize) {
    loop {
        let mut batch = Vec::with_capacity(max_batch);
        {
            let rx = rx.lock().unwrap_or_else(|e| e.into_inner());
            match rx.recv() {
                Ok(job) => batch.push(job),
                Err(_) => return, // the pool was dropped
            }
            while batch.len() < max_batch {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
        }
        depth.fetch_sub(batch.len(), Ordering::Relaxed);
        let tokenized: Vec<_> = batch.iter().map(|j| encoder.tokenize_prompt(&j.system, &j.user)).collect();
        let ok: Vec<&super::encoder::Tokenized> = tokenized.iter().filter_map(|t| t.as_ref().ok()).collect();
        let embeddings = encoder.features(&ok);
        let mut embeddings = match embeddings {
            Ok(e) => e.into_iter(),
            Err(e) => {
                let msg = e.to_string();
                for job in batch {
                    let _ = job.reply.send(Err(msg.clone()));
                }
                continue;
            }
        };
        for (job, tok) in batch.into_iter().zip(tokenized) {
            match tok {
                Ok(t) => {
                    let emb = embeddings.next().unwrap_or_default();
                    cache
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .put(job.key, Arc::new(emb.clone()), t.truncated);
                    let _ = job.reply.send(Ok((emb, t.truncated)));
                }
                Err(e) => {
                    let _ = job.reply.send(Err(e.to_string()));
                }
            }
        }
    }
}
