//! Evaluation: router metrics on real outcomes, calibration, and task-type accuracy.
//!
//! Router metrics follow `../shared/data/README.md` (the RouteLLM definitions): sweep the router's
//! threshold; at each strong-call share record quality; PGR = (q − q_weak)/(q_strong − q_weak);
//! APGR = mean PGR at strong-call shares 10%, 20%, …, 100%; CPT(x%) = the smallest strong-call
//! share with PGR ≥ x%. A threshold sweep over P_weak(success) is the same as sending the prompts
//! with the lowest predicted P_weak to the strong model first, which is how the curve is computed
//! (ties broken by input order).

use crate::task::Task;
use serde::Serialize;

/// One point of the cost-quality curve.
#[derive(Debug, Clone, Serialize)]
pub struct CurvePoint {
    pub strong_share: f64,
    pub quality: f64,
    pub pgr: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RouterMetrics {
    pub n: usize,
    pub weak_accuracy: f64,
    pub strong_accuracy: f64,
    pub apgr: f64,
    pub cpt50: f64,
    pub cpt80: f64,
    /// Expected calibration error of P_weak(success) against the weak model's outcomes (10 bins).
    pub ece: f64,
    pub curve: Vec<CurvePoint>,
}

/// Quality when the `k` prompts with the lowest `p_weak` go to the strong model.
fn curve(p_weak: &[f64], weak: &[bool], strong: &[bool]) -> Vec<CurvePoint> {
    let n = p_weak.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|a, b| p_weak[*a].total_cmp(&p_weak[*b]).then(a.cmp(b)));
    let qw = weak.iter().filter(|b| **b).count() as f64 / n as f64;
    let qs = strong.iter().filter(|b| **b).count() as f64 / n as f64;
    let gap = qs - qw;
    let mut correct = weak.iter().filter(|b| **b).count() as f64;
    let mut points = Vec::with_capacity(n + 1);
    let pgr = |q: f64| if gap.abs() < 1e-12 { 1.0 } else { (q - qw) / gap };
    points.push(CurvePoint {
        strong_share: 0.0,
        quality: qw,
        pgr: pgr(qw),
    });
    for (k, &i) in order.iter().enumerate() {
        correct += strong[i] as u8 as f64 - weak[i] as u8 as f64;
        let q = correct / n as f64;
        points.push(CurvePoint {
            strong_share: (k + 1) as f64 / n as f64,
            quality: q,
            pgr: pgr(q),
        });
    }
    points
}

fn at_share(points: &[CurvePoint], share: f64) -> &CurvePoint {
    let n = points.len() - 1;
    let k = ((share * n as f64).round() as usize).min(n);
    &points[k]
}

/// Router metrics for a predictor of P(weak model succeeds).
pub fn router_metrics(p_weak: &[f64], weak: &[bool], strong: &[bool]) -> RouterMetrics {
    let n = p_weak.len();
    let points = curve(p_weak, weak, strong);
    let apgr = (1..=10).map(|i| at_share(&points, i as f64 / 10.0).pgr).sum::<f64>() / 10.0;
    let cpt = |x: f64| points.iter().find(|p| p.pgr >= x).map(|p| p.strong_share).unwrap_or(1.0);
    // Keep ~101 points for reports.
    let step = (n / 100).max(1);
    let sampled: Vec<CurvePoint> = points
        .iter()
        .enumerate()
        .filter(|(i, _)| i % step == 0 || *i == n)
        .map(|(_, p)| p.clone())
        .collect();
    RouterMetrics {
        n,
        weak_accuracy: points[0].quality,
        strong_accuracy: points[n].quality,
        apgr,
        cpt50: cpt(0.5),
        cpt80: cpt(0.8),
        ece: ece(p_weak, weak, 10),
        curve: sampled,
    }
}

/// Expected calibration error with equal-width bins.
pub fn ece(p: &[f64], y: &[bool], bins: usize) -> f64 {
    let mut sum_p = vec![0.0; bins];
    let mut sum_y = vec![0.0; bins];
    let mut count = vec![0usize; bins];
    for (pi, yi) in p.iter().zip(y) {
        let b = ((pi * bins as f64) as usize).min(bins - 1);
        sum_p[b] += pi;
        sum_y[b] += *yi as u8 as f64;
        count[b] += 1;
    }
    let n = p.len().max(1) as f64;
    (0..bins).filter(|b| count[*b] > 0).map(|b| (sum_p[b] - sum_y[b]).abs() / n).sum()
}

/// Task-type accuracy and confusion matrix (rows = truth, columns = prediction, in Task::ALL order).
#[derive(Debug, Clone, Serialize)]
pub struct TaskMetrics {
    pub n: usize,
    pub accuracy: f64,
    pub per_task_recall: Vec<(String, f64)>,
    pub confusion: Vec<Vec<usize>>,
}

pub fn task_metrics(truth: &[Task], predicted: &[Task]) -> TaskMetrics {
    let k = Task::COUNT;
    let mut confusion = vec![vec![0usize; k]; k];
    for (t, p) in truth.iter().zip(predicted) {
        confusion[t.index()][p.index()] += 1;
    }
    let correct: usize = (0..k).map(|i| confusion[i][i]).sum();
    let per_task_recall = Task::ALL
        .iter()
        .map(|t| {
            let row: usize = confusion[t.index()].iter().sum();
            (
                t.to_string(),
                if row == 0 {
                    f64::NAN
                } else {
                    confusion[t.index()][t.index()] as f64 / row as f64
                },
            )
        })
        .collect();
    TaskMetrics {
        n: truth.len(),
        accuracy: correct as f64 / truth.len().max(1) as f64,
        per_task_recall,
        confusion,
    }
}

pub fn format_confusion(m: &TaskMetrics) -> String {
    let short = |t: &Task| t.as_str().chars().take(5).collect::<String>();
    let mut s = format!("{:>16}", "truth \\ pred");
    for t in Task::ALL {
        s.push_str(&format!(" {:>5}", short(t)));
    }
    s.push_str("  recall\n");
    for (i, t) in Task::ALL.iter().enumerate() {
        s.push_str(&format!("{:>16}", t.as_str()));
        for j in 0..Task::COUNT {
            s.push_str(&format!(" {:>5}", m.confusion[i][j]));
        }
        s.push_str(&format!("  {:.2}\n", m.per_task_recall[i].1));
    }
    s
}

/// The cost-quality curves as an SVG image (quality vs share of calls sent to the strong model).
pub fn curves_svg(title: &str, series: &[(&str, &RouterMetrics)]) -> String {
    let (w, h, m) = (720.0, 480.0, 60.0);
    let colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
    let mut s = format!(r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#);
    s.push_str(&format!(
        r#"<rect width="{w}" height="{h}" fill="white"/><text x="{}" y="24" text-anchor="middle" font-size="15">{title}</text>"#,
        w / 2.0
    ));
    let x = |v: f64| m + v * (w - 2.0 * m);
    let y = |v: f64| h - m - v * (h - 2.0 * m);
    s.push_str(&format!(
        r#"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#,
        x(0.0),
        y(0.0),
        x(1.0),
        y(0.0)
    ));
    s.push_str(&format!(
        r#"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#,
        x(0.0),
        y(0.0),
        x(0.0),
        y(1.0)
    ));
    for i in 0..=10 {
        let v = i as f64 / 10.0;
        s.push_str(&format!(
            r#"<text x="{}" y="{}" text-anchor="middle">{:.0}%</text>"#,
            x(v),
            y(0.0) + 18.0,
            v * 100.0
        ));
        s.push_str(&format!(
            r#"<text x="{}" y="{}" text-anchor="end">{:.1}</text>"#,
            x(0.0) - 6.0,
            y(v) + 4.0,
            v
        ));
        s.push_str(&format!(
            r##"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#eee"/>"##,
            x(0.0),
            y(v),
            x(1.0),
            y(v)
        ));
    }
    s.push_str(&format!(
        r#"<text x="{}" y="{}" text-anchor="middle">share of calls to the strong model (cost)</text>"#,
        w / 2.0,
        h - 18.0
    ));
    s.push_str(&format!(
        r#"<text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">PGR (quality gap recovered)</text>"#,
        h / 2.0,
        h / 2.0
    ));
    for (i, (name, metrics)) in series.iter().enumerate() {
        let c = colors[i % colors.len()];
        let pts: Vec<String> = metrics
            .curve
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.strong_share), y(p.pgr.clamp(-0.2, 1.2))))
            .collect();
        s.push_str(&format!(
            r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#,
            pts.join(" ")
        ));
        s.push_str(&format!(
            r#"<text x="{}" y="{}" fill="{c}">{name}: APGR {:.3}</text>"#,
            x(0.45),
            y(0.05) - 16.0 * (series.len() - i) as f64,
            metrics.apgr
        ));
    }
    s.push_str(&format!(
        r##"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#999" stroke-dasharray="4"/>"##,
        x(0.0),
        y(0.0),
        x(1.0),
        y(1.0)
    ));
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_like_router_scores_about_055_and_oracle_scores_high() {
        // weak right on even items, strong right on all.
        let n = 1000;
        let weak: Vec<bool> = (0..n).map(|i| i % 2 == 0).collect();
        let strong = vec![true; n];
        // A score unrelated to the outcomes: xorshift noise.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let uninformative: Vec<f64> = (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % 10_000) as f64 / 10_000.0
            })
            .collect();
        let m = router_metrics(&uninformative, &weak, &strong);
        assert!((m.apgr - 0.55).abs() < 0.05, "{}", m.apgr);
        let oracle: Vec<f64> = weak.iter().map(|w| if *w { 1.0 } else { 0.0 }).collect();
        let m = router_metrics(&oracle, &weak, &strong);
        // PGR = 2s up to s = 50% (all weak failures routed), then 1: mean over 10%..100% = 0.8.
        assert!((m.apgr - 0.8).abs() < 1e-9, "{}", m.apgr);
        assert!((m.cpt50 - 0.25).abs() < 0.01);
        assert!((m.cpt80 - 0.4).abs() < 0.01);
        assert!(m.ece < 1e-9);
    }

    #[test]
    fn confusion_matrix_counts() {
        let m = task_metrics(&[Task::Code, Task::Code, Task::Math], &[Task::Code, Task::Math, Task::Math]);
        assert!((m.accuracy - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(m.confusion[Task::Code.index()][Task::Math.index()], 1);
    }
}
