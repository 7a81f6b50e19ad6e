//! Tensors as messages: a data owner's shares to a party, a party's reveal to a data owner.

use crate::error::{EngineError, Result};

/// A tensor as a message: `[rank, dims..., values...]`.
pub fn pack(shape: &[usize], values: &[u64]) -> Vec<u64> {
    let mut msg = Vec::with_capacity(1 + shape.len() + values.len());
    msg.push(shape.len() as u64);
    msg.extend(shape.iter().map(|&d| d as u64));
    msg.extend_from_slice(values);
    msg
}

/// The shape and values of a tensor message, checked: the header must fit the message and
/// the shape must hold exactly the values that follow.
pub fn unpack(msg: &[u64]) -> Result<(Vec<usize>, &[u64])> {
    let rank = *msg
        .first()
        .ok_or_else(|| EngineError::Protocol("empty message".into()))? as usize;
    if rank >= msg.len() {
        return Err(EngineError::Protocol(
            "message shorter than its header".into(),
        ));
    }
    let shape: Vec<usize> = msg[1..1 + rank].iter().map(|&d| d as usize).collect();
    let data = &msg[1 + rank..];
    let elements = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if elements != Some(data.len()) {
        return Err(EngineError::Protocol(format!(
            "message holds {} values for shape {shape:?}",
            data.len()
        )));
    }
    Ok((shape, data))
}
