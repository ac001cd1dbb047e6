// What cross-entropy's forward (cross_entropy.wgsl) and backward share: the params and
// the label that marks a row without loss.

struct CeParams {
    rows: u32,
    vocab: u32,
}

const IGNORE: i32 = -100;
