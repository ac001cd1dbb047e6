//! Checkpoint folders written as a whole or not at all: everything goes into a temporary
//! sibling folder, which then replaces the old one by renames. A crash at any moment leaves
//! either the old or the new checkpoint readable (the old one possibly under `<dir>.old`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::LoaderState;
use crate::error::{ModelError, Result};
use crate::train::settings::TrainSettings;

/// The run's position and settings ([`TrainerState`] as JSON) in a checkpoint folder.
pub const STATE_FILE: &str = "trainer_state.json";
/// The AdamW moments in a checkpoint folder (`<param>.exp_avg`, `<param>.exp_avg_sq`).
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// Where a run stands: enough to continue it exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps the trainer has done.
    pub step: usize,
    /// The optimizer's own step count (its bias correction).
    pub optimizer_steps: u64,
    /// Where the data loader stands.
    pub loader: LoaderState,
    /// The run's settings; a resumed run uses these.
    pub settings: TrainSettings,
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(suffix);
    dir.with_file_name(name)
}

/// Writes a new version of `dir` with `write(tmp)`, then swaps it in.
pub fn replace_dir(dir: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = sibling(dir, ".tmp");
    let old = sibling(dir, ".old");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| ModelError::io("create", &tmp, e))?;
    write(&tmp)?;
    if dir.exists() {
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(dir, &old).map_err(|e| ModelError::io("move aside", dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| ModelError::io("rename into place", &tmp, e))?;
    if let Some(parent) = dir.parent() {
        if let Ok(f) = std::fs::File::open(parent) {
            let _ = f.sync_all();
        }
    }
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// `dir` if it holds a complete checkpoint, else `<dir>.old` (a crash between the renames).
pub fn readable_dir(dir: &Path) -> Result<PathBuf> {
    for candidate in [dir.to_path_buf(), sibling(dir, ".old")] {
        if candidate.join(STATE_FILE).is_file() {
            return Ok(candidate);
        }
    }
    Err(ModelError::Input(format!(
        "no checkpoint to resume in `{}` (no {STATE_FILE})",
        dir.display()
    )))
}

/// Reads `dir/trainer_state.json`; errors name the file (and the JSON position).
pub fn read_state(dir: &Path) -> Result<TrainerState> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io("read", &path, e))?;
    serde_json::from_str(&text).map_err(|e| ModelError::json(&path, &e))
}
