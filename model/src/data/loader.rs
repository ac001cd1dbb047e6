//! Batches: right padding, a seeded and resumable shuffling loader, in-order eval batches and
//! a deterministic train / eval split.

use std::collections::BTreeMap;

use hydralora_engine::rng::Rng;
use serde::{Deserialize, Serialize};

use super::tokenize::{TokenizedExample, IGNORE_INDEX};
use super::Categorized;
use crate::error::{ModelError, Result};

/// Examples padded on the right to one length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Token ids, `[batch, seq]` row-major; positions past an example's end hold the pad id.
    pub ids: Vec<u32>,
    /// Labels aligned with `ids`, `[batch, seq]`; [`IGNORE_INDEX`] on BOS, prompt and padding.
    pub labels: Vec<i32>,
    /// Number of rows.
    pub batch: usize,
    /// Row length: the longest example's.
    pub seq: usize,
    /// Each row's category, `[batch]`.
    pub categories: Vec<Option<String>>,
}

impl Batch {
    /// `examples` as one batch, padded on the right with `pad_id` (label [`IGNORE_INDEX`]) to
    /// the longest one. Right padding keeps every real token's causal context free of pads.
    pub fn collate(examples: &[&TokenizedExample], pad_id: u32) -> Batch {
        let seq = examples.iter().map(|e| e.ids.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(examples.len() * seq);
        let mut labels = Vec::with_capacity(examples.len() * seq);
        for example in examples {
            let pad = seq - example.ids.len();
            ids.extend_from_slice(&example.ids);
            ids.extend(std::iter::repeat_n(pad_id, pad));
            labels.extend_from_slice(&example.labels);
            labels.extend(std::iter::repeat_n(IGNORE_INDEX, pad));
        }
        Batch {
            ids,
            labels,
            batch: examples.len(),
            seq,
            categories: examples.iter().map(|e| e.category.clone()).collect(),
        }
    }

    /// Positions with a label (the tokens the loss is taken over).
    pub fn labelled_tokens(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
    }
}

/// `examples` in order, `batch_size` at a time (the last batch may be smaller), for
/// evaluation.
pub fn eval_batches(
    examples: &[TokenizedExample],
    batch_size: usize,
    pad_id: u32,
) -> Result<impl Iterator<Item = Batch> + '_> {
    check_batch_size(batch_size)?;
    Ok(examples.chunks(batch_size).map(move |chunk| {
        let rows: Vec<&TokenizedExample> = chunk.iter().collect();
        Batch::collate(&rows, pad_id)
    }))
}

fn check_batch_size(batch_size: usize) -> Result<()> {
    match batch_size {
        0 => Err(ModelError::Input(
            "the batch size must be at least 1".into(),
        )),
        _ => Ok(()),
    }
}

/// Where a [`Loader`] stands, to save in a checkpoint and give to [`Loader::restore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderState {
    /// The current epoch (epochs completed), from 0.
    pub epoch: u64,
    /// The next example's index in this epoch's shuffled order, `< num_examples`.
    pub position: usize,
    /// The shuffling seed.
    pub seed: u64,
    /// The number of examples; restoring with another number is an error.
    pub num_examples: usize,
    /// A hash of the examples' ids and labels; restoring with other examples is an error.
    pub fingerprint: u64,
}

/// Training batches of a fixed size, shuffled per epoch, endlessly.
///
/// Epoch `e` visits every example once, in an order that depends only on `(seed, e)`.
/// Batches are taken from the stream of epochs one after another, so every batch is full:
/// the last batch of an epoch is neither dropped nor short, it is completed with the first
/// examples of the next epoch's order. [`Loader::state`] and [`Loader::restore`] continue
/// exactly where a loader stopped.
#[derive(Debug, Clone)]
pub struct Loader {
    examples: Vec<TokenizedExample>,
    batch_size: usize,
    pad_id: u32,
    seed: u64,
    epoch: u64,
    position: usize,
    /// This epoch's order: a permutation of the example indices.
    order: Vec<usize>,
    fingerprint: u64,
}

impl Loader {
    /// A loader at the start of epoch 0. No examples or a batch size of 0 is an error.
    pub fn new(
        examples: Vec<TokenizedExample>,
        batch_size: usize,
        pad_id: u32,
        seed: u64,
    ) -> Result<Self> {
        check_batch_size(batch_size)?;
        if examples.is_empty() {
            return Err(ModelError::Input("the loader has no examples".into()));
        }
        Ok(Loader {
            order: epoch_order(examples.len(), seed, 0),
            fingerprint: fingerprint(&examples),
            examples,
            batch_size,
            pad_id,
            seed,
            epoch: 0,
            position: 0,
        })
    }

    /// A loader that continues from `state`, over the same examples (checked by count and
    /// fingerprint). The batch size may differ from the saved run's.
    pub fn restore(
        examples: Vec<TokenizedExample>,
        batch_size: usize,
        pad_id: u32,
        state: &LoaderState,
    ) -> Result<Self> {
        let mut loader = Loader::new(examples, batch_size, pad_id, state.seed)?;
        if state.num_examples != loader.len() || state.fingerprint != loader.fingerprint {
            return Err(ModelError::Input(format!(
                "cannot resume the data loader: the data differ from the checkpoint's \
                 ({} examples now, {} then; fingerprint {:016x} now, {:016x} then); \
                 were the data files, the template or the max length changed?",
                loader.len(),
                state.num_examples,
                loader.fingerprint,
                state.fingerprint
            )));
        }
        if state.position >= loader.len() {
            return Err(ModelError::Input(format!(
                "cannot resume the data loader: position {} is past the {} examples",
                state.position,
                loader.len()
            )));
        }
        loader.epoch = state.epoch;
        loader.position = state.position;
        loader.order = epoch_order(loader.len(), loader.seed, loader.epoch);
        Ok(loader)
    }

    /// The next `batch_size` examples of the stream, moving into the next epoch as needed.
    pub fn next_batch(&mut self) -> Batch {
        let mut rows = Vec::with_capacity(self.batch_size);
        for _ in 0..self.batch_size {
            rows.push(self.order[self.position]);
            self.advance();
        }
        let rows: Vec<&TokenizedExample> = rows.iter().map(|&i| &self.examples[i]).collect();
        Batch::collate(&rows, self.pad_id)
    }

    /// Moves to the next example, shuffling a new epoch after the last one.
    fn advance(&mut self) {
        self.position += 1;
        if self.position == self.examples.len() {
            self.epoch += 1;
            self.position = 0;
            self.order = epoch_order(self.examples.len(), self.seed, self.epoch);
        }
    }

    /// Where the loader stands.
    pub fn state(&self) -> LoaderState {
        LoaderState {
            epoch: self.epoch,
            position: self.position,
            seed: self.seed,
            num_examples: self.examples.len(),
            fingerprint: self.fingerprint,
        }
    }

    /// Moves back to `state`, taken earlier from this loader with [`Loader::state`] (a
    /// cancelled step gives back the batches it took).
    pub(crate) fn rewind(&mut self, state: &LoaderState) {
        debug_assert_eq!(state.fingerprint, self.fingerprint);
        if state.epoch != self.epoch {
            self.order = epoch_order(self.examples.len(), self.seed, state.epoch);
        }
        self.epoch = state.epoch;
        self.position = state.position;
    }

    /// Epochs done, fractional: `epoch + position / len`.
    pub fn epochs_done(&self) -> f64 {
        self.epoch as f64 + self.position as f64 / self.examples.len() as f64
    }

    /// Batches that make one epoch, rounded up.
    pub fn batches_per_epoch(&self) -> usize {
        self.examples.len().div_ceil(self.batch_size)
    }

    /// The number of examples.
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    /// Always false: a loader has examples.
    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// Examples per batch.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The id that fills padded positions.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The examples, in their original order.
    pub fn examples(&self) -> &[TokenizedExample] {
        &self.examples
    }
}

/// Epoch `epoch`'s order of `n` examples: a Fisher-Yates shuffle seeded by `(seed, epoch)`.
fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = Rng::new(Rng::new(seed).next_u64() ^ epoch);
    let mut order: Vec<usize> = (0..n).collect();
    shuffle(&mut order, &mut rng);
    order
}

fn shuffle<T>(items: &mut [T], rng: &mut Rng) {
    for i in (1..items.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

/// FNV-1a over the examples' lengths, ids and labels.
fn fingerprint(examples: &[TokenizedExample]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01B3;
    let mut hash: u64 = 0xCBF2_9CE4_8422_2325;
    let mut mix = |word: u64| hash = (hash ^ word).wrapping_mul(PRIME);
    for example in examples {
        mix(example.ids.len() as u64);
        example.ids.iter().for_each(|&id| mix(id as u64));
        example.labels.iter().for_each(|&l| mix(l as u32 as u64));
    }
    hash
}

/// Splits `items` into `(train, eval)`, with `round(fraction * len)` items in eval (at least
/// one and at most `len - 1` when `0 < fraction` and there are two items or more).
///
/// Deterministic for a seed, and stratified by category: each category gives eval its share
/// (largest remainders first, categories in sorted order on ties), drawn at random within the
/// category. Both parts keep the items' original order. `fraction` must be in `[0, 1)`.
pub fn split_eval<T: Categorized>(
    items: Vec<T>,
    fraction: f64,
    seed: u64,
) -> Result<(Vec<T>, Vec<T>)> {
    if !(0.0..1.0).contains(&fraction) {
        return Err(ModelError::Input(format!(
            "the eval fraction must be in [0, 1), got {fraction}"
        )));
    }
    let in_eval = eval_mask(&items, fraction, seed);
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    for (item, is_eval) in items.into_iter().zip(in_eval) {
        if is_eval {
            eval.push(item);
        } else {
            train.push(item);
        }
    }
    Ok((train, eval))
}

/// Which items go to eval (see [`split_eval`]).
fn eval_mask<T: Categorized>(items: &[T], fraction: f64, seed: u64) -> Vec<bool> {
    let n = items.len();
    let mut target = (fraction * n as f64).round() as usize;
    if fraction > 0.0 && n >= 2 {
        target = target.clamp(1, n - 1);
    }
    // Category -> its items' indices, in order.
    let mut groups: BTreeMap<Option<&str>, Vec<usize>> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        groups.entry(item.category()).or_default().push(i);
    }
    let quotas = largest_remainder(groups.values().map(Vec::len), target, n);
    let mut rng = Rng::new(seed);
    let mut mask = vec![false; n];
    for (mut indices, quota) in groups.into_values().zip(quotas) {
        shuffle(&mut indices, &mut rng);
        indices[..quota].iter().for_each(|&i| mask[i] = true);
    }
    mask
}

/// Splits `target` over groups of the given sizes (summing to `total`) in proportion to their
/// sizes: floors first, then one more to the largest remainders (earlier groups on ties).
fn largest_remainder(
    sizes: impl Iterator<Item = usize>,
    target: usize,
    total: usize,
) -> Vec<usize> {
    let sizes: Vec<usize> = sizes.collect();
    // target * size / total = quota + remainder / total
    let mut quotas: Vec<usize> = sizes.iter().map(|&s| target * s / total).collect();
    let mut by_remainder: Vec<usize> = (0..sizes.len()).collect();
    by_remainder.sort_by_key(|&g| std::cmp::Reverse(target * sizes[g] % total));
    let missing = target - quotas.iter().sum::<usize>();
    for &g in by_remainder.iter().take(missing) {
        quotas[g] += 1;
    }
    quotas
}
