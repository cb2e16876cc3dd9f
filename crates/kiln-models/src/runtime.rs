//! A compiled model with its weights, and generation with a KV cache.

use crate::config::QwenConfig;
use crate::gguf::qwen::GgufCheckpoint;
use crate::model::{
    build_graph, fuse_projection, fused_projections, kv_cache_dtype, weight_shapes, GraphOptions,
    WeightDtype,
};
use crate::sampling::{Sampler, Sampling};
use crate::weights::{random_weights, Checkpoint};
use crate::{ModelError, ModelSource};
use kiln_compile::Target;
use kiln_compile::{CompileOptions, CompileReport};
use kiln_ir::{DType, Tensor};
use kiln_runtime::Executable;
use std::collections::HashMap;
use std::time::Instant;

/// How to load a model: where it runs (an opened backend, see the `kiln-backends` crate) and
/// how to compile it.
pub struct LoadOptions<'a> {
    pub target: &'a dyn Target,
    pub compile: CompileOptions<'a>,
    pub graph: GraphOptions,
    /// Seed of a preset's random weights.
    pub seed: u64,
}

impl<'a> LoadOptions<'a> {
    /// Defaults for everything but the target.
    pub fn new(target: &'a dyn Target) -> LoadOptions<'a> {
        LoadOptions {
            target,
            compile: CompileOptions::default(),
            graph: GraphOptions::default(),
            seed: 0,
        }
    }
}

/// The files a model's weights come from.
enum WeightFiles {
    Safetensors(Checkpoint),
    Gguf(GgufCheckpoint),
}

/// The positions a generation has seen. The keys and values themselves stay in the
/// executor (on the GPU, in device memory) between steps; a model therefore serves one cache
/// at a time, the one it last ran.
pub struct KvCache {
    len: usize,
    id: u64,
}

impl KvCache {
    pub fn new(_config: &QwenConfig) -> KvCache {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        KvCache {
            len: 0,
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }
    /// Positions seen so far.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A copy of one [`KvCache`]'s keys and values, taken out of the executor by
/// [`Model::save_cache`] so that the model can run other caches in between and then go on with
/// this one ([`Model::restore_cache`]). It lives in host memory: every layer's keys and values,
/// `[kv_heads, capacity, head_dim]` each, in the cache's dtype ([`Model::kv_dtype`]).
pub struct SavedCache {
    cache_id: u64,
    len: usize,
    capacity: usize,
    /// Keys and values of each layer.
    layers: Vec<[Tensor; 2]>,
}

impl SavedCache {
    /// Host memory it holds.
    pub fn bytes(&self) -> usize {
        self.layers.iter().flatten().map(|t| t.bytes().len()).sum()
    }
}

/// `Model::cache_held` after a restore failed half-way: no [`KvCache`] has this id (ids count
/// up from 0), so the next forward of any cache starts from an empty one.
const MIXED_CACHE: u64 = u64::MAX;

/// A KV cache of `capacity` positions for one layer in `dtype`, all zero.
fn empty_cache(c: &QwenConfig, dtype: DType, capacity: usize) -> Tensor {
    Tensor::zeros(dtype, &[c.num_kv_heads, capacity, c.head_dim])
}

/// One layer's cache `old` (`[kv_heads, old capacity, head_dim]`) in a new zero tensor of
/// `capacity` positions, its first `used` positions copied (whatever the cache's dtype).
pub(crate) fn grown_cache(old: &Tensor, capacity: usize, used: usize) -> Tensor {
    let &[kv, old_cap, d] = old.shape() else {
        unreachable!("a KV cache is [kv_heads, capacity, head_dim]")
    };
    let mut new = Tensor::zeros(old.dtype(), &[kv, capacity, d]);
    let row = old.dtype().storage_bytes(d);
    let (src, dst) = (old.bytes(), new.bytes_mut());
    for h in 0..kv {
        let n = used * row;
        dst[h * capacity * row..][..n].copy_from_slice(&src[h * old_cap * row..][..n]);
    }
    new
}

/// The first positions a cache is given room for; it doubles when it is full.
const MIN_CACHE_CAPACITY: usize = 64;

pub struct Model {
    pub config: QwenConfig,
    pub exe: Box<dyn Executable>,
    pub report: CompileReport,
    /// Outputs of the last forward besides logits and cache (hidden states when asked for).
    pub last_outputs: HashMap<String, Tensor>,
    /// The [`KvCache`] whose keys and values the executor holds (None: it holds none, as
    /// after load).
    cache_held: Option<u64>,
    /// Positions the executor's caches have room for.
    cache_capacity: usize,
    /// The dtype the KV cache holds keys and values in ([`kv_cache_dtype`]).
    pub kv_dtype: DType,
    /// What the device reads of a mapped file: released after each forward.
    mapped: MappedReads,
    /// Whether [`Model::generate`] keeps every step's logits in [`Generation::step_logits`]:
    /// a vocabulary of f32 per generated token (0.6 MB for Qwen's 151,936 tokens). On by
    /// default; `kiln run` turns it off unless `--logits-out` wants them.
    pub keep_step_logits: bool,
    /// At most this many prompt tokens per forward in [`Model::generate`]'s prefill (0: the
    /// whole prompt in one). Smaller chunks hold smaller activations and fewer gathered
    /// embedding rows at once (llama.cpp's ubatch); each chunk streams the weights again.
    /// 0 by default; `kiln run` sets it from `--prefill-chunk`.
    pub prefill_chunk: usize,
}

/// Why a generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// It chose a stop token (end of sequence).
    Eos,
    /// Prompt and output fill the context (`max_position_embeddings`).
    Length,
    /// It generated the number of tokens asked for.
    MaxNewTokens,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Eos => "eos",
            FinishReason::Length => "length",
            FinishReason::MaxNewTokens => "max_new_tokens",
        }
    }
}

/// The result of a generation.
pub struct Generation {
    pub prompt_ids: Vec<u32>,
    pub generated_ids: Vec<u32>,
    pub finish_reason: FinishReason,
    /// Logits that chose each generated token (row 0: last prompt position); empty unless
    /// [`Model::keep_step_logits`].
    pub step_logits: Vec<Vec<f32>>,
    pub prefill_ms: f64,
    pub decode_ms: f64,
}

impl Generation {
    pub fn decode_tokens_per_s(&self) -> f64 {
        let n = self.generated_ids.len().saturating_sub(1);
        if n == 0 || self.decode_ms <= 0.0 {
            0.0
        } else {
            n as f64 / (self.decode_ms / 1e3)
        }
    }
}

/// Fails when the logits of generation step `step` hold a NaN or an infinity: sampling would
/// pick token 0 (or any) from them, forever.
fn check_finite(logits: &[f32], step: usize) -> Result<(), ModelError> {
    if crate::sampling::all_finite(logits) {
        return Ok(());
    }
    let bad = logits.iter().filter(|x| !x.is_finite()).count();
    if bad == 0 {
        return Ok(());
    }
    let first = logits.iter().position(|x| !x.is_finite()).expect("counted");
    Err(ModelError::NonFinite(format!(
        "the logits of generated token {step} are not finite ({bad} of {} are NaN or infinite, \
         the first for token id {first}: {}): the checkpoint's weights hold NaN or Inf values, \
         or the computation overflowed",
        logits.len(),
        logits[first]
    )))
}

fn available_memory_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = s
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Reads the checkpoint's headers, then compiles `build`'s graph for its config while the
/// weights load, and binds the weights: what [`Model::load`] and
/// [`crate::BatchedModel::load`] share.
pub(crate) fn load_executable(
    source: &ModelSource,
    opts: &LoadOptions<'_>,
    build: &dyn Fn(&QwenConfig, GraphOptions) -> kiln_ir::Result<kiln_ir::Graph>,
) -> Result<(QwenConfig, Box<dyn Executable>, CompileReport, MappedReads), ModelError> {
    // The checkpoint's headers (names, shapes, dtypes) are checked against the config
    // before any graph is built or kernel compiled: a bad checkpoint fails in milliseconds
    // (and a checkpoint that lacks tensors is reported as such, whatever its size).
    let (config, checkpoint) = match source {
        ModelSource::Preset(_) => (source.config()?, None),
        ModelSource::Dir(d) => {
            let config = source.config()?;
            let c = Checkpoint::open(d)?;
            c.check(&config)?;
            (config, Some(WeightFiles::Safetensors(c)))
        }
        ModelSource::Gguf(p) => {
            let c = GgufCheckpoint::open(p)?;
            let config = c.config()?;
            c.check(&config)?;
            (config, Some(WeightFiles::Gguf(c)))
        }
    };
    crate::memory::trace("checkpoint opened");
    let mut config = config;
    if let Some(w) = opts.graph.weight_dtype {
        // --weight-dtype decides every weight, a GGUF file's blocks included.
        config.file_quant.clear();
        config.weight_dtype = w;
    }
    let w = config.weight_dtype;
    check_quantizable(&config, w)?;
    // Weights pass through host memory on their way to any device: what will be held, in
    // the dtypes it will be held in.
    let bytes = config.held_weight_bytes();
    if let Some(avail) = available_memory_bytes() {
        if bytes > avail {
            return Err(ModelError::Resources(format!(
                "{} needs {:.1} GB for its weights; this machine has {:.1} GB available",
                source.name(),
                bytes as f64 / 1e9,
                avail as f64 / 1e9
            )));
        }
    }
    let shapes = weight_shapes(&config);
    // Weights and compile are independent: load the weights while the kernels compile.
    let (compiled, weights) = std::thread::scope(|s| {
        let w = s.spawn(|| match &checkpoint {
            None => Ok(random_weights(&shapes, opts.seed, w)),
            Some(WeightFiles::Safetensors(c)) => c.load(&shapes, w),
            Some(WeightFiles::Gguf(c)) => c.load(&shapes, w, &config.file_quant),
        });
        let c = build(&config, opts.graph)
            .map_err(ModelError::from)
            .and_then(|graph| Ok(opts.target.load(&graph, &opts.compile)?))
            .map(|loaded| (loaded.exe, loaded.report));
        crate::memory::trace("compiled");
        (c, w.join().expect("weight loader panicked"))
    });
    crate::memory::trace("weights read");
    // The weights are in memory now: unmap the files (GGUF blocks kept as the file stores
    // them view its mapping, which lives on with them: `GgufFile::shared`).
    drop(checkpoint);
    // The metadata (a GGUF file's vocabulary and merges: 300,000 strings) and the compile's
    // working memory are freed now, in small pieces the allocator keeps resident: give them
    // back before the packed weights are made, or they stay beside them at the peak.
    crate::memory::return_free_heap();
    crate::memory::trace("checkpoint closed");
    let (mut exe, report) = compiled?;
    let mut weights = weights?;
    // The fused projections are made as they are bound, one at a time: memory holds one of
    // them beside the weights bound so far, not all of them at once.
    for (fused, parts) in fused_projections(&config) {
        if let Some(t) = fuse_projection(&config, &mut weights, &fused, &parts)? {
            bind(exe.as_mut(), &fused, t)?;
        }
    }
    let mut mapped = MappedReads(Vec::new());
    for (name, t) in weights {
        if name == crate::model::EMBEDDING && t.is_shared() {
            mapped.0.push(t.clone());
        }
        bind(exe.as_mut(), &name, t)?;
    }
    // And what binding freed (weights as read, before they were packed).
    crate::memory::return_free_heap();
    crate::memory::trace("weights bound");
    Ok((config, exe, report, mapped))
}

/// Views of a mapped file that the device reads after binding: a GGUF embedding table kept
/// in its blocks, whose gather reads the rows of each forward's tokens there. A row read
/// through a plain file mapping maps the pages around it too (the kernel's fault-around,
/// ~60 KiB a row, which `MADV_RANDOM` does not turn off): [`MappedReads::prepare`] makes each
/// forward's rows resident first, a page each (the table's private mapping copies the page
/// a write touches, alone: `gguf::CopiedRows`), and [`MappedReads::release`] after the
/// forward gives them back; the next forward's rows come from the page cache again.
#[derive(Default)]
pub(crate) struct MappedReads(Vec<Tensor>);

impl MappedReads {
    /// Makes the table rows of tokens `ids` resident before a forward reads them
    /// ([`Tensor::make_resident`]: without the pages around each row, where the view can).
    pub(crate) fn prepare(&self, ids: &[i32]) {
        for t in &self.0 {
            let rows = t.shape().first().copied().unwrap_or(0);
            if rows == 0 {
                continue;
            }
            let row_bytes = t.bytes().len() / rows;
            for &id in ids {
                if (0..rows as i64).contains(&(id as i64)) {
                    t.make_resident(id as usize * row_bytes, row_bytes);
                }
            }
        }
    }

    pub(crate) fn release(&self) {
        for t in &self.0 {
            t.release_pages();
        }
    }
}

/// Binds weight `name`. One that views a mapped file (a GGUF file's blocks) has its pages
/// dropped afterwards: the device has packed or uploaded what it holds (the CPU's gather of a
/// kept embedding table reads the file again, a page at a time).
fn bind(exe: &mut dyn Executable, name: &str, t: Tensor) -> Result<(), ModelError> {
    let view = t.is_shared().then(|| t.clone());
    exe.set_param(name, t)?;
    if let Some(v) = view {
        v.release_pages();
    }
    Ok(())
}

impl Model {
    /// Compiles the model's graph and loads it onto the target's device (shapes only: no
    /// weights needed yet).
    pub fn compile(
        config: &QwenConfig,
        opts: &LoadOptions<'_>,
    ) -> Result<(Box<dyn Executable>, CompileReport), ModelError> {
        let graph = build_graph(config, opts.graph)?;
        let loaded = opts.target.load(&graph, &opts.compile)?;
        Ok((loaded.exe, loaded.report))
    }

    pub fn load(source: &ModelSource, opts: &LoadOptions<'_>) -> Result<Model, ModelError> {
        let (config, exe, report, mapped) = load_executable(source, opts, &build_graph)?;
        let kv_dtype = kv_cache_dtype(&config, &opts.graph);
        let mut model = Model {
            config,
            exe,
            report,
            last_outputs: HashMap::new(),
            cache_held: None,
            cache_capacity: 0,
            kv_dtype,
            mapped,
            keep_step_logits: true,
            prefill_chunk: 0,
        };
        model.reset_kept_cache(0)?;
        Ok(model)
    }

    /// Has the executor keep every layer's cache output for the next run, starting empty with
    /// room for `capacity` positions.
    fn reset_kept_cache(&mut self, capacity: usize) -> Result<(), ModelError> {
        let c = &self.config;
        for l in 0..c.num_layers {
            for kv in ["k", "v"] {
                let (output, input) = (format!("{kv}_cache_out.{l}"), format!("{kv}_cache.{l}"));
                self.exe
                    .carry(&output, &input, empty_cache(c, self.kv_dtype, capacity))?;
            }
        }
        self.cache_capacity = capacity;
        Ok(())
    }

    /// Makes room in the kept caches for `positions` positions (keeping the `used` ones):
    /// generation reserves what it will need at once; a forward past the capacity doubles it.
    fn grow_kept_cache(&mut self, positions: usize, used: usize) -> Result<(), ModelError> {
        if positions <= self.cache_capacity {
            return Ok(());
        }
        let c = &self.config;
        let capacity = positions
            .max(2 * self.cache_capacity)
            .max(MIN_CACHE_CAPACITY)
            .min(c.max_position_embeddings.max(positions));
        if used == 0 {
            return self.reset_kept_cache(capacity);
        }
        for l in 0..c.num_layers {
            for name in ["k", "v"] {
                let input = format!("{name}_cache.{l}");
                let new = grown_cache(&self.exe.carried(&input)?, capacity, used);
                self.exe
                    .carry(&format!("{name}_cache_out.{l}"), &input, new)?;
            }
        }
        self.cache_capacity = capacity;
        Ok(())
    }

    /// Gives the kept caches room for `positions` positions before a generation.
    pub fn reserve(&mut self, cache: &KvCache, positions: usize) -> Result<(), ModelError> {
        if self.cache_held == Some(cache.id) {
            self.grow_kept_cache(positions, cache.len())
        } else {
            Ok(())
        }
    }

    /// Copies the keys and values of `cache` out of the executor (a download from the
    /// device), so that other caches can run before [`Model::restore_cache`] brings it back.
    /// `cache` must be the cache the model last ran.
    pub fn save_cache(&mut self, cache: &KvCache) -> Result<SavedCache, ModelError> {
        if self.cache_held != Some(cache.id) {
            return Err(ModelError::Input(
                "save_cache: this KvCache is not the one the executor holds (only the cache \
                 the model last ran can be saved)"
                    .into(),
            ));
        }
        let mut layers = Vec::with_capacity(self.config.num_layers);
        for l in 0..self.config.num_layers {
            layers.push([
                self.exe.carried(&format!("k_cache.{l}"))?,
                self.exe.carried(&format!("v_cache.{l}"))?,
            ]);
        }
        Ok(SavedCache {
            cache_id: cache.id,
            len: cache.len(),
            capacity: self.cache_capacity,
            layers,
        })
    }

    /// Has the executor hold `cache`'s keys and values again (an upload), from the copy
    /// [`Model::save_cache`] took of this cache at its present length; the next
    /// [`Model::forward`] with `cache` continues it.
    pub fn restore_cache(&mut self, cache: &KvCache, saved: SavedCache) -> Result<(), ModelError> {
        if saved.cache_id != cache.id || saved.len != cache.len() {
            return Err(ModelError::Input(format!(
                "restore_cache: the saved keys and values are of another KvCache or another \
                 length ({} positions saved, the cache has {})",
                saved.len,
                cache.len()
            )));
        }
        self.cache_held = Some(MIXED_CACHE);
        for (l, [k, v]) in saved.layers.into_iter().enumerate() {
            self.exe
                .carry(&format!("k_cache_out.{l}"), &format!("k_cache.{l}"), k)?;
            self.exe
                .carry(&format!("v_cache_out.{l}"), &format!("v_cache.{l}"), v)?;
        }
        self.cache_capacity = saved.capacity;
        self.cache_held = Some(cache.id);
        Ok(())
    }

    /// Runs `ids` at the cache's position; extends the cache; returns the logits.
    pub fn forward(&mut self, ids: &[u32], cache: &mut KvCache) -> Result<Tensor, ModelError> {
        let c = &self.config;
        if ids.is_empty() {
            return Err(ModelError::Input("no tokens to run".into()));
        }
        c.check_ids(ids)?;
        if cache.len() + ids.len() > c.max_position_embeddings {
            return Err(ModelError::Input(format!(
                "{} positions exceed max_position_embeddings = {}",
                cache.len() + ids.len(),
                c.max_position_embeddings
            )));
        }
        if self.cache_held != Some(cache.id) {
            if !cache.is_empty() {
                return Err(ModelError::Input(
                    "this KvCache's keys and values were kept by the executor for another \
                     run since; a model serves one cache at a time (start a new KvCache)"
                        .into(),
                ));
            }
            if self.cache_held.is_some() {
                let capacity = self.cache_capacity;
                self.reset_kept_cache(capacity)?;
            }
            self.cache_held = Some(cache.id);
        }
        self.grow_kept_cache(cache.len() + ids.len(), cache.len())?;
        let id_vals: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
        let mut inputs = HashMap::new();
        inputs.insert("ids".to_string(), Tensor::from_i32(&[ids.len()], &id_vals));
        let position = [("p".to_string(), cache.len() as i64)].into();
        self.mapped.prepare(&id_vals);
        let out = self.exe.run_with(&inputs, &position);
        self.mapped.release();
        let mut out = out?;
        cache.len += ids.len();
        let logits = out.remove("logits").expect("graph output");
        self.last_outputs = out;
        Ok(logits)
    }

    /// Generates up to `max_new` tokens after `prompt`, stopping at a `stop` id or when
    /// prompt and output fill the context (`max_position_embeddings`: every token of the
    /// sequence has a position in it), and says which in [`Generation::finish_reason`]; calls
    /// `on_token` with each new id as it is chosen. A prompt the model cannot take (empty,
    /// longer than the context, an id outside the vocabulary) is an error before any work.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        max_new: usize,
        sampling: &Sampling,
        stop: &[u32],
        mut on_token: impl FnMut(u32),
    ) -> Result<Generation, ModelError> {
        let mut cache = KvCache::new(&self.config);
        let mut sampler = Sampler::new(sampling.clone());
        self.config.check_prompt(prompt)?;
        // Room left in the context for new tokens.
        let room = self.config.max_position_embeddings - prompt.len();
        let mut g = Generation {
            prompt_ids: prompt.to_vec(),
            generated_ids: vec![],
            finish_reason: FinishReason::MaxNewTokens,
            step_logits: vec![],
            prefill_ms: 0.0,
            decode_ms: 0.0,
        };
        if max_new == 0 {
            return Ok(g);
        }
        if room == 0 {
            g.finish_reason = FinishReason::Length;
            return Ok(g);
        }
        // The whole generation's cache at once, rather than doubling as it goes.
        let positions = prompt
            .len()
            .saturating_add(max_new)
            .min(self.config.max_position_embeddings);
        if self.cache_held.is_some() {
            let capacity = self.cache_capacity.max(positions);
            self.reset_kept_cache(capacity)?;
            self.cache_held = None;
        } else if positions > self.cache_capacity {
            // Exactly the room this generation needs (it never goes past it), not the
            // doubling a forward past the end gets: a short run holds a short cache.
            self.reset_kept_cache(positions)?;
        }
        crate::memory::trace("cache reserved");
        let t = Instant::now();
        let chunk = match self.prefill_chunk {
            0 => prompt.len(),
            n => n,
        };
        let mut parts = prompt.chunks(chunk);
        let mut logits = self.forward(parts.next().expect("a checked prompt"), &mut cache)?;
        for part in parts {
            logits = self.forward(part, &mut cache)?;
        }
        g.prefill_ms = t.elapsed().as_secs_f64() * 1e3;
        crate::memory::trace("prefilled");
        let t = Instant::now();
        loop {
            let v = self.config.vocab_size;
            let row = logits.as_f32();
            let last = &row[row.len() - v..];
            check_finite(last, g.generated_ids.len())?;
            let id = sampler.sample(last);
            if self.keep_step_logits {
                g.step_logits.push(last.to_vec());
            }
            g.generated_ids.push(id);
            on_token(id);
            let n = g.generated_ids.len();
            let reason = if stop.contains(&id) {
                Some(FinishReason::Eos)
            } else if n >= max_new {
                Some(FinishReason::MaxNewTokens)
            } else if n >= room {
                Some(FinishReason::Length)
            } else {
                None
            };
            if let Some(r) = reason {
                g.finish_reason = r;
                break;
            }
            // Its memory takes the next step's logits (no newly mapped pages a token).
            self.exe.recycle("logits", logits);
            logits = self.forward(&[id], &mut cache)?;
        }
        g.decode_ms = t.elapsed().as_secs_f64() * 1e3;
        Ok(g)
    }
}

/// Whether the linear layers' weights of `c` can be held in `w`'s blocks: every product's
/// depth (the hidden size, the heads' width, the MLP's width) a whole number of blocks.
fn check_quantizable(c: &QwenConfig, w: WeightDtype) -> Result<(), ModelError> {
    let be = w.dtype().block_elems();
    let depths = [
        ("hidden_size", c.hidden_size),
        ("num_attention_heads * head_dim", c.num_heads * c.head_dim),
        ("intermediate_size", c.intermediate_size),
    ];
    for (what, k) in depths {
        if k % be != 0 {
            return Err(ModelError::Input(format!(
                "weight dtype {} holds rows of {be}-value blocks, but the model's {what} is {k}",
                w.name()
            )));
        }
    }
    Ok(())
}
