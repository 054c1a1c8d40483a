//! The trained weights: `models/psi-head.bin`, written by `models/train.py`
//! and embedded in the binary. Layout: `MWPSI001`, a little-endian u32
//! header length, a JSON header (settings and the list of arrays), then
//! each array little-endian in header order (f16 or f32).

use serde::Deserialize;

/// The weights this binary was built with.
pub const EMBEDDED: &[u8] = include_bytes!("../../../models/psi-head.bin");

const MAGIC: &[u8; 8] = b"MWPSI001";

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("not a PSI weights file (bad magic)")]
    Magic,
    #[error("weights file truncated: {0}")]
    Truncated(&'static str),
    #[error("weights header: {0}")]
    Header(#[from] serde_json::Error),
    #[error("weights array {name}: {why}")]
    Array { name: String, why: String },
}

#[derive(Debug, Deserialize)]
struct ArrayInfo {
    name: String,
    dtype: String,
    len: usize,
}

#[derive(Debug, Deserialize)]
pub struct Header {
    pub format: u32,
    pub window: usize,
    pub stride: usize,
    /// Tokens per span, and spans' stride, inside a window.
    pub span: usize,
    pub span_stride: usize,
    pub buckets: usize,
    pub hidden: usize,
    pub prefilter_bias: f32,
    /// Pre-filter probability below which a window skips the transformer.
    pub gate: f32,
    /// Score at or above which a message is flagged (tuned on validation).
    pub threshold: f32,
    /// A span's score: sigmoid(w0 logit(pre) + w1 logit(head) +
    /// w2 logit(pre) logit(head) + w3).
    pub blend: [f32; 4],
    pub encoder: EncoderInfo,
    arrays: Vec<ArrayInfo>,
}

#[derive(Debug, Deserialize)]
pub struct EncoderInfo {
    pub model_sha256: String,
    pub dim: usize,
}

/// Parsed weights: header plus arrays, all as f32.
#[derive(Debug)]
pub struct Weights {
    pub header: Header,
    pub prefilter: Vec<f32>,
    pub w1: Vec<f32>,
    pub b1: Vec<f32>,
    pub w2: Vec<f32>,
    pub b2: f32,
}

impl Weights {
    /// Parses a weights file, checking every size against the header.
    ///
    /// # Errors
    /// A clear [`WeightsError`] for any malformed or inconsistent file.
    pub fn parse(bytes: &[u8]) -> Result<Self, WeightsError> {
        let rest = bytes.strip_prefix(MAGIC).ok_or(WeightsError::Magic)?;
        let (len, rest) = rest
            .split_first_chunk::<4>()
            .ok_or(WeightsError::Truncated("header length"))?;
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return Err(WeightsError::Truncated("header"));
        }
        let (head, mut body) = rest.split_at(len);
        let header: Header = serde_json::from_slice(head)?;
        let mut take = |name: &str, want: usize| -> Result<Vec<f32>, WeightsError> {
            let err = |why: String| WeightsError::Array {
                name: name.to_owned(),
                why,
            };
            let info = header
                .arrays
                .iter()
                .find(|a| a.name == name)
                .ok_or_else(|| err("missing".into()))?;
            if info.len != want {
                return Err(err(format!("{} values, expected {want}", info.len)));
            }
            let width = match info.dtype.as_str() {
                "float16" => 2,
                "float32" => 4,
                other => return Err(err(format!("unsupported dtype {other}"))),
            };
            if body.len() < want * width {
                return Err(WeightsError::Truncated("arrays"));
            }
            let (data, tail) = body.split_at(want * width);
            body = tail;
            Ok(if width == 2 {
                data.chunks_exact(2)
                    .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
                    .collect()
            } else {
                data.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()
            })
        };
        // Arrays are stored in header order; read them in that order.
        let dim = header.encoder.dim;
        let hidden = header.hidden;
        let mut prefilter = Vec::new();
        let (mut w1, mut b1, mut w2, mut b2) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let names: Vec<String> = header.arrays.iter().map(|a| a.name.clone()).collect();
        for name in &names {
            match name.as_str() {
                "prefilter" => prefilter = take(name, header.buckets)?,
                "w1" => w1 = take(name, dim * hidden)?,
                "b1" => b1 = take(name, hidden)?,
                "w2" => w2 = take(name, hidden)?,
                "b2" => b2 = take(name, 1)?,
                other => {
                    return Err(WeightsError::Array {
                        name: other.to_owned(),
                        why: "unknown array".into(),
                    });
                }
            }
        }
        for (name, got, want) in [
            ("prefilter", prefilter.len(), header.buckets),
            ("w1", w1.len(), dim * hidden),
            ("b1", b1.len(), hidden),
            ("w2", w2.len(), hidden),
            ("b2", b2.len(), 1),
        ] {
            if got != want {
                return Err(WeightsError::Array {
                    name: name.into(),
                    why: "missing".into(),
                });
            }
        }
        if header.window == 0
            || header.stride == 0
            || header.stride > header.window
            || header.span == 0
            || header.span_stride == 0
            || header.span_stride > header.span
        {
            return Err(WeightsError::Array {
                name: "header".into(),
                why: "bad window/stride".into(),
            });
        }
        Ok(Self {
            header,
            prefilter,
            w1,
            b1,
            w2,
            b2: b2[0],
        })
    }
}

/// IEEE 754 half to single precision.
fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let frac = u32::from(h & 0x3ff);
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // Subnormal: value = f * 2^-24.
            let v = f as f32 * 2f32.powi(-24);
            return if sign == 0 { v } else { -v };
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 127 - 15) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
#[allow(
    clippy::float_cmp,
    reason = "exact by construction: conversions, identical inputs"
)]
mod tests {
    use super::*;

    #[test]
    fn half_precision_values() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert!(f16_to_f32(0x7c00).is_infinite());
        assert_eq!(f16_to_f32(0x8000), -0.0);
    }

    #[test]
    fn embedded_weights_parse() {
        let w = Weights::parse(EMBEDDED).expect("embedded weights");
        assert_eq!(w.prefilter.len(), w.header.buckets);
        assert_eq!(w.w1.len(), w.header.encoder.dim * w.header.hidden);
        assert!(w.header.gate > 0.0 && w.header.gate < 1.0);
        assert!(w.header.threshold >= 0.5 && w.header.threshold < 1.0);
    }

    #[test]
    fn malformed_files_are_errors() {
        assert!(matches!(Weights::parse(b"nope"), Err(WeightsError::Magic)));
        assert!(matches!(
            Weights::parse(b"MWPSI001\x10\0"),
            Err(WeightsError::Truncated(_))
        ));
        assert!(matches!(
            Weights::parse(b"MWPSI001\x02\0\0\0{}"),
            Err(WeightsError::Header(_))
        ));
        let cut = &EMBEDDED[..EMBEDDED.len() - 10];
        assert!(matches!(
            Weights::parse(cut),
            Err(WeightsError::Truncated("arrays"))
        ));
    }
}
