//! The timing loop every benchmark uses.

use std::time::Instant;

use hydralora::engine::{Device, Result};

/// Wall-clock seconds of the timed runs of one benchmark case.
#[derive(Clone, Debug, PartialEq)]
pub struct Timing {
    pub median_s: f64,
    pub min_s: f64,
    pub runs: usize,
}

impl Timing {
    /// Median and minimum of `samples` (seconds); `None` when there are none.
    pub fn from_samples(samples: &[f64]) -> Option<Timing> {
        if samples.is_empty() {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let mid = s.len() / 2;
        let median_s = if s.len() % 2 == 1 {
            s[mid]
        } else {
            0.5 * (s[mid - 1] + s[mid])
        };
        Some(Timing {
            median_s,
            min_s: s[0],
            runs: s.len(),
        })
    }
}

/// Runs `work` once to warm up (the first call compiles its pipelines and fills the buffer
/// pool), then `repeats` timed times. A run is `work()` (which records GPU commands) followed
/// by `device.synchronize()` (submit, and wait until the GPU is done), so the time covers
/// recording, submission and execution.
pub fn measure(
    device: &Device,
    repeats: usize,
    mut work: impl FnMut() -> Result<()>,
) -> Result<Timing> {
    work()?;
    device.synchronize()?;
    let mut samples = Vec::with_capacity(repeats);
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        work()?;
        device.synchronize()?;
        samples.push(start.elapsed().as_secs_f64());
    }
    Ok(Timing::from_samples(&samples).expect("at least one timed run"))
}

#[cfg(test)]
mod tests {
    use super::Timing;

    #[test]
    fn median_and_min_of_odd_and_even_counts() {
        let t = Timing::from_samples(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((t.median_s, t.min_s, t.runs), (2.0, 1.0, 3));
        let t = Timing::from_samples(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!((t.median_s, t.min_s, t.runs), (2.5, 1.0, 4));
        assert_eq!(Timing::from_samples(&[]), None);
    }
}
