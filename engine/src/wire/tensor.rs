//! Tensors as messages: a data owner's shares to a party (alice's as values, bob's as the seed
//! it is expanded from), a party's reveal to a data owner.

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

/// Words of the seed that stands for bob's share of a data owner's tensor (256 bits).
pub const SHARE_SEED_WORDS: usize = 4;

/// Bob's share of a tensor as a message: `[rank, dims..., seed (4 words)]`.
pub fn pack_seed(shape: &[usize], seed: &[u8; 32]) -> Vec<u64> {
    let words: [u64; SHARE_SEED_WORDS] = bytemuck::cast(*seed);
    pack(shape, &words)
}

/// The shape and seed of a seeded share message, checked: the header must fit the message,
/// the shape's element count must not overflow, and exactly one seed must follow.
pub fn unpack_seed(msg: &[u64]) -> Result<(Vec<usize>, [u8; 32])> {
    let rank = *msg
        .first()
        .ok_or_else(|| EngineError::Protocol("empty message".into()))? as usize;
    if rank >= msg.len() || msg.len() - 1 - rank != SHARE_SEED_WORDS {
        return Err(EngineError::Protocol(format!(
            "a seeded share must be a header and {SHARE_SEED_WORDS} seed words, got {} words",
            msg.len()
        )));
    }
    let shape: Vec<usize> = msg[1..1 + rank].iter().map(|&d| d as usize).collect();
    if shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .is_none()
    {
        return Err(EngineError::Protocol(format!(
            "seeded share of shape {shape:?}: too many elements"
        )));
    }
    let mut words = [0u64; SHARE_SEED_WORDS];
    words.copy_from_slice(&msg[1 + rank..]);
    Ok((shape, bytemuck::cast(words)))
}
