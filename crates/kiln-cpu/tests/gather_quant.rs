//! A gather (embedding lookup) whose table is block-quantized (Q8_0, Q4_0, Q4_K, Q5_K, Q6_K: an embedding
//! held in a GGUF file's blocks), the table also read as a tied LM head's weight: the gathered
//! rows are bit for bit the rows of the table dequantized to f32 (what the f32-table graph
//! gives), and both outputs match the interpreter, for each kernel ISA this machine runs. The
//! head's product takes the f32-dequantizing path (`QuantRequest::Dequant`), bit for bit the
//! f32 kernels; the integer path quantizes activations (its model: `gemm_qint8.rs`).
mod common;
use common::*;
use kiln_compile::{CompileOptions, Target};
use kiln_cpu::QuantRequest;
use kiln_ir::{DType, Expr, Graph, Tensor};
use std::collections::HashMap;

const ROWS: usize = 37;
const K: usize = 256;

/// `rows = table[ids]` and `logits = rows @ table^T`, the table in `dtype`.
fn graph(dtype: DType) -> Graph {
    let mut g = Graph::new();
    let table = g.input("table", dtype, &[ROWS.into(), K.into()]).unwrap();
    let ids = g.input("ids", DType::I32, &[Expr::sym("s")]).unwrap();
    let rows = g.gather(table, ids).unwrap();
    assert_eq!(g.dtype(rows), DType::F32);
    g.output("rows", rows);
    let t = g.transpose(table, 0, 1).unwrap();
    let logits = g.matmul(rows, t).unwrap();
    g.output("logits", logits);
    g
}

fn table(dtype: DType) -> Tensor {
    let v: Vec<f32> = values(ROWS * K, 11).iter().map(|x| x * 0.05).collect();
    Tensor::quantize(dtype, &[ROWS, K], &v).unwrap()
}

fn ids(list: &[i32]) -> Tensor {
    Tensor::from_bytes(
        DType::I32,
        &[list.len()],
        &list
            .iter()
            .flat_map(|i| i.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.as_f32().iter().map(|x| x.to_bits()).collect()
}

#[test]
fn quantized_tables_gather_their_dequantized_rows() {
    for dtype in DType::QUANTIZED {
        let q = table(dtype);
        let deq = q.to_dtype(DType::F32);
        for isa in isas() {
            let opts = CompileOptions {
                threads: 2,
                ..Default::default()
            };
            let mut quant = backend(Some(isa))
                .with_quant(QuantRequest::Dequant)
                .with_run_threads(2)
                .load(&graph(dtype), &opts)
                .unwrap_or_else(|e| panic!("compile failed: {e}"))
                .exe;
            quant.set_param("table", q.clone()).unwrap();
            let mut f32s = build_for(&graph(DType::F32), 2, Some(isa));
            f32s.set_param("table", deq.clone()).unwrap();
            for list in [&[0][..], &[5, 36, 0, 5, 17, 1, 30]] {
                let ins = HashMap::from([("ids".to_string(), ids(list))]);
                let got = quant.run(&ins).unwrap();
                let want = f32s.run(&ins).unwrap();
                assert_eq!(
                    bits(&got["rows"]),
                    bits(&want["rows"]),
                    "{dtype} {isa:?} {list:?}: gathered rows"
                );
                // The head's quantized product is the f32 kernels' on the dequantized table.
                assert_eq!(
                    bits(&got["logits"]),
                    bits(&want["logits"]),
                    "{dtype} {isa:?} {list:?}: logits"
                );
                // The rows are the dequantized table's, exactly.
                for (i, &id) in list.iter().enumerate() {
                    let row = &deq.as_f32()[id as usize * K..][..K];
                    assert_eq!(&got["rows"].as_f32()[i * K..][..K], row, "{dtype} row {id}");
                }
                let with_table = {
                    let mut m = ins.clone();
                    m.insert("table".into(), q.clone());
                    m
                };
                kiln_ir::testing::assert_matches_interpreter(
                    &got,
                    &graph(dtype),
                    &with_table,
                    1e-4,
                    1e-4,
                );
            }
        }
    }
}
