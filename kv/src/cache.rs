//! The compacting KV cache.
//!
//! Per layer and KV head it stores a variable number of entries: the key as stored (after RoPE), the
//! value, the entry's original absolute position and, when asked for, the attention the entry has
//! received so far (H2O's state, kept on the device beside the keys, so that adding a step's attention
//! copies nothing to the host). Keys and values live in preallocated tensors on the model's device
//! that grow by an eighth ([`headroom`]), so appending a token costs amortised O(1) copies (eight rows
//! per appended row at most) and a bounded cache never holds much more than it needs: doubling made a
//! cache compacted to 1024 entries allocate 2304 rows when one 256-token prefill chunk arrived; reading back returns a
//! contiguous view of the filled rows. Compaction gathers the kept rows into new tensors with a little
//! headroom ([`headroom`]) and drops the old ones, so evicted entries really give their memory back
//! (unlike masking schemes, which save nothing), and the decode steps after a compaction append
//! without reallocating. Where the storage already has that size (a policy that evicts at every step,
//! after its first compaction), the kept rows move down in place instead, so such a policy copies only
//! the rows after the first entry it evicts.

use candle_core::{DType, Device, Tensor};

use spectra_core::kv_policy::{KeepPlan, KvHeadView, KvLayerView};
use spectra_core::{Error, Result};

/// The fewest free rows a head is given when it grows or is compacted; small enough not to matter,
/// large enough that the first decode steps do not reallocate every token.
const MIN_CAPACITY: usize = 16;

/// Free rows left after compacting or growing to `kept` entries: an eighth, at least
/// [`MIN_CAPACITY`], none for an emptied head.
pub fn headroom(kept: usize) -> usize {
    if kept == 0 {
        0
    } else {
        (kept / 8).max(MIN_CAPACITY)
    }
}

/// The shape of a model's cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvCacheShape {
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Query heads per KV head.
    pub group_size: usize,
}

/// One (layer, KV head): the storage and the views of its filled rows.
#[derive(Debug)]
struct HeadCache {
    /// `[capacity, head_dim]`; rows `[0, len)` hold entries.
    key_store: Tensor,
    value_store: Tensor,
    /// `key_store.narrow(0, 0, len)`, kept so that views can be lent without allocating.
    keys: Tensor,
    values: Tensor,
    positions: Vec<u64>,
    /// `[capacity]` f32 where attention is tracked; rows past the filled ones are always 0, so an
    /// appended entry starts with none received.
    attention_store: Option<Tensor>,
    /// `attention_store.narrow(0, 0, len)`.
    attention: Option<Tensor>,
}

impl HeadCache {
    fn empty(
        head_dim: usize,
        dtype: DType,
        device: &Device,
        tracks_attention: bool,
    ) -> Result<Self> {
        let store = Tensor::zeros((0, head_dim), dtype, device)?;
        let attention = tracks_attention
            .then(|| Tensor::zeros(0, DType::F32, device))
            .transpose()?;
        Ok(HeadCache {
            key_store: store.clone(),
            value_store: store.clone(),
            keys: store.clone(),
            values: store,
            positions: Vec::new(),
            attention_store: attention.clone(),
            attention,
        })
    }

    fn len(&self) -> usize {
        self.positions.len()
    }

    fn capacity(&self) -> usize {
        self.key_store.dim(0).unwrap_or(0)
    }

    fn refresh_views(&mut self) -> Result<()> {
        let len = self.len();
        self.keys = self.key_store.narrow(0, 0, len)?;
        self.values = self.value_store.narrow(0, 0, len)?;
        self.attention = self
            .attention_store
            .as_ref()
            .map(|store| store.narrow(0, 0, len))
            .transpose()?;
        Ok(())
    }

    /// Makes room for `extra` more rows, growing to the rows needed plus `spare` when it runs out.
    fn reserve(&mut self, extra: usize, spare: impl Fn(usize) -> usize) -> Result<()> {
        let needed = self.len() + extra;
        if needed <= self.capacity() {
            return Ok(());
        }
        let capacity = needed + spare(needed);
        let grow = |filled: &Tensor| -> Result<Tensor> {
            let bigger = zeros_rows(filled, capacity)?;
            if filled.dim(0)? > 0 {
                bigger.slice_set(filled, 0, 0)?;
            }
            Ok(bigger)
        };
        self.key_store = grow(&self.keys)?;
        self.value_store = grow(&self.values)?;
        self.attention_store = self.attention.as_ref().map(grow).transpose()?;
        self.refresh_views()
    }

    fn append(&mut self, keys: &Tensor, values: &Tensor, positions: &[u64]) -> Result<()> {
        self.reserve(positions.len(), headroom)?;
        let at = self.len();
        self.key_store.slice_set(keys, 0, at)?;
        self.value_store.slice_set(values, 0, at)?;
        self.positions.extend_from_slice(positions);
        self.refresh_views()
    }

    /// A copy with storage of its own, exactly as long as the filled rows.
    fn deep_copy(&self) -> Result<Self> {
        let keys = self.keys.copy()?;
        let values = self.values.copy()?;
        let attention = self.attention.as_ref().map(Tensor::copy).transpose()?;
        Ok(HeadCache {
            key_store: keys.clone(),
            value_store: values.clone(),
            keys,
            values,
            positions: self.positions.clone(),
            attention_store: attention.clone(),
            attention,
        })
    }

    /// Leaves the kept rows plus [`headroom`] of storage: a fresh storage, or the same one where it
    /// has that size already; keeping everything changes nothing.
    fn compact(&mut self, keep: &[u32]) -> Result<()> {
        let (len, kept) = (self.len(), keep.len());
        if kept == len {
            return Ok(());
        }
        let capacity = kept + headroom(kept);
        if self.capacity() == capacity {
            return self.compact_in_place(keep);
        }
        let gather = |filled: &Tensor| -> Result<Tensor> {
            let store = zeros_rows(filled, capacity)?;
            if !keep.is_empty() {
                let index = Tensor::from_slice(keep, keep.len(), filled.device())?;
                store.slice_set(&filled.index_select(&index, 0)?, 0, 0)?;
            }
            Ok(store)
        };
        self.key_store = gather(&self.keys)?;
        self.value_store = gather(&self.values)?;
        self.attention_store = self.attention.as_ref().map(gather).transpose()?;
        self.positions = keep.iter().map(|&i| self.positions[i as usize]).collect();
        self.positions.shrink_to_fit();
        self.refresh_views()
    }

    /// [`compact`](Self::compact) where the storage already has the size a fresh one would have (a
    /// policy that evicts at every step keeps its budget, so every compaction after the first): the
    /// kept rows after the first evicted one move down within the storage, and nothing is allocated
    /// but the moved rows' copy. Evicting one entry moves half the rows on average, where a fresh
    /// storage wrote all of them twice.
    fn compact_in_place(&mut self, keep: &[u32]) -> Result<()> {
        let (len, kept) = (self.len(), keep.len());
        let settled = keep
            .iter()
            .enumerate()
            .take_while(|&(i, &k)| k as usize == i)
            .count();
        let moved = &keep[settled..];
        if !moved.is_empty() {
            let index = Tensor::from_slice(moved, moved.len(), self.keys.device())?;
            let shift = |store: &Tensor, filled: &Tensor| -> Result<()> {
                Ok(store.slice_set(&filled.index_select(&index, 0)?, 0, settled)?)
            };
            shift(&self.key_store, &self.keys)?;
            shift(&self.value_store, &self.values)?;
            if let (Some(store), Some(filled)) = (&self.attention_store, &self.attention) {
                shift(store, filled)?;
            }
        }
        if let Some(store) = &self.attention_store {
            // Rows past the kept ones start at zero when entries are appended there.
            store.slice_set(
                &Tensor::zeros(len - kept, DType::F32, store.device())?,
                0,
                kept,
            )?;
        }
        for (to, &from) in moved.iter().enumerate() {
            self.positions[settled + to] = self.positions[from as usize];
        }
        self.positions.truncate(kept);
        self.refresh_views()
    }
}

/// Zeros shaped like `filled` but with `rows` rows.
fn zeros_rows(filled: &Tensor, rows: usize) -> Result<Tensor> {
    let mut shape = filled.dims().to_vec();
    shape[0] = rows;
    Ok(Tensor::zeros(shape, filled.dtype(), filled.device())?)
}

/// A KV cache whose heads hold independent numbers of entries and that frees evicted entries' memory.
#[derive(Debug)]
pub struct KvCache {
    shape: KvCacheShape,
    dtype: DType,
    device: Device,
    layers: Vec<Vec<HeadCache>>,
}

impl KvCache {
    /// An empty cache. With `tracks_attention` every entry also accumulates the attention it receives
    /// (see [`add_attention`](Self::add_attention)), for policies such as H2O.
    pub fn new(
        shape: KvCacheShape,
        dtype: DType,
        device: &Device,
        tracks_attention: bool,
    ) -> Result<Self> {
        if shape.kv_heads == 0 || shape.head_dim == 0 || shape.group_size == 0 {
            return Err(Error::invalid(
                "KvCacheShape",
                format!("{shape:?}: kv_heads, head_dim and group_size must be at least 1"),
            ));
        }
        let layers = (0..shape.layers)
            .map(|_| {
                (0..shape.kv_heads)
                    .map(|_| HeadCache::empty(shape.head_dim, dtype, device, tracks_attention))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(KvCache {
            shape,
            dtype,
            device: device.clone(),
            layers,
        })
    }

    /// An independent copy: appending to or compacting either cache leaves the other untouched (a
    /// shallow clone would share the preallocated storage that `append` writes into). Lets one prefill
    /// serve several policies.
    pub fn deep_copy(&self) -> Result<Self> {
        let layers = self
            .layers
            .iter()
            .map(|heads| heads.iter().map(HeadCache::deep_copy).collect())
            .collect::<Result<Vec<_>>>()?;
        Ok(KvCache {
            shape: self.shape,
            dtype: self.dtype,
            device: self.device.clone(),
            layers,
        })
    }

    pub fn shape(&self) -> KvCacheShape {
        self.shape
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn tracks_attention(&self) -> bool {
        self.layers
            .first()
            .and_then(|l| l.first())
            .is_some_and(|h| h.attention.is_some())
    }

    /// Appends `m` new entries to every KV head of `layer`: `keys` and `values` are `[kv_heads, m,
    /// head_dim]` (keys after RoPE), `positions` their `m` absolute positions, increasing and after every
    /// position already cached. Keys and values are converted to the cache's dtype.
    pub fn append(
        &mut self,
        layer: usize,
        keys: &Tensor,
        values: &Tensor,
        positions: &[u64],
    ) -> Result<()> {
        let m = positions.len();
        let want = [self.shape.kv_heads, m, self.shape.head_dim];
        for (name, t) in [("keys", keys), ("values", values)] {
            if t.dims() != want {
                return Err(Error::invalid(
                    format!("KvCache::append {name}"),
                    format!(
                        "shape {:?} should be [kv_heads, new tokens, head_dim] = {want:?}",
                        t.dims()
                    ),
                ));
            }
            if !t.device().same_device(&self.device) {
                return Err(Error::invalid(
                    format!("KvCache::append {name}"),
                    format!(
                        "tensor is on {:?} but the cache is on {:?}",
                        t.device(),
                        self.device
                    ),
                ));
            }
        }
        if positions.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::invalid(
                "KvCache::append positions",
                "positions must be strictly increasing",
            ));
        }
        let heads = self.layer_mut(layer)?;
        if let (Some(&first), Some(last)) = (
            positions.first(),
            heads.iter().filter_map(|h| h.positions.last()).max(),
        ) {
            if first <= *last {
                return Err(Error::invalid(
                    "KvCache::append positions",
                    format!("new position {first} is not after the last cached position {last}"),
                ));
            }
        }
        if m == 0 {
            return Ok(());
        }
        let dtype = self.dtype;
        let keys = keys.to_dtype(dtype)?.contiguous()?;
        let values = values.to_dtype(dtype)?.contiguous()?;
        for (h, head) in self.layer_mut(layer)?.iter_mut().enumerate() {
            head.append(&keys.get(h)?, &values.get(h)?, positions)?;
        }
        Ok(())
    }

    /// Makes room in every head for `extra` more entries, exactly: a head that must grow gets no
    /// [`headroom`]. A caller that knows how many entries arrive before the next compaction (a prefill
    /// chunk, or a whole prompt that is not compressed on the way) reserves them so that the cache
    /// holds no more than that at its peak: growing by an eighth made a cache compacted to 1024
    /// entries allocate 1440 rows per head for one 256-token chunk.
    pub fn reserve(&mut self, extra: usize) -> Result<()> {
        for head in self.layers.iter_mut().flatten() {
            head.reserve(extra, |_| 0)?;
        }
        Ok(())
    }

    /// Adds the attention each entry of (`layer`, `kv_head`) received in the last forward pass, summed
    /// over the new queries and the GQA group: `received` is `[entries]` on the cache's device, and the
    /// sum stays there. Values are not checked for being finite, which would copy them to the host at
    /// every step: attention that is not finite comes from logits that are not, and policies rank NaN
    /// lowest.
    pub fn add_attention(&mut self, layer: usize, kv_head: usize, received: &Tensor) -> Result<()> {
        let device = self.device.clone();
        let head = self.head_mut(layer, kv_head)?;
        let n = head.len();
        let (Some(store), Some(acc)) = (&head.attention_store, &head.attention) else {
            return Err(Error::invalid(
                "KvCache::add_attention",
                "this cache does not track attention; create it with tracks_attention = true",
            ));
        };
        if received.dims() != [n] {
            return Err(Error::invalid(
                "KvCache::add_attention",
                format!(
                    "received attention has shape {:?}; the head holds {n} entries, so [{n}]",
                    received.dims()
                ),
            ));
        }
        if !received.device().same_device(&device) {
            return Err(Error::invalid(
                "KvCache::add_attention",
                format!(
                    "received attention is on {:?} but the cache is on {device:?}",
                    received.device()
                ),
            ));
        }
        if n > 0 {
            store.slice_set(&(acc + received.to_dtype(DType::F32)?)?, 0, 0)?;
        }
        Ok(())
    }

    /// Keeps, per KV head of `layer`, the entries the plan names (keys, values, positions and attention
    /// gathered with the same indices) and releases everything else.
    pub fn compact(&mut self, layer: usize, plan: &KeepPlan) -> Result<()> {
        let lens = self.lens(layer)?;
        plan.check(&lens)
            .map_err(|m| Error::invalid("KvCache::compact plan", m))?;
        for (head, keep) in self.layer_mut(layer)?.iter_mut().zip(&plan.per_head) {
            head.compact(keep)?;
        }
        Ok(())
    }

    /// The policy's view of `layer`.
    pub fn layer_view(&self, layer: usize) -> Result<KvLayerView<'_>> {
        let heads = self
            .layer(layer)?
            .iter()
            .map(|h| KvHeadView {
                keys: &h.keys,
                values: &h.values,
                positions: &h.positions,
                accumulated_attention: h.attention.as_ref(),
            })
            .collect();
        Ok(KvLayerView {
            layer,
            heads,
            group_size: self.shape.group_size,
        })
    }

    /// `[len, head_dim]` keys of one head, contiguous.
    pub fn keys(&self, layer: usize, kv_head: usize) -> Result<&Tensor> {
        Ok(&self.head(layer, kv_head)?.keys)
    }

    /// `[len, head_dim]` values of one head, contiguous.
    pub fn values(&self, layer: usize, kv_head: usize) -> Result<&Tensor> {
        Ok(&self.head(layer, kv_head)?.values)
    }

    pub fn positions(&self, layer: usize, kv_head: usize) -> Result<&[u64]> {
        Ok(&self.head(layer, kv_head)?.positions)
    }

    /// `[len]` f32 on the cache's device, where the cache tracks attention. It is a view of the
    /// cache's storage: the next [`add_attention`](Self::add_attention) changes what it holds, so a
    /// caller that keeps it across a step copies it.
    pub fn accumulated_attention(&self, layer: usize, kv_head: usize) -> Result<Option<&Tensor>> {
        Ok(self.head(layer, kv_head)?.attention.as_ref())
    }

    /// Entries per KV head of `layer`.
    pub fn lens(&self, layer: usize) -> Result<Vec<usize>> {
        Ok(self.layer(layer)?.iter().map(HeadCache::len).collect())
    }

    /// Entries held in all layers and heads.
    pub fn entries(&self) -> usize {
        self.layers.iter().flatten().map(HeadCache::len).sum()
    }

    /// Bytes allocated for keys and values on the device: `capacity × 2 × head_dim × dtype size`,
    /// summed over heads. Right after [`compact`](Self::compact) a head's capacity is its kept entries
    /// plus [`headroom`]. The accumulated attention (4 bytes a row, where tracked) is not counted.
    pub fn bytes(&self) -> usize {
        let row = 2 * self.shape.head_dim * self.dtype.size_in_bytes();
        self.layers
            .iter()
            .flatten()
            .map(|h| h.capacity() * row)
            .sum()
    }

    fn layer(&self, layer: usize) -> Result<&Vec<HeadCache>> {
        let layers = self.layers.len();
        self.layers.get(layer).ok_or_else(|| {
            Error::invalid(
                "KvCache layer",
                format!("layer {layer} out of range ({layers} layers)"),
            )
        })
    }

    fn layer_mut(&mut self, layer: usize) -> Result<&mut Vec<HeadCache>> {
        let layers = self.layers.len();
        self.layers.get_mut(layer).ok_or_else(|| {
            Error::invalid(
                "KvCache layer",
                format!("layer {layer} out of range ({layers} layers)"),
            )
        })
    }

    fn head(&self, layer: usize, kv_head: usize) -> Result<&HeadCache> {
        let heads = self.shape.kv_heads;
        self.layer(layer)?.get(kv_head).ok_or_else(|| {
            Error::invalid(
                "KvCache head",
                format!("KV head {kv_head} out of range ({heads} heads)"),
            )
        })
    }

    fn head_mut(&mut self, layer: usize, kv_head: usize) -> Result<&mut HeadCache> {
        let heads = self.shape.kv_heads;
        self.layer_mut(layer)?.get_mut(kv_head).ok_or_else(|| {
            Error::invalid(
                "KvCache head",
                format!("KV head {kv_head} out of range ({heads} heads)"),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const D: usize = 4;
    const HEADS: usize = 2;
    const LAYERS: usize = 2;

    /// The naive model: per (layer, head) a list of (key, value, position, attention).
    type Entry = (Vec<f32>, Vec<f32>, u64, f32);

    #[derive(Clone, Debug)]
    enum Op {
        Append {
            layer: usize,
            m: usize,
        },
        Attend {
            layer: usize,
            head: usize,
            seed: u32,
        },
        Compact {
            layer: usize,
            masks: Vec<Vec<bool>>,
        },
        Reserve {
            extra: usize,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..LAYERS, 0usize..40).prop_map(|(layer, m)| Op::Append { layer, m }),
            (0..LAYERS, 0..HEADS, any::<u32>()).prop_map(|(layer, head, seed)| Op::Attend {
                layer,
                head,
                seed
            }),
            // Half the entries evicted (a fresh storage), or a few (mostly in place).
            (
                0..LAYERS,
                prop_oneof![
                    prop::collection::vec(prop::collection::vec(any::<bool>(), 200), HEADS),
                    prop::collection::vec(
                        prop::collection::vec(prop::bool::weighted(0.95), 200),
                        HEADS
                    ),
                ]
            )
                .prop_map(|(layer, masks)| Op::Compact { layer, masks }),
            (0usize..40).prop_map(|extra| Op::Reserve { extra }),
        ]
    }

    fn shape() -> KvCacheShape {
        KvCacheShape {
            layers: LAYERS,
            kv_heads: HEADS,
            head_dim: D,
            group_size: 1,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        #[test]
        fn behaves_like_a_list_of_entries(ops in prop::collection::vec(op(), 1..30)) {
            let mut cache = KvCache::new(shape(), DType::F32, &Device::Cpu, true).unwrap();
            let mut model: Vec<Vec<Vec<Entry>>> = vec![vec![Vec::new(); HEADS]; LAYERS];
            let mut next_pos = [0u64; LAYERS];
            let mut counter = 0f32;
            for op in ops {
                match op {
                    Op::Append { layer, m } => {
                        let mut k: Vec<f32> = Vec::new();
                        let mut v: Vec<f32> = Vec::new();
                        for (h, entries) in model[layer].iter_mut().enumerate() {
                            for i in 0..m {
                                let key: Vec<f32> = (0..D).map(|c| counter + (h * 1000 + i * 10 + c) as f32).collect();
                                let value: Vec<f32> = key.iter().map(|x| -x).collect();
                                k.extend(&key);
                                v.extend(&value);
                                entries.push((key, value, next_pos[layer] + 3 * i as u64, 0.0));
                            }
                        }
                        counter += 0.5;
                        let positions: Vec<u64> = (0..m as u64).map(|i| next_pos[layer] + 3 * i).collect();
                        next_pos[layer] += 3 * m as u64 + 1;
                        let kt = Tensor::from_vec(k, (HEADS, m, D), &Device::Cpu).unwrap();
                        let vt = Tensor::from_vec(v, (HEADS, m, D), &Device::Cpu).unwrap();
                        cache.append(layer, &kt, &vt, &positions).unwrap();
                    }
                    Op::Attend { layer, head, seed } => {
                        let n = model[layer][head].len();
                        let received: Vec<f32> = (0..n).map(|i| ((seed as usize + i) % 7) as f32 * 0.25).collect();
                        for (e, r) in model[layer][head].iter_mut().zip(&received) {
                            e.3 += r;
                        }
                        let received = Tensor::new(received, &Device::Cpu).unwrap();
                        cache.add_attention(layer, head, &received).unwrap();
                    }
                    Op::Compact { layer, masks } => {
                        let per_head: Vec<Vec<u32>> = (0..HEADS)
                            .map(|h| (0..model[layer][h].len() as u32).filter(|&i| masks[h][i as usize % 200]).collect())
                            .collect();
                        // A head that evicts holds its kept rows plus the headroom (in place where
                        // its storage had that size already); one that keeps everything, and every
                        // other layer, is untouched.
                        let expected: Vec<usize> = (0..HEADS).map(|h| {
                            let kept = per_head[h].len();
                            if kept < model[layer][h].len() {
                                kept + headroom(kept)
                            } else {
                                cache.head(layer, h).unwrap().capacity()
                            }
                        }).collect();
                        for (entries, keep) in model[layer].iter_mut().zip(&per_head) {
                            *entries = keep.iter().map(|&i| entries[i as usize].clone()).collect();
                        }
                        let before_other: usize = (0..LAYERS).filter(|&l| l != layer).map(|l| {
                            (0..HEADS).map(|h| cache.head(l, h).unwrap().capacity()).sum::<usize>()
                        }).sum();
                        cache.compact(layer, &KeepPlan { per_head }).unwrap();
                        let after_other: usize = (0..LAYERS).filter(|&l| l != layer).map(|l| {
                            (0..HEADS).map(|h| cache.head(l, h).unwrap().capacity()).sum::<usize>()
                        }).sum();
                        let capacities: Vec<usize> = (0..HEADS).map(|h| cache.head(layer, h).unwrap().capacity()).collect();
                        prop_assert_eq!(capacities, expected);
                        prop_assert_eq!(before_other, after_other);
                    }
                    Op::Reserve { extra } => {
                        // A head with room enough keeps its storage; one without grows to exactly
                        // the rows asked for, no headroom.
                        let expected: Vec<Vec<usize>> = model.iter().enumerate().map(|(l, heads)| {
                            heads.iter().enumerate().map(|(h, entries)| {
                                cache.head(l, h).unwrap().capacity().max(entries.len() + extra)
                            }).collect()
                        }).collect();
                        cache.reserve(extra).unwrap();
                        let capacities: Vec<Vec<usize>> = (0..LAYERS).map(|l| {
                            (0..HEADS).map(|h| cache.head(l, h).unwrap().capacity()).collect()
                        }).collect();
                        prop_assert_eq!(capacities, expected);
                    }
                }
                for (l, layer_model) in model.iter().enumerate() {
                    for (h, want) in layer_model.iter().enumerate() {
                        let keys = cache.keys(l, h).unwrap();
                        prop_assert!(keys.is_contiguous());
                        let keys = keys.to_vec2::<f32>().unwrap();
                        let values = cache.values(l, h).unwrap().to_vec2::<f32>().unwrap();
                        prop_assert_eq!(keys.len(), want.len());
                        for (i, e) in want.iter().enumerate() {
                            prop_assert_eq!(&keys[i], &e.0);
                            prop_assert_eq!(&values[i], &e.1);
                        }
                        let positions: Vec<u64> = want.iter().map(|e| e.2).collect();
                        prop_assert_eq!(cache.positions(l, h).unwrap(), &positions[..]);
                        let acc: Vec<f32> = want.iter().map(|e| e.3).collect();
                        let held = cache.accumulated_attention(l, h).unwrap().unwrap();
                        prop_assert_eq!(held.to_vec1::<f32>().unwrap(), acc);
                        let view = cache.layer_view(l).unwrap();
                        prop_assert_eq!(view.heads[h].len(), want.len());
                    }
                }
            }
        }
    }

    #[test]
    fn compaction_frees_the_evicted_entries() {
        let d = 8;
        let shape = KvCacheShape {
            layers: 1,
            kv_heads: 3,
            head_dim: d,
            group_size: 2,
        };
        let mut cache = KvCache::new(shape, DType::F16, &Device::Cpu, false).unwrap();
        for t in 0..100u64 {
            let k = Tensor::ones((3, 1, d), DType::F32, &Device::Cpu).unwrap();
            cache.append(0, &k, &k, &[t]).unwrap();
        }
        // Each growth to the rows needed plus max(an eighth, 16): 17 → 34 → 51 → 68 → 85 → 102 rows
        // per head, never more than 16 rows past the 100 held.
        assert_eq!(cache.bytes(), 3 * 102 * 2 * d * 2);
        let plan = KeepPlan {
            per_head: vec![vec![0, 5, 99], (0..40).collect(), vec![]],
        };
        cache.compact(0, &plan).unwrap();
        assert_eq!(cache.lens(0).unwrap(), vec![3, 40, 0]);
        assert_eq!(cache.entries(), 43);
        // Keys and values of the kept entries plus 16 rows of headroom per non-empty head, f16 = 2 bytes.
        assert_eq!(cache.bytes(), (43 + 2 * 16) * 2 * d * 2);
        assert_eq!(cache.positions(0, 0).unwrap(), &[0, 5, 99]);
        assert_eq!(cache.layer_view(0).unwrap().group_size, 2);
        // Growing again after compaction appends after the kept rows.
        let k = Tensor::full(2f32, (3, 1, d), &Device::Cpu).unwrap();
        cache.append(0, &k, &k, &[100]).unwrap();
        assert_eq!(cache.lens(0).unwrap(), vec![4, 41, 1]);
        let last = cache
            .keys(0, 0)
            .unwrap()
            .get(3)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(last, vec![2.0; d]);
    }

    /// A policy that evicts one entry per decode step, as H2O does: after the first compaction the
    /// storage never grows or moves, and entries, positions and attention stay those kept.
    #[test]
    fn evicting_one_entry_per_step_compacts_in_place() {
        let budget = 40;
        let mut cache = KvCache::new(shape(), DType::F32, &Device::Cpu, true).unwrap();
        let mut model: Vec<(f32, u64, f32)> = Vec::new();
        let mut settled = None;
        for step in 0..120u64 {
            let k = Tensor::full(step as f32, (HEADS, 1, D), &Device::Cpu).unwrap();
            cache.append(0, &k, &k, &[step]).unwrap();
            model.push((step as f32, step, 0.0));
            let n = model.len();
            let received: Vec<f32> = (0..n)
                .map(|i| ((i * 7 + step as usize) % 5) as f32)
                .collect();
            for (e, r) in model.iter_mut().zip(&received) {
                e.2 += r;
            }
            let received = Tensor::new(received, &Device::Cpu).unwrap();
            cache.add_attention(0, 0, &received).unwrap();
            if n > budget {
                let evicted = (step as usize * 13) % n;
                let keep: Vec<u32> = (0..n as u32).filter(|&i| i as usize != evicted).collect();
                model.remove(evicted);
                let plan = KeepPlan {
                    per_head: vec![keep.clone(), keep],
                };
                cache.compact(0, &plan).unwrap();
                let capacity = cache.head(0, 0).unwrap().capacity();
                assert_eq!(*settled.get_or_insert(capacity), capacity);
                assert!(capacity <= budget + headroom(budget));
            }
            let keys = cache.keys(0, 0).unwrap().to_vec2::<f32>().unwrap();
            assert!(keys
                .iter()
                .zip(&model)
                .all(|(k, e)| k.iter().all(|&x| x == e.0)));
            let positions: Vec<u64> = model.iter().map(|e| e.1).collect();
            assert_eq!(cache.positions(0, 0).unwrap(), &positions[..]);
            let held = cache.accumulated_attention(0, 0).unwrap().unwrap();
            let want: Vec<f32> = model.iter().map(|e| e.2).collect();
            assert_eq!(held.to_vec1::<f32>().unwrap(), want);
        }
    }

    #[test]
    fn a_deep_copy_is_independent_of_its_source() {
        let mut cache = KvCache::new(shape(), DType::F32, &Device::Cpu, true).unwrap();
        let ones = Tensor::ones((HEADS, 3, D), DType::F32, &Device::Cpu).unwrap();
        cache.append(0, &ones, &ones, &[0, 1, 2]).unwrap();
        let received = Tensor::new(&[0.5f32, 0.25, 0.25], &Device::Cpu).unwrap();
        cache.add_attention(0, 1, &received).unwrap();
        let mut copy = cache.deep_copy().unwrap();
        // Both append a different row at the same place: with shared storage the second write would
        // overwrite the first.
        let twos = (&ones.narrow(1, 0, 1).unwrap() * 2.0).unwrap();
        let threes = (&ones.narrow(1, 0, 1).unwrap() * 3.0).unwrap();
        cache.append(0, &twos, &twos, &[3]).unwrap();
        copy.append(0, &threes, &threes, &[4]).unwrap();
        let last = |c: &KvCache| {
            c.keys(0, 0)
                .unwrap()
                .get(3)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(last(&cache), vec![2.0; D]);
        assert_eq!(last(&copy), vec![3.0; D]);
        assert_eq!(cache.positions(0, 0).unwrap(), &[0, 1, 2, 3]);
        assert_eq!(copy.positions(0, 0).unwrap(), &[0, 1, 2, 4]);
        copy.compact(
            0,
            &KeepPlan {
                per_head: vec![vec![3], vec![0, 1]],
            },
        )
        .unwrap();
        assert_eq!(cache.lens(0).unwrap(), vec![4, 4]);
        let held = copy.accumulated_attention(0, 1).unwrap().unwrap();
        assert_eq!(held.to_vec1::<f32>().unwrap(), [0.5, 0.25]);
        let source = cache.accumulated_attention(0, 1).unwrap().unwrap();
        assert_eq!(source.to_vec1::<f32>().unwrap(), [0.5, 0.25, 0.25, 0.0]);
    }

    #[test]
    fn bad_input_is_rejected_with_a_reason() {
        let mut cache = KvCache::new(shape(), DType::F32, &Device::Cpu, false).unwrap();
        let k = Tensor::zeros((HEADS, 2, D), DType::F32, &Device::Cpu).unwrap();
        cache.append(0, &k, &k, &[4, 5]).unwrap();
        let err = cache.append(0, &k, &k, &[5, 6]).unwrap_err().to_string();
        assert!(err.contains("not after the last cached position"), "{err}");
        assert!(cache
            .append(0, &k, &k, &[7, 7])
            .unwrap_err()
            .to_string()
            .contains("strictly increasing"));
        let wrong = Tensor::zeros((HEADS, 2, D + 1), DType::F32, &Device::Cpu).unwrap();
        assert!(cache
            .append(0, &wrong, &wrong, &[8, 9])
            .unwrap_err()
            .to_string()
            .contains("head_dim"));
        let two = Tensor::new(&[1f32, 1.0], &Device::Cpu).unwrap();
        assert!(cache
            .add_attention(0, 0, &two)
            .unwrap_err()
            .to_string()
            .contains("does not track"));
        let mut tracking = KvCache::new(shape(), DType::F32, &Device::Cpu, true).unwrap();
        tracking.append(0, &k, &k, &[0, 1]).unwrap();
        let three = Tensor::new(&[1f32, 1.0, 1.0], &Device::Cpu).unwrap();
        let err = tracking
            .add_attention(0, 0, &three)
            .unwrap_err()
            .to_string();
        assert!(err.contains("holds 2 entries, so [2]"), "{err}");
        let plan = KeepPlan {
            per_head: vec![vec![0, 2], vec![]],
        };
        assert!(cache
            .compact(0, &plan)
            .unwrap_err()
            .to_string()
            .contains("out of range"));
        assert!(cache.layer_view(LAYERS).is_err());
    }
}
