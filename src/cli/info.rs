//! `hydralora info`: the adapter the engine would run on, with the limits that matter, and
//! whether its matmuls use cooperative matrices (and which kernel otherwise).

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
    Ok(())
}
