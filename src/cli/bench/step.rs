//! `hydralora bench step` and `bench forward`: a whole training step (forward, backward,
//! AdamW) or an inference forward on a benchmark config's model with random weights.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use hydralora::engine::{DType, Device};
use hydralora::model::bench::{
    bench_forward, bench_step, bench_step_pair, BenchConfig, BenchMethod, PairReport,
};
use hydralora::model::Precision;

use crate::cli::CliResult;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MethodArg {
    Lora,
    Hydra,
    Full,
}

#[derive(Debug, Args)]
pub struct StepArgs {
    /// A benchmark config (a config.json with a `bench` block), e.g. ../shared/bench/bench-s.json.
    #[arg(long)]
    config: PathBuf,
    #[arg(long, value_enum, default_value_t = MethodArg::Lora)]
    method: MethodArg,
    /// Comma-separated target modules, overriding the config's.
    #[arg(long, value_delimiter = ',')]
    targets: Option<Vec<String>>,
    /// Timed steps, after one warm-up step. 0 runs the warm-up step alone: its memory peak,
    /// and a time that includes compiling every pipeline (for models too big to step twice on
    /// a slow device, such as bench-8b on a CPU driver).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    #[arg(long)]
    json: bool,
    /// Also time every kernel of one more step on the GPU (needs timestamp queries).
    #[arg(long)]
    profile: bool,
    /// Also run this method, its steps alternating with `--method`'s on the same targets
    /// (`--targets`, else `--method`'s from the config), and print the time ratio.
    #[arg(long, value_enum, conflicts_with = "profile")]
    versus: Option<MethodArg>,
    /// Store the frozen layer weights as f32, f16, bf16, q8_0, q4_0, q4_k or q6_k (as
    /// `train --weights`); adapter methods only for anything but f32.
    #[arg(long, value_name = "FORMAT", value_parser = crate::cli::weights::parse_weight_format)]
    weights: Option<DType>,
    /// The same as `--weights f16`.
    #[arg(long, conflicts_with = "weights")]
    f16_weights: bool,
    /// f32, or mixed (as `train --precision`: f16 frozen weights unless `--weights` says
    /// otherwise, f16-rounded inputs to their matmuls).
    #[arg(long, value_name = "PRECISION", value_parser = crate::cli::weights::parse_precision, default_value = "f32")]
    precision: Precision,
    /// Keep only each decoder layer's input and recompute the layer in backward (as `train
    /// --checkpoint-activations`): less memory, one more forward of work.
    #[arg(long)]
    checkpoint_activations: bool,
    /// Run no kernel: every buffer is allocated and freed as in a real step, so the pool peak
    /// and the dispatch count are a real step's (to the byte: a test checks it), in a
    /// fraction of the time, while times and values mean nothing. For asking whether a model
    /// fits a GPU's memory on a machine too slow to step it (bench-8b on a CPU driver).
    #[arg(long, conflicts_with_all = ["profile", "versus"])]
    dry_run: bool,
}

impl MethodArg {
    fn method(self) -> BenchMethod {
        match self {
            MethodArg::Lora => BenchMethod::Lora,
            MethodArg::Hydra => BenchMethod::Hydra,
            MethodArg::Full => BenchMethod::Full,
        }
    }
}

pub fn run_step(a: StepArgs) -> CliResult {
    let mut cfg = BenchConfig::from_file(&a.config)?;
    let weights = match (a.f16_weights, a.weights, a.precision) {
        (true, _, _) => DType::F16,
        (false, None, Precision::Mixed) => DType::F16,
        (false, weights, _) => weights.unwrap_or(DType::F32),
    };
    if weights != DType::F32 && [Some(a.method), a.versus].contains(&Some(MethodArg::Full)) {
        return Err(format!(
            "--weights {} stores the frozen weights: not with --method full, which trains them all in f32",
            weights.name()
        )
        .into());
    }
    cfg.weights = weights;
    cfg.checkpoint_activations = a.checkpoint_activations;
    cfg.precision = a.precision;
    let device = Device::new()?;
    device.set_dry_run(a.dry_run);
    if let Some(versus) = a.versus {
        let targets = a.targets.clone().or_else(|| match a.method {
            MethodArg::Lora => Some(cfg.lora.targets.clone()),
            MethodArg::Hydra => Some(cfg.hydra.targets.clone()),
            MethodArg::Full => None,
        });
        let pair = (a.method.method(), versus.method());
        let r = bench_step_pair(&device, &cfg, pair, targets, 1, a.steps.max(1))?;
        return print_pair(&r, a.json);
    }
    let r = bench_step(
        &device,
        &cfg,
        a.method.method(),
        a.targets,
        1,
        a.steps,
        a.profile,
    )?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    println!("device:             {}", r.device);
    println!(
        "config:             {} (batch {} x seq {} = {} tokens)",
        a.config.display(),
        cfg.batch,
        cfg.seq,
        r.tokens_per_step
    );
    println!(
        "method:             {} on {:?}, {} trainable parameters{}{}",
        r.method,
        r.targets,
        r.trainable_params,
        match weights {
            DType::F32 => String::new(),
            w => format!(", frozen weights in {}", w.name()),
        },
        if r.checkpoint_activations {
            ", activation checkpointing"
        } else {
            ""
        }
    );
    if a.precision == Precision::Mixed {
        println!(
            "precision:          mixed (f16-rounded inputs to the frozen weights' f32 kernels)"
        );
    }
    match r.timed_steps {
        _ if r.dry_run => println!(
            "time per step:      not measured (--dry-run: no kernel ran; the pool peak and dispatch count below are a real step's)"
        ),
        0 => println!(
            "time per step:      {:.3} s, the warm-up step alone (pipeline compiles included; --steps 0)",
            r.median_s
        ),
        n => println!(
            "time per step:      median {:.3} s, min {:.3} s ({n} timed steps)",
            r.median_s, r.min_s
        ),
    }
    if !r.dry_run {
        println!("tokens/s:           {:.0}", r.tokens_per_s);
        println!(
            "FLOPs per step:     {:.3} GFLOP = {}",
            r.flops_per_step / 1e9,
            r.flops_formula
        );
        println!("achieved:           {:.2} GFLOP/s", r.gflops);
    }
    println!(
        "pool peak:          {:.1} MiB first step, {:.1} MiB last step (estimated up front: {:.1} MiB)",
        r.peak_pool_bytes_first_step as f64 / 1048576.0,
        r.peak_pool_bytes_last_step as f64 / 1048576.0,
        r.estimated_peak_bytes as f64 / 1048576.0
    );
    println!(
        "pipelines compiled after the first step: {}; submits per step: {:.1}; dispatches per step: {:.0}",
        r.pipelines_after_first_step, r.submits_per_step, r.dispatches_per_step
    );
    if a.profile {
        print_profile(&r.profile, &device);
    }
    Ok(())
}

/// The two methods of `--versus`, one line each, and their ratio.
fn print_pair(r: &PairReport, json: bool) -> CliResult {
    if json {
        println!("{}", serde_json::to_string(r)?);
        return Ok(());
    }
    println!("device: {}", r.a.device);
    for s in [&r.a, &r.b] {
        println!(
            "{:<6} on {:?}: median {:.3} s, min {:.3} s per step, {:.0} dispatches, {} trainable parameters",
            s.method, s.targets, s.median_s, s.min_s, s.dispatches_per_step, s.trainable_params
        );
    }
    println!(
        "{} / {} (steps alternating): median of the per-pair ratios {:.3}x, ratio of the medians {:.3}x",
        r.a.method, r.b.method, r.median_ratio, r.ratio_of_medians
    );
    Ok(())
}

/// The per-kernel table of a profiled step.
fn print_profile(rows: &[hydralora::model::bench::KernelTime], device: &Device) {
    if rows.is_empty() {
        println!(
            "no profile: {} has no timestamp queries",
            device.info().name
        );
        return;
    }
    let total: f64 = rows.iter().map(|k| k.seconds).sum();
    println!(
        "\nGPU time per kernel over one step (every dispatch timed; {:.3} s in kernels):",
        total
    );
    println!(
        "  {:<28} {:>7} {:>11} {:>7}",
        "kernel", "calls", "ms", "share"
    );
    for k in rows {
        println!(
            "  {:<28} {:>7} {:>11.2} {:>6.1}%",
            k.kernel,
            k.calls,
            1e3 * k.seconds,
            100.0 * k.seconds / total.max(1e-12)
        );
    }
}

#[derive(Debug, Args)]
pub struct ForwardArgs {
    /// A benchmark config (a config.json with a `bench` block).
    #[arg(long)]
    config: PathBuf,
    #[arg(long, default_value_t = 5)]
    runs: usize,
    #[arg(long)]
    json: bool,
}

pub fn run_forward(a: ForwardArgs) -> CliResult {
    let cfg = BenchConfig::from_file(&a.config)?;
    let device = Device::new()?;
    let r = bench_forward(&device, &cfg, 1, a.runs.max(1))?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "{}: forward of {} tokens in {:.3} s (median): {:.0} tokens/s, {:.2} GFLOP/s",
            r.device, r.tokens, r.median_s, r.tokens_per_s, r.gflops
        );
    }
    Ok(())
}
