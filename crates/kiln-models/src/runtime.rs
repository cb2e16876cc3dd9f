//! A compiled model with its weights, and generation with a KV cache.

use crate::config::QwenConfig;
use crate::model::{build_graph, weight_shapes, GraphOptions};
use crate::sampling::{Sampler, Sampling};
use crate::weights::{random_weights, Checkpoint};
use crate::{ModelError, ModelSource};
use kiln_compile::{compile, CompileOptions, CompileReport, Executable};
use kiln_cpu::{CpuBackend, CpuExecutable};
use kiln_cuda::emulator::EmulatedCuda;
use kiln_cuda::{CudaBackend, CudaExecutable};
use kiln_ir::{DType, Tensor};
use std::collections::HashMap;
use std::time::Instant;

/// Where the model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    Cpu,
    /// CUDA device 0, kernels compiled for its arch.
    Cuda,
    /// The CUDA kernels, compiled by NVRTC (for sm_80) and run on the CPU by
    /// [`kiln_cuda::emulator`]: checks the generated CUDA C where there is no GPU. Slow; for
    /// tests of small models.
    CudaEmulated,
}

pub struct LoadOptions<'a> {
    pub compile: CompileOptions<'a>,
    pub device: Device,
    /// Threads that run kernels.
    pub run_threads: usize,
    pub graph: GraphOptions,
    /// Seed of a preset's random weights.
    pub seed: u64,
}

impl Default for LoadOptions<'_> {
    fn default() -> Self {
        LoadOptions {
            compile: CompileOptions::default(),
            device: Device::Cpu,
            run_threads: kiln_compile::default_threads(),
            graph: GraphOptions::default(),
            seed: 0,
        }
    }
}

/// Keys and values of the positions seen so far, per layer: [kv_heads, len, head_dim].
///
/// Where the executor keeps the cache itself (every kiln executor does: on the GPU it stays in
/// device memory between steps), `k` and `v` stay empty and the cache only counts positions;
/// a model then serves one cache at a time, the one it last ran.
pub struct KvCache {
    pub k: Vec<Tensor>,
    pub v: Vec<Tensor>,
    len: usize,
    id: u64,
}

impl KvCache {
    pub fn new(c: &QwenConfig) -> KvCache {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        KvCache {
            k: (0..c.num_layers).map(|_| empty_cache(c)).collect(),
            v: (0..c.num_layers).map(|_| empty_cache(c)).collect(),
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

fn empty_cache(c: &QwenConfig) -> Tensor {
    Tensor::zeros(DType::F32, &[c.num_kv_heads, 0, c.head_dim])
}

pub struct Model {
    pub config: QwenConfig,
    pub exe: Box<dyn Executable>,
    pub report: CompileReport,
    /// Outputs of the last forward besides logits and cache (hidden states when asked for).
    pub last_outputs: HashMap<String, Tensor>,
    /// Whether the executor keeps the KV cache between runs, and for which [`KvCache`]
    /// (None: what it keeps is empty, as after load).
    keeps_cache: bool,
    cache_held: Option<u64>,
}

/// The result of a generation.
pub struct Generation {
    pub prompt_ids: Vec<u32>,
    pub generated_ids: Vec<u32>,
    /// Logits that chose each generated token (row 0: last prompt position).
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

impl Model {
    /// Compiles the model's graph for the chosen device (shapes only: no weights needed).
    pub fn compile(
        config: &QwenConfig,
        opts: &LoadOptions<'_>,
    ) -> Result<(Box<dyn Executable>, CompileReport), ModelError> {
        let graph = build_graph(config, opts.graph)?;
        match opts.device {
            Device::Cpu => {
                let compiled = compile(&graph, &CpuBackend::default(), &opts.compile)?;
                let report = compiled.report.clone();
                Ok((
                    Box::new(
                        CpuExecutable::new(compiled, opts.run_threads).map_err(ModelError::new)?,
                    ),
                    report,
                ))
            }
            Device::Cuda => {
                if !kiln_cuda::cuda_device_present() {
                    return Err(ModelError::new(
                        "--backend cuda needs an NVIDIA GPU with its driver, and none was found"
                            .into(),
                    ));
                }
                let backend = CudaBackend::for_device(0, None)?;
                let compiled = compile(&graph, &backend, &opts.compile)?;
                let report = compiled.report.clone();
                let ctx = backend.context().expect("device backend").clone();
                Ok((
                    Box::new(CudaExecutable::new(compiled, ctx).map_err(ModelError::new)?),
                    report,
                ))
            }
            Device::CudaEmulated => {
                let backend = CudaBackend::compile_only("sm_80")?;
                let compiled = compile(&graph, &backend, &opts.compile)?;
                let report = compiled.report.clone();
                Ok((
                    Box::new(EmulatedCuda::new(compiled).map_err(ModelError::new)?),
                    report,
                ))
            }
        }
    }

    pub fn load(source: &ModelSource, opts: &LoadOptions<'_>) -> Result<Model, ModelError> {
        let config = source.config()?;
        let shapes = weight_shapes(&config);
        let w = opts.graph.weight_dtype.unwrap_or(config.weight_dtype);
        let bytes = config.weight_bytes();
        if let (Device::Cpu, Some(avail)) = (opts.device, available_memory_bytes()) {
            if bytes > avail {
                return Err(ModelError::new(format!(
                    "{} needs {:.1} GB for its weights; this machine has {:.1} GB available",
                    source.name(),
                    bytes as f64 / 1e9,
                    avail as f64 / 1e9
                )));
            }
        }
        // Weights and compile are independent: load the weights while the kernels compile.
        let (compiled, weights) = std::thread::scope(|s| {
            let w = s.spawn(|| match source {
                ModelSource::Preset(_) => Ok(random_weights(&shapes, opts.seed, w)),
                ModelSource::Dir(d) => Checkpoint::open(d)?.load(&shapes, w),
            });
            let c = Self::compile(&config, opts);
            (c, w.join().expect("weight loader panicked"))
        });
        let (mut exe, report) = compiled?;
        let weights = weights?;
        for (name, t) in weights {
            exe.set_param(&name, t)?;
        }
        let mut model = Model {
            config,
            exe,
            report,
            last_outputs: HashMap::new(),
            keeps_cache: false,
            cache_held: None,
        };
        model.keeps_cache = model.reset_kept_cache()?;
        Ok(model)
    }

    /// Asks the executor to keep every layer's cache output for the next run, starting empty;
    /// false where it cannot.
    fn reset_kept_cache(&mut self) -> Result<bool, ModelError> {
        let c = &self.config;
        let mut kept = true;
        for l in 0..c.num_layers {
            for kv in ["k", "v"] {
                let (output, input) = (format!("{kv}_cache_out.{l}"), format!("{kv}_cache.{l}"));
                kept &= self.exe.carry(&output, &input, empty_cache(c))?;
            }
        }
        Ok(kept)
    }

    /// Runs `ids` at the cache's position; extends the cache; returns the logits.
    pub fn forward(&mut self, ids: &[u32], cache: &mut KvCache) -> Result<Tensor, ModelError> {
        let c = &self.config;
        if ids.is_empty() {
            return Err(ModelError::new("the prompt is empty".into()));
        }
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= c.vocab_size) {
            return Err(ModelError::new(format!(
                "token id {bad} is out of range for a vocabulary of {}",
                c.vocab_size
            )));
        }
        if cache.len() + ids.len() > c.max_position_embeddings {
            return Err(ModelError::new(format!(
                "{} positions exceed max_position_embeddings = {}",
                cache.len() + ids.len(),
                c.max_position_embeddings
            )));
        }
        let mut inputs = HashMap::new();
        let id_vals: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
        inputs.insert("ids".to_string(), Tensor::from_i32(&[ids.len()], &id_vals));
        let layers = c.num_layers;
        if self.keeps_cache {
            if self.cache_held != Some(cache.id) {
                if !cache.is_empty() {
                    return Err(ModelError::new(
                        "this KvCache's keys and values were kept by the executor for another \
                         run since; a model serves one cache at a time (start a new KvCache)"
                            .into(),
                    ));
                }
                if self.cache_held.is_some() {
                    self.reset_kept_cache()?;
                }
                self.cache_held = Some(cache.id);
            }
        } else {
            for l in 0..layers {
                let empty = || Tensor::zeros(DType::F32, &[0]);
                inputs.insert(
                    format!("k_cache.{l}"),
                    std::mem::replace(&mut cache.k[l], empty()),
                );
                inputs.insert(
                    format!("v_cache.{l}"),
                    std::mem::replace(&mut cache.v[l], empty()),
                );
            }
        }
        let mut out = self.exe.run(&inputs)?;
        if !self.keeps_cache {
            for l in 0..layers {
                cache.k[l] = out
                    .remove(&format!("k_cache_out.{l}"))
                    .expect("graph output");
                cache.v[l] = out
                    .remove(&format!("v_cache_out.{l}"))
                    .expect("graph output");
            }
        }
        cache.len += ids.len();
        self.last_outputs = out;
        Ok(self.last_outputs.remove("logits").expect("graph output"))
    }

    /// Generates up to `max_new` tokens after `prompt`, stopping at a `stop` id; calls
    /// `on_token` with each new id as it is chosen.
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
        let mut g = Generation {
            prompt_ids: prompt.to_vec(),
            generated_ids: vec![],
            step_logits: vec![],
            prefill_ms: 0.0,
            decode_ms: 0.0,
        };
        if max_new == 0 {
            return Ok(g);
        }
        let t = Instant::now();
        let mut logits = self.forward(prompt, &mut cache)?;
        g.prefill_ms = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        loop {
            let v = self.config.vocab_size;
            let row = logits.as_f32();
            let last = row[row.len() - v..].to_vec();
            let id = sampler.sample(&last);
            g.step_logits.push(last);
            g.generated_ids.push(id);
            on_token(id);
            if g.generated_ids.len() >= max_new || stop.contains(&id) {
                break;
            }
            logits = self.forward(&[id], &mut cache)?;
        }
        g.decode_ms = t.elapsed().as_secs_f64() * 1e3;
        Ok(g)
    }
}
