//! Embedding gather, and its deterministic scatter-add backward.

use crate::error::{Error, Result};
use crate::op::Op;
use crate::ops::grid;
use crate::ops::kernel_params::kernel_params;
use crate::shaders;
use crate::tensor::{DType, Tensor};

kernel_params! {
    /// The gather's params: `n` ids, rows of `dim`, from one part of the table.
    pub(crate) struct GatherParams for each (shaders::EMBEDDING_VARIANTS.iter()) {
        n: u32,
        dim: u32,
        rows: u32,       // rows in this part of the table
        row_offset: u32, // the id of this part's first row
    }
}

kernel_params! {
    /// The scatter-add's params: `uniq` distinct ids, rows of `dim`.
    pub(crate) struct ScatterParams for [shaders::EMBEDDING_BACKWARD] {
        uniq: u32,
        dim: u32,
    }
}

/// Rows of `table` [vocab, dim] picked by `ids` (u32, any shape): [..ids shape, dim].
/// An id outside the table gives a row of zeros (check ids from users before).
pub fn embedding(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    recorded(table, ids, None)
}

/// [`embedding`] of ids the host also holds (`ids_host`, the same values as `ids`): the
/// backward groups positions by id from this copy instead of reading `ids` back, so a
/// training step keeps its one submit.
pub fn embedding_host_ids(table: &Tensor, ids: &Tensor, ids_host: &[u32]) -> Result<Tensor> {
    if ids_host.len() != ids.numel() {
        return Err(Error::InvalidArgument {
            op: "embedding",
            shape: ids.shape().to_vec(),
            why: format!("{} host ids for {} device ids", ids_host.len(), ids.numel()),
        });
    }
    recorded(table, ids, Some(ids_host.into()))
}

fn recorded(
    table: &Tensor,
    ids: &Tensor,
    ids_host: Option<std::sync::Arc<[u32]>>,
) -> Result<Tensor> {
    let out = embedding_parts(std::slice::from_ref(table), ids)?;
    Ok(out.with_op(
        || Op::Embedding {
            table: table.clone(),
            ids: ids.clone(),
            ids_host,
        },
        &[table],
    ))
}

/// [`embedding`] from a table split by rows into parts (each [rows_i, dim], in order), for
/// tables larger than one kernel binding. Not differentiable: frozen tables only.
pub fn embedding_parts(parts: &[Tensor], ids: &Tensor) -> Result<Tensor> {
    let first = parts.first().ok_or(Error::InvalidArgument {
        op: "embedding",
        shape: vec![],
        why: "no table".into(),
    })?;
    ids.expect_dtype("embedding", DType::U32, "u32 ids")?;
    let dim = *first.shape().last().unwrap_or(&0);
    for part in parts {
        if !part.dtype().is_weight_storage() {
            part.expect_dtype("embedding", DType::F32, "f32 or a weight storage format")?;
        }
        part.expect_same_device("embedding", ids)?;
        part.expect_bindable("embedding")?;
        if part.rank() != 2 || part.dim(1) != dim {
            return Err(Error::InvalidArgument {
                op: "embedding",
                shape: part.shape().to_vec(),
                why: "the table must be [vocab, dim]".into(),
            });
        }
    }
    let dev = first.device();
    let mut shape = ids.shape().to_vec();
    shape.push(dim);
    let out = Tensor::zeros(dev, &shape)?;
    let mut row_offset = 0;
    for part in parts {
        dev.dispatch(
            shaders::embedding(part.dtype()),
            "gather",
            &GatherParams {
                n: ids.numel() as u32,
                dim: dim as u32,
                rows: part.dim(0) as u32,
                row_offset: row_offset as u32,
            },
            &[ids.binding(), part.binding()],
            &[out.binding()],
            grid(dev, out.numel(), 256),
        );
        row_offset += part.dim(0);
    }
    Ok(out)
}

/// d table: the rows of `dy` added into the rows their ids name, in a fixed order.
pub(crate) fn embedding_backward(
    table_shape: &[usize],
    ids: &Tensor,
    ids_host: Option<&[u32]>,
    dy: &Tensor,
) -> Result<Tensor> {
    let dev = dy.device();
    let (vocab, dim) = (table_shape[0], table_shape[1]);
    let ids_host = match ids_host {
        Some(host) => std::borrow::Cow::Borrowed(host),
        None => std::borrow::Cow::Owned(ids.to_vec_u32()?),
    };
    // Group positions by id (CSR, ids ascending, positions ascending within an id).
    let mut order: Vec<u32> = (0..ids_host.len() as u32).collect();
    order.sort_by_key(|&i| (ids_host[i as usize], i));
    let (mut uniq, mut offsets) = (Vec::new(), vec![0u32]);
    for (k, &pos) in order.iter().enumerate() {
        let id = ids_host[pos as usize];
        if id as usize >= vocab {
            return Err(Error::InvalidArgument {
                op: "embedding_backward",
                shape: table_shape.to_vec(),
                why: format!("id {id} is outside the table"),
            });
        }
        if uniq.last() != Some(&id) {
            if !uniq.is_empty() {
                offsets.push(k as u32);
            }
            uniq.push(id);
        }
    }
    offsets.push(order.len() as u32);
    let dtable = Tensor::zeros(dev, table_shape)?;
    if uniq.is_empty() {
        return Ok(dtable);
    }
    let uniq_t = Tensor::from_u32(dev, &uniq, &[uniq.len()])?;
    let offsets_t = Tensor::from_u32(dev, &offsets, &[offsets.len()])?;
    let positions_t = Tensor::from_u32(dev, &order, &[order.len()])?;
    dev.dispatch(
        &shaders::EMBEDDING_BACKWARD,
        "scatter_add",
        &ScatterParams {
            uniq: uniq.len() as u32,
            dim: dim as u32,
        },
        &[
            dy.binding(),
            uniq_t.binding(),
            offsets_t.binding(),
            positions_t.binding(),
        ],
        &[dtable.binding()],
        grid(dev, uniq.len() * dim, 256),
    );
    Ok(dtable)
}
