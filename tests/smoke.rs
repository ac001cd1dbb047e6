mod common;
use common::*;
use hydralora::engine::{Tensor, matmul_t};

#[test]
fn matmul_and_backward_smoke() {
    let dev = device();
    let (m, k, n) = (37, 53, 29);
    let a = values(m * k, -1.0, 1.0, 1);
    let b = values(k * n, -1.0, 1.0, 2);
    let ta = Tensor::from_slice(&dev, &a, &[m, k]).unwrap();
    let tb = Tensor::from_slice(&dev, &b, &[k, n]).unwrap();
    let c = matmul_t(&ta, &tb, false, false).unwrap().to_vec_f32().unwrap();
    assert_close("matmul", &c, &matmul_ref(&a, &b, 1, m, k, n, false, false, true, true), 1e-4, 1e-4);
    let x = ta.clone().into_param();
    let loss = x.matmul(&tb).unwrap().silu().unwrap().sum_all().unwrap();
    let g = loss.backward().unwrap();
    assert_eq!(g.get(&x).unwrap().shape(), &[m, k]);
    println!("{}", dev.info());
}
