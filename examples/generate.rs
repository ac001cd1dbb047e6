//! The shortest complete generation program: a Hugging Face model folder, optionally an
//! adapter folder (PEFT LoRA or HydraLoRA), and a prompt; the continuation is printed as it
//! is generated (greedy).
//!
//! ```sh
//! cargo run --release --example generate -- <model-folder> "<prompt>" [adapter-folder]
//! ```
//!
//! `hydralora generate` adds sampling options and generation_config.json's defaults.

use std::io::Write;

use hydralora::engine::Device;
use hydralora::model::adapter::load_adapter;
use hydralora::model::llama::codec::load_codec;
use hydralora::model::{generate, Llama, SamplingConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model_dir, prompt, rest @ ..] = args.as_slice() else {
        return Err("usage: generate <model-folder> \"<prompt>\" [adapter-folder]".into());
    };

    let device = Device::new()?;
    let mut model = Llama::load(&device, model_dir)?;
    if let Some(adapter) = rest.first() {
        load_adapter(&mut model, adapter.as_ref())?;
    }
    let codec = load_codec(model_dir, &model.config)?;
    let mut ids: Vec<u32> = codec.bos_id().into_iter().collect();
    ids.extend(codec.encode(prompt)?);

    let sampling = SamplingConfig {
        max_new_tokens: 64,
        stop_tokens: model.config.eos_token_ids.clone(),
        ..Default::default()
    };
    print!("{prompt}");
    let mut new = Vec::new();
    let mut shown = 0; // bytes of the decoded continuation already printed
    generate(&model, &ids, &sampling, |token| {
        new.push(token);
        // Decode the whole continuation so multi-byte pieces print whole.
        if let Ok(text) = codec.decode(&new) {
            if text.len() > shown && text.is_char_boundary(shown) {
                print!("{}", &text[shown..]);
                shown = text.len();
                let _ = std::io::stdout().flush();
            }
        }
        true
    })?;
    println!();
    Ok(())
}
