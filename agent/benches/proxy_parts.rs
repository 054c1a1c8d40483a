//! Criterion micro-benchmarks of the proxy's per-message work, no
//! inspection: classifying a message, tracking its request, and the SSE
//! framing of Streamable HTTP. The end-to-end costs (sockets, pipes, the
//! kernel) are in the `proxy_stdio` and `proxy_http` bench binaries.
//!
//!     cargo bench --bench proxy_parts
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mcpwarden::proxy::{
    message,
    sse::{Decoder, Event},
    tracker::Tracker,
};

const CALL: &[u8] = br#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"read_file","arguments":{"path":"/home/user/project/README.md"},"_meta":{"progressToken":7}}}"#;

fn result_of(len: usize) -> Vec<u8> {
    format!(
        r#"{{"jsonrpc":"2.0","id":42,"result":{{"content":[{{"type":"text","text":"{}"}}],"isError":false}}}}"#,
        "x".repeat(len)
    )
    .into_bytes()
}

fn classify(c: &mut Criterion) {
    let mut g = c.benchmark_group("classify");
    g.throughput(Throughput::Elements(1));
    g.bench_function("tools/call request", |b| {
        b.iter(|| message::parse(black_box(CALL)).expect("valid"));
    });
    for len in [1 << 10, 64 << 10] {
        let result = result_of(len);
        g.bench_function(format!("tool result {} KiB", len >> 10), |b| {
            b.iter(|| message::parse(black_box(&result)).expect("valid"));
        });
    }
    g.finish();
}

fn track(c: &mut Criterion) {
    let message::Message::Request { id, method, tool } = message::parse(CALL).expect("valid")
    else {
        unreachable!("a request")
    };
    let mut tracker = Tracker::new();
    let mut now = 0;
    c.bench_function("track: open + close one request", |b| {
        b.iter(|| {
            now += 1000;
            tracker
                .open(id.clone(), method.clone(), tool.clone(), now)
                .expect("fresh id");
            tracker.close(black_box(&id), now + 500).expect("open");
        });
    });
}

fn sse(c: &mut Criterion) {
    let data = String::from_utf8(result_of(1 << 10)).expect("utf-8");
    let event = Event::message(Some("12345".into()), data);
    let wire = event.encode();
    let mut g = c.benchmark_group("sse");
    g.throughput(Throughput::Bytes(wire.len() as u64));
    g.bench_function("encode 1 KiB message", |b| {
        b.iter(|| black_box(&event).encode());
    });
    g.bench_function("decode 1 KiB message", |b| {
        b.iter(|| {
            let mut d = Decoder::new(4 << 20);
            d.feed(black_box(&wire))
        });
    });
    g.finish();
}

criterion_group!(benches, classify, track, sse);
criterion_main!(benches);
