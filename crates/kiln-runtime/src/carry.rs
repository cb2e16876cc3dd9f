//! Outputs an executor carries into its next run as inputs, without a round trip through the
//! caller: a KV cache stays in the executor's memory (on the GPU, device memory) from one decode
//! step to the next. `B` is the executor's buffer type.

use crate::binding::check_param;
use kiln_ir::{DType, IrError, Tensor};
use kiln_program::Program;
use std::collections::HashMap;

/// One carried value: produced as `output` by a run, read as `input` by the next.
pub struct Carried<B> {
    pub output: String,
    pub input: String,
    pub dtype: DType,
    /// The shape of the value now in `buf` (the buffer may be larger).
    pub shape: Vec<usize>,
    pub buf: B,
}

pub struct CarriedState<B> {
    items: Vec<Carried<B>>,
    /// Index in `items` by input and by output name: a batched model carries hundreds of
    /// caches (layers x K and V x slots), and every run looks each of them up.
    by_input: HashMap<String, usize>,
    by_output: HashMap<String, usize>,
}

impl<B> Default for CarriedState<B> {
    fn default() -> Self {
        CarriedState {
            items: Vec::new(),
            by_input: HashMap::new(),
            by_output: HashMap::new(),
        }
    }
}

impl<B> CarriedState<B> {
    /// Checks that `output` can be carried into `input` starting from `initial`.
    pub fn check(
        &self,
        program: &Program,
        output: &str,
        input: &str,
        initial: &Tensor,
    ) -> Result<(), IrError> {
        let Some(&(_, out_buf)) = program.outputs.iter().find(|(n, _)| n == output) else {
            return Err(IrError::Input {
                name: output.into(),
                detail: "cannot be carried: it is not an output of this graph".into(),
            });
        };
        if program.buffers[out_buf].input.is_some() {
            return Err(IrError::Input {
                name: output.into(),
                detail: "cannot be carried: it is a graph input passed through, not computed"
                    .into(),
            });
        }
        check_param(program, input, initial)?;
        let out_dtype = program.buffers[out_buf].dtype;
        if out_dtype != initial.dtype() {
            return Err(IrError::Input {
                name: output.into(),
                detail: format!(
                    "cannot be carried into '{input}': it is {out_dtype}, the input {}",
                    initial.dtype()
                ),
            });
        }
        Ok(())
    }

    /// Carries `output` into `input`, starting from `initial` (already copied into `buf`;
    /// checked with [`CarriedState::check`]); replaces an earlier carry into the same input,
    /// which resets it.
    pub fn set(&mut self, output: &str, input: &str, initial: &Tensor, buf: B) {
        let item = Carried {
            output: output.into(),
            input: input.into(),
            dtype: initial.dtype(),
            shape: initial.shape().to_vec(),
            buf,
        };
        match self.by_input.get(input) {
            Some(&i) => {
                self.by_output.remove(&self.items[i].output);
                self.by_output.insert(output.into(), i);
                self.items[i] = item;
            }
            None => {
                self.by_input.insert(input.into(), self.items.len());
                self.by_output.insert(output.into(), self.items.len());
                self.items.push(item);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The carried value that a run reads as `input`.
    pub fn input(&self, input: &str) -> Option<&Carried<B>> {
        self.by_input.get(input).map(|&i| &self.items[i])
    }

    /// Whether a run's `output` is carried (not returned).
    pub fn carries(&self, output: &str) -> bool {
        self.by_output.contains_key(output)
    }

    /// The carry that a run's `output` feeds.
    pub fn output_mut(&mut self, output: &str) -> Option<&mut Carried<B>> {
        let i = *self.by_output.get(output)?;
        Some(&mut self.items[i])
    }

    /// (input name, dtype, shape) of every carried value, for binding a run's symbols.
    pub fn shapes(&self) -> impl Iterator<Item = (&str, DType, &[usize])> {
        self.items
            .iter()
            .map(|c| (c.input.as_str(), c.dtype, c.shape.as_slice()))
    }

    /// Whether a slot holds a carried output: such slots are grown with headroom, since the
    /// value grows by a little every run (one position of a KV cache per decode step).
    pub fn holds_output(
        &self,
        program: &Program,
        plan_slot_of: &[Option<usize>],
        slot: usize,
    ) -> bool {
        program
            .outputs
            .iter()
            .any(|(name, buf)| plan_slot_of[*buf] == Some(slot) && self.carries(name))
    }
}

/// Bytes to allocate for a slot that needs `bytes`: carried outputs get a quarter more, so a
/// cache that grows by one position per step is reallocated every few dozen steps, not each.
pub fn slot_allocation(bytes: usize, carried: bool) -> usize {
    if carried {
        bytes + bytes / 4 + 4096
    } else {
        bytes
    }
}
