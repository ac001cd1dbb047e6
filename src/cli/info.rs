//! `hydralora info`: the adapter the engine would run on, with the limits that matter,
//! whether its matmuls use cooperative matrices (and which kernel otherwise), and how
//! `--precision mixed` runs on it.

use hydralora::engine::ops::matmul::{
    cooperative_kernels, cooperative_matrix_summary, MatmulKernel,
};
use hydralora::engine::Device;

use super::CliResult;

pub fn run() -> CliResult {
    // The error says what to install when there is no adapter (a GPU driver, or lavapipe).
    let device = Device::new()?;
    println!("{}", device.info());
    println!(
        "cooperative matrix:   {}",
        cooperative_matrix_summary(&device)
    );
    let tensor_cores = cooperative_kernels(&device).contains(&MatmulKernel::CoopF16x16);
    println!(
        "precision:            f32 by default; --precision mixed runs the layers' products {}",
        match tensor_cores {
            true => "on the f16 cooperative-matrix kernel",
            false =>
                "as f16 rounding in front of the f32 kernels (no f16 cooperative matrices here)",
        }
    );
    Ok(())
}
