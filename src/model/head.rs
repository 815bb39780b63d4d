//! A restricted LM head: the rows of a frequency-ranked subset of the vocabulary, for draft
//! models (FR-Spec, Zhao et al. 2025, §3: the draft's LM head over the most frequent tokens
//! only; verification stays over the full vocabulary, so decoding stays lossless).

use crate::error::{Error, Result};
use crate::tensor::AlignedBytes;
use specmoe_cpu_kernels::matmul::{matmul, WeightMatrix};
use specmoe_cpu_kernels::DType;

/// The LM-head rows of the token ids in `ids`, copied out of the full head in its stored dtype
/// (into cache-line-aligned memory, see [`crate::checkpoint::ALIGNED_COPY_MAX_BYTES`]).
#[derive(Clone, Debug)]
pub struct HeadSubset {
    ids: Vec<u32>,
    dtype: DType,
    cols: usize,
    data: AlignedBytes,
}

impl HeadSubset {
    /// Gathers rows `ids` of `head` `[vocab, hidden]`.
    ///
    /// Errors: `ids` empty, an id outside the vocabulary, or an id listed twice.
    pub fn new(head: &WeightMatrix<'_>, ids: &[u32]) -> Result<Self> {
        if ids.is_empty() {
            return Err(Error::Input(
                "a restricted LM head needs at least one token id".into(),
            ));
        }
        let mut seen = vec![false; head.rows];
        let rb = head.cols * head.dtype.size();
        for &id in ids {
            let i = id as usize;
            if i >= head.rows {
                return Err(Error::Input(format!(
                    "restricted LM head: token id {id} is outside the vocabulary (size {})",
                    head.rows
                )));
            }
            if std::mem::replace(&mut seen[i], true) {
                return Err(Error::Input(format!(
                    "restricted LM head: token id {id} is listed twice"
                )));
            }
        }
        let mut data = AlignedBytes::zeroed(ids.len() * rb);
        if rb > 0 {
            for (row, &id) in data.as_mut_slice().chunks_exact_mut(rb).zip(ids) {
                let i = id as usize;
                row.copy_from_slice(&head.data[i * rb..(i + 1) * rb]);
            }
        }
        Ok(HeadSubset {
            ids: ids.to_vec(),
            dtype: head.dtype,
            cols: head.cols,
            data,
        })
    }

    /// Token ids whose logits are computed, in row order.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Logits f32 `[rows, vocab]` of the normed hidden states `h` `[rows, hidden]`: the
    /// subset's entries computed (bitwise what the full head gives for them), every other
    /// entry `-inf` (probability 0 after softmax, never an argmax).
    pub fn logits(&self, h: &[f32], rows: usize, vocab: usize) -> Vec<f32> {
        let w = WeightMatrix::new(self.dtype, self.ids.len(), self.cols, self.data.as_slice());
        let mut sub = vec![0.0f32; rows * self.ids.len()];
        matmul(h, rows, &w, &mut sub);
        let mut out = vec![f32::NEG_INFINITY; rows * vocab];
        for (o, s) in out
            .chunks_exact_mut(vocab)
            .zip(sub.chunks_exact(self.ids.len()))
        {
            for (&id, &v) in self.ids.iter().zip(s) {
                o[id as usize] = v;
            }
        }
        out
    }

    /// Bytes of weights read per call.
    pub fn bytes(&self) -> usize {
        self.data.as_slice().len()
    }
}
