//! Inception-v3 (Szegedy et al. 2015) as in TF-slim / research/inception, with
//! torchvision's module names so torchvision and timm weight files load by
//! name. Every block is a table of branches; each branch a list of ops.
//!
//! Differences from torchvision, on purpose: dropout 0.2 (the original's keep
//! 0.8), average pools exclude padding (TF SAME; configurable), weights initialised from a
//! truncated normal with std 0.1 (logits 0.01, aux logits 0.001), batch-norm
//! statistics kept with a zero-debiased moving average (see [`Mode`]).

use tch::nn::{Init, Path};
use tch::{Kind, Tensor};

use crate::config::ModelConfig;
use crate::precision::Precision;

/// Batch-norm epsilon of the original (and torchvision).
pub const BN_EPSILON: f64 = 0.001;

/// How a forward pass treats batch norm and dropout.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Batch statistics; running statistics move by `bn_momentum`
    /// (0.0 leaves them alone, as in all but the last tower).
    Train { bn_momentum: f64 },
    /// Running statistics, no dropout.
    Eval,
}

/// TF's moving average with decay `d` and zero-debiasing, after `t` updates,
/// equals a plain moving average whose momentum is `(1 - d) / (1 - d^t)`:
/// 1 at the first update, tending to `1 - d`. `t` counts from 1.
pub fn debiased_momentum(decay: f64, t: u64) -> f64 {
    let t = t.max(1).min(i32::MAX as u64) as i32;
    (1.0 - decay) / (1.0 - decay.powi(t))
}

fn truncated_normal(p: &Path, name: &str, dims: &[i64], std: f64) -> Tensor {
    let w = p.var(name, dims, Init::Randn { mean: 0.0, stdev: std });
    tch::no_grad(|| {
        for _ in 0..10 {
            let outside = w.abs().gt(2.0 * std);
            let fresh = w.randn_like() * std;
            let mut w2 = w.shallow_clone();
            w2.copy_(&fresh.where_self(&outside, &w));
        }
        let mut w2 = w.shallow_clone();
        let _ = w2.clamp_(-2.0 * std, 2.0 * std);
    });
    w
}

/// Conv (no bias) -> BatchNorm -> ReLU: torchvision's `BasicConv2d`.
#[derive(Debug)]
pub struct BasicConv {
    weight: Tensor,
    bn_weight: Tensor,
    bn_bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    stride: i64,
    padding: [i64; 2],
    /// Batch norm folded into the convolution, for [`Mode::Eval`] only.
    folded: Option<FoldedConv>,
}

/// A convolution with its batch norm's running statistics folded in:
/// `relu(conv(x, w * s) + (beta - mean * s))` with `s = gamma / sqrt(var + eps)`,
/// which is what eval-mode batch norm after a bias-free convolution computes,
/// in one kernel instead of two passes over the activations.
#[derive(Debug)]
struct FoldedConv {
    weight: Tensor,
    bias: Tensor,
}

impl BasicConv {
    fn new(p: Path, cin: i64, cout: i64, kernel: [i64; 2], stride: i64, padding: [i64; 2], std: f64) -> Self {
        let c = &p / "conv";
        let bn = &p / "bn";
        Self {
            weight: truncated_normal(&c, "weight", &[cout, cin, kernel[0], kernel[1]], std),
            bn_weight: bn.var("weight", &[cout], Init::Const(1.0)),
            bn_bias: bn.var("bias", &[cout], Init::Const(0.0)),
            running_mean: bn.zeros_no_train("running_mean", &[cout]),
            running_var: bn.ones_no_train("running_var", &[cout]),
            stride,
            padding,
            folded: None,
        }
    }

    /// Computes [`FoldedConv`] from the current weights and statistics. (The
    /// input's channels_last layout carries through the convolution: giving
    /// the folded weight channels_last strides too, or bf16 for a bf16
    /// pass, measured no faster on CPU.)
    fn fold(&mut self) {
        let folded = tch::no_grad(|| {
            let scale = &self.bn_weight / (&self.running_var + BN_EPSILON).sqrt();
            let weight = &self.weight * scale.view([-1, 1, 1, 1]);
            let bias = &self.bn_bias - &self.running_mean * &scale;
            FoldedConv { weight, bias }
        });
        self.folded = Some(folded);
    }

    pub fn forward(&self, x: &Tensor, mode: Mode) -> Tensor {
        if let (Some(f), Mode::Eval) = (&self.folded, mode) {
            let mut z = x.conv2d(&f.weight, Some(&f.bias), [self.stride, self.stride], self.padding, [1, 1], 1);
            let _ = z.relu_();
            return z;
        }
        let y = x.conv2d(&self.weight, None::<Tensor>, [self.stride, self.stride], self.padding, [1, 1], 1);
        let (training, momentum) = match mode {
            Mode::Train { bn_momentum } => (true, bn_momentum),
            Mode::Eval => (false, 0.0),
        };
        let mut z = y.batch_norm(
            Some(&self.bn_weight),
            Some(&self.bn_bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            training,
            momentum,
            BN_EPSILON,
            true,
        );
        // In place, as torchvision does: batch norm's backward needs its
        // input, not its output, and this saves a pass and an allocation.
        let _ = z.relu_();
        z
    }
}

/// One step of a branch.
#[derive(Debug)]
enum Op {
    Conv(BasicConv),
    /// 3x3 max pool, stride 2, no padding.
    MaxPool,
    /// 3x3 average pool, stride 1, SAME padding (counted or not).
    AvgPool {
        count_include_pad: bool,
    },
    /// Two convs on the same input, concatenated (Mixed_7b/7c's 1x3 and 3x1).
    Split(BasicConv, BasicConv),
}

impl Op {
    fn fold(&mut self) {
        match self {
            Op::Conv(c) => c.fold(),
            Op::Split(a, b) => {
                a.fold();
                b.fold();
            }
            Op::MaxPool | Op::AvgPool { .. } => {}
        }
    }

    fn forward(&self, x: &Tensor, mode: Mode) -> Tensor {
        match self {
            Op::Conv(c) => c.forward(x, mode),
            Op::MaxPool => x.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false),
            Op::AvgPool { count_include_pad } => {
                x.avg_pool2d([3, 3], [1, 1], [1, 1], false, *count_include_pad, None::<i64>)
            }
            Op::Split(a, b) => Tensor::cat(&[a.forward(x, mode), b.forward(x, mode)], 1),
        }
    }
}

/// A Mixed block: branches applied to the same input, concatenated.
#[derive(Debug)]
struct Block {
    branches: Vec<Vec<Op>>,
}

impl Block {
    fn forward(&self, x: &Tensor, mode: Mode) -> Tensor {
        let outs: Vec<Tensor> =
            self.branches.iter().map(|ops| ops.iter().fold(x.shallow_clone(), |h, op| op.forward(&h, mode))).collect();
        Tensor::cat(&outs, 1)
    }
}

/// Builds blocks with channel counts scaled by the depth multiplier.
struct Builder<'a> {
    cfg: &'a ModelConfig,
}

const CONV_STD: f64 = 0.1;

impl Builder<'_> {
    /// `name` under `p`: a conv from `cin` to `depth(cout)` channels.
    // The arguments are the layer's shape, named as in the original's slim calls.
    #[allow(clippy::too_many_arguments)]
    fn conv(
        &self,
        p: &Path,
        name: &str,
        cin: i64,
        cout: i64,
        k: [i64; 2],
        stride: i64,
        pad: [i64; 2],
    ) -> (BasicConv, i64) {
        let out = self.cfg.depth(cout);
        (BasicConv::new(p / name, cin, out, k, stride, pad, CONV_STD), out)
    }

    fn avg_pool(&self) -> Op {
        Op::AvgPool { count_include_pad: self.cfg.avg_pool_count_include_pad }
    }

    fn inception_a(&self, p: &Path, cin: i64, pool_features: i64) -> (Block, i64) {
        let (b1, c1) = self.conv(p, "branch1x1", cin, 64, [1, 1], 1, [0, 0]);
        let (b5a, c) = self.conv(p, "branch5x5_1", cin, 48, [1, 1], 1, [0, 0]);
        let (b5b, c5) = self.conv(p, "branch5x5_2", c, 64, [5, 5], 1, [2, 2]);
        let (d1, c) = self.conv(p, "branch3x3dbl_1", cin, 64, [1, 1], 1, [0, 0]);
        let (d2, c) = self.conv(p, "branch3x3dbl_2", c, 96, [3, 3], 1, [1, 1]);
        let (d3, cd) = self.conv(p, "branch3x3dbl_3", c, 96, [3, 3], 1, [1, 1]);
        let (bp, cp) = self.conv(p, "branch_pool", cin, pool_features, [1, 1], 1, [0, 0]);
        let branches = vec![
            vec![Op::Conv(b1)],
            vec![Op::Conv(b5a), Op::Conv(b5b)],
            vec![Op::Conv(d1), Op::Conv(d2), Op::Conv(d3)],
            vec![self.avg_pool(), Op::Conv(bp)],
        ];
        (Block { branches }, c1 + c5 + cd + cp)
    }

    fn inception_b(&self, p: &Path, cin: i64) -> (Block, i64) {
        let (b3, c3) = self.conv(p, "branch3x3", cin, 384, [3, 3], 2, [0, 0]);
        let (d1, c) = self.conv(p, "branch3x3dbl_1", cin, 64, [1, 1], 1, [0, 0]);
        let (d2, c) = self.conv(p, "branch3x3dbl_2", c, 96, [3, 3], 1, [1, 1]);
        let (d3, cd) = self.conv(p, "branch3x3dbl_3", c, 96, [3, 3], 2, [0, 0]);
        let branches = vec![vec![Op::Conv(b3)], vec![Op::Conv(d1), Op::Conv(d2), Op::Conv(d3)], vec![Op::MaxPool]];
        (Block { branches }, c3 + cd + cin)
    }

    fn inception_c(&self, p: &Path, cin: i64, c7: i64) -> (Block, i64) {
        let (b1, c1) = self.conv(p, "branch1x1", cin, 192, [1, 1], 1, [0, 0]);
        let (s1, c) = self.conv(p, "branch7x7_1", cin, c7, [1, 1], 1, [0, 0]);
        let (s2, c) = self.conv(p, "branch7x7_2", c, c7, [1, 7], 1, [0, 3]);
        let (s3, cs) = self.conv(p, "branch7x7_3", c, 192, [7, 1], 1, [3, 0]);
        let (d1, c) = self.conv(p, "branch7x7dbl_1", cin, c7, [1, 1], 1, [0, 0]);
        let (d2, c) = self.conv(p, "branch7x7dbl_2", c, c7, [7, 1], 1, [3, 0]);
        let (d3, c) = self.conv(p, "branch7x7dbl_3", c, c7, [1, 7], 1, [0, 3]);
        let (d4, c) = self.conv(p, "branch7x7dbl_4", c, c7, [7, 1], 1, [3, 0]);
        let (d5, cd) = self.conv(p, "branch7x7dbl_5", c, 192, [1, 7], 1, [0, 3]);
        let (bp, cp) = self.conv(p, "branch_pool", cin, 192, [1, 1], 1, [0, 0]);
        let branches = vec![
            vec![Op::Conv(b1)],
            vec![Op::Conv(s1), Op::Conv(s2), Op::Conv(s3)],
            vec![Op::Conv(d1), Op::Conv(d2), Op::Conv(d3), Op::Conv(d4), Op::Conv(d5)],
            vec![self.avg_pool(), Op::Conv(bp)],
        ];
        (Block { branches }, c1 + cs + cd + cp)
    }

    fn inception_d(&self, p: &Path, cin: i64) -> (Block, i64) {
        let (a1, c) = self.conv(p, "branch3x3_1", cin, 192, [1, 1], 1, [0, 0]);
        let (a2, ca) = self.conv(p, "branch3x3_2", c, 320, [3, 3], 2, [0, 0]);
        let (b1, c) = self.conv(p, "branch7x7x3_1", cin, 192, [1, 1], 1, [0, 0]);
        let (b2, c) = self.conv(p, "branch7x7x3_2", c, 192, [1, 7], 1, [0, 3]);
        let (b3, c) = self.conv(p, "branch7x7x3_3", c, 192, [7, 1], 1, [3, 0]);
        let (b4, cb) = self.conv(p, "branch7x7x3_4", c, 192, [3, 3], 2, [0, 0]);
        let branches = vec![
            vec![Op::Conv(a1), Op::Conv(a2)],
            vec![Op::Conv(b1), Op::Conv(b2), Op::Conv(b3), Op::Conv(b4)],
            vec![Op::MaxPool],
        ];
        (Block { branches }, ca + cb + cin)
    }

    fn inception_e(&self, p: &Path, cin: i64) -> (Block, i64) {
        let (b1, c1) = self.conv(p, "branch1x1", cin, 320, [1, 1], 1, [0, 0]);
        let (t1, c) = self.conv(p, "branch3x3_1", cin, 384, [1, 1], 1, [0, 0]);
        let (t2a, ca) = self.conv(p, "branch3x3_2a", c, 384, [1, 3], 1, [0, 1]);
        let (t2b, cb) = self.conv(p, "branch3x3_2b", c, 384, [3, 1], 1, [1, 0]);
        let (d1, c) = self.conv(p, "branch3x3dbl_1", cin, 448, [1, 1], 1, [0, 0]);
        let (d2, c) = self.conv(p, "branch3x3dbl_2", c, 384, [3, 3], 1, [1, 1]);
        let (d3a, da) = self.conv(p, "branch3x3dbl_3a", c, 384, [1, 3], 1, [0, 1]);
        let (d3b, db) = self.conv(p, "branch3x3dbl_3b", c, 384, [3, 1], 1, [1, 0]);
        let (bp, cp) = self.conv(p, "branch_pool", cin, 192, [1, 1], 1, [0, 0]);
        let branches = vec![
            vec![Op::Conv(b1)],
            vec![Op::Conv(t1), Op::Split(t2a, t2b)],
            vec![Op::Conv(d1), Op::Conv(d2), Op::Split(d3a, d3b)],
            vec![self.avg_pool(), Op::Conv(bp)],
        ];
        (Block { branches }, c1 + ca + cb + da + db + cp)
    }
}

/// The auxiliary classifier on Mixed_6e (torchvision's `AuxLogits`).
#[derive(Debug)]
struct AuxHead {
    pool_kernel: i64,
    conv0: BasicConv,
    conv1: BasicConv,
    fc_weight: Tensor,
    fc_bias: Tensor,
}

/// A fully connected layer's weight `[out, in]` and bias.
fn linear(p: &Path, cin: i64, cout: i64, std: f64) -> (Tensor, Tensor) {
    (truncated_normal(p, "weight", &[cout, cin], std), p.var("bias", &[cout], Init::Const(0.0)))
}

#[derive(Debug)]
pub struct InceptionV3 {
    stem: Vec<Op>,
    mixed_5_6: Vec<Block>,
    aux: Option<AuxHead>,
    mixed_7: Vec<Block>,
    dropout: f64,
    fc_weight: Tensor,
    fc_bias: Tensor,
    config: ModelConfig,
}

impl InceptionV3 {
    /// Creates the variables under `p` (use the var store's root for
    /// torchvision-compatible names).
    pub fn new(p: &Path, cfg: &ModelConfig) -> Self {
        let b = Builder { cfg };
        let (c1a, c) = b.conv(p, "Conv2d_1a_3x3", 3, 32, [3, 3], 2, [0, 0]);
        let (c2a, c) = b.conv(p, "Conv2d_2a_3x3", c, 32, [3, 3], 1, [0, 0]);
        let (c2b, c) = b.conv(p, "Conv2d_2b_3x3", c, 64, [3, 3], 1, [1, 1]);
        let (c3b, c) = b.conv(p, "Conv2d_3b_1x1", c, 80, [1, 1], 1, [0, 0]);
        let (c4a, c) = b.conv(p, "Conv2d_4a_3x3", c, 192, [3, 3], 1, [0, 0]);
        let stem =
            vec![Op::Conv(c1a), Op::Conv(c2a), Op::Conv(c2b), Op::MaxPool, Op::Conv(c3b), Op::Conv(c4a), Op::MaxPool];
        let (m5b, c) = b.inception_a(&(p / "Mixed_5b"), c, 32);
        let (m5c, c) = b.inception_a(&(p / "Mixed_5c"), c, 64);
        let (m5d, c) = b.inception_a(&(p / "Mixed_5d"), c, 64);
        let (m6a, c) = b.inception_b(&(p / "Mixed_6a"), c);
        let (m6b, c) = b.inception_c(&(p / "Mixed_6b"), c, 128);
        let (m6c, c) = b.inception_c(&(p / "Mixed_6c"), c, 160);
        let (m6d, c) = b.inception_c(&(p / "Mixed_6d"), c, 160);
        let (m6e, c6e) = b.inception_c(&(p / "Mixed_6e"), c, 192);
        let aux = cfg.aux_logits.then(|| {
            let a = p / "AuxLogits";
            let k = cfg.aux_conv_kernel();
            let (conv0, c0) = b.conv(&a, "conv0", c6e, 128, [1, 1], 1, [0, 0]);
            let c1 = cfg.depth(768);
            let conv1 = BasicConv::new(&a / "conv1", c0, c1, [k, k], 1, [0, 0], 0.01);
            let (fc_weight, fc_bias) = linear(&(&a / "fc"), c1, cfg.num_classes, 0.001);
            AuxHead { pool_kernel: cfg.aux_pool_kernel(), conv0, conv1, fc_weight, fc_bias }
        });
        let (m7a, c) = b.inception_d(&(p / "Mixed_7a"), c6e);
        let (m7b, c) = b.inception_e(&(p / "Mixed_7b"), c);
        let (m7c, c) = b.inception_e(&(p / "Mixed_7c"), c);
        let (fc_weight, fc_bias) = linear(&(p / "fc"), c, cfg.num_classes, 0.01);
        Self {
            stem,
            mixed_5_6: vec![m5b, m5c, m5d, m6a, m6b, m6c, m6d, m6e],
            aux,
            mixed_7: vec![m7a, m7b, m7c],
            dropout: cfg.dropout,
            fc_weight,
            fc_bias,
            config: cfg.clone(),
        }
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Folds every batch norm's running statistics into its convolution for
    /// inference (serving, evaluation, `classify`): [`Mode::Eval`] then runs
    /// one biased convolution and a ReLU per layer (6–10 % more images/s on
    /// CPU at 299 px, docs/benchmarks.md).
    /// Call it after the weights are loaded and only on a model that is no
    /// longer trained: the folded copies do not follow later updates
    /// ([`Mode::Train`] keeps using the variables themselves).
    pub fn fold_batch_norm(&mut self) {
        let blocks = self.mixed_5_6.iter_mut().chain(self.mixed_7.iter_mut());
        let ops = self.stem.iter_mut().chain(blocks.flat_map(|b| b.branches.iter_mut().flatten()));
        ops.for_each(Op::fold);
    }

    /// `x`: `[N, 3, S, S]` floats in [-1, 1]. Returns the logits and, in
    /// training mode with the auxiliary head, the auxiliary logits.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> (Tensor, Option<Tensor>) {
        let (h, aux) = self.features(x, mode);
        let h = h.adaptive_avg_pool2d([1, 1]).flatten(1, -1);
        let h = h.dropout(self.dropout, matches!(mode, Mode::Train { .. }));
        (h.linear(&self.fc_weight, Some(&self.fc_bias)), aux)
    }

    /// [`InceptionV3::forward`] in `precision`: under libtorch's autocast
    /// for bf16 and fp16 (on the device of `x`), with the logits returned in
    /// fp32 for the loss and the scores. Must run on the thread that uses
    /// the result (autocast is per thread).
    pub fn forward_in(&self, precision: Precision, x: &Tensor, mode: Mode) -> (Tensor, Option<Tensor>) {
        let guard = match precision.autocast(x.device()) {
            Ok(guard) => guard,
            Err(e) => {
                tracing::error!("cannot enter {precision} autocast ({e}); this pass runs in fp32");
                None
            }
        };
        let (logits, aux) = self.forward(x, mode);
        drop(guard);
        if precision == Precision::Fp32 {
            return (logits, aux);
        }
        (logits.to_kind(Kind::Float), aux.map(|a| a.to_kind(Kind::Float)))
    }

    /// The last feature map (Mixed_7c's output, before pooling) and, in
    /// training mode with the auxiliary head, the auxiliary logits.
    pub fn features(&self, x: &Tensor, mode: Mode) -> (Tensor, Option<Tensor>) {
        let h = self.stem.iter().fold(x.shallow_clone(), |h, op| op.forward(&h, mode));
        let h = self.mixed_5_6.iter().fold(h, |h, b| b.forward(&h, mode));
        let aux = match (&self.aux, mode) {
            (Some(a), Mode::Train { .. }) => {
                let y = h.avg_pool2d([a.pool_kernel, a.pool_kernel], [3, 3], [0, 0], false, false, None::<i64>);
                let y = a.conv1.forward(&a.conv0.forward(&y, mode), mode);
                let y = y.adaptive_avg_pool2d([1, 1]).flatten(1, -1);
                Some(y.linear(&a.fc_weight, Some(&a.fc_bias)))
            }
            _ => None,
        };
        (self.mixed_7.iter().fold(h, |h, b| b.forward(&h, mode)), aux)
    }

    /// Whether a variable gets L2 regularisation: every conv and fully
    /// connected weight (not biases or batch-norm parameters).
    pub fn is_regularized(name: &str) -> bool {
        name.ends_with("conv.weight") || name.ends_with("fc.weight")
    }
}

/// Converts a `[N, S, S, 3]` u8 batch to `[N, 3, S, S]` floats in [-1, 1]
/// (`(x / 255 - 0.5) * 2`, the original's final scaling).
pub fn images_to_input(nhwc_u8: &Tensor) -> Tensor {
    nhwc_u8.permute([0, 3, 1, 2]).to_kind(Kind::Float) * (2.0 / 255.0) - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn::VarStore, Device};

    fn tiny() -> ModelConfig {
        ModelConfig::tiny(6)
    }

    #[test]
    fn shapes_and_torchvision_names() {
        let vs = VarStore::new(Device::Cpu);
        let model = InceptionV3::new(&vs.root(), &tiny());
        let x = Tensor::zeros([2, 3, 75, 75], (Kind::Float, Device::Cpu));
        let (logits, aux) = model.forward(&x, Mode::Train { bn_momentum: 0.1 });
        assert_eq!(logits.size(), vec![2, 6]);
        assert_eq!(aux.map(|a| a.size()), Some(vec![2, 6]));
        let (logits, aux) = model.forward(&x, Mode::Eval);
        assert_eq!(logits.size(), vec![2, 6]);
        assert!(aux.is_none());
        let names = vs.variables();
        for n in [
            "Conv2d_1a_3x3.conv.weight",
            "Conv2d_1a_3x3.bn.running_var",
            "Mixed_5b.branch5x5_2.bn.bias",
            "Mixed_6e.branch7x7dbl_5.conv.weight",
            "Mixed_7c.branch3x3dbl_3b.conv.weight",
            "AuxLogits.conv1.conv.weight",
            "AuxLogits.fc.weight",
            "fc.bias",
        ] {
            assert!(names.contains_key(n), "missing {n}");
        }
    }

    #[test]
    fn full_size_has_the_published_parameter_count() {
        // torchvision's inception_v3 (with AuxLogits, 1000 classes) has
        // 27,161,264 parameters; ours has the same tensors.
        let vs = VarStore::new(Device::Cpu);
        let cfg = ModelConfig {
            num_classes: 1000,
            image_size: 299,
            depth_multiplier: 1.0,
            min_depth: 16,
            dropout: 0.2,
            aux_logits: true,
            avg_pool_count_include_pad: false,
        };
        let _ = InceptionV3::new(&vs.root(), &cfg);
        let params: i64 = vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
        assert_eq!(params, 27_161_264);
    }

    #[test]
    fn debiased_momentum_starts_at_one() {
        assert_eq!(debiased_momentum(0.9997, 1), 1.0);
        let m2 = debiased_momentum(0.9997, 2);
        assert!((m2 - 0.0003 / (1.0 - 0.9997f64.powi(2))).abs() < 1e-12);
        assert!((debiased_momentum(0.9997, 1_000_000) - 0.0003).abs() < 1e-9);
    }

    #[test]
    fn initial_weights_are_truncated() {
        let vs = VarStore::new(Device::Cpu);
        let _ = InceptionV3::new(&vs.root(), &tiny());
        let w = &vs.variables()["Mixed_5b.branch1x1.conv.weight"];
        assert!(w.abs().max().double_value(&[]) <= 0.2 + 1e-6);
        assert!(w.std(true).double_value(&[]) > 0.05);
    }
}
