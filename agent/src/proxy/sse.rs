//! Server-sent events (the WHATWG `text/event-stream` format) as MCP's
//! Streamable HTTP transport uses them: each event's data is one JSON-RPC
//! message, its id lets a client resume a broken stream.
//!
//! [`Decoder`] is incremental (bytes arrive in any chunks) and bounded: an
//! event larger than its limit is discarded, never buffered without end.

/// One event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// `id:` field, if the event set one.
    pub id: Option<String>,
    /// `event:` field (`message` when absent).
    pub event: Option<String>,
    /// The data lines joined by `\n`.
    pub data: String,
    /// `retry:` in milliseconds.
    pub retry: Option<u64>,
}

impl Event {
    /// A `message` event carrying `data`, with an optional id.
    #[must_use]
    pub fn message(id: Option<String>, data: String) -> Self {
        Self {
            id,
            data,
            ..Self::default()
        }
    }

    /// The event in wire form, blank line included. Data with newlines is
    /// split over several `data:` lines, so it decodes back unchanged.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data.len() + 32);
        if let Some(event) = &self.event {
            field(&mut out, "event", event);
        }
        if let Some(id) = &self.id {
            field(&mut out, "id", id);
        }
        if let Some(retry) = self.retry {
            field(&mut out, "retry", &retry.to_string());
        }
        for line in self.data.split('\n') {
            field(&mut out, "data", line.strip_suffix('\r').unwrap_or(line));
        }
        out.push(b'\n');
        out
    }
}

fn field(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    // A field value cannot hold a line break: cut it there.
    let value = value.split(['\n', '\r']).next().unwrap_or_default();
    out.extend_from_slice(value.as_bytes());
    out.push(b'\n');
}

/// What [`Decoder::feed`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// A complete event with data (events without data are not dispatched,
    /// as in the WHATWG algorithm; their id still counts).
    Event(Event),
    /// An event longer than the limit was discarded.
    TooLong {
        /// Bytes discarded.
        len: usize,
    },
}

/// Incremental `text/event-stream` decoder.
#[derive(Debug)]
pub struct Decoder {
    max: usize,
    line: Vec<u8>,
    /// Size of the event being built; `None` while discarding one.
    size: Option<usize>,
    discarded: usize,
    current: Event,
    has_data: bool,
    /// The last event id seen (sticky across events, as the spec says).
    last_id: Option<String>,
    /// The previous line ended with CR: a LF right after it is not a line.
    after_cr: bool,
}

impl Decoder {
    /// A decoder refusing events over `max` bytes.
    #[must_use]
    pub fn new(max: usize) -> Self {
        Self {
            max,
            line: Vec::new(),
            size: Some(0),
            discarded: 0,
            current: Event::default(),
            has_data: false,
            last_id: None,
            after_cr: false,
        }
    }

    /// The id of the last event seen, for `Last-Event-ID` on reconnection.
    #[must_use]
    pub fn last_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    /// Feeds bytes; returns the events they complete.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Vec<Item> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let end = bytes.iter().position(|&b| b == b'\n' || b == b'\r');
            let (chunk, rest, eol) = match end {
                Some(i) => (&bytes[..i], &bytes[i + 1..], Some(bytes[i])),
                None => (bytes, &[][..], None),
            };
            // A CR LF pair is one line end: skip the LF after a CR that
            // ended the previous chunk or line.
            if self.line.is_empty() && chunk.is_empty() && eol == Some(b'\n') && self.after_cr {
                self.after_cr = false;
                bytes = rest;
                continue;
            }
            self.after_cr = false;
            self.grow(chunk.len());
            if self.size.is_some() {
                self.line.extend_from_slice(chunk);
            }
            if let Some(eol) = eol {
                let line = std::mem::take(&mut self.line);
                if let Some(item) = self.on_line(&line) {
                    out.push(item);
                }
                self.after_cr = eol == b'\r';
            }
            bytes = rest;
        }
        out
    }

    fn grow(&mut self, n: usize) {
        match &mut self.size {
            Some(size) if *size + n > self.max => {
                self.discarded = *size + n;
                self.size = None;
                self.line.clear();
                self.current = Event::default();
                self.has_data = false;
            }
            Some(size) => *size += n,
            None => self.discarded += n,
        }
    }

    fn on_line(&mut self, line: &[u8]) -> Option<Item> {
        if line.is_empty() {
            return self.dispatch();
        }
        self.size?;
        // Lines that are not UTF-8 are replaced, as browsers do. Each bad
        // byte becomes three (U+FFFD): count what the line grew by, so the
        // limit holds on what is kept, not only on what was read.
        let raw_len = line.len();
        let line = String::from_utf8_lossy(line);
        if line.len() > raw_len {
            self.grow(line.len() - raw_len);
            self.size?;
        }
        if line.starts_with(':') {
            return None;
        }
        let (name, value) = match line.split_once(':') {
            Some((n, v)) => (n, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_ref(), ""),
        };
        match name {
            "data" => {
                if self.has_data {
                    self.current.data.push('\n');
                }
                self.current.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.current.event = Some(value.to_owned()),
            "id" if !value.contains('\0') => {
                self.current.id = Some(value.to_owned());
                self.last_id = Some(value.to_owned());
            }
            "retry" => self.current.retry = value.parse().ok(),
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<Item> {
        if self.size.is_none() {
            let len = self.discarded;
            self.size = Some(0);
            self.discarded = 0;
            return Some(Item::TooLong { len });
        }
        self.size = Some(0);
        let event = std::mem::take(&mut self.current);
        let has_data = std::mem::take(&mut self.has_data);
        has_data.then_some(Item::Event(event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(items: Vec<Item>) -> Vec<Event> {
        items
            .into_iter()
            .map(|i| match i {
                Item::Event(e) => e,
                Item::TooLong { len } => panic!("unexpected too long ({len})"),
            })
            .collect()
    }

    #[test]
    fn decodes_what_it_encodes_in_any_chunking() {
        let sent = vec![
            Event::message(
                Some("7".into()),
                r#"{"jsonrpc":"2.0","id":1,"result":{}}"#.into(),
            ),
            Event {
                event: Some("message".into()),
                data: "two\nlines".into(),
                ..Event::default()
            },
        ];
        let wire: Vec<u8> = sent.iter().flat_map(Event::encode).collect();
        for step in [1, 2, 3, 7, wire.len()] {
            let mut d = Decoder::new(1 << 20);
            let mut got = Vec::new();
            for chunk in wire.chunks(step) {
                got.extend(events(d.feed(chunk)));
            }
            assert_eq!(got, sent, "chunks of {step}");
            assert_eq!(d.last_id(), Some("7"));
        }
    }

    #[test]
    fn follows_the_whatwg_line_rules() {
        let mut d = Decoder::new(1 << 20);
        let got = events(
            d.feed(b": comment\r\nid: a\r\ndata:x\rdata\r\n\r\nid\nevent: ping\n\ndata: y\n\n"),
        );
        // CR, LF and CRLF all end lines; `data` without colon adds an
        // empty line; an event with no data is not dispatched; an empty id
        // resets the last id.
        assert_eq!(
            got,
            vec![
                Event::message(Some("a".into()), "x\n".into()),
                Event::message(None, "y".into()),
            ]
        );
        assert_eq!(d.last_id(), Some(""));
    }

    #[test]
    fn an_oversized_event_is_discarded_and_the_next_one_read() {
        let mut d = Decoder::new(16);
        let mut wire = b"data: ".to_vec();
        wire.extend(std::iter::repeat_n(b'a', 100));
        wire.extend_from_slice(b"\n\ndata: ok\n\n");
        let got = d.feed(&wire);
        assert!(
            matches!(got[0], Item::TooLong { len } if len >= 100),
            "{got:?}"
        );
        assert_eq!(got[1], Item::Event(Event::message(None, "ok".into())));
    }

    #[test]
    fn invalid_utf8_cannot_grow_an_event_past_the_limit() {
        // Found by the sse fuzz target: 0xff bytes within the limit tripled
        // in size once replaced.
        let mut d = Decoder::new(64);
        let mut wire = b"data: ".to_vec();
        wire.extend([0xff; 40]);
        wire.extend_from_slice(b"\n\n");
        assert!(matches!(d.feed(&wire)[..], [Item::TooLong { .. }]));
        let mut d = Decoder::new(256);
        match &d.feed(&wire)[..] {
            [Item::Event(e)] => assert_eq!(e.data, "\u{fffd}".repeat(40)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn field_values_cannot_inject_lines() {
        let e = Event::message(Some("1\ndata: evil".into()), "x".into());
        let mut d = Decoder::new(1 << 20);
        assert_eq!(
            events(d.feed(&e.encode())),
            vec![Event::message(Some("1".into()), "x".into())]
        );
    }
}
