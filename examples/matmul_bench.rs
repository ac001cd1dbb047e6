//! f32 matmul throughput of every kernel variant, in one run: the general (original)
//! kernel, the shared-memory tiled kernel, the subgroup kernel (where the device has
//! subgroups of 8), split-K, and what `matmul_t` picks by itself, on square sizes and on
//! the skinny products of a LoRA layer.
//!
//! GFLOP/s = 2 m n k / median seconds over `--repeats` timed runs after one warm-up run;
//! each run records the product and then waits for the device (`Device::synchronize`), so
//! the time covers recording, submission and execution. On Linux the process's CPU time
//! per run is shown too (`cpu GF/s` = 2 m n k / CPU seconds): on a shared machine the
//! wall-clock figure moves with the load and the CPU figure much less.
//!
//! ```text
//! cargo run --release --example matmul_bench                     # squares 256..2048 and LoRA
//! cargo run --release --example matmul_bench -- --sizes 1024 --repeats 9
//! cargo run --release --example matmul_bench -- --lora-only --kernels subgroup,auto
//! ```
//! Options: `--sizes a,b,...`, `--lora T,d,r` (repeatable), `--lora-only`, `--no-lora`,
//! `--repeats N` (at least 5), `--kernels general,tiled,subgroup,split,auto`,
//! `--max-seconds S` (skip a variant on a shape once its warm-up run took longer than S).

use std::time::Instant;

use hydralora::engine::ops::matmul::{matmul_variant, matmul_with, MatmulKernel, MatmulVariant};
use hydralora::engine::{matmul_t, Device, Error, Result, Tensor};

#[derive(Clone, Debug)]
struct Case {
    label: String,
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
}

impl Case {
    fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64
    }

    fn stored(&self) -> ([usize; 2], [usize; 2]) {
        let a = if self.ta {
            [self.k, self.m]
        } else {
            [self.m, self.k]
        };
        let b = if self.tb {
            [self.n, self.k]
        } else {
            [self.k, self.n]
        };
        (a, b)
    }

    fn shape(&self) -> String {
        let (a, b) = self.stored();
        let t = |f: bool| if f { "^T" } else { "" };
        format!(
            "[{},{}]{}x[{},{}]{}",
            a[0],
            a[1],
            t(self.ta),
            b[0],
            b[1],
            t(self.tb)
        )
    }
}

/// The products of one LoRA linear with tokens T, model dim d, rank r (the flags the
/// engine's autodiff uses): forward x A^T and h B^T, weight gradients dA = dh^T x and
/// dB = dy^T h.
fn lora(t: usize, d: usize, r: usize) -> Vec<Case> {
    let c = |label: &str, m, n, k, ta, tb| Case {
        label: format!("{label} T{t} d{d} r{r}"),
        m,
        n,
        k,
        ta,
        tb,
    };
    vec![
        c("x A^T", t, r, d, false, true),
        c("h B^T", t, d, r, false, true),
        c("dA=dh^T x", r, d, t, true, false),
        c("dB=dy^T h", d, r, t, true, false),
    ]
}

/// One column of the table: a pinned variant, or the automatic choice.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Column {
    Kernel(MatmulKernel),
    /// The automatic choice's kernel with 8 K splits, or without split-K where the
    /// automatic choice splits.
    Split,
    Auto,
}

impl Column {
    fn name(self) -> String {
        match self {
            Column::Kernel(MatmulKernel::General) => "general(old)".into(),
            Column::Kernel(k) => k.name().into(),
            Column::Split => "split-k".into(),
            Column::Auto => "auto".into(),
        }
    }
}

struct Stats {
    median: f64,
    min: f64,
    max: f64,
    cpu: Option<f64>,
}

/// Process CPU seconds (user + system) so far, from /proc (Linux only).
fn cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0) // USER_HZ is 100 on Linux
}

fn time(
    device: &Device,
    repeats: usize,
    max_seconds: f64,
    mut run: impl FnMut() -> Result<Tensor>,
) -> Result<Option<Stats>> {
    let start = Instant::now();
    drop(run()?);
    device.synchronize()?;
    if start.elapsed().as_secs_f64() > max_seconds {
        return Ok(None);
    }
    let cpu0 = cpu_seconds();
    let mut samples = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let t = Instant::now();
        let out = run()?;
        device.synchronize()?;
        samples.push(t.elapsed().as_secs_f64());
        drop(out);
    }
    let cpu = match (cpu0, cpu_seconds()) {
        (Some(a), Some(b)) => Some((b - a) / repeats as f64),
        _ => None,
    };
    samples.sort_by(f64::total_cmp);
    let mid = samples.len() / 2;
    let median = if samples.len() % 2 == 1 {
        samples[mid]
    } else {
        0.5 * (samples[mid - 1] + samples[mid])
    };
    Ok(Some(Stats {
        median,
        min: samples[0],
        max: samples[samples.len() - 1],
        cpu,
    }))
}

fn list(s: &str) -> Vec<usize> {
    s.split(',')
        .map(|x| x.trim().parse().expect("a whole number"))
        .collect()
}

fn main() -> Result<()> {
    let mut sizes = vec![256, 512, 1024, 2048];
    let mut lora_shapes: Vec<(usize, usize, usize)> = Vec::new();
    let mut with_lora = true;
    let mut with_squares = true;
    let mut repeats = 5;
    let mut max_seconds = 60.0;
    let mut columns = vec![
        Column::Kernel(MatmulKernel::General),
        Column::Kernel(MatmulKernel::Tiled),
        Column::Kernel(MatmulKernel::Subgroup),
        Column::Split,
        Column::Auto,
    ];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().expect("a value after the option");
        match arg.as_str() {
            "--sizes" => sizes = list(&value()),
            "--lora" => {
                let v = list(&value());
                lora_shapes.push((v[0], v[1], v[2]));
            }
            "--lora-only" => with_squares = false,
            "--no-lora" => with_lora = false,
            "--repeats" => repeats = value().parse().expect("a number"),
            "--max-seconds" => max_seconds = value().parse().expect("a number"),
            "--kernels" => {
                columns = value()
                    .split(',')
                    .map(|k| match k.trim() {
                        "general" | "old" => Column::Kernel(MatmulKernel::General),
                        "tiled" => Column::Kernel(MatmulKernel::Tiled),
                        "subgroup" => Column::Kernel(MatmulKernel::Subgroup),
                        "split" => Column::Split,
                        "auto" => Column::Auto,
                        other => panic!("unknown kernel {other:?}"),
                    })
                    .collect()
            }
            other => panic!("unknown option {other:?} (see the file's header)"),
        }
    }
    assert!(repeats >= 5, "--repeats must be at least 5");
    if lora_shapes.is_empty() {
        lora_shapes = vec![(2048, 256, 8), (2048, 1024, 16), (2048, 4096, 64)];
    }
    let mut cases = Vec::new();
    if with_squares {
        for &s in &sizes {
            cases.push(Case {
                label: format!("square {s}"),
                m: s,
                n: s,
                k: s,
                ta: false,
                tb: false,
            });
        }
    }
    if with_lora {
        for &(t, d, r) in &lora_shapes {
            cases.extend(lora(t, d, r));
        }
    }

    let device = Device::new()?;
    let info = device.info();
    println!(
        "f32 matmul on {} ({}, {}, {}); median of {repeats} runs after 1 warm-up, each synchronized",
        info.name, info.backend, info.device_type, info.driver
    );
    println!(
        "GFLOP/s: wall median [wall min-max run]{}; '-' = unsupported here, 'skip' = warm-up over {max_seconds} s",
        if cpu_seconds().is_some() {
            " (per CPU-second of this process)"
        } else {
            ""
        }
    );
    for (i, case) in cases.iter().enumerate() {
        let (sa, sb) = case.stored();
        let a = Tensor::rand_uniform(&device, &sa, -1.0, 1.0, 2 * i as u64)?;
        let b = Tensor::rand_uniform(&device, &sb, -1.0, 1.0, 2 * i as u64 + 1)?;
        let auto = matmul_variant(&a, &b, case.ta, case.tb)?;
        println!("{:<24} {}   auto: {auto}", case.label, case.shape());
        for &col in &columns {
            let variant = match col {
                Column::Kernel(k) => Some(MatmulVariant::new(k, 1)),
                Column::Split if auto.splits > 1 => Some(MatmulVariant::new(auto.kernel, 1)),
                Column::Split => Some(MatmulVariant::new(auto.kernel, 8)),
                Column::Auto => None,
            };
            let label = match (col, variant) {
                // Where the automatic choice splits K, this column shows it without.
                (Column::Split, Some(v)) if auto.splits > 1 => format!("no split ({v})"),
                (Column::Split, Some(v)) => format!("{v}"),
                _ => col.name(),
            };
            let stats = time(&device, repeats, max_seconds, || match variant {
                Some(v) => matmul_with(&a, &b, case.ta, case.tb, v),
                None => matmul_t(&a, &b, case.ta, case.tb),
            });
            let text = match stats {
                Err(Error::Unsupported(_)) => "-".to_string(),
                Err(e) => format!("error: {e}"),
                Ok(None) => "skip".to_string(),
                Ok(Some(s)) => {
                    let g = |secs: f64| case.flops() / secs / 1e9;
                    let cpu = s
                        .cpu
                        .filter(|&c| c > 0.0)
                        .map_or(String::new(), |c| format!(" ({:.1} per cpu-s)", g(c)));
                    format!(
                        "{:8.2} [{:.2}-{:.2}]{cpu}  {:.2} ms",
                        g(s.median),
                        g(s.max),
                        g(s.min),
                        s.median * 1e3
                    )
                }
            };
            println!("    {label:<28} {text}");
        }
    }
    Ok(())
}
