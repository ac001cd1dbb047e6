//! `hydralora demo`: the whole pipeline on a built-in task set, nothing downloaded.

use std::path::PathBuf;

use clap::Args;
use hydralora::engine::Device;
use hydralora::model::demo::{default_cache_dir, run_demo, DemoEvent, DemoOptions, DemoReport};

use super::CliResult;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// A smaller run (about a minute on a 2-core CPU with lavapipe).
    #[arg(long)]
    pub quick: bool,
    /// Seeds per method (results are the mean and spread over them).
    #[arg(long)]
    pub seeds: Option<usize>,
    /// Fine-tuning steps per run.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Where the curves, the router heatmap, the adapters and results.json go.
    #[arg(long, default_value = "runs/demo")]
    pub out: PathBuf,
    /// Where the trained base model is cached [default: ~/.cache/hydralora].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Print the per-task table as JSON (task, method, exact match, trainable params).
    #[arg(long)]
    pub json: bool,
    /// Fine-tune on the base stored as this format (f32, f16, bf16, q8_0, q4_0, q4_k, q6_k; as
    /// `train --weights`). The demo's base is 64 wide: K-quant rows (256) fall back to q8_0,
    /// so q4_0 is its 4-bit case.
    #[arg(long, value_name = "FORMAT", value_parser = crate::cli::weights::parse_weight_format)]
    pub weights: Option<hydralora::engine::DType>,
}

pub fn run(a: DemoArgs) -> CliResult {
    let cache = a.cache_dir.clone().unwrap_or_else(default_cache_dir);
    let mut opts = if a.quick {
        DemoOptions::quick(cache, a.out.clone())
    } else {
        DemoOptions::standard(cache, a.out.clone())
    };
    if let Some(s) = a.seeds {
        opts.seeds = s.max(1);
    }
    if let Some(s) = a.steps {
        opts.finetune_steps = s.max(1);
    }
    opts.weights = a.weights;
    let device = Device::new()?;
    eprintln!("device: {} ({})", device.info().name, device.info().backend);
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix:>16} {bar:30} {pos}/{len}  {msg}")
            .expect("a valid template"),
    );
    let report = run_demo(&device, &opts, |event| match event {
        // Without a terminal the bar is hidden; the phases still go to the log.
        DemoEvent::Phase(p) if bar.is_hidden() => eprintln!("{p}"),
        DemoEvent::Phase(p) => bar.println(p),
        DemoEvent::Step { run, stats, total } => {
            bar.set_length(total as u64);
            bar.set_prefix(run.to_string());
            bar.set_position(stats.step as u64);
            bar.set_message(format!("loss {:.4}", stats.loss));
        }
    })?;
    bar.finish_and_clear();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report.results)?);
    } else {
        print_table(&report, opts.seeds);
    }
    Ok(())
}

fn print_table(r: &DemoReport, seeds: usize) {
    println!("exact match by greedy generation, mean ± std over {seeds} seeds");
    println!("  LoRA:      {}", r.lora_config);
    println!("  HydraLoRA: {}", r.hydra_config);
    println!(
        "{:<10} {:>18} {:>18} {:>10}",
        "task", "LoRA", "HydraLoRA", "base"
    );
    let cell = |task: &str, method: &str| {
        r.results
            .iter()
            .find(|x| x.task == task && x.method == method)
            .map_or("-".into(), |x| {
                format!(
                    "{:5.1}% ± {:4.1}",
                    100.0 * x.exact_match,
                    100.0 * x.exact_match_std
                )
            })
    };
    for task in hydralora::model::demo::TASKS {
        let base = r
            .base_exact_match
            .get(task)
            .map_or("-".into(), |v| format!("{:.1}%", 100.0 * v));
        println!(
            "{task:<10} {:>18} {:>18} {base:>10}",
            cell(task, "lora"),
            cell(task, "hydra")
        );
    }
    let params = |m: &str| {
        r.results
            .iter()
            .find(|x| x.method == m)
            .map_or(0, |x| x.trainable_params)
    };
    let mean = |m: &str| {
        let v: Vec<f64> = r
            .results
            .iter()
            .filter(|x| x.method == m)
            .map(|x| x.exact_match)
            .collect();
        100.0 * v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    println!(
        "{:<10} {:>17.1}% {:>17.1}%",
        "mean",
        mean("lora"),
        mean("hydra")
    );
    println!(
        "trainable parameters: LoRA {}, HydraLoRA {}",
        params("lora"),
        params("hydra")
    );
    if let Some(copy) = r.base_exact_match.get("copy") {
        println!(
            "the base model (trained here on copying) copies {:.1}% exactly",
            100.0 * copy
        );
    }
    let base = if r.base_from_cache {
        "the cached base model"
    } else {
        "the base model trained and cached"
    };
    println!("finished in {:.0} s, with {base}", r.seconds);
    for f in &r.files {
        println!("  {}", f.display());
    }
}
