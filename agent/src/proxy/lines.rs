//! Reading newline-delimited messages with a size limit, so a peer that never
//! sends a newline cannot make mcpwarden buffer without bound.
use tokio::io::{AsyncBufRead, AsyncBufReadExt as _};

/// Default limit of one message: 4 MiB.
pub const DEFAULT_MAX_LINE: usize = 4 << 20;

/// One read from a [`LineReader`].
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line, without its `\n` (a `\r` before it is kept: the
    /// proxy forwards bytes unchanged). The last line of a stream may lack
    /// the newline.
    Complete(Vec<u8>),
    /// A line longer than the limit; its bytes were discarded up to and
    /// including the next newline.
    TooLong {
        /// Bytes discarded.
        len: usize,
    },
    /// End of stream.
    Eof,
}

/// Reads lines of at most `max` bytes.
#[derive(Debug)]
pub struct LineReader<R> {
    inner: R,
    max: usize,
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    /// Wraps a buffered reader.
    pub fn new(inner: R, max: usize) -> Self {
        Self { inner, max }
    }

    /// The next line.
    pub async fn next(&mut self) -> std::io::Result<Line> {
        let mut line = Vec::new();
        let mut discarded: Option<usize> = None;
        loop {
            let buf = self.inner.fill_buf().await?;
            if buf.is_empty() {
                return Ok(match discarded {
                    Some(len) => Line::TooLong { len },
                    None if line.is_empty() => Line::Eof,
                    None => Line::Complete(line),
                });
            }
            let (chunk, found) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (&buf[..i], Some(i + 1)),
                None => (buf, None),
            };
            match &mut discarded {
                Some(len) => *len += chunk.len(),
                None if line.len() + chunk.len() > self.max => {
                    discarded = Some(line.len() + chunk.len());
                    line = Vec::new();
                }
                None => line.extend_from_slice(chunk),
            }
            let used = found.unwrap_or(buf.len());
            self.inner.consume(used);
            if found.is_some() {
                return Ok(match discarded {
                    Some(len) => Line::TooLong { len },
                    None => Line::Complete(line),
                });
            }
        }
    }
}

impl<T: tokio::io::AsyncRead> LineReader<tokio::io::BufReader<T>> {
    /// Whether a complete line is already buffered, so that the next
    /// [`LineReader::next`] returns without waiting.
    pub fn has_complete_line(&self) -> bool {
        self.inner.buffer().contains(&b'\n')
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::BufReader;

    use super::*;

    async fn read_all(input: &[u8], max: usize, buf: usize) -> Vec<Line> {
        let mut r = LineReader::new(BufReader::with_capacity(buf, input), max);
        let mut out = Vec::new();
        loop {
            let l = r.next().await.expect("in-memory read");
            let eof = l == Line::Eof;
            out.push(l);
            if eof {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn splits_lines_and_keeps_a_last_line_without_newline() {
        for buf in [1, 3, 64] {
            let got = read_all(b"a\r\nbc\n\nlast", 100, buf).await;
            assert_eq!(
                got,
                vec![
                    Line::Complete(b"a\r".to_vec()),
                    Line::Complete(b"bc".to_vec()),
                    Line::Complete(Vec::new()),
                    Line::Complete(b"last".to_vec()),
                    Line::Eof
                ],
                "buffer size {buf}"
            );
        }
    }

    #[tokio::test]
    async fn knows_when_a_complete_line_is_waiting() {
        let mut r = LineReader::new(BufReader::with_capacity(64, &b"one\ntwo\nthr"[..]), 100);
        assert!(!r.has_complete_line(), "nothing read yet");
        assert_eq!(
            r.next().await.expect("read"),
            Line::Complete(b"one".to_vec())
        );
        assert!(r.has_complete_line(), "two is buffered");
        assert_eq!(
            r.next().await.expect("read"),
            Line::Complete(b"two".to_vec())
        );
        assert!(!r.has_complete_line(), "only a partial line is left");
    }

    #[tokio::test]
    async fn overlong_lines_are_skipped_whole_and_reading_goes_on() {
        for buf in [2, 7, 1024] {
            let got = read_all(b"ok\n0123456789\nnext\n0123456789", 5, buf).await;
            assert_eq!(
                got,
                vec![
                    Line::Complete(b"ok".to_vec()),
                    Line::TooLong { len: 10 },
                    Line::Complete(b"next".to_vec()),
                    Line::TooLong { len: 10 },
                    Line::Eof
                ],
                "buffer size {buf}"
            );
        }
    }
}
