//! Building graph models (residual connections, concatenations) layer by layer.

use crate::error::Result;
use crate::nn::graph::Wiring;

use super::{Layer, Sequential};

/// A graph model built layer by layer: value 0 is the input, and every [`GraphBuilder::push`]
/// names the values its layer reads and returns the value it writes.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    layers: Vec<Layer>,
    inputs: Vec<Vec<usize>>,
}

impl GraphBuilder {
    /// An empty model.
    pub fn new() -> GraphBuilder {
        GraphBuilder::default()
    }

    /// Add `layer` reading `inputs`; returns the value of its output.
    pub fn push(&mut self, layer: Layer, inputs: &[usize]) -> usize {
        self.layers.push(layer);
        self.inputs.push(inputs.to_vec());
        self.layers.len()
    }

    /// The model over per-sample inputs of shape `input`, checked as
    /// [`Sequential::graph`] checks it.
    pub fn build(self, input: Vec<usize>) -> Result<Sequential> {
        Sequential::graph(self.layers, input, Wiring::new(self.inputs))
    }
}
