//! The sentence encoder: all-MiniLM-L6-v2 run by ONNX Runtime, with int8
//! weights and int8 activations in every dense layer, loaded at run time
//! from the files `setup.sh` unpacks and quantises (see
//! `models/packages.txt` and `models/quantize.py`). Text is tokenized
//! once, without padding or truncation, and cut into overlapping windows
//! so that the end of a long document is read as closely as its start.

use std::{
    path::{Path, PathBuf},
    sync::{Mutex, OnceLock},
};

use ort::{
    environment::Environment,
    session::{Session, builder::GraphOptimizationLevel},
    value::Tensor,
};
use tokenizers::Tokenizer;

/// Where the model files are looked for, first match wins: the packaged
/// location, then the development one; `$MCPWARDEN_MODEL_DIR` replaces
/// both.
pub const MODEL_DIRS: &[&str] = &["/usr/lib/mcpwarden/models", "/opt/mcpwarden-dev/models"];
const LIBRARY: &str = "libonnxruntime.so.1.31.1";
const MODEL: &str = "encoder/model.onnx";
const TOKENIZER: &str = "encoder/tokenizer.json";

#[derive(Debug, thiserror::Error)]
pub enum EncoderError {
    #[error(
        "PSI model files not found (looked in {0}); run ./setup.sh, set MCPWARDEN_MODEL_DIR, or turn PSI off with [inspect] enabled = false"
    )]
    NotFound(String),
    #[error("ONNX Runtime at {path}: {why}")]
    Runtime { path: PathBuf, why: String },
    #[error("encoder model {path}: {why}")]
    Model { path: PathBuf, why: String },
    #[error("tokenizer {path}: {why}")]
    Tokenizer { path: PathBuf, why: String },
    #[error("tokenizing: {0}")]
    Tokenize(String),
    #[error("running the encoder: {0}")]
    Run(String),
}

/// The directory holding the model files.
///
/// # Errors
/// [`EncoderError::NotFound`] naming every place looked in.
pub fn model_dir() -> Result<PathBuf, EncoderError> {
    let mut tried = Vec::new();
    // A directory the user names is the only one tried.
    let dirs: Vec<PathBuf> = match std::env::var_os("MCPWARDEN_MODEL_DIR") {
        Some(d) => vec![PathBuf::from(d)],
        None => MODEL_DIRS.iter().map(PathBuf::from).collect(),
    };
    for dir in dirs {
        if dir.join(LIBRARY).is_file() && dir.join(MODEL).is_file() && dir.join(TOKENIZER).is_file()
        {
            return Ok(dir);
        }
        tried.push(dir.display().to_string());
    }
    Err(EncoderError::NotFound(tried.join(", ")))
}

/// ONNX Runtime allows one environment per process.
fn environment(library: &Path) -> Result<&'static Environment, EncoderError> {
    static ENV: OnceLock<Result<Environment, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        ort::init_from(library)
            .map_err(|e| e.to_string())?
            .with_name("mcpwarden-psi")
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|why| EncoderError::Runtime {
        path: library.to_owned(),
        why: why.clone(),
    })
}

/// One window of a text: its token ids, each token's byte range, and the
/// byte range the window covers.
#[derive(Debug, Clone)]
pub struct Window {
    pub ids: Vec<i64>,
    pub offsets: Vec<(usize, usize)>,
    pub start: usize,
    pub end: usize,
}

/// Token ranges of a window of `n` tokens that get their own vector: each
/// `span`-token range, `stride` apart (the last ends at `n`), then the
/// whole window when it is longer than one span. As `spans` in
/// `models/train.py`.
#[must_use]
pub fn spans(n: usize, span: usize, stride: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::with_capacity(n / stride.max(1) + 2);
    let mut a = 0;
    loop {
        let b = (a + span).min(n);
        out.push((a, b));
        if b == n {
            break;
        }
        a += stride;
    }
    if n > span {
        out.push((0, n));
    }
    out
}

pub struct Encoder {
    tokenizer: Tokenizer,
    session: Mutex<Session>,
    cls: i64,
    sep: i64,
    pub dim: usize,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("dim", &self.dim)
            .finish_non_exhaustive()
    }
}

impl Encoder {
    /// Loads runtime, model and tokenizer from `dir`, with `threads` intra-op
    /// threads. PSI's head was trained on the vectors of the model file
    /// whose sha256 is `model_sha256`; another file (a different export, a
    /// different quantisation) would load and score without a word, so it
    /// is refused.
    ///
    /// # Errors
    /// An [`EncoderError`] naming the file that failed and why.
    pub fn load(
        dir: &Path,
        threads: usize,
        dim: usize,
        model_sha256: &str,
    ) -> Result<Self, EncoderError> {
        let env = environment(&dir.join(LIBRARY))?;
        let model = dir.join(MODEL);
        let merr = |why: String| EncoderError::Model {
            path: model.clone(),
            why,
        };
        let bytes = std::fs::read(&model).map_err(|e| merr(e.to_string()))?;
        let hex = crate::store::sha256_hex(&bytes);
        if hex != model_sha256 {
            return Err(merr(format!(
                "sha256 {hex}, but PSI's weights were trained on {model_sha256}; reinstall the model with ./setup.sh"
            )));
        }
        let session = Session::builder(env)
            .map_err(|e| merr(e.to_string()))?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| merr(e.to_string()))?
            .with_intra_threads(threads)
            .map_err(|e| merr(e.to_string()))?
            .commit_from_memory(&bytes)
            .map_err(|e| merr(e.to_string()))?;
        let path = dir.join(TOKENIZER);
        let terr = |why: String| EncoderError::Tokenizer {
            path: path.clone(),
            why,
        };
        let mut tokenizer = Tokenizer::from_file(&path).map_err(|e| terr(e.to_string()))?;
        tokenizer
            .with_truncation(None)
            .map_err(|e| terr(e.to_string()))?;
        tokenizer.with_padding(None);
        let id = |t: &str| {
            tokenizer
                .token_to_id(t)
                .map(i64::from)
                .ok_or_else(|| terr(format!("no {t} token")))
        };
        let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
        Ok(Self {
            tokenizer,
            session: Mutex::new(session),
            cls,
            sep,
            dim,
        })
    }

    /// Cuts `text` into windows of at most `size` tokens, `stride` apart.
    ///
    /// # Errors
    /// [`EncoderError::Tokenize`] if the tokenizer fails.
    pub fn windows(
        &self,
        text: &str,
        size: usize,
        stride: usize,
    ) -> Result<Vec<Window>, EncoderError> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| EncoderError::Tokenize(e.to_string()))?;
        let (ids, offsets) = (enc.get_ids(), enc.get_offsets());
        let mut out = Vec::with_capacity(ids.len() / stride + 1);
        let mut start = 0;
        while start < ids.len() {
            let end = (start + size).min(ids.len());
            out.push(Window {
                ids: ids[start..end].iter().map(|&i| i64::from(i)).collect(),
                offsets: offsets[start..end].to_vec(),
                start: offsets[start].0,
                end: offsets[end - 1].1,
            });
            if end == ids.len() {
                break;
            }
            start += stride;
        }
        Ok(out)
    }

    /// For each window, an L2-normalised mean of the encoder's states over
    /// each of `spans(len)` (content tokens only).
    ///
    /// Each window is a run of its own, not a row of a batch: the encoder
    /// quantises activations with one scale per run, so a batched window's
    /// states would depend on its neighbours (and on their padding), and a
    /// document could blur its injection's window by what it puts in the
    /// others. Batching five windows would save about a fifth of their
    /// time (`BENCHMARKS.md`, "Int8 products").
    ///
    /// # Errors
    /// [`EncoderError::Run`] if ONNX Runtime fails.
    pub fn embed(
        &self,
        windows: &[&Window],
        span: usize,
        stride: usize,
    ) -> Result<Vec<Vec<Vec<f32>>>, EncoderError> {
        let mut session = self
            .session
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        windows
            .iter()
            .map(|w| {
                let states = self.states(&mut session, w)?;
                let dim = self.dim;
                // Content token t is at position t + 1 ([CLS] first).
                let state = |t: usize| &states[(t + 1) * dim..(t + 2) * dim];
                Ok(spans(w.ids.len(), span, stride)
                    .into_iter()
                    .map(|(a, b)| {
                        let mut v = vec![0f32; dim];
                        for t in a..b {
                            v.iter_mut().zip(state(t)).for_each(|(acc, x)| *acc += x);
                        }
                        let count = (b - a) as f32;
                        for acc in &mut v {
                            *acc /= count;
                        }
                        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                        for x in &mut v {
                            *x /= norm;
                        }
                        v
                    })
                    .collect())
            })
            .collect()
    }

    /// The encoder's states for `[CLS] window [SEP]`, one row of `dim` per
    /// token.
    fn states(&self, session: &mut Session, w: &Window) -> Result<Vec<f32>, EncoderError> {
        let n = w.ids.len() + 2;
        let mut ids = Vec::with_capacity(n);
        ids.push(self.cls);
        ids.extend_from_slice(&w.ids);
        ids.push(self.sep);
        let run = |e: ort::Error| EncoderError::Run(e.to_string());
        let shape = [1, n];
        let inputs = ort::inputs![
            "input_ids" => Tensor::from_array((shape, ids)).map_err(run)?,
            "attention_mask" => Tensor::from_array((shape, vec![1i64; n])).map_err(run)?,
            "token_type_ids" => Tensor::from_array((shape, vec![0i64; n])).map_err(run)?,
        ];
        let outputs = session.run(inputs).map_err(run)?;
        let (out_shape, hidden) = outputs["last_hidden_state"]
            .try_extract_tensor::<f32>()
            .map_err(run)?;
        if out_shape.len() != 3 || out_shape[2] as usize != self.dim || hidden.len() != n * self.dim
        {
            return Err(EncoderError::Run(format!(
                "unexpected output shape {out_shape:?}"
            )));
        }
        Ok(hidden.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::spans;

    #[test]
    fn spans_cover_the_window_and_end_at_its_end() {
        assert_eq!(spans(10, 24, 12), [(0, 10)]);
        assert_eq!(spans(24, 24, 12), [(0, 24)]);
        assert_eq!(spans(30, 24, 12), [(0, 24), (12, 30), (0, 30)]);
        let s = spans(126, 24, 12);
        assert_eq!(s.len(), 11);
        assert_eq!(s[8], (96, 120));
        assert_eq!(s[9], (108, 126));
        assert_eq!(s[10], (0, 126));
    }
}
