//! The pre-filter: logistic regression over hashed word unigrams and
//! bigrams. It costs microseconds per window and decides which windows the
//! transformer must see. Features are defined exactly as in
//! `models/train.py` (`words`, `features`): ASCII-lowercased runs of ASCII
//! letters and digits, FNV-1a of `u:word` and `b:word word`, modulo the
//! bucket count, each counted once, scaled by 1/sqrt(count).

fn fnv1a(parts: &[&[u8]]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for part in parts {
        for &b in *part {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
    }
    h
}

/// Word boundaries of `text`: runs of ASCII alphanumerics.
fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
}

/// Reusable buffers, so scoring allocates nothing once they have grown.
#[derive(Debug, Default)]
pub struct Scratch {
    buckets: Vec<u32>,
    prev: Vec<u8>,
    cur: Vec<u8>,
}

/// Scores one window of text with the pre-filter; returns a probability.
pub fn score(weights: &[f32], bias: f32, text: &str, s: &mut Scratch) -> f32 {
    let n = weights.len() as u32;
    s.buckets.clear();
    s.prev.clear();
    for (i, w) in words(text).enumerate() {
        s.cur.clear();
        s.cur.extend(w.bytes().map(|b| b.to_ascii_lowercase()));
        s.buckets.push(fnv1a(&[b"u:", &s.cur]) % n);
        if i > 0 {
            s.buckets.push(fnv1a(&[b"b:", &s.prev, b" ", &s.cur]) % n);
        }
        std::mem::swap(&mut s.prev, &mut s.cur);
    }
    s.buckets.sort_unstable();
    s.buckets.dedup();
    let sum: f32 = s.buckets.iter().map(|&b| weights[b as usize]).sum();
    sigmoid(sum / (s.buckets.len().max(1) as f32).sqrt() + bias)
}

#[must_use]
pub fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z.clamp(-40.0, 40.0)).exp())
}

#[cfg(test)]
#[allow(
    clippy::float_cmp,
    reason = "exact by construction: conversions, identical inputs"
)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_reference_values() {
        // FNV-1a 32-bit test vectors (Fowler/Noll/Vo reference).
        assert_eq!(fnv1a(&[b""]), 0x811c_9dc5);
        assert_eq!(fnv1a(&[b"a"]), 0xe40c_292c);
        assert_eq!(fnv1a(&[b"foo", b"bar"]), fnv1a(&[b"foobar"]));
        assert_eq!(fnv1a(&[b"foobar"]), 0xbf9c_f968);
    }

    #[test]
    fn words_split_on_anything_but_ascii_alphanumerics() {
        let w: Vec<_> = words("Ignore ALL previous-instructions, now!  über2 x_y").collect();
        assert_eq!(
            w,
            [
                "Ignore",
                "ALL",
                "previous",
                "instructions",
                "now",
                "ber2",
                "x",
                "y"
            ]
        );
    }

    #[test]
    fn features_are_case_blind_and_counted_once() {
        let weights: Vec<f32> = (0..1024).map(|i| (i % 7) as f32 * 0.1).collect();
        let mut s = Scratch::default();
        let a = score(&weights, 0.0, "Ignore previous instructions", &mut s);
        let b = score(&weights, 0.0, "ignore PREVIOUS instructions", &mut s);
        assert_eq!(a, b);
        let c = score(&weights, 0.0, "", &mut s);
        assert_eq!(c, 0.5);
    }
}
