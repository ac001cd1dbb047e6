//! A user-written op with its own WGSL kernels, checked the way the engine checks its own.
//!
//! `softplus(x) = ln(1 + e^x)`, forward and backward (`dx = sigmoid(x) * dy`) each a WGSL
//! compute shader, recorded in the autodiff graph through `hydralora::engine::custom`. Then:
//!
//! 1. the forward against a float64 CPU reference,
//! 2. `gradcheck`: the backward kernel against central finite differences of the forward,
//! 3. a proptest over random shapes (size-1 dims, odd sizes, one past a workgroup) and
//!    random values, repeating 1 and 2 for each, and composing the op with built-in ones.
//!
//! Run: `cargo run --example gradcheck_custom_op` (needs a GPU adapter; lavapipe will do).

use std::sync::Arc;

use hydralora::engine::custom::{launch, record, CustomOp};
use hydralora::engine::gradcheck::{gradcheck, GradcheckOptions};
use hydralora::engine::shaders::Shader;
use hydralora::engine::{Device, Error, Result, Tensor};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// Invocations per workgroup in both kernels.
const WORKGROUP: usize = 256;

/// The engine's binding convention: `@binding(0)` is the params block (`var<storage, read>`,
/// the `u32` words passed to `launch`), then the read-only inputs, then the read-write
/// outputs. A large tensor spills into y (`num_workgroups` tells the kernel the grid's width).
const SOFTPLUS: Shader = Shader {
    name: "example_softplus",
    source: r#"
struct Params {
    numel: u32,
}

@group(0) @binding(0) var<storage, read> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn softplus(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * 256u;
    if i >= p.numel { return; }
    let v = x[i];
    // ln(1 + e^v) without overflow for large v: max(v, 0) + ln(1 + e^-|v|).
    y[i] = max(v, 0.0) + log(1.0 + exp(-abs(v)));
}
"#,
};

/// Backward: `dx = sigmoid(x) * dy`. Reads x and dy, writes dx.
const SOFTPLUS_BACKWARD: Shader = Shader {
    name: "example_softplus_backward",
    source: r#"
struct Params {
    numel: u32,
}

@group(0) @binding(0) var<storage, read> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;

@compute @workgroup_size(256)
fn softplus_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * 256u;
    if i >= p.numel { return; }
    // sigmoid(v) in the form that does not overflow for either sign of v.
    let v = x[i];
    let e = exp(-abs(v));
    let s = select(e / (1.0 + e), 1.0 / (1.0 + e), v >= 0.0);
    dx[i] = s * dy[i];
}
"#,
};

/// Workgroups for `numel` invocations: x first, spilling into y past the device's limit.
fn workgroups(device: &Device, numel: usize) -> Result<[u32; 3]> {
    let groups = numel.div_ceil(WORKGROUP);
    let max = device.info().limits.max_compute_workgroups_per_dimension as usize;
    let (x, y) = if groups <= max {
        (groups, 1)
    } else {
        (max, groups.div_ceil(max))
    };
    let too_big = || Error::InvalidArgument {
        op: "softplus",
        shape: vec![numel],
        why: "more elements than one dispatch can cover".into(),
    };
    Ok([
        u32::try_from(x).map_err(|_| too_big())?,
        u32::try_from(y).map_err(|_| too_big())?,
        1,
    ])
}

fn numel_param(numel: usize) -> Result<u32> {
    u32::try_from(numel).map_err(|_| Error::InvalidArgument {
        op: "softplus",
        shape: vec![numel],
        why: "over 2^32 elements".into(),
    })
}

/// The backward rule the engine calls during `backward()`.
struct Softplus;

impl CustomOp for Softplus {
    fn name(&self) -> &'static str {
        "softplus"
    }

    fn backward(
        &self,
        inputs: &[&Tensor],
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<Vec<Option<Tensor>>> {
        let x = inputs[0];
        let dx = Tensor::uninit(x.device(), x.shape())?;
        let params = [numel_param(x.numel())?];
        let groups = workgroups(x.device(), x.numel())?;
        launch(
            &SOFTPLUS_BACKWARD,
            "softplus_backward",
            &params,
            &[x, grad],
            &[&dx],
            groups,
        )?;
        Ok(vec![Some(dx)])
    }
}

/// `softplus(x)`, elementwise; differentiable.
fn softplus(x: &Tensor) -> Result<Tensor> {
    let y = Tensor::uninit(x.device(), x.shape())?;
    let params = [numel_param(x.numel())?];
    let groups = workgroups(x.device(), x.numel())?;
    launch(&SOFTPLUS, "softplus", &params, &[x], &[&y], groups)?;
    // Records the op in the graph when x tracks gradients; otherwise returns y as it is.
    Ok(record(y, &[x], Arc::new(Softplus)))
}

/// The float64 reference.
fn softplus_ref(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| (v as f64).exp().ln_1p()).collect()
}

/// Forward tolerance: f32 `exp` and `log` on the GPU against f64, a few ulps of the result.
const FORWARD_ATOL: f64 = 1e-5;
const FORWARD_RTOL: f64 = 1e-5;

/// The largest |gpu - reference| - (atol + rtol |reference|); <= 0 passes.
fn forward_excess(gpu: &[f32], reference: &[f64]) -> f64 {
    gpu.iter()
        .zip(reference)
        .map(|(&g, &r)| {
            let e = (g as f64 - r).abs() - (FORWARD_ATOL + FORWARD_RTOL * r.abs());
            if e.is_nan() {
                f64::INFINITY
            } else {
                e
            }
        })
        .fold(f64::NEG_INFINITY, f64::max)
}

/// Finite differences in f32 with eps = 5e-2 (softplus is smooth; a larger step keeps the
/// cancellation error of the difference small). Every output element gets a random weight
/// in gradcheck, so each checked coordinate sees the whole op.
fn options(seed: u64) -> GradcheckOptions {
    GradcheckOptions {
        eps: 5e-2,
        atol: 5e-3,
        rtol: 1e-2,
        max_checks_per_input: 24,
        seed,
    }
}

fn main() -> Result<()> {
    let device = Device::new()?;
    println!("device: {}", device.info().name);

    // 1. Forward against f64, on values across the range where softplus bends.
    let n = 1000; // not a multiple of the workgroup size
    let host: Vec<f32> = (0..n)
        .map(|i| -30.0 + 60.0 * i as f32 / (n - 1) as f32)
        .collect();
    let x = Tensor::from_slice(&device, &host, &[n])?;
    let y = softplus(&x)?.to_vec_f32()?;
    let excess = forward_excess(&y, &softplus_ref(&host));
    println!(
        "forward:   {n} values in [-30, 30] against f64: {} (tolerance {FORWARD_ATOL:e} + {FORWARD_RTOL:e} |ref|)",
        if excess <= 0.0 { "ok" } else { "FAILED" }
    );
    assert!(
        excess <= 0.0,
        "softplus forward is {excess:e} over tolerance"
    );

    // 2. gradcheck: the WGSL backward against finite differences of the WGSL forward.
    let x = Tensor::rand_uniform(&device, &[7, 13], -4.0, 4.0, 1)?;
    let report = gradcheck(|xs| softplus(&xs[0]), &[x], &options(0))?;
    println!("gradcheck: softplus on [7, 13]: {report}");
    assert!(report.passed(), "{report}");
    // And composed with built-in ops, so the custom rule meets the engine's rules in one graph.
    let x = Tensor::rand_uniform(&device, &[7, 13], -1.0, 1.0, 2)?;
    let w = Tensor::rand_uniform(&device, &[13, 5], -0.5, 0.5, 3)?;
    let report = gradcheck(
        |xs| softplus(&xs[0].matmul(&xs[1])?)?.silu(),
        &[x, w],
        &options(1),
    )?;
    println!("gradcheck: silu(softplus(x @ w)), x [7, 13], w [13, 5]: {report}");
    assert!(report.passed(), "{report}");

    // 3. proptest: random shapes and values, forward and gradients for each.
    let cases = 12;
    let worst = std::cell::Cell::new(0.0f32); // the largest gradient error over all cases
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let shapes = prop_oneof![
        prop::collection::vec(1usize..=9, 1..=3), // small, with size-1 dims
        (1usize..=3).prop_map(|k| vec![WORKGROUP * k + 1]), // one past a workgroup
    ];
    let result = runner.run(
        &(shapes, -8.0f32..8.0, any::<u64>()),
        |(shape, spread, seed)| {
            let check = || -> Result<std::result::Result<(), String>> {
                let x = Tensor::rand_uniform(
                    &device,
                    &shape,
                    -spread.abs(),
                    spread.abs() + 1e-3,
                    seed,
                )?;
                let host = x.to_vec_f32()?;
                let excess = forward_excess(&softplus(&x)?.to_vec_f32()?, &softplus_ref(&host));
                if excess > 0.0 {
                    return Ok(Err(format!(
                        "forward {excess:e} over tolerance for shape {shape:?}"
                    )));
                }
                let report = gradcheck(|xs| softplus(&xs[0]), &[x], &options(seed))?;
                worst.set(worst.get().max(report.max_abs_error));
                Ok(if report.passed() {
                    Ok(())
                } else {
                    Err(format!("shape {shape:?}: {report}"))
                })
            };
            match check() {
                Ok(verdict) => verdict.map_err(TestCaseError::fail),
                Err(e) => Err(TestCaseError::fail(format!("engine error: {e}"))),
            }
        },
    );
    match result {
        Ok(()) => println!(
            "proptest:  {cases} random shapes and value ranges: forward and gradcheck ok, max |error| {:.3e}",
            worst.get()
        ),
        Err(e) => panic!("proptest found a failing case: {e}"),
    }
    Ok(())
}
