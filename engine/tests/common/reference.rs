//! Float64 CPU references of every engine op, written independently of the engine from
//! the ops' definitions. Inputs are the f32 values the GPU saw, widened exactly.

/// Widens f32 values to f64 (exactly).
pub fn f64s(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Row-major strides.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

/// The coordinates of flat index `i` in `shape`.
pub fn coords(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut c = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        c[d] = i % shape[d];
        i /= shape[d];
    }
    c
}

/// NumPy broadcast of two shapes (panics when they do not broadcast).
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Vec<usize> {
    let rank = a.len().max(b.len());
    let dim = |s: &[usize], d: usize| {
        if d < rank - s.len() {
            1
        } else {
            s[d - (rank - s.len())]
        }
    };
    (0..rank)
        .map(|d| {
            let (x, y) = (dim(a, d), dim(b, d));
            assert!(
                x == y || x == 1 || y == 1,
                "{a:?} and {b:?} do not broadcast"
            );
            x.max(y)
        })
        .collect()
}

/// The flat index into a tensor of `shape` that output coordinate `c` (of the broadcast
/// shape) reads.
pub fn broadcast_source(c: &[usize], shape: &[usize]) -> usize {
    let lead = c.len() - shape.len();
    let st = strides(shape);
    (0..shape.len())
        .map(|d| {
            if shape[d] == 1 {
                0
            } else {
                c[lead + d] * st[d]
            }
        })
        .sum()
}

/// out = f(a, b) with broadcasting.
pub fn binary_ref(
    a: &[f32],
    a_shape: &[usize],
    b: &[f32],
    b_shape: &[usize],
    f: impl Fn(f64, f64) -> f64,
) -> Vec<f64> {
    let out = broadcast_shape(a_shape, b_shape);
    (0..numel(&out))
        .map(|i| {
            let c = coords(i, &out);
            f(
                a[broadcast_source(&c, a_shape)] as f64,
                b[broadcast_source(&c, b_shape)] as f64,
            )
        })
        .collect()
}

/// Sums `g` (of the broadcast shape `out`) back down to `shape`: the adjoint of a broadcast.
pub fn unbroadcast(g: &[f64], out: &[usize], shape: &[usize]) -> Vec<f64> {
    let mut r = vec![0.0; numel(shape)];
    for (i, &v) in g.iter().enumerate() {
        r[broadcast_source(&coords(i, out), shape)] += v;
    }
    r
}

/// Sum over `axis` (the result in row-major order with that axis removed).
pub fn sum_axis(x: &[f64], shape: &[usize], axis: usize) -> Vec<f64> {
    let outer: usize = shape[..axis].iter().product();
    let len = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let mut out = vec![0.0; outer * inner];
    for o in 0..outer {
        for l in 0..len {
            for i in 0..inner {
                out[o * inner + i] += x[(o * len + l) * inner + i];
            }
        }
    }
    out
}

/// The visible column count of score row `r` under a causal mask (q_len, offset).
pub fn visible(r: usize, cols: usize, mask: Option<(usize, usize)>) -> usize {
    match mask {
        None => cols,
        Some((q_len, offset)) => (r % q_len + offset + 1).min(cols),
    }
}

/// softmax(scale x) over rows of `cols`, masked columns 0.
pub fn softmax(x: &[f32], cols: usize, scale: f64, mask: Option<(usize, usize)>) -> Vec<f64> {
    let rows = x.len() / cols;
    let mut y = vec![0.0; x.len()];
    for r in 0..rows {
        let n = visible(r, cols, mask);
        let row = &x[r * cols..r * cols + n];
        let max = row
            .iter()
            .map(|&v| scale * v as f64)
            .fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = row.iter().map(|&v| (scale * v as f64 - max).exp()).sum();
        for c in 0..n {
            y[r * cols + c] = (scale * row[c] as f64 - max).exp() / sum;
        }
    }
    y
}

/// dx of y = softmax(scale x): scale y (dy - sum(dy y)) per row.
pub fn softmax_backward(y: &[f64], dy: &[f64], cols: usize, scale: f64) -> Vec<f64> {
    let mut dx = vec![0.0; y.len()];
    for r in 0..y.len() / cols {
        let s = r * cols..(r + 1) * cols;
        let dot: f64 = y[s.clone()]
            .iter()
            .zip(&dy[s.clone()])
            .map(|(a, b)| a * b)
            .sum();
        for c in s {
            dx[c] = scale * y[c] * (dy[c] - dot);
        }
    }
    dx
}

/// y = w x / sqrt(mean(x^2) + eps) per row of `dim`.
pub fn rms_norm(x: &[f32], w: &[f32], dim: usize, eps: f64) -> Vec<f64> {
    let mut y = vec![0.0; x.len()];
    for r in 0..x.len() / dim {
        let row = &x[r * dim..(r + 1) * dim];
        let ms: f64 = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / dim as f64;
        let rstd = 1.0 / (ms + eps).sqrt();
        for c in 0..dim {
            y[r * dim + c] = w[c] as f64 * row[c] as f64 * rstd;
        }
    }
    y
}

/// (dx, dw) of rms_norm, derived by hand: with r = rstd, dx_j = r (dy_j w_j - x_j r^2
/// mean_i(dy_i w_i x_i)), dw_j = sum over rows of dy_j x_j r.
pub fn rms_norm_backward(
    x: &[f32],
    w: &[f32],
    dy: &[f64],
    dim: usize,
    eps: f64,
) -> (Vec<f64>, Vec<f64>) {
    let mut dx = vec![0.0; x.len()];
    let mut dw = vec![0.0; dim];
    for r in 0..x.len() / dim {
        let row = &x[r * dim..(r + 1) * dim];
        let g = &dy[r * dim..(r + 1) * dim];
        let ms: f64 = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / dim as f64;
        let rstd = 1.0 / (ms + eps).sqrt();
        let mean_gwx: f64 = (0..dim)
            .map(|i| g[i] * w[i] as f64 * row[i] as f64)
            .sum::<f64>()
            / dim as f64;
        for j in 0..dim {
            let xj = row[j] as f64;
            dx[r * dim + j] = rstd * (g[j] * w[j] as f64 - xj * rstd * rstd * mean_gwx);
            dw[j] += g[j] * xj * rstd;
        }
    }
    (dx, dw)
}

/// Rotate-half RoPE of x viewed as [rows, d], row r at position positions[(r / t_div) %
/// positions.len()], angle position * inv_freq[i] (computed here in f64); `sign` -1 rotates
/// back (the adjoint, which is the backward).
pub fn rope(
    x: &[f64],
    d: usize,
    t_div: usize,
    positions: &[u32],
    inv_freq: &[f64],
    sign: f64,
) -> Vec<f64> {
    let half = d / 2;
    let mut y = vec![0.0; x.len()];
    for r in 0..x.len() / d {
        let pos = positions[(r / t_div) % positions.len()] as f64;
        for i in 0..half {
            let (s, c) = (pos * inv_freq[i]).sin_cos();
            let s = sign * s;
            let (x1, x2) = (x[r * d + i], x[r * d + i + half]);
            y[r * d + i] = x1 * c - x2 * s;
            y[r * d + i + half] = x2 * c + x1 * s;
        }
    }
    y
}

/// Shapes of a grouped-query attention: q [b, hq, t, d], k and v [b, hkv, s, d].
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub b: usize,
    pub hq: usize,
    pub hkv: usize,
    pub t: usize,
    pub s: usize,
    pub d: usize,
}

impl AttnShape {
    /// The kv head a query head reads (Hugging Face `repeat_kv`: query heads h with
    /// h / (hq / hkv) equal share one kv head).
    fn kv_head(&self, h: usize) -> usize {
        h / (self.hq / self.hkv)
    }
    fn q_at(&self, b: usize, h: usize, t: usize) -> usize {
        ((b * self.hq + h) * self.t + t) * self.d
    }
    fn kv_at(&self, b: usize, h: usize, s: usize) -> usize {
        ((b * self.hkv + self.kv_head(h)) * self.s + s) * self.d
    }
    /// The attention probabilities of (b, h, t) over keys 0..=t + s - t_len.
    fn probs(&self, q: &[f32], k: &[f32], b: usize, h: usize, t: usize) -> Vec<f64> {
        let scale = 1.0 / (self.d as f64).sqrt();
        let seen = t + self.s - self.t + 1;
        let qa = self.q_at(b, h, t);
        let scores: Vec<f64> = (0..seen)
            .map(|j| {
                let ka = self.kv_at(b, h, j);
                scale
                    * (0..self.d)
                        .map(|c| q[qa + c] as f64 * k[ka + c] as f64)
                        .sum::<f64>()
            })
            .collect();
        let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        e.into_iter().map(|v| v / sum).collect()
    }
}

/// Causal grouped-query attention: out[b, h, t] = sum_{j <= t + S - T} p_j v[b, kv(h), j].
pub fn attention(q: &[f32], k: &[f32], v: &[f32], sh: AttnShape) -> Vec<f64> {
    let mut out = vec![0.0; sh.b * sh.hq * sh.t * sh.d];
    for b in 0..sh.b {
        for h in 0..sh.hq {
            for t in 0..sh.t {
                let p = sh.probs(q, k, b, h, t);
                let oa = sh.q_at(b, h, t);
                for (j, pj) in p.iter().enumerate() {
                    let va = sh.kv_at(b, h, j);
                    for c in 0..sh.d {
                        out[oa + c] += pj * v[va + c] as f64;
                    }
                }
            }
        }
    }
    out
}

/// (dq, dk, dv) of causal attention for the output gradient `dout`.
pub fn attention_backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dout: &[f64],
    sh: AttnShape,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let scale = 1.0 / (sh.d as f64).sqrt();
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
    for b in 0..sh.b {
        for h in 0..sh.hq {
            for t in 0..sh.t {
                let p = sh.probs(q, k, b, h, t);
                let oa = sh.q_at(b, h, t);
                // dp_j = dout . v_j; ds_j = p_j (dp_j - sum_i p_i dp_i)
                let dp: Vec<f64> = (0..p.len())
                    .map(|j| {
                        let va = sh.kv_at(b, h, j);
                        (0..sh.d).map(|c| dout[oa + c] * v[va + c] as f64).sum()
                    })
                    .collect();
                let dot: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
                for j in 0..p.len() {
                    let ka = sh.kv_at(b, h, j);
                    let ds = p[j] * (dp[j] - dot);
                    for c in 0..sh.d {
                        dv[ka + c] += p[j] * dout[oa + c];
                        dq[oa + c] += scale * ds * k[ka + c] as f64;
                        dk[ka + c] += scale * ds * q[oa + c] as f64;
                    }
                }
            }
        }
    }
    (dq, dk, dv)
}

/// Mean cross-entropy over the rows whose label is not -100, and its gradient
/// (softmax - onehot) / count (zero on ignored rows) for an upstream gradient of 1.
pub fn cross_entropy(logits: &[f32], labels: &[i32], vocab: usize) -> (f64, Vec<f64>) {
    let rows = labels.len();
    let count = labels.iter().filter(|&&l| l != -100).count() as f64;
    let mut loss = 0.0;
    let mut grad = vec![0.0; rows * vocab];
    for r in 0..rows {
        if labels[r] == -100 {
            continue;
        }
        let row = &logits[r * vocab..(r + 1) * vocab];
        let max = row
            .iter()
            .map(|&v| v as f64)
            .fold(f64::NEG_INFINITY, f64::max);
        let lse = max
            + row
                .iter()
                .map(|&v| (v as f64 - max).exp())
                .sum::<f64>()
                .ln();
        let label = labels[r] as usize;
        loss += lse - row[label] as f64;
        for c in 0..vocab {
            let onehot = if c == label { 1.0 } else { 0.0 };
            grad[r * vocab + c] = ((row[c] as f64 - lse).exp() - onehot) / count;
        }
    }
    (loss / count, grad)
}

/// z[t, i r + j] = g[t, i] h[t, j].
pub fn gate_expand(g: &[f32], h: &[f32], t: usize, n: usize, r: usize) -> Vec<f64> {
    let mut z = vec![0.0; t * n * r];
    for tt in 0..t {
        for i in 0..n {
            for j in 0..r {
                z[tt * n * r + i * r + j] = g[tt * n + i] as f64 * h[tt * r + j] as f64;
            }
        }
    }
    z
}

/// (dg, dh) of the gate expansion: dg[t, i] = sum_j dz h[t, j], dh[t, j] = sum_i dz g[t, i].
pub fn gate_expand_backward(
    g: &[f32],
    h: &[f32],
    dz: &[f64],
    t: usize,
    n: usize,
    r: usize,
) -> (Vec<f64>, Vec<f64>) {
    let (mut dg, mut dh) = (vec![0.0; t * n], vec![0.0; t * r]);
    for tt in 0..t {
        for i in 0..n {
            for j in 0..r {
                let d = dz[tt * n * r + i * r + j];
                dg[tt * n + i] += d * h[tt * r + j] as f64;
                dh[tt * r + j] += d * g[tt * n + i] as f64;
            }
        }
    }
    (dg, dh)
}

/// x with axes d0 and d1 swapped.
pub fn transpose<T: Copy>(x: &[T], shape: &[usize], d0: usize, d1: usize) -> (Vec<T>, Vec<usize>) {
    let mut out_shape = shape.to_vec();
    out_shape.swap(d0, d1);
    let st = strides(shape);
    let out = (0..x.len())
        .map(|i| {
            let mut c = coords(i, &out_shape);
            c.swap(d0, d1);
            x[c.iter().zip(&st).map(|(a, b)| a * b).sum::<usize>()]
        })
        .collect();
    (out, out_shape)
}

/// Elements start..start + len of `axis`.
pub fn narrow<T: Copy>(x: &[T], shape: &[usize], axis: usize, start: usize, len: usize) -> Vec<T> {
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let mut out = Vec::with_capacity(outer * len * inner);
    for o in 0..outer {
        let base = o * shape[axis] * inner;
        out.extend_from_slice(&x[base + start * inner..base + (start + len) * inner]);
    }
    out
}

/// Parts joined along `axis`.
pub fn concat<T: Copy>(parts: &[(&[T], &[usize])], axis: usize) -> Vec<T> {
    let shape0 = parts[0].1;
    let outer: usize = shape0[..axis].iter().product();
    let mut out = Vec::new();
    for o in 0..outer {
        for (x, shape) in parts {
            let chunk: usize = shape[axis..].iter().product();
            out.extend_from_slice(&x[o * chunk..(o + 1) * chunk]);
        }
    }
    out
}

/// AdamW with PyTorch's semantics, in f64 (hyperparameters are the f32 values the engine
/// was given, widened).
pub struct AdamW {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub step: i32,
    pub m: Vec<f64>,
    pub v: Vec<f64>,
    /// A bound on how far an f32 computation of m may be from `m`: each step rounds
    /// m + (g - m)(1 - b1) three times (<= 3u (|m| + |g|), u = 2^-24), and the earlier
    /// error shrinks by b1.
    pub m_bound: Vec<f64>,
}

impl AdamW {
    pub fn new(lr: f32, beta1: f32, beta2: f32, eps: f32, weight_decay: f32, n: usize) -> Self {
        AdamW {
            lr: lr as f64,
            beta1: beta1 as f64,
            beta2: beta2 as f64,
            eps: eps as f64,
            weight_decay: weight_decay as f64,
            step: 0,
            m: vec![0.0; n],
            v: vec![0.0; n],
            m_bound: vec![0.0; n],
        }
    }

    /// One update of `p` by gradient `g` at learning rate `lr`:
    /// p *= 1 - lr wd; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
    /// p -= lr / (1 - b1^t) m / (sqrt(v) / sqrt(1 - b2^t) + eps).
    pub fn step(&mut self, p: &mut [f64], g: &[f32], lr: f64) {
        self.step += 1;
        let bc1 = 1.0 - self.beta1.powi(self.step);
        let bc2 = 1.0 - self.beta2.powi(self.step);
        for i in 0..p.len() {
            let g = g[i] as f64;
            p[i] *= 1.0 - lr * self.weight_decay;
            let u = 1.0 / (1u64 << 24) as f64;
            self.m_bound[i] = self.beta1 * self.m_bound[i] + 3.0 * u * (self.m[i].abs() + g.abs());
            self.m[i] = self.beta1 * self.m[i] + (1.0 - self.beta1) * g;
            self.v[i] = self.beta2 * self.v[i] + (1.0 - self.beta2) * g * g;
            p[i] -= lr / bc1 * self.m[i] / (self.v[i].sqrt() / bc2.sqrt() + self.eps);
        }
    }
}
