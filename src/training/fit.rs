//! Fitting the heads, in plain Rust on `ndarray` (full-batch Adam; the data is small).
//!
//! - [`fit_softmax`]: multinomial logistic regression with per-sample weights (class balance) and
//!   L2 regularisation — the task head.
//! - [`fit_irt`]: a one-parameter item-response model fitted to real outcomes. Each observation is
//!   (prompt i, model m, task t, correct y) with `P(y=1) = sigmoid(a[m][t] − d_i)` and
//!   `d_i = w·x_i + b`: the difficulty head is `(w, b)`, the abilities `a` are fitted alongside.
//!   "Anchor" prompts of tasks with no outcome data are pulled softly towards `d = 0` (typical), so
//!   that the head does not extrapolate wild difficulties to task types it never saw outcomes for.
//! - [`spherical_kmeans`]: centroids for the out-of-distribution check.

use ndarray::{Array1, Array2, Axis};

struct Adam {
    m: Vec<f32>,
    v: Vec<f32>,
    t: i32,
    lr: f32,
}

impl Adam {
    fn new(n: usize, lr: f32) -> Self {
        Adam {
            m: vec![0.0; n],
            v: vec![0.0; n],
            t: 0,
            lr,
        }
    }

    /// One step over `params` (flattened) with gradient `grad`.
    fn step<'a>(&mut self, params: impl Iterator<Item = &'a mut f32>, grad: impl Iterator<Item = f32>) {
        self.t += 1;
        let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
        let c1 = 1.0 - b1.powi(self.t);
        let c2 = 1.0 - b2.powi(self.t);
        for (i, (p, g)) in params.zip(grad).enumerate() {
            self.m[i] = b1 * self.m[i] + (1.0 - b1) * g;
            self.v[i] = b2 * self.v[i] + (1.0 - b2) * g * g;
            *p -= self.lr * (self.m[i] / c1) / ((self.v[i] / c2).sqrt() + eps);
        }
    }
}

/// Multinomial logistic regression. Returns `(W [k x d], b [k])`.
pub fn fit_softmax(
    x: &Array2<f32>,
    y: &[usize],
    k: usize,
    sample_weight: &[f32],
    l2: f32,
    epochs: usize,
    lr: f32,
) -> (Array2<f32>, Array1<f32>) {
    let (n, d) = x.dim();
    let mut w = Array2::<f32>::zeros((k, d));
    let mut b = Array1::<f32>::zeros(k);
    let total_w: f32 = sample_weight.iter().sum::<f32>().max(1e-9);
    let mut adam_w = Adam::new(k * d, lr);
    let mut adam_b = Adam::new(k, lr);
    for _ in 0..epochs {
        let mut logits = x.dot(&w.t()) + &b; // n x k
        for mut row in logits.rows_mut() {
            let max = row.iter().cloned().fold(f32::MIN, f32::max);
            row.mapv_inplace(|v| (v - max).exp());
            let s = row.sum();
            row.mapv_inplace(|v| v / s);
        }
        for i in 0..n {
            logits[[i, y[i]]] -= 1.0;
            let sw = sample_weight[i] / total_w;
            logits.row_mut(i).mapv_inplace(|v| v * sw);
        }
        let gw = logits.t().dot(x) + &(&w * (2.0 * l2));
        let gb = logits.sum_axis(Axis(0));
        adam_w.step(w.iter_mut(), gw.iter().cloned());
        adam_b.step(b.iter_mut(), gb.iter().cloned());
    }
    (w, b)
}

/// One outcome observation for [`fit_irt`].
#[derive(Debug, Clone, Copy)]
pub struct Observation {
    /// Row of the prompt in the embedding matrix.
    pub item: usize,
    pub model: usize,
    pub task: usize,
    pub correct: bool,
    /// Weight of this observation in the loss (1 for seed data).
    pub weight: f32,
}

pub struct IrtFit {
    pub w: Array1<f32>,
    pub b: f32,
    /// abilities[model][task] in logits (NaN where never observed).
    pub abilities: Vec<Vec<f64>>,
}

/// Hyper-parameters of [`fit_irt`].
#[derive(Debug, Clone, Default)]
pub struct IrtOptions {
    /// Strength of the pull of anchor rows towards difficulty 0.
    pub anchor_weight: f32,
    /// L2 penalty on the difficulty weights (towards `prior` when given, else towards 0).
    pub l2: f32,
    pub epochs: usize,
    pub lr: f32,
    /// Start from, and regularise towards, these head weights (fine-tuning from current heads).
    pub prior: Option<(Array1<f32>, f32)>,
    /// A fixed per-row term added to the difficulty (the per-task centring of the served heads).
    pub item_shift: Option<Array1<f32>>,
    /// Initial abilities `[model][task]` (NaN = start at 0).
    pub init_abilities: Option<Vec<Vec<f64>>>,
}

/// Fit difficulty head and abilities. `anchors` are rows softly pulled to difficulty 0.
pub fn fit_irt(x: &Array2<f32>, obs: &[Observation], n_models: usize, n_tasks: usize, anchors: &[usize], opts: IrtOptions) -> IrtFit {
    let IrtOptions {
        anchor_weight,
        l2,
        epochs,
        lr,
        prior,
        item_shift,
        init_abilities,
    } = opts;
    let (n, d) = x.dim();
    let (w0, b0) = prior.unwrap_or_else(|| (Array1::<f32>::zeros(d), 0.0));
    let mut w = w0.clone();
    let mut b = b0;
    let shift = item_shift.unwrap_or_else(|| Array1::<f32>::zeros(n));
    let mut a = vec![0f32; n_models * n_tasks];
    if let Some(init) = &init_abilities {
        for (m, row) in init.iter().enumerate().take(n_models) {
            for (t, v) in row.iter().enumerate().take(n_tasks) {
                if v.is_finite() {
                    a[m * n_tasks + t] = *v as f32;
                }
            }
        }
    }
    let mut seen = vec![false; n_models * n_tasks];
    for o in obs {
        seen[o.model * n_tasks + o.task] = true;
    }
    let mut adam_w = Adam::new(d, lr);
    let mut adam_b = Adam::new(1, lr);
    let mut adam_a = Adam::new(a.len(), lr);
    let n_obs = obs.iter().map(|o| o.weight).sum::<f32>().max(1e-9);
    let n_anchor = anchors.len().max(1) as f32;
    for _ in 0..epochs {
        let diff = x.dot(&w) + b + &shift; // n
        let mut g_d = Array1::<f32>::zeros(n);
        let mut g_a = vec![0f32; a.len()];
        for o in obs {
            let ai = o.model * n_tasks + o.task;
            let z = a[ai] - diff[o.item];
            let p = 1.0 / (1.0 + (-z).exp());
            let g = o.weight * (p - if o.correct { 1.0 } else { 0.0 }) / n_obs;
            g_a[ai] += g;
            g_d[o.item] -= g;
        }
        for &r in anchors {
            g_d[r] += anchor_weight * 2.0 * diff[r] / n_anchor;
        }
        let gw = x.t().dot(&g_d) + &((&w - &w0) * (2.0 * l2));
        let gb = g_d.sum();
        adam_w.step(w.iter_mut(), gw.iter().cloned());
        adam_b.step(std::iter::once(&mut b), std::iter::once(gb));
        adam_a.step(a.iter_mut(), g_a.into_iter());
    }
    let abilities = (0..n_models)
        .map(|m| {
            (0..n_tasks)
                .map(|t| {
                    if seen[m * n_tasks + t] {
                        a[m * n_tasks + t] as f64
                    } else {
                        f64::NAN
                    }
                })
                .collect()
        })
        .collect();
    IrtFit { w, b, abilities }
}

/// Spherical k-means on L2-normalised rows; returns normalised centroids.
pub fn spherical_kmeans(x: &Array2<f32>, k: usize, iters: usize) -> Array2<f32> {
    let (n, d) = x.dim();
    let k = k.min(n).max(1);
    let mut c = Array2::<f32>::zeros((k, d));
    for j in 0..k {
        c.row_mut(j).assign(&x.row(j * n / k));
    }
    for _ in 0..iters {
        let sims = x.dot(&c.t()); // n x k
        let mut sums = Array2::<f32>::zeros((k, d));
        let mut counts = vec![0usize; k];
        for i in 0..n {
            let row = sims.row(i);
            let (best, _) = row
                .iter()
                .enumerate()
                .fold((0, f32::MIN), |acc, (j, s)| if *s > acc.1 { (j, *s) } else { acc });
            let mut s = sums.row_mut(best);
            s += &x.row(i);
            counts[best] += 1;
        }
        for (j, count) in counts.iter().enumerate() {
            if *count == 0 {
                continue;
            }
            let mut row = sums.row(j).to_owned();
            let norm = row.dot(&row).sqrt().max(1e-12);
            row.mapv_inplace(|v| v / norm);
            c.row_mut(j).assign(&row);
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_regression_separates_separable_classes() {
        let x = Array2::from_shape_vec((4, 2), vec![1.0, 0.0, 0.9, 0.1, 0.0, 1.0, 0.1, 0.9]).unwrap();
        let y = [0, 0, 1, 1];
        let (w, b) = fit_softmax(&x, &y, 2, &[1.0; 4], 1e-4, 300, 0.1);
        let logits = x.dot(&w.t()) + &b;
        for (i, label) in y.iter().enumerate() {
            let pred = if logits[[i, 0]] > logits[[i, 1]] { 0 } else { 1 };
            assert_eq!(pred, *label);
        }
    }

    #[test]
    fn irt_recovers_which_items_are_harder() {
        // Feature 0 = hard marker. Weak model fails hard items, strong model passes all.
        let mut rows = Vec::new();
        let mut obs = Vec::new();
        for i in 0..40 {
            let hard = i % 2 == 0;
            rows.extend_from_slice(&[if hard { 1.0 } else { 0.0 }, 1.0]);
            obs.push(Observation {
                item: i,
                model: 0,
                task: 0,
                correct: !hard,
                weight: 1.0,
            });
            obs.push(Observation {
                item: i,
                model: 1,
                task: 0,
                correct: true,
                weight: 1.0,
            });
        }
        let x = Array2::from_shape_vec((40, 2), rows).unwrap();
        let opts = IrtOptions {
            l2: 1e-4,
            epochs: 800,
            lr: 0.05,
            ..Default::default()
        };
        let fit = fit_irt(&x, &obs, 2, 1, &[], opts);
        let d_hard = fit.w[0] + fit.w[1] + fit.b;
        let d_easy = fit.w[1] + fit.b;
        assert!(d_hard > d_easy + 1.0, "hard {d_hard} easy {d_easy}");
        assert!(fit.abilities[1][0] > fit.abilities[0][0]);
    }
}
