//! The subset of `onnx.proto` the importer reads, decoded with `prost` (field numbers from the
//! ONNX specification; unknown fields are skipped), and the decoding of tensors into
//! [`Const`]s.

use prost::Message;

use super::constant::{Const, Dim};
use crate::error::{EngineError, Result};

/// `onnx.ModelProto` (subset).
#[derive(Clone, PartialEq, Message)]
pub(super) struct ModelProto {
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
}

/// `onnx.GraphProto` (subset).
#[derive(Clone, PartialEq, Message)]
pub(super) struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
}

/// `onnx.NodeProto` (subset).
#[derive(Clone, PartialEq, Message)]
pub(super) struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(string, tag = "4")]
    pub op_type: String,
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
}

/// `onnx.AttributeProto` (subset).
#[derive(Clone, PartialEq, Message)]
pub(super) struct AttributeProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(float, tag = "2")]
    pub f: f32,
    #[prost(int64, tag = "3")]
    pub i: i64,
    #[prost(bytes = "vec", tag = "4")]
    pub s: Vec<u8>,
    #[prost(message, optional, tag = "5")]
    pub t: Option<TensorProto>,
    #[prost(float, repeated, tag = "7")]
    pub floats: Vec<f32>,
    #[prost(int64, repeated, tag = "8")]
    pub ints: Vec<i64>,
}

/// `onnx.TensorProto` (subset).
#[derive(Clone, PartialEq, Message)]
pub(super) struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    #[prost(float, repeated, tag = "4")]
    pub float_data: Vec<f32>,
    #[prost(int32, repeated, tag = "5")]
    pub int32_data: Vec<i32>,
    #[prost(int64, repeated, tag = "7")]
    pub int64_data: Vec<i64>,
    #[prost(string, tag = "8")]
    pub name: String,
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
    #[prost(double, repeated, tag = "10")]
    pub double_data: Vec<f64>,
    #[prost(uint64, repeated, tag = "11")]
    pub uint64_data: Vec<u64>,
    #[prost(int32, tag = "14")]
    pub data_location: i32,
}

/// `onnx.ValueInfoProto` (subset).
#[derive(Clone, PartialEq, Message)]
pub(super) struct ValueInfoProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
}

/// `onnx.TypeProto` (tensor types only).
#[derive(Clone, PartialEq, Message)]
pub(super) struct TypeProto {
    #[prost(message, optional, tag = "1")]
    pub tensor_type: Option<TensorTypeProto>,
}

/// `onnx.TypeProto.Tensor`.
#[derive(Clone, PartialEq, Message)]
pub(super) struct TensorTypeProto {
    #[prost(int32, tag = "1")]
    pub elem_type: i32,
    #[prost(message, optional, tag = "2")]
    pub shape: Option<TensorShapeProto>,
}

/// `onnx.TensorShapeProto`.
#[derive(Clone, PartialEq, Message)]
pub(super) struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<Dimension>,
}

/// `onnx.TensorShapeProto.Dimension` (`dim_value` or a symbolic `dim_param`).
#[derive(Clone, PartialEq, Message)]
pub(super) struct Dimension {
    #[prost(int64, optional, tag = "1")]
    pub dim_value: Option<i64>,
    #[prost(string, optional, tag = "2")]
    pub dim_param: Option<String>,
}

/// Decode a model file's bytes; `path` labels errors.
pub(super) fn decode_model(path: &str, bytes: &[u8]) -> Result<GraphProto> {
    let model = ModelProto::decode(bytes)
        .map_err(|e| fmt_err(path, format!("not a valid ONNX file: {e}")))?;
    model
        .graph
        .ok_or_else(|| fmt_err(path, "not a valid ONNX file: no graph"))
}

/// A format error about `path`.
pub(super) fn fmt_err(path: &str, msg: impl std::fmt::Display) -> EngineError {
    EngineError::Format(format!("{path}: {msg}"))
}

// TensorProto.DataType values.
const FLOAT: i32 = 1;
const UINT8: i32 = 2;
const INT8: i32 = 3;
const UINT16: i32 = 4;
const INT16: i32 = 5;
const INT32: i32 = 6;
const INT64: i32 = 7;
const BOOL: i32 = 9;
const FLOAT16: i32 = 10;
const DOUBLE: i32 = 11;
const UINT32: i32 = 12;
const UINT64: i32 = 13;
const BFLOAT16: i32 = 16;

/// Whether a data type is an integer (or boolean) type.
pub(super) fn is_integer_type(t: i64) -> bool {
    matches!(
        t as i32,
        UINT8 | INT8 | UINT16 | INT16 | INT32 | INT64 | BOOL | UINT32 | UINT64
    )
}

/// Whether a data type is a floating-point type.
pub(super) fn is_float_type(t: i64) -> bool {
    matches!(t as i32, FLOAT | FLOAT16 | DOUBLE | BFLOAT16)
}

/// The values of a tensor: floats as f64, integers and booleans as integers. Refuses external
/// data, unknown types, sizes that do not match the shape and non-finite floats, naming the
/// tensor.
pub(super) fn tensor_values(path: &str, t: &TensorProto) -> Result<Const> {
    let name = &t.name;
    if t.data_location == 1 {
        return Err(fmt_err(
            path,
            format!("tensor '{name}' keeps its data in an external file, which is not supported"),
        ));
    }
    let dims: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| fmt_err(path, format!("tensor '{name}' has a negative dimension")))?;
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| {
            fmt_err(
                path,
                format!("tensor '{name}' has dimensions {dims:?} too large"),
            )
        })?;
    let raw = &t.raw_data;
    let ints = |width: usize, f: &dyn Fn(&[u8]) -> i64| -> Vec<Dim> {
        raw.chunks_exact(width).map(|c| Dim::N(f(c))).collect()
    };
    let floats: Option<Vec<f64>> = match t.data_type {
        FLOAT if !raw.is_empty() => Some(
            raw.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect(),
        ),
        FLOAT => Some(t.float_data.iter().map(|&v| v as f64).collect()),
        DOUBLE if !raw.is_empty() => Some(
            raw.chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
        ),
        DOUBLE => Some(t.double_data.clone()),
        FLOAT16 if !raw.is_empty() => Some(
            raw.chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
                .collect(),
        ),
        BFLOAT16 if !raw.is_empty() => Some(
            raw.chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64())
                .collect(),
        ),
        // Half floats outside raw_data travel as the bits in int32_data.
        FLOAT16 => Some(
            t.int32_data
                .iter()
                .map(|&v| half::f16::from_bits(v as u16).to_f64())
                .collect(),
        ),
        BFLOAT16 => Some(
            t.int32_data
                .iter()
                .map(|&v| half::bf16::from_bits(v as u16).to_f64())
                .collect(),
        ),
        _ => None,
    };
    let c = match floats {
        Some(values) => {
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                return Err(fmt_err(
                    path,
                    format!(
                        "tensor '{name}' has a non-finite value ({}) at index {i}",
                        values[i]
                    ),
                ));
            }
            Const::floats(dims, values)
        }
        None => {
            let values: Vec<Dim> = match t.data_type {
                INT64 | UINT64 if !raw.is_empty() => {
                    ints(8, &|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                }
                INT64 => t.int64_data.iter().map(|&v| Dim::N(v)).collect(),
                UINT64 => t.uint64_data.iter().map(|&v| Dim::N(v as i64)).collect(),
                INT32 | UINT32 if !raw.is_empty() => {
                    let signed = t.data_type == INT32;
                    ints(4, &|c| {
                        let b = [c[0], c[1], c[2], c[3]];
                        if signed {
                            i32::from_le_bytes(b) as i64
                        } else {
                            u32::from_le_bytes(b) as i64
                        }
                    })
                }
                INT16 | UINT16 if !raw.is_empty() => {
                    let signed = t.data_type == INT16;
                    ints(2, &|c| {
                        if signed {
                            i16::from_le_bytes([c[0], c[1]]) as i64
                        } else {
                            u16::from_le_bytes([c[0], c[1]]) as i64
                        }
                    })
                }
                INT8 if !raw.is_empty() => ints(1, &|c| c[0] as i8 as i64),
                UINT8 | BOOL if !raw.is_empty() => ints(1, &|c| c[0] as i64),
                INT32 | UINT32 | INT16 | UINT16 | INT8 | UINT8 | BOOL => {
                    t.int32_data.iter().map(|&v| Dim::N(v as i64)).collect()
                }
                other => {
                    return Err(fmt_err(
                        path,
                        format!(
                        "tensor '{name}' has data type {other}; expected a float or integer type"
                    ),
                    ))
                }
            };
            Const::ints(dims, values)
        }
    };
    if c.len() != count {
        return Err(fmt_err(
            path,
            format!(
                "tensor '{name}' holds {} values for shape {:?}",
                c.len(),
                c.dims
            ),
        ));
    }
    Ok(c)
}
