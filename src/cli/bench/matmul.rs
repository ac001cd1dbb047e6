//! `hydralora bench matmul`: matmul throughput through `Tensor::matmul` (and the
//! transposed forms the LoRA layers use), GFLOP/s = 2 m n k / median seconds. A is f32; B
//! (the weights) f32 or, with `--weights f16`, f16. `--kernel coop` times the device's
//! cooperative-matrix kernel (tensor cores; its products are rounded to f16 on the way in
//! for the f16x16 shape), where it has one.

use clap::{Args, ValueEnum};
use hydralora::engine::ops::matmul::{
    cooperative_kernel, matmul_variant, matmul_with, MatmulKernel, MatmulVariant,
};
use hydralora::engine::{matmul_t, Device, Error, Tensor};
use serde_json::json;

use super::report::{emit, Column, Format, Table};
use super::timing::measure;
use crate::cli::CliResult;

/// Square sizes run when neither `--size` nor `--lora` is given.
const DEFAULT_SIZES: [usize; 4] = [256, 512, 1024, 2048];

/// LoRA (tokens T, model dim d, rank r) combinations run by `--lora`: small enough that
/// the whole set takes a few seconds on lavapipe (a CPU Vulkan driver).
const DEFAULT_LORA: [LoraShape; 4] = [
    LoraShape::new(512, 256, 8),
    LoraShape::new(1024, 1024, 16),
    LoraShape::new(2048, 2048, 32),
    LoraShape::new(4096, 4096, 64),
];

#[derive(Debug, Args)]
pub struct MatmulArgs {
    /// N of an N x N x N product; repeat for several (default: 256, 512, 1024, 2048).
    #[arg(long = "size", value_name = "N", value_parser = positive)]
    sizes: Vec<usize>,
    /// Also (or, without --size, only) the skinny shapes of a LoRA layer: x A^T, h B^T and
    /// the two weight gradients, for a few (T, d, r) combinations.
    #[arg(long)]
    lora: bool,
    /// A LoRA combination "T,d,r" (tokens, model dim, rank) instead of the default set;
    /// repeat for several. Implies --lora.
    #[arg(long = "lora-shape", value_name = "T,d,r", value_parser = parse_lora_shape)]
    lora_shapes: Vec<LoraShape>,
    /// The matmul kernel: `auto` is what `Tensor::matmul` picks for each shape and device;
    /// `coop` the device's cooperative-matrix kernel; the others pin one (shapes or devices
    /// it cannot run are reported and skipped).
    #[arg(long, value_enum, default_value_t = KernelChoice::Auto)]
    kernel: KernelChoice,
    /// How B (the second operand, the weights) is stored; compute is f32 either way.
    #[arg(long, value_enum, default_value_t = WeightsChoice::F32)]
    weights: WeightsChoice,
    /// K splits for a pinned --kernel (1: no split-K); `auto` chooses its own.
    #[arg(long, default_value_t = 1, value_parser = positive)]
    splits: usize,
    /// Timed runs per shape, after one warm-up run.
    #[arg(long, default_value_t = 10, value_parser = positive)]
    repeats: usize,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
}

/// How B is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum WeightsChoice {
    F32,
    F16,
}

/// Which kernel runs the products.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum KernelChoice {
    Auto,
    General,
    Tiled,
    Subgroup,
    /// The device's cooperative-matrix kernel (coop-f16x16, else coop-f32x8).
    Coop,
    #[value(name = "coop-f16x16")]
    CoopF16x16,
    #[value(name = "coop-f32x8")]
    CoopF32x8,
}

impl KernelChoice {
    /// The pinned variant, or `None` for the engine's own choice. `coop` on a device
    /// without cooperative matrices pins coop-f16x16, which then reports why it cannot run.
    fn pinned(self, device: &Device, splits: usize) -> Option<MatmulVariant> {
        let kernel = match self {
            KernelChoice::Auto => return None,
            KernelChoice::General => MatmulKernel::General,
            KernelChoice::Tiled => MatmulKernel::Tiled,
            KernelChoice::Subgroup => MatmulKernel::Subgroup,
            KernelChoice::Coop => cooperative_kernel(device).unwrap_or(MatmulKernel::CoopF16x16),
            KernelChoice::CoopF16x16 => MatmulKernel::CoopF16x16,
            KernelChoice::CoopF32x8 => MatmulKernel::CoopF32x8,
        };
        Some(MatmulVariant::new(kernel, splits))
    }
}

/// One matmul to time: C [m, n] = op(A) op(B), op transposing when the flag is set.
#[derive(Clone, Debug, PartialEq)]
pub struct Case {
    /// What the product is (in a LoRA layer).
    pub kind: &'static str,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub ta: bool,
    pub tb: bool,
}

impl Case {
    /// `op(A) [m, k] x op(B) [k, n]`, from `[m, n, k]` and the transpose flags.
    const fn new(kind: &'static str, [m, n, k]: [usize; 3], ta: bool, tb: bool) -> Case {
        Case {
            kind,
            m,
            n,
            k,
            ta,
            tb,
        }
    }

    fn square(n: usize) -> Case {
        Case::new("square", [n, n, n], false, false)
    }

    /// A's and B's stored shapes.
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

    /// `[m,k]x[k,n]`, with `^T` after an operand stored transposed.
    pub fn shape(&self) -> String {
        let (a, b) = self.stored();
        let t = |flag: bool| if flag { "^T" } else { "" };
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

    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64
    }
}

/// Tokens T, model dim d and LoRA rank r of one adapted linear layer (d_in = d_out = d).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoraShape {
    pub tokens: usize,
    pub dim: usize,
    pub rank: usize,
}

impl LoraShape {
    pub const fn new(tokens: usize, dim: usize, rank: usize) -> LoraShape {
        LoraShape { tokens, dim, rank }
    }

    /// The four products of one LoRA linear (x [T,d], A [r,d], h [T,r], B [d,r], dy [T,d]),
    /// with the transpose flags the engine's autodiff uses for them.
    pub fn cases(self) -> [Case; 4] {
        let LoraShape {
            tokens: t,
            dim: d,
            rank: r,
        } = self;
        [
            Case::new("lora x A^T", [t, r, d], false, true),
            Case::new("lora h B^T", [t, d, r], false, true),
            Case::new("lora dA = dh^T x", [r, d, t], true, false),
            Case::new("lora dB = dy^T h", [d, r, t], true, false),
        ]
    }
}

fn positive(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{s:?} is not a whole number: {e}")),
    }
}

fn parse_lora_shape(s: &str) -> Result<LoraShape, String> {
    let parts: Vec<&str> = s.split([',', 'x']).collect();
    let [t, d, r] = parts.as_slice() else {
        return Err(format!(
            "{s:?}: expected three numbers T,d,r (tokens, model dim, rank)"
        ));
    };
    Ok(LoraShape::new(positive(t)?, positive(d)?, positive(r)?))
}

impl MatmulArgs {
    /// Every case to time, in order.
    fn cases(&self) -> Vec<Case> {
        let lora = self.lora || !self.lora_shapes.is_empty();
        let sizes: &[usize] = match (self.sizes.is_empty(), lora) {
            (true, false) => &DEFAULT_SIZES,
            _ => &self.sizes,
        };
        let lora_shapes: &[LoraShape] = match (lora, self.lora_shapes.is_empty()) {
            (false, _) => &[],
            (true, true) => &DEFAULT_LORA,
            (true, false) => &self.lora_shapes,
        };
        let mut cases: Vec<Case> = sizes.iter().map(|&n| Case::square(n)).collect();
        cases.extend(lora_shapes.iter().flat_map(|s| s.cases()));
        cases
    }
}

pub fn run(args: MatmulArgs) -> CliResult {
    let device = Device::new()?;
    let info = device.info();
    let format = if args.json {
        Format::JsonLines
    } else {
        Format::Table
    };
    let pinned = args.kernel.pinned(&device, args.splits);
    let cases = args.cases();
    let widest = |f: &dyn Fn(&Case) -> usize| cases.iter().map(f).max().unwrap_or(0);
    let table = Table::new(vec![
        Column::label("case", widest(&|c| c.kind.len())),
        Column::label("shape", widest(&|c| c.shape().len())),
        Column::label("kernel", "coop-f16x16 split-k 64".len()),
        Column::number("m", 5),
        Column::number("n", 5),
        Column::number("k", 5),
        Column::number("median ms", 10),
        Column::number("min ms", 10),
        Column::number("GFLOP/s", 8),
    ]);
    if format == Format::Table {
        emit(&format!(
            "matmul, f32 A and {:?} B, on {} ({}, {}); {} timed runs after 1 warm-up, each synchronized",
            args.weights, info.name, info.backend, info.device_type, args.repeats
        ));
        emit(&table.header());
    }
    for (i, case) in cases.iter().enumerate() {
        let (a_shape, b_shape) = case.stored();
        let a = Tensor::rand_uniform(&device, &a_shape, -1.0, 1.0, 2 * i as u64)?;
        let mut b = Tensor::rand_uniform(&device, &b_shape, -1.0, 1.0, 2 * i as u64 + 1)?;
        if args.weights == WeightsChoice::F16 {
            b = b.to_f16()?;
        }
        let (ta, tb) = (case.ta, case.tb);
        let variant = match pinned {
            Some(v) => v,
            None => matmul_variant(&a, &b, ta, tb)?,
        };
        let product = || match pinned {
            Some(v) => matmul_with(&a, &b, ta, tb, v),
            None => matmul_t(&a, &b, ta, tb),
        };
        let timing = match measure(&device, args.repeats, || product().map(drop)) {
            Ok(t) => t,
            // A pinned kernel that cannot run this shape: say so and go on.
            Err(Error::Unsupported(why)) => {
                emit(&match format {
                    Format::JsonLines => json!({
                        "bench": "matmul",
                        "case": case.kind,
                        "shape": case.shape(),
                        "kernel": variant.to_string(),
                        "skipped": why,
                        "device": info.name,
                    })
                    .to_string(),
                    Format::Table => format!("{}  skipped: {why}", case.shape()),
                });
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let gflops = case.flops() / timing.median_s / 1e9;
        emit(&match format {
            Format::JsonLines => json!({
                "bench": "matmul",
                "case": case.kind,
                "shape": case.shape(),
                "kernel": variant.to_string(),
                "weights": format!("{:?}", args.weights).to_lowercase(),
                "m": case.m,
                "n": case.n,
                "k": case.k,
                "transpose_a": ta,
                "transpose_b": tb,
                "repeats": timing.runs,
                "median_s": timing.median_s,
                "min_s": timing.min_s,
                "gflops": gflops,
                "device": info.name,
                "backend": info.backend,
            })
            .to_string(),
            Format::Table => table.line(&[
                case.kind.to_string(),
                case.shape(),
                variant.to_string(),
                case.m.to_string(),
                case.n.to_string(),
                case.k.to_string(),
                format!("{:.3}", timing.median_s * 1e3),
                format!("{:.3}", timing.min_s * 1e3),
                format!("{gflops:.2}"),
            ]),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> MatmulArgs {
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            args: MatmulArgs,
        }
        let argv = std::iter::once("bench-matmul").chain(args.iter().copied());
        Wrap::try_parse_from(argv).unwrap().args
    }

    #[test]
    fn default_is_the_four_square_sizes() {
        let sizes: Vec<usize> = parse(&[]).cases().iter().map(|c| c.m).collect();
        assert_eq!(sizes, DEFAULT_SIZES);
    }

    #[test]
    fn sizes_and_lora_shapes_combine() {
        let cases = parse(&["--size", "64", "--size", "7", "--lora-shape", "512,256,8"]).cases();
        assert_eq!(cases.len(), 2 + 4);
        assert_eq!(cases[1], Case::square(7));
        assert_eq!(cases[2].shape(), "[512,256]x[8,256]^T");
        assert_eq!(cases[4].shape(), "[512,8]^Tx[512,256]");
        assert_eq!(parse(&["--lora"]).cases().len(), 4 * DEFAULT_LORA.len());
    }

    #[test]
    fn lora_cases_have_the_shapes_of_a_lora_linear() {
        for case in LoraShape::new(100, 30, 4).cases() {
            let (a, b) = case.stored();
            // The inner dims agree once the transposes are applied.
            let ka = if case.ta { a[0] } else { a[1] };
            let kb = if case.tb { b[1] } else { b[0] };
            assert_eq!((ka, kb), (case.k, case.k), "{case:?}");
        }
    }

    #[test]
    fn cooperative_kernels_are_named_as_the_engine_names_them() {
        for (arg, choice) in [
            ("coop", KernelChoice::Coop),
            ("coop-f16x16", KernelChoice::CoopF16x16),
            ("coop-f32x8", KernelChoice::CoopF32x8),
        ] {
            assert_eq!(parse(&["--kernel", arg]).kernel, choice);
        }
        for kernel in MatmulKernel::COOPERATIVE {
            assert!(
                KernelChoice::from_str(kernel.name(), false).is_ok(),
                "{kernel}"
            );
        }
    }

    #[test]
    fn bad_numbers_are_refused() {
        assert!(positive("0").is_err());
        assert!(parse_lora_shape("1,2").is_err());
        assert_eq!(parse_lora_shape("4x5x6"), Ok(LoraShape::new(4, 5, 6)));
    }
}
