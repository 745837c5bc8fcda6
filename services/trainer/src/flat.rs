//! The model's variables end to end in one buffer, so that whole-model
//! updates (the optimizer's `w -= mom`, the moving averages, a replica's
//! pull) are one operation each instead of one per variable. On a GPU every
//! operation is a kernel launch and its CPU-side dispatch (the model has
//! ~400 variables), and tch has no `_foreach_` (multi-tensor) operations.
//!
//! The variables become views of the buffer (`set_data`): the model,
//! autograd and checkpoints see the same tensors as before. Each variable
//! starts on an [`ALIGN`]-element boundary, as the CUDA allocator would
//! place it; the gaps stay zero.

use tch::nn::VarStore;
use tch::{Kind, Tensor};

/// Elements (256 bytes of f32) each variable's start is aligned to.
pub const ALIGN: i64 = 64;

/// Where each of a list of tensors starts in a buffer that holds them end to
/// end, every start aligned to [`ALIGN`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub offsets: Vec<i64>,
    pub lens: Vec<i64>,
    /// Elements of the buffer (a multiple of [`ALIGN`]).
    pub total: i64,
}

impl Layout {
    pub fn new(lens: impl IntoIterator<Item = i64>) -> Self {
        let lens: Vec<i64> = lens.into_iter().collect();
        let mut offsets = Vec::with_capacity(lens.len());
        let mut total = 0;
        for len in &lens {
            offsets.push(total);
            total += (len + ALIGN - 1) / ALIGN * ALIGN;
        }
        Self { offsets, lens, total }
    }

    /// Tensor `i`'s place in `all`, shaped `shape`.
    pub fn view(&self, all: &Tensor, i: usize, shape: &[i64]) -> Tensor {
        all.narrow(0, self.offsets[i], self.lens[i]).view(shape)
    }

    /// `parts` (one per entry, any shapes) end to end with zero gaps: the
    /// buffer this layout describes, built by one concatenation.
    pub fn gather(&self, parts: &[Tensor], zeros: &Tensor) -> Tensor {
        let mut pieces = Vec::with_capacity(parts.len() * 2);
        for (part, len) in parts.iter().zip(&self.lens) {
            pieces.push(part.reshape([-1]));
            let gap = (ALIGN - len % ALIGN) % ALIGN;
            if gap > 0 {
                pieces.push(zeros.narrow(0, 0, gap));
            }
        }
        Tensor::cat(&pieces, 0)
    }

    /// Whether `all` is this layout's buffer and every tensor of `tensors`
    /// is, in order, where this layout puts it in `all` (the same storage,
    /// contiguous).
    pub fn holds(&self, all: &Tensor, tensors: &[Tensor]) -> bool {
        let base = all.data_ptr() as usize;
        let elem = all.kind().elt_size_in_bytes();
        all.numel() as i64 == self.total
            && all.is_contiguous()
            && tensors.len() == self.offsets.len()
            && tensors.iter().zip(&self.offsets).zip(&self.lens).all(|((t, off), len)| {
                t.kind() == all.kind()
                    && t.device() == all.device()
                    && t.numel() as i64 == *len
                    && t.is_contiguous()
                    && t.data_ptr() as usize == base + *off as usize * elem
            })
    }
}

/// Every variable of a model in one buffer: the trainable ones first, in
/// the optimizer's order, then the rest (batch-norm statistics) by name.
pub struct FlatVariables {
    pub all: Tensor,
    /// (name, variable) in buffer order.
    pub vars: Vec<(String, Tensor)>,
    /// Layout of the trainable part, which starts the buffer.
    pub trainable: Layout,
    /// Layout of every variable.
    pub layout: Layout,
}

impl FlatVariables {
    /// Moves the variables of `vs` into one buffer; `trainable` names the
    /// trainable ones in the optimizer's order. `None` (variables left as
    /// they are) when they do not share one floating-point kind and device.
    pub fn new(vs: &VarStore, trainable: &[String]) -> Option<Self> {
        let mut named = vs.variables();
        let mut vars: Vec<(String, Tensor)> = trainable.iter().filter_map(|n| named.remove_entry(n)).collect();
        if vars.len() != trainable.len() {
            return None;
        }
        let mut rest: Vec<(String, Tensor)> = named.into_iter().collect();
        rest.sort_by(|a, b| a.0.cmp(&b.0));
        vars.extend(rest);
        let (kind, device) = vars.first().map(|(_, v)| (v.kind(), v.device()))?;
        if !matches!(kind, Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16)
            || vars.iter().any(|(_, v)| v.kind() != kind || v.device() != device)
        {
            return None;
        }
        let lens = |vs: &[(String, Tensor)]| vs.iter().map(|(_, v)| v.numel() as i64).collect::<Vec<_>>();
        let trainable = Layout::new(lens(&vars[..trainable.len()]));
        let layout = Layout::new(lens(&vars));
        let all = tch::no_grad(|| {
            let all = Tensor::zeros([layout.total], (kind, device));
            for (i, (_, v)) in vars.iter_mut().enumerate() {
                let mut place = layout.view(&all, i, &v.size());
                place.copy_(v);
                v.set_data(&place);
            }
            all
        });
        Some(Self { all, vars, trainable, layout })
    }

    /// The trainable part of the buffer (laid out as [`FlatVariables::trainable`]).
    pub fn trainable_part(&self) -> Tensor {
        self.all.narrow(0, 0, self.trainable.total)
    }

    pub fn names(&self) -> Vec<String> {
        self.vars.iter().map(|(n, _)| n.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::{self, Module};
    use tch::Device;

    #[test]
    fn layout_aligns_every_start() {
        let l = Layout::new([3, 64, 65, 1]);
        assert_eq!(l.offsets, vec![0, 64, 128, 256]);
        assert_eq!(l.total, 320);
        let zeros = Tensor::zeros([ALIGN], (Kind::Float, Device::Cpu));
        let parts: Vec<Tensor> = l.lens.iter().map(|n| Tensor::ones([*n], (Kind::Float, Device::Cpu))).collect();
        let g = l.gather(&parts, &zeros);
        assert_eq!(g.size(), vec![320]);
        assert_eq!(g.sum(Kind::Float).double_value(&[]), (3 + 64 + 65 + 1) as f64, "gaps are zero");
        assert_eq!(g.double_value(&[128 + 64]), 1.0);
        assert_eq!(g.double_value(&[128 + 65]), 0.0);
    }

    #[test]
    fn variables_become_views_and_keep_their_values() {
        tch::manual_seed(1);
        let vs = VarStore::new(Device::Cpu);
        let root = vs.root();
        let lin = nn::linear(&root / "a", 3, 2, Default::default());
        let _stat = root.zeros_no_train("stat", &[5]);
        let before: Vec<(String, Vec<f32>)> = {
            let mut v: Vec<_> =
                vs.variables().into_iter().map(|(n, t)| (n, Vec::<f32>::try_from(&t.reshape([-1])).unwrap())).collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let trainable = vec!["a.weight".to_string(), "a.bias".to_string()];
        let flat = FlatVariables::new(&vs, &trainable).expect("one float kind");
        assert_eq!(flat.names(), vec!["a.weight", "a.bias", "stat"]);
        let tensors: Vec<Tensor> = flat.vars.iter().map(|(_, v)| v.shallow_clone()).collect();
        assert!(flat.layout.holds(&flat.all, &tensors));
        assert!(flat.trainable.holds(&flat.trainable_part(), &tensors[..2]));
        for (name, values) in &before {
            let now = Vec::<f32>::try_from(&vs.variables()[name].reshape([-1])).unwrap();
            assert_eq!(&now, values, "{name} kept its values");
        }
        // The model's own handle sees the buffer: writing the buffer moves it.
        tch::no_grad(|| {
            let _ = flat.all.shallow_clone().fill_(2.0);
        });
        assert_eq!(lin.ws.sum(Kind::Float).double_value(&[]), 12.0);
        assert!(lin.ws.requires_grad(), "still a trainable leaf");
        let y = lin.forward(&Tensor::ones([4, 3], (Kind::Float, Device::Cpu))).sum(Kind::Float);
        let g = Tensor::run_backward(&[&y], &[&lin.ws], false, false);
        assert_eq!(Vec::<f32>::try_from(&g[0].reshape([-1])).unwrap(), vec![4.0; 6], "gradients flow to the view");
    }
}
