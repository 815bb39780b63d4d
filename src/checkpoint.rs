//! Loading a Hugging Face model directory as downloaded: `config.json`,
//! `model.safetensors` or sharded `model-0000i-of-0000n.safetensors` with
//! `model.safetensors.index.json`, `generation_config.json`.
//!
//! Safetensors files are memory-mapped; tensors stay in their stored dtype and are never
//! expanded to an f32 copy, so resident memory stays near the checkpoint size.

use crate::error::{Error, Result};
use crate::tensor::{AlignedBytes, Storage, Tensor, TensorStore};
use memmap2::Mmap;
use safetensors::{Dtype as StDtype, SafeTensors};
use serde_json::Value;
use specmoe_cpu_kernels::DType;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Maps the safetensors files of `dir` into a [`TensorStore`].
///
/// Errors: no `model.safetensors` nor index; an index naming a missing shard; a truncated or
/// malformed file; a tensor of a dtype other than F32/F16/BF16 (named in the error).
pub fn load_tensors(dir: &Path) -> Result<TensorStore> {
    let files = safetensors_files(dir)?;
    let mut store = TensorStore::new(dir.display().to_string());
    for file in &files {
        load_file(file, &mut store)?;
    }
    Ok(store)
}

/// The safetensors files of a checkpoint directory, from the index if there is one.
fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| Error::Checkpoint {
            path: index.clone(),
            msg: format!("invalid JSON: {e}"),
        })?;
        let map = v
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| Error::Checkpoint {
                path: index.clone(),
                msg: "missing 'weight_map' object".into(),
            })?;
        let mut names = BTreeSet::new();
        for (tensor, file) in map {
            let f = file.as_str().ok_or_else(|| Error::Checkpoint {
                path: index.clone(),
                msg: format!("weight_map['{tensor}'] must be a file name"),
            })?;
            if f.contains('/') || f.contains("..") {
                return Err(Error::Checkpoint {
                    path: index.clone(),
                    msg: format!("shard name '{f}' is not a plain file name"),
                });
            }
            names.insert(f.to_string());
        }
        let files: Vec<PathBuf> = names.into_iter().map(|n| dir.join(n)).collect();
        for f in &files {
            if !f.exists() {
                return Err(Error::Checkpoint {
                    path: f.clone(),
                    msg: format!("shard listed in {} is missing", index.display()),
                });
            }
        }
        return Ok(files);
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    Err(Error::Checkpoint {
        path: dir.to_path_buf(),
        msg: "no model.safetensors or model.safetensors.index.json in this directory".into(),
    })
}

fn load_file(path: &Path, store: &mut TensorStore) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the file is opened read-only; as with every mmap-based loader, a concurrent
    // truncation of the file by another process is outside what we can guard against.
    let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let base = mmap.as_ptr() as usize;
    let entries: Vec<Entry> = {
        let st = SafeTensors::deserialize(&mmap).map_err(|e| Error::Checkpoint {
            path: path.to_path_buf(),
            msg: format!("not a valid safetensors file (truncated or corrupt?): {e}"),
        })?;
        let mut out = Vec::new();
        for (name, view) in st.tensors() {
            let dtype = match view.dtype() {
                StDtype::F32 => DType::F32,
                StDtype::F16 => DType::F16,
                StDtype::BF16 => DType::BF16,
                other => {
                    return Err(Error::Tensor {
                        name,
                        origin: path.display().to_string(),
                        msg: format!("has dtype {other:?}, expected F32, F16 or BF16"),
                    })
                }
            };
            let data = view.data();
            out.push((
                name,
                dtype,
                view.shape().to_vec(),
                data.as_ptr() as usize - base,
                data.len(),
            ));
        }
        out
    };
    let (storage, entries) = if aligned_copy_pays(mmap.len(), base, &entries) {
        aligned_copy(&mmap, entries)
    } else {
        (Arc::new(Storage::Mmap(mmap)), entries)
    };
    for (name, dtype, shape, off, len) in entries {
        let t = Tensor::new(dtype, shape, storage.clone(), off, len).map_err(|e| {
            Error::Checkpoint {
                path: path.to_path_buf(),
                msg: format!("tensor '{name}': {e}"),
            }
        })?;
        store.insert(name, t);
    }
    Ok(())
}

/// Largest safetensors file whose tensors are copied to 64-byte-aligned memory at load.
///
/// safetensors aligns tensor data to 8 bytes only (the bundled checkpoints start theirs at
/// 8 and 40 bytes past a cache line), so every 64-byte weight load of the matmul kernels
/// straddles two cache lines. That costs nothing when the weights stream from DRAM (measured:
/// 8-token 14336 × 4096 calls take the same time aligned or not) but 10–20 % on 4- and
/// 8-token calls over L2/L3-resident weights (4096 × 512 and 192 × 512 bf16, one thread,
/// interleaved) — the regime of a model small enough to sit in the last-level cache. Such
/// a model is cheap to copy; a large one stays memory-mapped (no second copy in RAM).
pub const ALIGNED_COPY_MAX_BYTES: usize = 256 << 20;

type Entry = (String, DType, Vec<usize>, usize, usize);

/// Whether [`aligned_copy`] applies to a file of `file_len` bytes mapped at `base`: small
/// enough, and some tensor does not start on a cache line.
fn aligned_copy_pays(file_len: usize, base: usize, entries: &[Entry]) -> bool {
    file_len <= ALIGNED_COPY_MAX_BYTES && entries.iter().any(|e| !(base + e.3).is_multiple_of(64))
}

/// The tensors of `mmap` copied into one owned buffer, each starting at a multiple of 64
/// bytes, with their new offsets.
fn aligned_copy(mmap: &Mmap, entries: Vec<Entry>) -> (Arc<Storage>, Vec<Entry>) {
    let total: usize = entries.iter().map(|e| e.4.next_multiple_of(64)).sum();
    let mut buf = AlignedBytes::zeroed(total);
    let dst = buf.as_mut_slice();
    let mut at = 0;
    let mut moved = Vec::with_capacity(entries.len());
    for (name, dtype, shape, off, len) in entries {
        dst[at..at + len].copy_from_slice(&mmap[off..off + len]);
        moved.push((name, dtype, shape, at, len));
        at += len.next_multiple_of(64);
    }
    (Arc::new(Storage::Owned(buf)), moved)
}

/// What `generation_config.json` says about stopping and sampling defaults.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerationConfig {
    /// EOS ids: generation stops at any of them.
    pub eos_token_ids: Vec<u32>,
    /// BOS id.
    pub bos_token_id: Option<u32>,
}

impl GenerationConfig {
    /// Reads `dir/generation_config.json`; a missing file gives the default (empty).
    ///
    /// Errors: the file exists but is not valid JSON or has ill-typed ids.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("generation_config.json");
        if !path.exists() {
            return Ok(Self::default());
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| Error::Config {
            path: path.clone(),
            msg: format!("invalid JSON: {e}"),
        })?;
        let c = crate::config::Cfg {
            v: &v,
            path: path.clone(),
        };
        Ok(GenerationConfig {
            eos_token_ids: c.id_list("eos_token_id")?,
            bos_token_id: c.opt_usize("bos_token_id")?.map(|x| x as u32),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(off: usize) -> Entry {
        ("t".into(), DType::BF16, vec![4, 32], off, 256)
    }

    #[test]
    fn aligned_copy_only_for_small_misaligned_files() {
        let small = 1 << 20;
        assert!(aligned_copy_pays(small, 4096, &[entry(64), entry(72)]));
        assert!(!aligned_copy_pays(small, 4096, &[entry(0), entry(128)]));
        assert!(!aligned_copy_pays(
            ALIGNED_COPY_MAX_BYTES + 1,
            4096,
            &[entry(8)]
        ));
        assert!(aligned_copy_pays(ALIGNED_COPY_MAX_BYTES, 4096, &[entry(8)]));
    }
}
