//! One decoder layer's weights: two RMS norms and the seven linear layers an adapter can
//! target, by their Hugging Face module names.

use hydralora_engine::Tensor;

use crate::llama::linear::Linear;

/// The seven linear layers an adapter can target, in Hugging Face module names.
pub const TARGET_MODULES: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// One decoder layer's weights. Shapes use H = `hidden_size`, I = `intermediate_size`,
/// nh / nkv = query / key-value heads and hd = `head_dim`. Cloning shares the tensors.
#[derive(Clone, Debug)]
pub struct Layer {
    /// `input_layernorm`, the RMS norm weight before attention, `[H]`.
    pub input_norm: Tensor, // [H]
    /// Query projection, `[nh hd, H]`.
    pub q_proj: Linear, // [nh hd, H]
    /// Key projection, `[nkv hd, H]`.
    pub k_proj: Linear, // [nkv hd, H]
    /// Value projection, `[nkv hd, H]`.
    pub v_proj: Linear, // [nkv hd, H]
    /// Attention output projection, `[H, nh hd]`.
    pub o_proj: Linear, // [H, nh hd]
    /// `post_attention_layernorm`, the RMS norm weight before the MLP, `[H]`.
    pub post_norm: Tensor, // [H]
    /// MLP gate projection, `[I, H]`.
    pub gate_proj: Linear, // [I, H]
    /// MLP up projection, `[I, H]`.
    pub up_proj: Linear, // [I, H]
    /// MLP down projection, `[H, I]`.
    pub down_proj: Linear, // [H, I]
}

impl Layer {
    /// The seven linear layers with their module names, in [`TARGET_MODULES`] order.
    pub fn linears(&self) -> impl Iterator<Item = (&'static str, &Linear)> {
        let in_order = [
            &self.q_proj,
            &self.k_proj,
            &self.v_proj,
            &self.o_proj,
            &self.gate_proj,
            &self.up_proj,
            &self.down_proj,
        ];
        TARGET_MODULES.into_iter().zip(in_order)
    }

    /// [`Layer::linears`], mutable.
    pub fn linears_mut(&mut self) -> impl Iterator<Item = (&'static str, &mut Linear)> {
        let in_order = [
            &mut self.q_proj,
            &mut self.k_proj,
            &mut self.v_proj,
            &mut self.o_proj,
            &mut self.gate_proj,
            &mut self.up_proj,
            &mut self.down_proj,
        ];
        TARGET_MODULES.into_iter().zip(in_order)
    }

    /// The linear layer named by its Hugging Face module name (`q_proj`, ..., `down_proj`).
    pub fn linear(&self, module: &str) -> Option<&Linear> {
        self.linears()
            .find_map(|(name, linear)| (name == module).then_some(linear))
    }

    /// [`Layer::linear`], mutable (to attach or replace an adapter).
    pub fn linear_mut(&mut self, module: &str) -> Option<&mut Linear> {
        self.linears_mut()
            .find_map(|(name, linear)| (name == module).then_some(linear))
    }

    /// The Hugging Face prefix of a module of layer `i`, e.g. `model.layers.0.mlp.up_proj`.
    pub fn module_path(i: usize, module: &str) -> String {
        let block = if ["gate_proj", "up_proj", "down_proj"].contains(&module) {
            "mlp"
        } else {
            "self_attn"
        };
        format!("model.layers.{i}.{block}.{module}")
    }
}
