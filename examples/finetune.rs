//! The shortest complete fine-tuning program: a Hugging Face model folder and a JSONL file
//! in, a HydraLoRA adapter folder (PEFT layout, official HydraLoRA key names) out.
//!
//! ```sh
//! cargo run --release --example finetune -- <model-folder> <data.jsonl> <adapter-out> [steps]
//! ```
//!
//! The model folder holds `config.json`, `model.safetensors` (or shards) and
//! `tokenizer.json`; each JSONL line is `{"text"}`, Alpaca, Dolly or chat `{"messages"}`.
//! `hydralora train` is the same loop with every option, progress, checkpoints and
//! pictures.

use hydralora::engine::Device;
use hydralora::model::adapter::{attach, save_adapter, AdapterConfig};
use hydralora::model::data::{read_jsonl, tokenize, ReadOptions};
use hydralora::model::llama::codec::load_codec;
use hydralora::model::train::{TrainSettings, Trainer};
use hydralora::model::Llama;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model_dir, data, out, rest @ ..] = args.as_slice() else {
        return Err("usage: finetune <model-folder> <data.jsonl> <adapter-out> [steps]".into());
    };
    let steps: usize = rest.first().map_or(Ok(100), |s| s.parse())?;

    let device = Device::new()?;
    let mut model = Llama::load(&device, model_dir)?;
    // One shared A (rank 8), 4 experts B and a router on every MLP projection.
    attach(
        &mut model,
        &AdapterConfig::hydra(8, 16.0, 4, &["gate_proj", "up_proj", "down_proj"]),
        0,
    )?;
    let codec = load_codec(model_dir, &model.config)?;
    let (examples, _) = read_jsonl(&[data], &ReadOptions::default())?;
    let (tokens, _) = tokenize(&examples, codec.as_ref(), 512)?;

    let settings = TrainSettings {
        lr: 2e-4,
        total_steps: steps,
        micro_batch: 4,
        ..Default::default()
    };
    let mut trainer = Trainer::new(model, tokens, codec.pad_id(), settings)?;
    for _ in 0..steps {
        let s = trainer.step()?;
        println!("step {:>4}  loss {:.4}  lr {:.2e}", s.step, s.loss, s.lr);
    }
    save_adapter(&trainer.model, out.as_ref())?;
    println!("adapter written to {out}");
    Ok(())
}
