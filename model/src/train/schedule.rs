//! Learning-rate schedules with warmup, as `transformers`' schedulers compute them: the rate
//! for optimizer step `s` (0-based) is `peak * factor(s)`.

use std::str::FromStr;

/// The shape of the schedule after warmup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// The peak rate until the end.
    Constant,
    /// Linear decay from the peak to 0 at `total`.
    Linear,
    /// Half a cosine from the peak to 0 at `total`.
    Cosine,
}

impl FromStr for ScheduleKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "constant" => Ok(ScheduleKind::Constant),
            "linear" => Ok(ScheduleKind::Linear),
            "cosine" => Ok(ScheduleKind::Cosine),
            other => Err(format!(
                "unknown schedule `{other}` (constant, linear or cosine)"
            )),
        }
    }
}

/// Peak rate, warmup steps and total steps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrSchedule {
    /// The shape after warmup.
    pub kind: ScheduleKind,
    /// The rate at the end of warmup.
    pub peak: f32,
    /// Steps of linear warmup from 0.
    pub warmup: usize,
    /// The step at which the decay reaches 0 (the run's length).
    pub total: usize,
}

impl LrSchedule {
    /// The learning rate of optimizer step `step` (0-based): linear warmup from 0, then
    /// constant, linear decay to 0 at `total`, or half a cosine to 0 at `total`.
    ///
    /// ```
    /// use hydralora_model::train::{LrSchedule, ScheduleKind};
    /// let s = LrSchedule { kind: ScheduleKind::Linear, peak: 1.0, warmup: 4, total: 12 };
    /// assert_eq!(s.at(2), 0.5); // warming up
    /// assert_eq!(s.at(4), 1.0); // the peak
    /// assert_eq!(s.at(8), 0.5); // halfway down
    /// assert_eq!(s.at(12), 0.0);
    /// ```
    pub fn at(&self, step: usize) -> f32 {
        if step < self.warmup {
            return self.peak * step as f32 / self.warmup.max(1) as f32;
        }
        let decay_steps = self.total.saturating_sub(self.warmup).max(1) as f64;
        let progress = ((step - self.warmup) as f64 / decay_steps).min(1.0);
        let factor = match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => 1.0 - progress,
            ScheduleKind::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        };
        (self.peak as f64 * factor) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay_like_transformers() {
        let s = |kind| LrSchedule {
            kind,
            peak: 1.0,
            warmup: 4,
            total: 12,
        };
        // transformers: lr_lambda(step) = step / warmup during warmup.
        assert_eq!(s(ScheduleKind::Linear).at(0), 0.0);
        assert_eq!(s(ScheduleKind::Linear).at(2), 0.5);
        assert_eq!(s(ScheduleKind::Constant).at(4), 1.0);
        assert_eq!(s(ScheduleKind::Constant).at(100), 1.0);
        // linear: (total - step) / (total - warmup)
        assert!((s(ScheduleKind::Linear).at(8) - 0.5).abs() < 1e-6);
        assert_eq!(s(ScheduleKind::Linear).at(12), 0.0);
        // cosine: 0.5 (1 + cos(pi progress))
        assert!((s(ScheduleKind::Cosine).at(8) - 0.5).abs() < 1e-6);
        assert!(
            (s(ScheduleKind::Cosine).at(6) - 0.5 * (1.0 + (std::f32::consts::PI / 4.0).cos()))
                .abs()
                < 1e-6
        );
        assert!(s(ScheduleKind::Cosine).at(12).abs() < 1e-6);
    }
}
