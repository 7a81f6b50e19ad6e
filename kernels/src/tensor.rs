//! Backend-resident tensors: a shape plus an opaque, reference-counted storage handle.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

/// Storage owned by one backend (host memory for the CPU, a buffer for the GPU).
///
/// The engine never looks inside: it passes tensors back to the backend that made them.
pub trait Storage: Any + Send + Sync {
    /// Name of the backend that owns this storage.
    fn backend_name(&self) -> &'static str;
    /// Number of `u64` elements held.
    fn len(&self) -> usize;
    /// True when no element is held.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Upcast for downcasting by the owning backend.
    fn as_any(&self) -> &dyn Any;
}

/// A ring tensor held by a backend. Cloning is cheap (the storage is shared, immutable).
#[derive(Clone)]
pub struct Tensor {
    shape: Vec<usize>,
    storage: Arc<dyn Storage>,
}

impl Tensor {
    /// Wrap backend storage with a shape. Backends call this; the element count must match.
    pub fn from_storage(shape: Vec<usize>, storage: Arc<dyn Storage>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), storage.len());
        Tensor { shape, storage }
    }

    /// The tensor's shape (row-major).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.storage.len()
    }

    /// True for a tensor without elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The backend storage.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// Same storage viewed with another shape of equal element count.
    pub fn reshaped(&self, shape: Vec<usize>) -> Option<Tensor> {
        (shape.iter().product::<usize>() == self.len()).then(|| Tensor {
            shape,
            storage: self.storage.clone(),
        })
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Tensor({:?} on {})",
            self.shape,
            self.storage.backend_name()
        )
    }
}
