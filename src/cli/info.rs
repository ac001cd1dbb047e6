//! `hydralora info`: the adapter the engine would run on, with the limits that matter,
//! whether its matmuls use cooperative matrices (and which kernel otherwise), and how
//! `--precision mixed` runs on it.

use hydralora::engine::ops::matmul::cooperative_matrix_summary;
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
    println!(
        "precision:            f32 by default; --precision mixed runs here as f16 rounding in \
         front of the f32 kernels (a tensor-core run's numbers, not its speed: the f16 \
         cooperative-matrix kernels are not chosen for it yet)"
    );
    Ok(())
}
