//! Any bytes an upstream sends as an event stream, cut at any points: the
//! decoder never panics, never yields an event over its limit, and decodes
//! the same events however the bytes are chunked. And any event mcpwarden
//! encodes decodes back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcpwarden::proxy::sse::{Decoder, Event, Item};

const MAX: usize = 256;

fn decode(chunks: &[&[u8]]) -> Vec<Item> {
    let mut d = Decoder::new(MAX);
    chunks.iter().flat_map(|c| d.feed(c)).collect()
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks a cut point for the second chunking.
    let (cut, body) = match data.split_first() {
        Some((c, rest)) => (usize::from(*c), rest),
        None => return,
    };
    let whole = decode(&[body]);
    for item in &whole {
        if let Item::Event(e) = item {
            assert!(e.data.len() <= MAX + 8, "event over the limit: {}", e.data.len());
        }
    }
    let at = cut.min(body.len());
    assert_eq!(decode(&[&body[..at], &body[at..]]), whole, "chunking changed the events");
    let bytewise: Vec<&[u8]> = body.chunks(1).collect();
    assert_eq!(decode(&bytewise), whole, "byte-by-byte changed the events");

    // Round trip of our own encoding.
    let text = String::from_utf8_lossy(body).replace('\r', "");
    let sent = Event::message(Some(format!("{cut}")), text);
    let mut d = Decoder::new(usize::MAX);
    match d.feed(&sent.encode()).as_slice() {
        [Item::Event(got)] => assert_eq!(got, &sent),
        other => panic!("{sent:?} decoded as {other:?}"),
    }
});
