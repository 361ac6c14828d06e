//! Int8 linear layers for the fused encoder: `y = x · W` with `x` quantized per row at run time
//! and `W` quantized per output channel once at load.
//!
//! - Weights: symmetric, per output column `j`: `s_j = max_k |W[k][j]| / 127`,
//!   `Wq[k][j] = round(W[k][j] / s_j)` in `[-127, 127]`, packed for the kernel (below).
//! - Activations: dynamic, per row `i`: `t_i = max_k |x[i][k]| / 127`,
//!   `xq[i][k] = round(x[i][k] / t_i) + 128` as `u8` (the VNNI instruction multiplies unsigned by
//!   signed bytes, so the activations are shifted into `[1, 255]`).
//! - Outliers: transformer activations have a few huge channels (all-MiniLM-L6-v2's layer-norm
//!   outputs reach 28 in channel 99 on `[CLS]`, where the row's median is 0.1; one GELU output per
//!   layer reaches 20), and one such element would set the row's scale and leave the other 383 a
//!   handful of levels. So, per row, up to [`MAX_OUTLIERS`] elements above [`OUTLIER_RMS`] times
//!   the row's RMS are taken out of the int8 product (quantized as 0, the row's scale set by the
//!   rest) and added back exactly: `y[i][j] += x[i][k] · s_j · Wq[k][j]` (LLM.int8()'s
//!   decomposition, done per row so a prompt's result does not depend on its batch-mates).
//! - Then `Σ_k xq·Wq = Σ_k (x/t)·Wq + 128 · Σ_k Wq[k][j]`: the second term, precomputed per
//!   column at load (`comp`), is subtracted from the i32 accumulator, and
//!   `y[i][j] = t_i · s_j · (acc - comp_j)`.
//!
//! The kernel: AVX-512 VNNI (`vpdpbusd`: 64 u8·s8 products summed in groups of 4 into 16 i32 lanes,
//! per instruction), a 6-row × 64-column register tile (24 accumulators), weights packed per
//! 64-column panel as `[k / 4][64 columns][4 k]` so that each step of 4 input features reads 256
//! contiguous bytes. Without VNNI (or off x86_64) a portable kernel over the same layout runs
//! (compiled for baseline and for AVX2, chosen at run time), with identical results (the integer
//! sums are exact). Columns are split over the rayon pool's threads when the product is big
//! enough to pay for the hand-off.

use std::sync::OnceLock;

/// Columns per packed panel (4 AVX-512 vectors of 16 i32).
const NR: usize = 64;
/// Rows per register tile.
const MR: usize = 6;
/// Rows quantized and multiplied per pass over the weight panels (keeps the quantized block in L2).
const MC: usize = 96;
/// An activation is an outlier when its magnitude exceeds this many times its row's RMS.
pub const OUTLIER_RMS: f32 = 6.0;
/// At most this many outliers per row (the largest) are taken out of the int8 product.
pub const MAX_OUTLIERS: usize = 8;
/// Products smaller than this many multiply-adds run on the calling thread alone.
const PARALLEL_MIN_MACS: usize = 1 << 21;

/// A linear layer's weight `(k inputs, n outputs)`, quantized and packed.
pub struct QLinear {
    k: usize,
    n: usize,
    /// `k` rounded up to a multiple of 4.
    kp: usize,
    panels: usize,
    /// `panels` blocks of `kp / 4 · NR · 4` bytes.
    w: Vec<i8>,
    /// `128 · Σ_k Wq[k][j]` per column (padded to `panels · NR`, 0 on padding).
    comp: Vec<i32>,
    /// `s_j` per column (padded, 0 on padding).
    scale: Vec<f32>,
}

impl QLinear {
    /// Quantize `w`, `(k, n)` row-major (a PyTorch `Linear` weight transposed).
    pub fn new(w: &[f32], k: usize, n: usize) -> QLinear {
        assert_eq!(w.len(), k * n, "weight is not {k} x {n}");
        assert!(k > 0 && n > 0, "empty weight");
        let kp = k.div_ceil(4) * 4;
        let panels = n.div_ceil(NR);
        let mut packed = vec![0i8; panels * kp * NR];
        let mut comp = vec![0i32; panels * NR];
        let mut scale = vec![0f32; panels * NR];
        for j in 0..n {
            let amax = (0..k).map(|r| w[r * n + j].abs()).fold(0f32, f32::max);
            let s = if amax > 0.0 && amax.is_finite() { amax / 127.0 } else { 1.0 };
            scale[j] = s;
            let (p, c) = (j / NR, j % NR);
            let mut sum = 0i32;
            for r in 0..k {
                let q = (w[r * n + j] / s).round().clamp(-127.0, 127.0) as i8;
                sum += q as i32;
                packed[p * kp * NR + (r / 4) * NR * 4 + c * 4 + r % 4] = q;
            }
            comp[j] = 128 * sum;
        }
        QLinear {
            k,
            n,
            kp,
            panels,
            w: packed,
            comp,
            scale,
        }
    }

    pub fn inputs(&self) -> usize {
        self.k
    }

    pub fn outputs(&self) -> usize {
        self.n
    }

    /// `x · W` for `x` of `m` rows of `k` floats: `m · n` floats, row-major.
    pub fn forward(&self, x: &[f32], m: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * self.n];
        self.forward_into(x, m, &mut out);
        out
    }

    /// [`QLinear::forward`] into `out` (`m · n` floats, overwritten).
    pub fn forward_into(&self, x: &[f32], m: usize, out: &mut [f32]) {
        assert_eq!(x.len(), m * self.k, "input is not {m} x {}", self.k);
        assert_eq!(out.len(), m * self.n, "output is not {m} x {}", self.n);
        let kern = kernels();
        let threads = if m * self.k * self.n >= PARALLEL_MIN_MACS {
            rayon::current_num_threads().min(self.panels).max(1)
        } else {
            1
        };
        let mut xq = vec![0u8; MC.min(m) * self.kp];
        let mut xs = vec![0f32; MC.min(m)];
        let mut outliers = Vec::new();
        let out_ptr = SharedOut(out.as_mut_ptr());
        for m0 in (0..m).step_by(MC) {
            let rows = MC.min(m - m0);
            outliers.clear();
            (kern.quantize)(
                &x[m0 * self.k..(m0 + rows) * self.k],
                self.k,
                self.kp,
                &mut xq,
                &mut xs,
                &mut outliers,
            );
            let (xq, xs) = (&xq[..rows * self.kp], &xs[..rows]);
            let run = |panels: std::ops::Range<usize>| {
                for p in panels {
                    for r0 in (0..rows).step_by(MR) {
                        let tile = Tile {
                            a: &xq[r0 * self.kp..],
                            ascale: &xs[r0..],
                            rows: MR.min(rows - r0),
                            b: &self.w[p * self.kp * NR..(p + 1) * self.kp * NR],
                            kp: self.kp,
                            comp: &self.comp[p * NR..(p + 1) * NR],
                            wscale: &self.scale[p * NR..(p + 1) * NR],
                            cols: NR.min(self.n - p * NR),
                        };
                        // SAFETY: `out` is `m · n` floats (asserted above); this tile writes rows
                        // `m0 + r0 ..+ tile.rows` (< m) and columns `p · NR ..+ tile.cols` (< n).
                        // Concurrent calls get disjoint panel ranges, so no two threads write the
                        // same element, and `out` outlives the scope below.
                        unsafe {
                            let c = out_ptr.get().add((m0 + r0) * self.n + p * NR);
                            (kern.tile)(&tile, c, self.n);
                        }
                    }
                }
            };
            if threads <= 1 {
                run(0..self.panels);
            } else {
                let per = self.panels.div_ceil(threads);
                rayon::scope(|s| {
                    for t in 1..threads {
                        let range = (t * per).min(self.panels)..((t + 1) * per).min(self.panels);
                        let run = &run;
                        s.spawn(move |_| run(range));
                    }
                    run(0..per.min(self.panels));
                });
            }
            // The outliers, exactly in f32 against the (dequantized) int8 weights.
            for o in &outliers {
                let row = &mut out[(m0 + o.row as usize) * self.n..(m0 + o.row as usize + 1) * self.n];
                let k = o.col as usize;
                for (p, y) in row.chunks_mut(NR).enumerate() {
                    let w = &self.w[p * self.kp * NR + (k / 4) * NR * 4..][..NR * 4];
                    let s = &self.scale[p * NR..(p + 1) * NR];
                    (kern.add_outlier)(y, o.val, s, w, k % 4);
                }
            }
        }
    }
}

/// An activation taken out of the int8 product (row within the block, input column, value).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outlier {
    row: u32,
    col: u32,
    val: f32,
}

/// The output pointer, shared by the threads of one product (each writes its own columns).
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: only used inside `forward_into`, where every thread writes a disjoint set of elements.
unsafe impl Send for SharedOut {}
// SAFETY: as above.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// One register tile's inputs: `rows` (≤ MR) quantized rows against one packed panel.
struct Tile<'a> {
    /// Quantized rows, stride `kp` (at least `rows · kp` bytes from the start).
    a: &'a [u8],
    ascale: &'a [f32],
    rows: usize,
    /// The panel: `kp / 4` groups of `NR · 4` bytes.
    b: &'a [i8],
    kp: usize,
    comp: &'a [i32],
    wscale: &'a [f32],
    /// Valid columns in this panel (≤ NR).
    cols: usize,
}

/// `tile` computes one tile into `c` (row stride `ldc`); `c` must have `tile.rows` rows of
/// `tile.cols` writable floats.
type TileFn = unsafe fn(&Tile, *mut f32, usize);
type QuantizeFn = fn(&[f32], usize, usize, &mut [u8], &mut [f32], &mut Vec<Outlier>);
/// `y[c] += val · s[c] · w[4c + off]` over one panel's columns (an outlier added back).
type AddOutlierFn = fn(&mut [f32], f32, &[f32], &[i8], usize);

struct Kernels {
    name: &'static str,
    tile: TileFn,
    quantize: QuantizeFn,
    add_outlier: AddOutlierFn,
}

fn kernels() -> &'static Kernels {
    static K: OnceLock<Kernels> = OnceLock::new();
    K.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if vnni_available() {
                return Kernels {
                    name: "avx512-vnni",
                    // SAFETY (both): the CPU has the features these functions are compiled for.
                    tile: |t, c, ldc| unsafe { vnni::tile(t, c, ldc) },
                    quantize: |x, k, kp, q, s, o| unsafe { vnni::quantize(x, k, kp, q, s, o) },
                    add_outlier: |y, v, s, w, off| unsafe { vnni::add_outlier(y, v, s, w, off) },
                };
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                return Kernels {
                    name: "avx2",
                    // SAFETY (both): the CPU has AVX2 and FMA.
                    tile: |t, c, ldc| unsafe { avx2::tile(t, c, ldc) },
                    quantize: |x, k, kp, q, s, o| unsafe { avx2::quantize(x, k, kp, q, s, o) },
                    add_outlier: |y, v, s, w, off| unsafe { avx2::add_outlier(y, v, s, w, off) },
                };
            }
        }
        Kernels {
            name: "portable",
            tile: generic::tile,
            quantize: generic::quantize,
            add_outlier: generic::add_outlier,
        }
    })
}

/// Whether this CPU runs the AVX-512 VNNI kernel.
pub fn vnni_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The kernel this process runs: `avx512-vnni`, `avx2` or `portable`.
pub fn kernel_name() -> &'static str {
    kernels().name
}

macro_rules! portable_impl {
    () => {
        /// Quantize `x` (rows of `k`) into `q` (rows of `kp`, padded with the zero point 128) and
        /// the per-row scales `s`; each row's outliers (see the module doc) go to `outliers`
        /// instead, quantized as 0.
        #[inline(always)]
        pub fn quantize_impl(x: &[f32], k: usize, kp: usize, q: &mut [u8], s: &mut [f32], outliers: &mut Vec<super::Outlier>) {
            for (i, row) in x.chunks_exact(k).enumerate() {
                let mut m16 = [0f32; 16];
                let mut q16 = [0f32; 16];
                let mut chunks = row.chunks_exact(16);
                for c in &mut chunks {
                    for l in 0..16 {
                        let a = c[l].abs();
                        m16[l] = if a > m16[l] { a } else { m16[l] };
                        q16[l] += c[l] * c[l];
                    }
                }
                let mut amax = m16.iter().fold(0f32, |a, b| if *b > a { *b } else { a });
                let mut sumsq: f32 = q16.iter().sum();
                for v in chunks.remainder() {
                    let a = v.abs();
                    amax = if a > amax { a } else { amax };
                    sumsq += v * v;
                }
                let threshold = super::OUTLIER_RMS * (sumsq / k as f32).sqrt();
                let first = outliers.len();
                if amax > threshold && threshold > 0.0 {
                    // The largest of row's elements are outliers: the scale comes from the rest.
                    // One pass: the row's largest element at or below the threshold, and which
                    // 16-wide chunks hold an outlier (a bit each for the first 63 chunks; bit 63
                    // stands for all the rest, e.g. chunks 63..96 of MiniLM's 1536-wide rows).
                    let mut r16 = [0f32; 16];
                    let mut hot = 0u64;
                    let mut chunks = row.chunks_exact(16);
                    for (ci, c) in (&mut chunks).enumerate() {
                        let mut over = 0f32;
                        for l in 0..16 {
                            let a = c[l].abs();
                            over = if a > over { a } else { over };
                            let a = if a > threshold { 0.0 } else { a };
                            r16[l] = if a > r16[l] { a } else { r16[l] };
                        }
                        if over > threshold {
                            hot |= 1u64 << ci.min(63);
                        }
                    }
                    amax = r16.iter().fold(0f32, |a, b| if *b > a { *b } else { a });
                    for v in chunks.remainder() {
                        let a = v.abs();
                        if a <= threshold && a > amax {
                            amax = a;
                        }
                    }
                    // The outliers themselves, in column order, from the hot chunks only.
                    let full = k / 16 * 16;
                    let mut scan = |from: usize, to: usize| {
                        for (c, v) in row[from..to].iter().enumerate() {
                            if v.abs() > threshold {
                                outliers.push(super::Outlier {
                                    row: i as u32,
                                    col: (from + c) as u32,
                                    val: *v,
                                });
                            }
                        }
                    };
                    while hot != 0 {
                        let ci = hot.trailing_zeros() as usize;
                        hot &= hot - 1;
                        // Bit 63 stands for chunk 63 and every chunk after it.
                        let end = if ci == 63 { full } else { (ci + 1) * 16 };
                        scan(ci * 16, end);
                    }
                    scan(full, k);
                    let found = &mut outliers[first..];
                    if found.len() > super::MAX_OUTLIERS {
                        // Keep the largest; the next one bounds the rest of the row.
                        found.sort_by(|a, b| b.val.abs().total_cmp(&a.val.abs()).then(a.col.cmp(&b.col)));
                        amax = amax.max(found[super::MAX_OUTLIERS].val.abs());
                        outliers.truncate(first + super::MAX_OUTLIERS);
                    }
                }
                let scale = if amax > 0.0 && amax.is_finite() { amax / 127.0 } else { 1.0 };
                s[i] = scale;
                let out = &mut q[i * kp..(i + 1) * kp];
                convert_row(row, 1.0 / scale, &mut out[..k]);
                out[k..].fill(128);
                for o in &outliers[first..] {
                    out[o.col as usize] = 128;
                }
            }
        }

        /// See [`super::AddOutlierFn`]; one loop per byte offset, so that each vectorizes.
        #[inline(always)]
        pub fn add_outlier_impl(y: &mut [f32], val: f32, s: &[f32], w: &[i8], off: usize) {
            #[inline(always)]
            fn add<const OFF: usize>(y: &mut [f32], val: f32, s: &[f32], w: &[i8]) {
                for ((y, s), w) in y.iter_mut().zip(s).zip(w.chunks_exact(4)) {
                    *y += val * (s * w[OFF] as f32);
                }
            }
            match off {
                0 => add::<0>(y, val, s, w),
                1 => add::<1>(y, val, s, w),
                2 => add::<2>(y, val, s, w),
                _ => add::<3>(y, val, s, w),
            }
        }

        /// `out = clamp(round_ties_even(row · inv), -127, 127) + 128`.
        #[inline(always)]
        #[allow(dead_code)] // the VNNI module has its own
        pub fn convert_row_portable(row: &[f32], inv: f32, out: &mut [u8]) {
            for (o, v) in out.iter_mut().zip(row) {
                let r = (v * inv).round_ties_even().clamp(-127.0, 127.0);
                *o = (r as i32 + 128) as u8;
            }
        }

        /// The tile over the packed layout in plain Rust (exact integer sums, like VNNI).
        ///
        /// # Safety
        /// `c` must point at `t.rows` rows (stride `ldc`) of `t.cols` writable floats that nothing
        /// else accesses during the call.
        #[inline(always)]
        #[allow(dead_code)] // the VNNI module has its own tile
        pub unsafe fn tile_impl(t: &super::Tile, c: *mut f32, ldc: usize) {
            for r in 0..t.rows {
                let a = &t.a[r * t.kp..(r + 1) * t.kp];
                let mut acc = [0i32; super::NR];
                for (a4, b) in a.chunks_exact(4).zip(t.b.chunks_exact(super::NR * 4)) {
                    let (a0, a1, a2, a3) = (a4[0] as i32, a4[1] as i32, a4[2] as i32, a4[3] as i32);
                    for (acc, w) in acc.iter_mut().zip(b.chunks_exact(4)) {
                        *acc += a0 * w[0] as i32 + a1 * w[1] as i32 + a2 * w[2] as i32 + a3 * w[3] as i32;
                    }
                }
                // SAFETY: row r of the tile: `t.cols` floats at c + r·ldc, exclusively ours (caller).
                let row = unsafe { std::slice::from_raw_parts_mut(c.add(r * ldc), t.cols) };
                for (j, o) in row.iter_mut().enumerate() {
                    *o = (acc[j] - t.comp[j]) as f32 * t.wscale[j] * t.ascale[r];
                }
            }
        }
    };
}

mod generic {
    portable_impl!();
    use convert_row_portable as convert_row;

    pub fn quantize(x: &[f32], k: usize, kp: usize, q: &mut [u8], s: &mut [f32], o: &mut Vec<super::Outlier>) {
        quantize_impl(x, k, kp, q, s, o)
    }

    pub fn add_outlier(y: &mut [f32], val: f32, s: &[f32], w: &[i8], off: usize) {
        add_outlier_impl(y, val, s, w, off)
    }

    /// # Safety
    /// `c` must point at `t.rows` rows (stride `ldc`) of `t.cols` writable floats that nothing
    /// else accesses during the call.
    pub unsafe fn tile(t: &super::Tile, c: *mut f32, ldc: usize) {
        // SAFETY: forwarded from the caller.
        unsafe { tile_impl(t, c, ldc) }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    portable_impl!();
    use convert_row_portable as convert_row;

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn quantize(x: &[f32], k: usize, kp: usize, q: &mut [u8], s: &mut [f32], o: &mut Vec<super::Outlier>) {
        quantize_impl(x, k, kp, q, s, o)
    }

    /// # Safety
    /// The CPU must support the features this module is compiled for.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn add_outlier(y: &mut [f32], val: f32, s: &[f32], w: &[i8], off: usize) {
        add_outlier_impl(y, val, s, w, off)
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA; `c` as for [`super::generic::tile`].
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile(t: &super::Tile, c: *mut f32, ldc: usize) {
        // SAFETY: forwarded from the caller.
        unsafe { tile_impl(t, c, ldc) }
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use super::{MR, NR, Tile};
    use std::arch::x86_64::*;

    portable_impl!();

    /// [`convert_row_portable`] with AVX-512 (same results for finite inputs: round to nearest
    /// even, clamp, offset).
    #[inline(always)]
    fn convert_row(row: &[f32], inv: f32, out: &mut [u8]) {
        let n = row.len().min(out.len());
        let full = n / 16 * 16;
        // SAFETY: only called from functions compiled with AVX-512 F/BW (the `quantize` below);
        // every load reads 16 floats at i < full ≤ row.len() - 15 and every store writes 16 bytes
        // at i < full ≤ out.len() - 15, unaligned (`loadu`/`storeu`).
        unsafe {
            let (vinv, lo, hi, off) = (
                _mm512_set1_ps(inv),
                _mm512_set1_epi32(-127),
                _mm512_set1_epi32(127),
                _mm512_set1_epi32(128),
            );
            for i in (0..full).step_by(16) {
                let v = _mm512_mul_ps(_mm512_loadu_ps(row.as_ptr().add(i)), vinv);
                let r = _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
                let r = _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(r, lo), hi), off);
                _mm_storeu_si128(out.as_mut_ptr().add(i) as *mut __m128i, _mm512_cvtepi32_epi8(r));
            }
        }
        convert_row_portable(&row[full..n], inv, &mut out[full..n]);
    }

    /// # Safety
    /// The CPU must support AVX-512 F/BW/VNNI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn add_outlier(y: &mut [f32], val: f32, s: &[f32], w: &[i8], off: usize) {
        add_outlier_impl(y, val, s, w, off)
    }

    /// # Safety
    /// The CPU must support AVX-512 F/BW/VNNI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn quantize(x: &[f32], k: usize, kp: usize, q: &mut [u8], s: &mut [f32], o: &mut Vec<super::Outlier>) {
        quantize_impl(x, k, kp, q, s, o)
    }

    /// # Safety
    /// The CPU must support AVX-512 F/BW/VNNI; `c` must point at `t.rows` rows (stride `ldc`) of
    /// `t.cols` writable floats.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn tile(t: &Tile, c: *mut f32, ldc: usize) {
        // SAFETY: forwarded from the caller (features and the extent of `c`).
        unsafe {
            match t.rows {
                6 => tile_rows::<6>(t, c, ldc),
                5 => tile_rows::<5>(t, c, ldc),
                4 => tile_rows::<4>(t, c, ldc),
                3 => tile_rows::<3>(t, c, ldc),
                2 => tile_rows::<2>(t, c, ldc),
                1 => tile_rows::<1>(t, c, ldc),
                _ => unreachable!("tile of {} rows", t.rows),
            }
        }
    }

    /// # Safety
    /// As [`tile`], with `t.rows == R`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[inline]
    unsafe fn tile_rows<const R: usize>(t: &Tile, c: *mut f32, ldc: usize) {
        const { assert!(R >= 1 && R <= MR) };
        let groups = t.kp / 4;
        // Bounds the raw reads below: R rows of kp bytes, `groups` blocks of NR·4 weight bytes,
        // NR entries of comp/wscale, R row scales.
        assert!(t.a.len() >= (R - 1) * t.kp + t.kp && t.b.len() >= groups * NR * 4);
        assert!(t.comp.len() >= NR && t.wscale.len() >= NR && t.ascale.len() >= R && t.cols <= NR);
        let mut acc = [[_mm512_setzero_si512(); 4]; R];
        let a = t.a.as_ptr();
        let b = t.b.as_ptr();
        for g in 0..groups {
            // SAFETY: g·NR·4 + 256 ≤ b.len() and r·kp + 4g + 4 ≤ a.len() (asserted above); the
            // loads are unaligned loads (`loadu`, `read_unaligned`), valid at any address.
            unsafe {
                let bp = b.add(g * NR * 4);
                let b0 = _mm512_loadu_si512(bp as *const __m512i);
                let b1 = _mm512_loadu_si512(bp.add(64) as *const __m512i);
                let b2 = _mm512_loadu_si512(bp.add(128) as *const __m512i);
                let b3 = _mm512_loadu_si512(bp.add(192) as *const __m512i);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_epi32((a.add(r * t.kp + 4 * g) as *const i32).read_unaligned());
                    acc[0] = _mm512_dpbusd_epi32(acc[0], av, b0);
                    acc[1] = _mm512_dpbusd_epi32(acc[1], av, b1);
                    acc[2] = _mm512_dpbusd_epi32(acc[2], av, b2);
                    acc[3] = _mm512_dpbusd_epi32(acc[3], av, b3);
                }
            }
        }
        for v in 0..4 {
            let valid = t.cols.saturating_sub(16 * v).min(16);
            if valid == 0 {
                break;
            }
            let mask: __mmask16 = if valid == 16 { 0xffff } else { (1u16 << valid) - 1 };
            // SAFETY: comp/wscale hold NR ≥ 16·v + 16 entries (asserted); the store is masked to
            // the `valid` columns of row r, which the caller guarantees are writable (masked-off
            // lanes are not accessed).
            unsafe {
                let comp = _mm512_loadu_si512(t.comp.as_ptr().add(16 * v) as *const __m512i);
                let ws = _mm512_loadu_ps(t.wscale.as_ptr().add(16 * v));
                for (r, acc) in acc.iter().enumerate() {
                    let y = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[v], comp));
                    let y = _mm512_mul_ps(_mm512_mul_ps(y, ws), _mm512_set1_ps(t.ascale[r]));
                    _mm512_mask_storeu_ps(c.add(r * ldc + 16 * v), mask, y);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random floats in [-1, 1) (xorshift).
    fn rand_vec(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// The int8 product computed naively from the same quantization rule, straight from `x` and
    /// `w` (no packing, outliers found with f64 statistics, added back in f64): what every kernel
    /// must reproduce up to f32 rounding.
    fn naive_quantized(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let wq: Vec<(Vec<i32>, f32)> = (0..n)
            .map(|j| {
                let amax = (0..k).map(|r| w[r * n + j].abs()).fold(0f32, f32::max);
                let s = if amax > 0.0 { amax / 127.0 } else { 1.0 };
                ((0..k).map(|r| (w[r * n + j] / s).round() as i32).collect(), s)
            })
            .collect();
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            let row = &x[i * k..(i + 1) * k];
            let rms = (row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / k as f64).sqrt();
            let mut big: Vec<usize> = (0..k).filter(|&c| row[c].abs() as f64 > OUTLIER_RMS as f64 * rms).collect();
            big.sort_by(|a, b| row[*b].abs().total_cmp(&row[*a].abs()));
            big.truncate(MAX_OUTLIERS);
            let amax = (0..k).filter(|c| !big.contains(c)).fold(0f32, |a, c| a.max(row[c].abs()));
            let t = if amax > 0.0 { amax / 127.0 } else { 1.0 };
            let inv = 1.0 / t;
            let xq: Vec<i32> = (0..k)
                .map(|c| {
                    if big.contains(&c) {
                        0
                    } else {
                        (row[c] * inv).round_ties_even() as i32
                    }
                })
                .collect();
            for (j, (col, s)) in wq.iter().enumerate() {
                let acc: i64 = xq.iter().zip(col).map(|(a, b)| (*a as i64) * (*b as i64)).sum();
                let exact: f64 = big.iter().map(|&c| row[c] as f64 * (*s as f64 * col[c] as f64)).sum();
                out[i * n + j] = ((acc as f32 * s * t) as f64 + exact) as f32;
            }
        }
        out
    }

    fn naive_f32(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for r in 0..k {
                let a = x[i * k + r] as f64;
                for j in 0..n {
                    out[i * n + j] += (a * w[r * n + j] as f64) as f32;
                }
            }
        }
        out
    }

    fn check(got: &[f32], want: &[f32], tol: f32, what: &str) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= tol * (1.0 + w.abs()), "{what}: element {i}: got {g}, want {w}");
        }
    }

    /// Shapes around every edge: rows not a multiple of the tile (6) nor of the block (96),
    /// columns not a multiple of 16 or 64, inputs not a multiple of 4.
    const SHAPES: [(usize, usize, usize); 9] = [
        (1, 1, 1),
        (1, 5, 3),
        (7, 13, 17),
        (6, 64, 64),
        (5, 384, 384),
        (13, 100, 129),
        (97, 37, 70),
        (128, 384, 1152),
        (200, 1536, 96),
    ];

    #[test]
    fn int8_product_matches_the_naive_reference() {
        for (case, &(m, k, n)) in SHAPES.iter().enumerate() {
            let mut x = rand_vec(m * k, 1 + case as u64);
            // Outliers: one huge channel on every third row, and a row with more than the cap.
            if k >= 8 {
                for i in (0..m).step_by(3) {
                    x[i * k + (i * 7) % k] = 40.0 + i as f32;
                }
                if m > 1 && k >= 2 * MAX_OUTLIERS {
                    for c in 0..MAX_OUTLIERS + 3 {
                        x[k + c] = -(20.0 + c as f32);
                    }
                }
            }
            let w = rand_vec(k * n, 100 + case as u64);
            let want = naive_quantized(&x, &w, m, k, n);
            let got = QLinear::new(&w, k, n).forward(&x, m);
            check(&got, &want, 1e-5, &format!("{} kernel, {m}x{k}x{n}", kernel_name()));
        }
    }

    #[test]
    fn every_kernel_agrees_with_the_portable_one() {
        let (m, k, n) = (23, 131, 150);
        let x = rand_vec(m * k, 7);
        let w = rand_vec(k * n, 8);
        let q = QLinear::new(&w, k, n);
        let kp = q.kp;
        let mut xq = vec![0u8; m * kp];
        let mut xs = vec![0f32; m];
        let mut x = x;
        x[2 * k + 5] = 50.0; // an outlier
        let mut xo = Vec::new();
        generic::quantize(&x, k, kp, &mut xq, &mut xs, &mut xo);
        assert_eq!(xo.len(), 1);
        let mut variants: Vec<(&str, TileFn, QuantizeFn)> = vec![("portable", generic::tile, generic::quantize)];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                variants.push((
                    "avx2",
                    |t, c, l| unsafe { avx2::tile(t, c, l) },
                    |x, k, kp, q, s, o| unsafe { avx2::quantize(x, k, kp, q, s, o) },
                ));
            }
            if vnni_available() {
                variants.push((
                    "vnni",
                    |t, c, l| unsafe { vnni::tile(t, c, l) },
                    |x, k, kp, q, s, o| unsafe { vnni::quantize(x, k, kp, q, s, o) },
                ));
            }
        }
        let mut reference: Option<Vec<f32>> = None;
        for (name, tile, quantize) in variants {
            let mut q8 = vec![0u8; m * kp];
            let mut s8 = vec![0f32; m];
            let mut o8 = Vec::new();
            quantize(&x, k, kp, &mut q8, &mut s8, &mut o8);
            assert_eq!(o8, xo, "{name}: outliers differ");
            assert_eq!(q8, xq, "{name}: quantized activations differ");
            assert_eq!(s8, xs, "{name}: activation scales differ");
            let mut out = vec![f32::NAN; m * n];
            for p in 0..q.panels {
                for r0 in (0..m).step_by(MR) {
                    let t = Tile {
                        a: &xq[r0 * kp..],
                        ascale: &xs[r0..],
                        rows: MR.min(m - r0),
                        b: &q.w[p * kp * NR..(p + 1) * kp * NR],
                        kp,
                        comp: &q.comp[p * NR..(p + 1) * NR],
                        wscale: &q.scale[p * NR..(p + 1) * NR],
                        cols: NR.min(n - p * NR),
                    };
                    // SAFETY: the tile's rows/columns lie inside `out` (m x n).
                    unsafe { tile(&t, out.as_mut_ptr().add(r0 * n + p * NR), n) };
                }
            }
            assert!(out.iter().all(|v| v.is_finite()), "{name}: element not written");
            match &reference {
                None => reference = Some(out),
                Some(r) => assert_eq!(&out, r, "{name} differs from the portable kernel"),
            }
        }
    }

    #[test]
    fn int8_product_is_close_to_f32() {
        let (m, k, n) = (32, 384, 200);
        let mut x = rand_vec(m * k, 3);
        for i in 0..m {
            x[i * k + 99] = 30.0; // a massive channel, as in MiniLM's layer norms
        }
        let w = rand_vec(k * n, 4);
        let want = naive_f32(&x, &w, m, k, n);
        let got = QLinear::new(&w, k, n).forward(&x, m);
        // Per-output relative error against the row's scale: sqrt(k) · (1/254)² · |x||w| ≈ 1e-2.
        let num: f64 = got.iter().zip(&want).map(|(g, w)| ((g - w) as f64).powi(2)).sum();
        let den: f64 = want.iter().map(|w| (*w as f64).powi(2)).sum();
        assert!((num / den).sqrt() < 0.02, "relative error {}", (num / den).sqrt());
    }

    #[test]
    fn zero_rows_and_columns_are_exact_zeros() {
        let (m, k, n) = (3, 8, 5);
        let mut x = rand_vec(m * k, 5);
        x[k..2 * k].fill(0.0);
        let mut w = rand_vec(k * n, 6);
        for r in 0..k {
            w[r * n + 2] = 0.0;
        }
        let y = QLinear::new(&w, k, n).forward(&x, m);
        assert!(y[n..2 * n].iter().all(|v| *v == 0.0));
        assert!((0..m).all(|i| y[i * n + 2] == 0.0));
    }

    #[test]
    fn parallel_split_equals_single_thread() {
        // Large enough to take the parallel branch when the pool has more than one thread.
        let (m, k, n) = (130, 384, 1152);
        let x = rand_vec(m * k, 9);
        let w = rand_vec(k * n, 10);
        let q = QLinear::new(&w, k, n);
        let par = q.forward(&x, m);
        let single = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| q.forward(&x, m));
        let many = rayon::ThreadPoolBuilder::new()
            .num_threads(5)
            .build()
            .unwrap()
            .install(|| q.forward(&x, m));
        assert_eq!(par, single);
        assert_eq!(many, single);
    }
}
