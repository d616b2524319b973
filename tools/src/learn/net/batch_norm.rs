//! The batch-norm statistics of a [`Net`]: the statistics each forward
//! normalises with, their exact re-estimate after training, and the
//! function-preserving initialisation from task data.

use super::{norm, Bn, Layer, Mode, Net, BN_MOMENTUM};

impl Net {
    /// Starts an exact re-estimate of every batch-norm's statistics: run
    /// [`Mode::Estimate`] forwards, then [`Net::finish_bn_estimate`].
    pub fn start_bn_estimate(&mut self) {
        for bn in self.bns_mut() {
            bn.acc = Some((vec![0.0; bn.mean.len()], vec![0.0; bn.mean.len()], 0));
        }
    }

    /// Running statistics := average of the batch means and unbiased batch
    /// variances seen since [`Net::start_bn_estimate`] (PyTorch's
    /// `momentum=None`).
    pub fn finish_bn_estimate(&mut self) {
        for bn in self.bns_mut() {
            if let Some((m, v, n)) = bn.acc.take() {
                if n > 0 {
                    bn.mean = m.iter().map(|s| (s / n as f64) as f32).collect();
                    bn.var = v.iter().map(|s| (s / n as f64) as f32).collect();
                }
            }
        }
    }

    fn bns_mut(&mut self) -> impl Iterator<Item = &mut Bn> {
        self.nodes.iter_mut().filter_map(|n| match &mut n.layer {
            Layer::Conv { bn: Some(bn), .. } => Some(bn),
            _ => None,
        })
    }

    /// [`BnInit::PreserveFunction`]: given channels-last batches of task data,
    /// sets every batch-norm so that the network computes the base's
    /// function on that data: statistics of each conv's output with every
    /// batch-norm acting as the identity (plus the folded bias, kept in
    /// `beta`), then `gamma = sqrt(var + eps)`, `beta += mean`.
    pub fn init_bn_from_data(&mut self, batches: &[(Vec<f32>, usize)]) {
        // Identity batch-norms: mean 0, var such that gamma/sqrt(var+eps) = 1.
        for bn in self.bns_mut() {
            bn.gamma.v.fill(1.0);
            bn.mean.fill(0.0);
            bn.var.fill(1.0 - bn.eps);
        }
        // Per batch-norm conv: sums over batches of (mean, E[z^2]) weighted
        // by rows, for exact statistics over all the data.
        type Sums = Option<(Vec<f64>, Vec<f64>, usize)>;
        let mut sums: Vec<Sums> = vec![None; self.nodes.len()];
        let threads = self.threads;
        for (x, n) in batches {
            self.forward(x.clone(), *n, Mode::Eval);
            for (i, node) in self.nodes.iter().enumerate() {
                if let Layer::Conv {
                    bn: Some(_),
                    z,
                    spec,
                    ..
                } = &node.layer
                {
                    let c = spec.cout;
                    let rows = z.len() / c;
                    let (m, v) = norm::channel_moments(z, c, threads);
                    let e = sums[i].get_or_insert_with(|| (vec![0.0; c], vec![0.0; c], 0));
                    for ch in 0..c {
                        e.0[ch] += m[ch] * rows as f64;
                        e.1[ch] += (v[ch] + m[ch] * m[ch]) * rows as f64;
                    }
                    e.2 += rows;
                }
            }
        }
        for (node, s) in self.nodes.iter_mut().zip(sums) {
            if let (Layer::Conv { bn: Some(bn), .. }, Some((s1, s2, cnt))) = (&mut node.layer, s) {
                let cnt = cnt.max(1) as f64;
                for c in 0..bn.mean.len() {
                    let m = s1[c] / cnt;
                    let v = (s2[c] / cnt - m * m).max(0.0);
                    bn.mean[c] = m as f32;
                    bn.var[c] = v as f32;
                    bn.gamma.v[c] = (v as f32 + bn.eps).sqrt();
                    bn.beta.v[c] += m as f32;
                }
            }
        }
    }
}

/// The statistics a batch-norm normalises with in the given mode, kept in
/// `bn.bmean`/`bn.binv` for the forward and the backward; updates the
/// running statistics ([`Mode::Train`]) or their accumulator
/// ([`Mode::Estimate`]). `moments`: this batch's per-channel mean and
/// biased variance of `z` (needed in those two modes).
pub(super) fn bn_stats(
    bn: &mut Bn,
    z: &[f32],
    c: usize,
    mode: Mode,
    moments: Option<(Vec<f64>, Vec<f64>)>,
) {
    let (mean, inv): (Vec<f32>, Vec<f32>) = match (mode, moments) {
        (Mode::Eval, _) | (_, None) => (
            bn.mean.clone(),
            bn.var.iter().map(|v| 1.0 / (v + bn.eps).sqrt()).collect(),
        ),
        (Mode::Train | Mode::Estimate, Some((m, v))) => {
            let rows = (z.len() / c) as f64;
            let unbiased = |v: f64| {
                if rows > 1.0 {
                    v * rows / (rows - 1.0)
                } else {
                    v
                }
            };
            if mode == Mode::Train {
                for ch in 0..c {
                    bn.mean[ch] = (1.0 - BN_MOMENTUM) * bn.mean[ch] + BN_MOMENTUM * m[ch] as f32;
                    bn.var[ch] =
                        (1.0 - BN_MOMENTUM) * bn.var[ch] + BN_MOMENTUM * unbiased(v[ch]) as f32;
                }
            } else if let Some((am, av, n)) = &mut bn.acc {
                for ch in 0..c {
                    am[ch] += m[ch];
                    av[ch] += unbiased(v[ch]);
                }
                *n += 1;
            }
            (
                m.iter().map(|&x| x as f32).collect(),
                v.iter()
                    .map(|&x| 1.0 / (x as f32 + bn.eps).sqrt())
                    .collect(),
            )
        }
    };
    bn.bmean = mean;
    bn.binv = inv;
}
