//! A compute party's additive share of a secret ring tensor.
//!
//! **Isolation by type.** A [`Share`] is neither `Send` nor `Sync`: it cannot leave the thread
//! of the party that created it, so no code outside that party can ever hold it next to the other
//! party's share. Its constructor is crate-private and used only by protocols running on the
//! party's own thread. Data leaves a party only as transport messages that protocols build:
//! openings of values masked with dealer randomness, or shares sent to a named reveal recipient.

use std::marker::PhantomData;

use kernels::Tensor;

/// One party's share of a secret tensor (fixed-point encoded unless stated otherwise).
#[derive(Clone, Debug)]
pub struct Share {
    tensor: Tensor,
    /// Makes `Share` `!Send + !Sync`.
    _pinned: PhantomData<*const ()>,
}

impl Share {
    /// Wrap a backend tensor holding this party's share.
    pub(crate) fn new(tensor: Tensor) -> Self {
        Share {
            tensor,
            _pinned: PhantomData,
        }
    }

    /// The share's shape.
    pub fn shape(&self) -> &[usize] {
        self.tensor.shape()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.tensor.len()
    }

    /// True when the share has no elements.
    pub fn is_empty(&self) -> bool {
        self.tensor.is_empty()
    }

    /// The backend tensor (crate-internal: protocols only).
    pub(crate) fn tensor(&self) -> &Tensor {
        &self.tensor
    }

    /// The same share viewed with another shape of equal element count.
    pub fn reshape(&self, shape: &[usize]) -> crate::Result<Share> {
        self.tensor
            .reshaped(shape.to_vec())
            .map(Share::new)
            .ok_or_else(|| {
                crate::error::shape_err(
                    "reshape",
                    format!("cannot view {:?} as {shape:?}", self.shape()),
                )
            })
    }
}
