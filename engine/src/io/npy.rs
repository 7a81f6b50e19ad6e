//! `.npy` inputs (features f32/f64 `[N, features]`, labels int64/int32 `[N]`) and prediction
//! output.
//!
//! The header is checked against the file's real size before any data buffer is allocated: a
//! header that claims more data than the file holds is "too short", one that claims less leaves
//! "trailing bytes". Errors name the file and the cause (dimensions, dtype, size).

use std::io::Read;

use crate::error::{EngineError, Result};
use crate::io::output::OutputFile;

/// Longest header accepted (NumPy writes a few hundred bytes).
const MAX_HEADER: usize = 1 << 20;

/// What a `.npy` header declares.
struct Header {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

fn format_err(path: &str, detail: impl std::fmt::Display) -> EngineError {
    EngineError::Format(format!("{path}: {detail}"))
}

/// The value of `'key':` in a NumPy header dict (up to the next top-level comma or brace).
fn header_field<'h>(header: &'h str, key: &str) -> Option<&'h str> {
    let start = header.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = header[start..].trim_start().strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else {
        rest.find([',', '}']).unwrap_or(rest.len())
    };
    Some(rest[..end].trim())
}

fn parse_header(path: &str, text: &str) -> Result<Header> {
    let bad = |what: &str| format_err(path, format!("invalid .npy header ({what}): {text}"));
    let descr = header_field(text, "descr")
        .ok_or_else(|| bad("no 'descr'"))?
        .trim_matches(['\'', '"'])
        .to_string();
    let fortran_order = match header_field(text, "fortran_order") {
        Some("True") => true,
        Some("False") => false,
        _ => return Err(bad("no 'fortran_order'")),
    };
    let shape_text = header_field(text, "shape").ok_or_else(|| bad("no 'shape'"))?;
    let inner = shape_text
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| bad("'shape' is not a tuple"))?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| bad("'shape' has a bad size"))
        })
        .collect::<Result<Vec<usize>>>()?;
    Ok(Header {
        descr,
        fortran_order,
        shape,
    })
}

/// Element types this reader decodes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Elem {
    F32,
    F64,
    I32,
    I64,
}

impl Elem {
    fn size(self) -> usize {
        match self {
            Elem::F32 | Elem::I32 => 4,
            Elem::F64 | Elem::I64 => 8,
        }
    }
}

/// Parse a dtype descriptor: `(element, big_endian)`.
fn parse_descr(descr: &str) -> Option<(Elem, bool)> {
    let (order, kind) = match descr.chars().next()? {
        c @ ('<' | '>' | '=' | '|') => (c, &descr[1..]),
        _ => ('=', descr),
    };
    let elem = match kind {
        "f4" => Elem::F32,
        "f8" => Elem::F64,
        "i4" => Elem::I32,
        "i8" => Elem::I64,
        _ => return None,
    };
    Some((
        elem,
        order == '>' || (order == '=' && cfg!(target_endian = "big")),
    ))
}

/// An array read from a `.npy` file: values as f64 (floats) or i64 (integers), C order.
struct NpyArray {
    shape: Vec<usize>,
    elem: Elem,
    floats: Vec<f64>,
    ints: Vec<i64>,
}

/// Read a `.npy` file with `dims` dimensions of floats (`floats`) or integers (`what` describes
/// the expected array).
fn read_npy_checked(path: &str, dims: usize, floats: bool, what: &str) -> Result<NpyArray> {
    let io_err = |source| EngineError::Io {
        path: path.to_string(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    if !meta.is_file() {
        return Err(format_err(path, "not a regular file"));
    }
    let file_len = meta.len();
    let mut pre = [0u8; 10];
    if file_len < 10 || file.read_exact(&mut pre).is_err() {
        return Err(format_err(
            path,
            format!("file too short for a .npy header ({file_len} bytes)"),
        ));
    }
    if &pre[..6] != b"\x93NUMPY" {
        return Err(format_err(path, "not a .npy file (no \\x93NUMPY magic)"));
    }
    let (header_len, pre_len) = match pre[6] {
        1 => (u16::from_le_bytes([pre[8], pre[9]]) as usize, 10usize),
        2 | 3 => {
            let mut more = [0u8; 2];
            file.read_exact(&mut more)
                .map_err(|_| format_err(path, "file too short for a .npy header"))?;
            (
                u32::from_le_bytes([pre[8], pre[9], more[0], more[1]]) as usize,
                12,
            )
        }
        v => return Err(format_err(path, format!("unsupported .npy version {v}"))),
    };
    if header_len > MAX_HEADER || (pre_len + header_len) as u64 > file_len {
        return Err(format_err(
            path,
            format!("file too short: the header claims {header_len} header bytes, the file has {file_len} bytes in all"),
        ));
    }
    let mut hbytes = vec![0u8; header_len];
    file.read_exact(&mut hbytes).map_err(io_err)?;
    let text = String::from_utf8_lossy(&hbytes);
    let h = parse_header(path, text.trim())?;
    if h.shape.len() != dims {
        return Err(format_err(
            path,
            format!(
                "wrong number of dimensions: shape {:?} has {}, expected {what}",
                h.shape,
                h.shape.len()
            ),
        ));
    }
    let (elem, big) = match parse_descr(&h.descr) {
        Some((e, big)) if floats == matches!(e, Elem::F32 | Elem::F64) => (e, big),
        _ => {
            return Err(format_err(
                path,
                format!("dtype '{}' is not supported; expected {what}", h.descr),
            ))
        }
    };
    let count = h
        .shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .and_then(|c| c.checked_mul(elem.size()).map(|b| (c, b)));
    let available = file_len - (pre_len + header_len) as u64;
    let Some((count, bytes)) = count.filter(|(_, b)| *b as u64 <= available) else {
        return Err(format_err(
            path,
            format!(
                "file too short: the header claims shape {:?} of '{}', more than the {available} data bytes in the file",
                h.shape, h.descr
            ),
        ));
    };
    if (bytes as u64) < available {
        return Err(format_err(
            path,
            format!(
                "trailing bytes: shape {:?} of '{}' needs {bytes} data bytes, the file has {available} ({} more)",
                h.shape,
                h.descr,
                available - bytes as u64
            ),
        ));
    }
    let mut data = vec![0u8; bytes];
    file.read_exact(&mut data).map_err(io_err)?;
    // Little-endian bytes of one element, widened to 8.
    let word = |c: &[u8]| -> [u8; 8] {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        if big {
            w[..c.len()].reverse();
        }
        w
    };
    let chunks = data.chunks_exact(elem.size());
    let (mut floats, mut ints) = (Vec::new(), Vec::new());
    match elem {
        Elem::F32 => floats.extend(chunks.map(|c| {
            let w = word(c);
            f32::from_le_bytes([w[0], w[1], w[2], w[3]]) as f64
        })),
        Elem::F64 => floats.extend(chunks.map(|c| f64::from_le_bytes(word(c)))),
        Elem::I32 => ints.extend(chunks.map(|c| {
            let w = word(c);
            i32::from_le_bytes([w[0], w[1], w[2], w[3]]) as i64
        })),
        Elem::I64 => ints.extend(chunks.map(|c| i64::from_le_bytes(word(c)))),
    }
    if h.fortran_order && dims == 2 {
        let (r, c) = (h.shape[0], h.shape[1]);
        floats = crate::nn::plain::transposed(&floats, c, r);
    }
    debug_assert_eq!(floats.len() + ints.len(), count);
    Ok(NpyArray {
        shape: h.shape,
        elem,
        floats,
        ints,
    })
}

/// Read features `[N, features]` stored as f64 or f32; checks the width and finiteness (rows and
/// columns counted from 0 in the file).
pub fn load_features(path: &str, features: usize) -> Result<(usize, Vec<f64>)> {
    load_inputs(path, &[features])
}

/// Read model inputs stored as f64 or f32: `[N, features]` for a model taking `[features]`
/// samples, `[N, C, H, W]` for one taking `[C, H, W]` images. Checks every dimension after the
/// first against `sample` and that every value is finite (positions counted from 0 in the file);
/// returns `N` and the row-major values.
pub fn load_inputs(path: &str, sample: &[usize]) -> Result<(usize, Vec<f64>)> {
    let arr = read_npy_checked(
        path,
        sample.len() + 1,
        true,
        &describe_inputs("float32/float64 array", sample),
    )?;
    debug_assert!(matches!(arr.elem, Elem::F32 | Elem::F64));
    let n = check_input_shape(&arr.shape, sample).map_err(|m| format_err(path, m))?;
    let w: usize = sample.iter().product::<usize>().max(1);
    let data = arr.floats;
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        return Err(format_err(
            path,
            format!(
                "value {} at row {}, column {} is not finite",
                data[i],
                i / w,
                i % w
            ),
        ));
    }
    Ok((n, data))
}

/// What inputs for samples of shape `sample` are: `a 2-D {kind} [N, features]` or
/// `a 4-D {kind} [N, C, H, W]`.
pub fn describe_inputs(kind: &str, sample: &[usize]) -> String {
    if sample.len() == 1 {
        format!("a 2-D {kind} [N, features]")
    } else {
        format!("a {}-D {kind} [N, C, H, W]", sample.len() + 1)
    }
}

/// Check that inputs of shape `shape` are `N` samples of shape `sample` (`[N, ...sample]`);
/// returns `N`, or what is wrong, in words.
pub fn check_input_shape(shape: &[usize], sample: &[usize]) -> std::result::Result<usize, String> {
    if shape.len() != sample.len() + 1 {
        return Err(format!(
            "wrong number of dimensions: shape {shape:?} has {}, expected {}",
            shape.len(),
            describe_inputs("array", sample)
        ));
    }
    if shape[1..] != *sample {
        return Err(match sample {
            [f] => format!(
                "inputs have {} features per row, the model expects {f}",
                shape[1]
            ),
            _ => format!(
                "inputs have shape {shape:?}; the model expects [N, {}]",
                sample
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    Ok(shape[0])
}

/// Read integer labels `[N]` (int64 or int32).
pub fn load_labels(path: &str) -> Result<Vec<i64>> {
    Ok(read_npy_checked(path, 1, false, "a 1-D int64/int32 array [N]")?.ints)
}

/// Write predicted class indices as int64 `[N]`, atomically (see [`OutputFile`]).
pub fn write_predictions(path: &str, preds: &[i64]) -> Result<()> {
    OutputFile::create(path)?.commit_predictions(preds)
}
