//! Errors: mismatched shapes, a tensor over the device's binding limit, a wrong dtype, and
//! tensors from two devices. Every case must return an `Err` (never panic) whose message
//! names the op and the shapes involved.

mod common;

use common::*;
use hydralora_engine::{
    causal_attention, cross_entropy, embedding, gate_expand, matmul_t, rms_norm, rope,
    rope_inv_freq, softmax_scaled, Device, Error, Result, RopeTables, Tensor,
};

fn zeros(shape: &[usize]) -> Tensor {
    Tensor::zeros(&device(), shape).unwrap()
}

/// Asserts `r` is an error whose message contains every one of `needles`.
fn expect_err<T: std::fmt::Debug>(r: Result<T>, needles: &[&str]) -> Error {
    let e = match r {
        Ok(v) => panic!("expected an error naming {needles:?}, got Ok({v:?})"),
        Err(e) => e,
    };
    let msg = e.to_string();
    for n in needles {
        assert!(msg.contains(n), "error message {msg:?} does not name {n:?}");
    }
    e
}

#[test]
fn mismatched_shapes_name_the_op_and_both_shapes() {
    let e = expect_err(
        zeros(&[2, 3]).matmul(&zeros(&[4, 5])),
        &["matmul", "[2, 3]", "[4, 5]", "inner"],
    );
    assert!(
        matches!(e, Error::ShapeMismatch { op: "matmul", .. }),
        "{e:?}"
    );
    expect_err(
        matmul_t(&zeros(&[2, 3]), &zeros(&[5, 4]), true, false),
        &["matmul", "[2, 3]", "[5, 4]"],
    );
    expect_err(
        zeros(&[2, 3, 4]).matmul(&zeros(&[3, 4, 5])),
        &["matmul", "[2, 3, 4]", "[3, 4, 5]", "batch"],
    );
    expect_err(zeros(&[4]).matmul(&zeros(&[4, 5])), &["matmul", "[4]"]);

    for (name, r) in [
        ("add", zeros(&[2, 3]).add(&zeros(&[4, 3]))),
        ("sub", zeros(&[2, 3]).sub(&zeros(&[4, 3]))),
        ("mul", zeros(&[2, 3]).mul(&zeros(&[4, 3]))),
        ("div", zeros(&[2, 3]).div(&zeros(&[4, 3]))),
    ] {
        let e = expect_err(r, &[name, "[2, 3]", "[4, 3]", "broadcast"]);
        assert!(matches!(e, Error::ShapeMismatch { .. }), "{e:?}");
    }
    expect_err(zeros(&[3]).add(&zeros(&[2, 4])), &["add", "[3]", "[2, 4]"]);

    let e = expect_err(
        rms_norm(&zeros(&[2, 4]), &zeros(&[5]), 1e-5),
        &["rms_norm", "[2, 4]", "[5]"],
    );
    assert!(
        matches!(e, Error::ShapeMismatch { op: "rms_norm", .. }),
        "{e:?}"
    );
    expect_err(
        rms_norm(&zeros(&[2, 4]), &zeros(&[1, 4]), 1e-5),
        &["rms_norm", "[2, 4]", "[1, 4]"],
    );

    expect_err(
        zeros(&[2, 3]).reshape(&[4, 2]),
        &["reshape", "[2, 3]", "[4, 2]"],
    );
    expect_err(
        Tensor::concat(&[zeros(&[2, 3]), zeros(&[3, 4])], 0),
        &["concat", "[2, 3]", "[3, 4]"],
    );
    expect_err(
        gate_expand(&zeros(&[3, 2]), &zeros(&[4, 5])),
        &["gate_expand", "[3, 2]", "[4, 5]"],
    );
    let labels = Tensor::from_i32(&device(), &[0, 1, 2], &[3]).unwrap();
    expect_err(
        cross_entropy(&zeros(&[2, 5]), &labels),
        &["cross_entropy", "[2, 5]", "[3]"],
    );
    expect_err(
        causal_attention(
            &zeros(&[1, 3, 4, 8]),
            &zeros(&[1, 2, 4, 8]),
            &zeros(&[1, 2, 4, 8]),
        ),
        &["attention", "[1, 3, 4, 8]", "[1, 2, 4, 8]"],
    );
    expect_err(
        causal_attention(
            &zeros(&[1, 2, 5, 8]),
            &zeros(&[1, 2, 4, 8]),
            &zeros(&[1, 2, 4, 8]),
        ),
        &["attention", "[1, 2, 5, 8]", "[1, 2, 4, 8]"],
    );
    let tables = RopeTables::new(&device(), &[0, 1], &rope_inv_freq(8, 10_000.0)).unwrap();
    expect_err(
        rope(&zeros(&[1, 2, 2, 6]), &tables, 2),
        &["rope", "[1, 2, 2, 6]", "[2, 4]"],
    );
}

#[test]
fn invalid_arguments_name_the_op_and_the_shape() {
    expect_err(zeros(&[2, 3]).transpose(0, 2), &["transpose", "[2, 3]"]);
    expect_err(zeros(&[2, 3]).narrow(1, 2, 2), &["narrow", "[2, 3]"]);
    expect_err(zeros(&[2, 3]).sum(2), &["sum", "[2, 3]"]);
    expect_err(zeros(&[2, 3]).to_scalar(), &["to_scalar", "[2, 3]"]);
    expect_err(
        Tensor::from_slice(&device(), &[1.0, 2.0], &[3]),
        &["[3]", "2"],
    );
    expect_err(
        softmax_scaled(
            &zeros(&[2, 3]),
            1.0,
            Some(hydralora_engine::CausalMask {
                q_len: 0,
                offset: 0,
            }),
        ),
        &["softmax", "[2, 3]"],
    );
    // Above the device's largest buffer: refused before anything is allocated.
    let e = expect_err(
        Tensor::uninit(&device(), &[1 << 30, 4]),
        &["alloc", "[1073741824, 4]"],
    );
    assert!(matches!(e, Error::TooLarge { op: "alloc", .. }), "{e:?}");
    // Above the largest binding: a filled tensor is refused by the fill kernel's check.
    let e = expect_err(
        Tensor::zeros(&device(), &[1 << 30, 4]),
        &["fill", "[1073741824, 4]"],
    );
    assert!(matches!(e, Error::TooLarge { op: "fill", .. }), "{e:?}");
}

#[test]
fn a_tensor_over_the_binding_limit_is_refused_by_every_op() {
    let dev = device();
    let limit = dev.info().max_binding_bytes();
    // The smallest [rows, 1000] f32 tensor over the binding limit (160 MB on lavapipe's
    // 128 MiB). Uploaded by a copy, which is not a binding, so it can be made.
    let rows = (limit / 4000 + 1) as usize;
    let big_shape = [rows, 1000];
    let shape_str = format!("{big_shape:?}");
    let data = vec![0.5f32; rows * 1000];
    let big = Tensor::from_slice(&dev, &data, &big_shape).unwrap();
    drop(data);
    let small = zeros(&[1000, 3]);
    let needles = |op: &'static str| [op, shape_str.as_str()];

    let e = expect_err(big.matmul(&small), &needles("matmul"));
    assert!(matches!(e, Error::TooLarge { .. }), "{e:?}");
    expect_err(
        small.transpose(0, 1).unwrap().matmul_nt(&big),
        &needles("matmul"),
    );
    expect_err(big.add(&zeros(&[1000])), &needles("add"));
    expect_err(zeros(&[1, 1000]).mul(&big), &needles("mul"));
    expect_err(big.exp(), &needles("unary"));
    expect_err(big.scale(2.0), &needles("unary"));
    expect_err(big.sum(0), &needles("sum"));
    expect_err(big.sum_all(), &["sum"]);
    expect_err(big.softmax(), &needles("softmax"));
    expect_err(rms_norm(&big, &zeros(&[1000]), 1e-5), &needles("rms_norm"));
    expect_err(big.transpose(0, 1), &needles("transpose"));
    expect_err(big.narrow(0, 0, rows - 1), &needles("narrow"));
    expect_err(
        Tensor::concat(&[big.clone(), zeros(&[1, 1000])], 0),
        &needles("concat"),
    );
    let tables = RopeTables::new(&dev, &[0], &rope_inv_freq(1000, 10_000.0)).unwrap();
    expect_err(rope(&big, &tables, 1), &needles("rope"));
    expect_err(
        gate_expand(&big, &zeros(&[rows, 1])),
        &needles("gate_expand"),
    );
    let ids = Tensor::from_u32(&dev, &[0, 1], &[2]).unwrap();
    expect_err(embedding(&big, &ids), &needles("embedding"));
    let labels = Tensor::from_i32(&dev, &vec![0; rows], &[rows]).unwrap();
    expect_err(cross_entropy(&big, &labels), &needles("cross_entropy"));
    expect_err(Tensor::full(&dev, &big_shape, 1.0), &needles("fill"));
    // The big tensor still reads back: nothing above poisoned the device.
    let back = big.to_vec_f32().unwrap();
    assert_eq!(back.len(), rows * 1000);
    assert!(back.iter().all(|&v| v == 0.5));
    // And the device still computes.
    assert_eq!(
        read(
            &tensor(&[1.0, 2.0], &[2])
                .add(&tensor(&[3.0, 4.0], &[2]))
                .unwrap()
        ),
        [4.0, 6.0]
    );
}

#[test]
fn a_wrong_dtype_names_the_op_the_dtype_and_the_shape() {
    let dev = device();
    let ids = Tensor::from_u32(&dev, &[1, 2, 3], &[3]).unwrap();
    let labels = Tensor::from_i32(&dev, &[1, 2, 3], &[3]).unwrap();
    let x = zeros(&[3]);
    let e = expect_err(ids.add(&x), &["add", "U32", "[3]"]);
    assert!(matches!(e, Error::DType { op: "add", .. }), "{e:?}");
    expect_err(x.mul(&labels), &["mul", "I32", "[3]"]);
    expect_err(ids.exp(), &["unary", "U32", "[3]"]);
    expect_err(ids.sum(0), &["sum", "U32", "[3]"]);
    expect_err(ids.softmax(), &["softmax", "U32", "[3]"]);
    expect_err(
        ids.reshape(&[1, 3]).unwrap().matmul(&zeros(&[3, 1])),
        &["matmul", "U32", "[1, 3]"],
    );
    expect_err(
        embedding(&zeros(&[4, 2]), &labels),
        &["embedding", "I32", "[3]"],
    );
    expect_err(
        cross_entropy(&zeros(&[3, 4]), &ids),
        &["cross_entropy", "U32", "[3]"],
    );
    expect_err(ids.to_vec_f32(), &["to_vec_f32", "U32", "[3]"]);
    expect_err(x.to_vec_u32(), &["to_vec_u32", "F32", "[3]"]);
}

#[test]
fn tensors_from_two_devices_are_refused() {
    let other = Device::new().unwrap();
    assert!(!other.same_as(&device()));
    let a = zeros(&[2, 3]);
    let b = Tensor::zeros(&other, &[2, 3]).unwrap();
    let e = expect_err(a.add(&b), &["add", "[2, 3]", "device"]);
    assert!(
        matches!(e, Error::DeviceMismatch { op: "add", .. }),
        "{e:?}"
    );
    expect_err(
        a.matmul(&Tensor::zeros(&other, &[3, 4]).unwrap()),
        &["matmul", "[2, 3]", "[3, 4]", "device"],
    );
    expect_err(
        rms_norm(&a, &Tensor::zeros(&other, &[3]).unwrap(), 1e-5),
        &["rms_norm", "[2, 3]", "[3]", "device"],
    );
    expect_err(
        Tensor::concat(&[a.clone(), b.clone()], 0),
        &["concat", "[2, 3]", "device"],
    );
    expect_err(gate_expand(&a, &b), &["gate_expand", "[2, 3]", "device"]);
    let ids = Tensor::from_u32(&other, &[0], &[1]).unwrap();
    expect_err(
        embedding(&a, &ids),
        &["embedding", "[2, 3]", "[1]", "device"],
    );
    let labels = Tensor::from_i32(&other, &[0, 1], &[2]).unwrap();
    expect_err(
        cross_entropy(&a, &labels),
        &["cross_entropy", "[2, 3]", "[2]", "device"],
    );
    let q = zeros(&[1, 2, 3, 4]);
    let kv = Tensor::zeros(&other, &[1, 2, 3, 4]).unwrap();
    expect_err(causal_attention(&q, &kv, &kv), &["[1, 2, 3, 4]", "device"]);
    let tables = RopeTables::new(&other, &[0, 1, 2], &rope_inv_freq(4, 10_000.0)).unwrap();
    expect_err(rope(&q, &tables, 1), &["rope", "[1, 2, 3, 4]", "device"]);
    expect_err(a.assign(&b), &["assign", "[2, 3]", "device"]);
    // Both devices still work on their own tensors.
    assert_eq!(read(&a.add(&a).unwrap()), vec![0.0; 6]);
    assert_eq!(b.add(&b).unwrap().to_vec_f32().unwrap(), vec![0.0; 6]);
}
