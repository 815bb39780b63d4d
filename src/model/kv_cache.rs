//! Per-sequence KV cache: for each layer, keys and values in the head-major layout
//! `[kv_heads, capacity, head_dim]` (each head's positions contiguous, so the chunked
//! verification attention streams them), stored as f32, f16 or bf16.

use specmoe_cpu_kernels::attention::{KvLayout, KvView};
use specmoe_cpu_kernels::dtype::store_f32_slice;
use specmoe_cpu_kernels::DType;

/// The KV cache of one sequence.
#[derive(Clone, Debug)]
pub struct KvCache {
    k: Vec<Vec<u8>>,
    v: Vec<Vec<u8>>,
    len: usize,
    capacity: usize,
    kv_heads: usize,
    head_dim: usize,
    dtype: DType,
}

impl KvCache {
    /// An empty cache for `layers` layers of `kv_heads × head_dim`.
    pub fn new(layers: usize, kv_heads: usize, head_dim: usize, dtype: DType) -> Self {
        KvCache {
            k: vec![Vec::new(); layers],
            v: vec![Vec::new(); layers],
            len: 0,
            capacity: 0,
            kv_heads,
            head_dim,
            dtype,
        }
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Bytes allocated (keys and values, all layers).
    pub fn allocated_bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(Vec::len).sum()
    }

    /// Drops positions `len..` (rollback after rejected draft tokens).
    ///
    /// Panics if `len > self.len()`.
    pub fn truncate(&mut self, len: usize) {
        assert!(len <= self.len, "KvCache::truncate beyond its length");
        self.len = len;
    }

    /// Makes room for `total` positions, growing geometrically (existing entries kept).
    pub fn reserve(&mut self, total: usize) {
        if total <= self.capacity {
            return;
        }
        let new_cap = total.max(self.capacity * 2).max(16);
        let (hd, es) = (self.head_dim, self.dtype.size());
        for buf in self.k.iter_mut().chain(self.v.iter_mut()) {
            let mut nb = vec![0u8; self.kv_heads * new_cap * hd * es];
            for h in 0..self.kv_heads {
                let n = self.len * hd * es;
                let src = h * self.capacity * hd * es;
                let dst = h * new_cap * hd * es;
                nb[dst..dst + n].copy_from_slice(&buf[src..src + n]);
            }
            *buf = nb;
        }
        self.capacity = new_cap;
    }

    fn layout(&self) -> KvLayout {
        KvLayout::head_major(self.kv_heads, self.head_dim, self.capacity)
    }

    /// Writes keys and values f32 `[n, kv_heads, d]` of layer `layer` at positions
    /// `pos..pos + n` (`pos + n` must be within the reserved capacity).
    pub fn write(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        let lay = self.layout();
        let d = self.head_dim;
        let n = k.len() / (self.kv_heads * d);
        assert!(
            pos + n <= self.capacity,
            "KvCache::write beyond reserved capacity"
        );
        for t in 0..n {
            for h in 0..self.kv_heads {
                let base = lay.offset(pos + t, h);
                let src = (t * self.kv_heads + h) * d;
                store_f32_slice(&mut self.k[layer], self.dtype, base, &k[src..src + d]);
                store_f32_slice(&mut self.v[layer], self.dtype, base, &v[src..src + d]);
            }
        }
    }

    /// Key and value views of `layer` for the attention kernels.
    pub fn views(&self, layer: usize) -> (KvView<'_>, KvView<'_>) {
        let layout = self.layout();
        (
            KvView {
                dtype: self.dtype,
                data: &self.k[layer],
                layout,
            },
            KvView {
                dtype: self.dtype,
                data: &self.v[layer],
                layout,
            },
        )
    }

    /// Sets the number of valid positions after a forward step wrote `len` of them.
    pub(crate) fn set_len(&mut self, len: usize) {
        debug_assert!(len <= self.capacity);
        self.len = len;
    }
}
