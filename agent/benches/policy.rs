//! The policy engine's hot path: one decision on one `tools/call`, against
//! the shipped profiles (policies/*.toml), with the call's arguments
//! already parsed (the proxy parses each message once for the gate).
//! Prints decisions per second on one core and the heap allocations per
//! decision, counted by a wrapping global allocator (the target is none).
//!
//!     cargo bench --bench policy
// Counts in the millions print as f64 rates; no precision matters there.
#![allow(clippy::cast_precision_loss)]
use std::{
    alloc::{GlobalAlloc, Layout, System},
    hint::black_box,
    sync::atomic::{AtomicU64, Ordering},
};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mcpwarden::policy::{
    Policy,
    agents::{Peer, identify},
    expr::{Context, SessionStats, TrustScores},
    tools::Buckets,
};
use serde_json::{Value, json};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only
// counts allocations.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours, passed through.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours, passed through.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn profile(name: &str) -> Policy {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../policies")
        .join(format!("{name}.toml"));
    Policy::load(&path).expect("shipped profile")
}

/// (profile, tool, arguments): allowed, refused and undecidable calls.
fn calls() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        (
            "filesystem",
            "read_text_file",
            json!({"path": "/srv/mcp/files/notes/today.md"}),
        ),
        (
            "filesystem",
            "read_text_file",
            json!({"path": "/srv/mcp/files/../../etc/passwd"}),
        ),
        (
            "filesystem",
            "read_multiple_files",
            json!({"paths": ["/srv/mcp/files/a", "/srv/mcp/files/b", "/srv/mcp/files/c"]}),
        ),
        (
            "filesystem",
            "move_file",
            json!({"source": "/srv/mcp/files/a", "destination": "/srv/mcp/files/b"}),
        ),
        (
            "git",
            "git_commit",
            json!({"repo_path": "/srv/mcp/repos/app", "message": "fix the parser"}),
        ),
        (
            "git",
            "git_reset",
            json!({"repo_path": "/srv/mcp/repos/app"}),
        ),
        (
            "fetch",
            "fetch",
            json!({"url": "https://en.wikipedia.org/wiki/Model_Context_Protocol", "max_length": 5000}),
        ),
        (
            "fetch",
            "fetch",
            json!({"url": "http://169.254.169.254/latest/meta-data/"}),
        ),
        (
            "shell",
            "shell_execute",
            json!({"command": ["grep", "-rn", "TODO", "."], "directory": "/srv/mcp/work"}),
        ),
        (
            "postgres",
            "query",
            json!({"sql": "SELECT id, name, email FROM customers WHERE created_at > now() - interval '1 day'"}),
        ),
        ("memory", "search_nodes", json!({"query": "mcpwarden"})),
        ("filesystem", "format_disk", json!({})),
    ]
}

fn decide(c: &mut Criterion) {
    let names = ["filesystem", "git", "fetch", "shell", "postgres", "memory"];
    let policies: Vec<(&str, Policy)> = names.iter().map(|n| (*n, profile(n))).collect();
    let calls = calls();
    let agent = identify(
        &policies[1].1.agents,
        &Peer {
            uid: Some(1500),
            gid: None,
            exe: None,
            identity: None,
        },
    );
    let prepared: Vec<(&Policy, &str, &Value)> = calls
        .iter()
        .map(|(p, tool, args)| {
            let policy = &policies.iter().find(|(n, _)| n == p).expect("profile").1;
            (policy, *tool, args)
        })
        .collect();
    let mut buckets: Vec<Buckets> = prepared.iter().map(|_| Buckets::default()).collect();
    let mut now = 0u64;
    let one_round = |buckets: &mut [Buckets], now: u64| {
        for ((policy, tool, args), b) in prepared.iter().zip(buckets.iter_mut()) {
            let ctx = Context {
                tool,
                args,
                agent: &agent,
                server: "bench",
                session: SessionStats::default(),
                trust: TrustScores::default(),
                unix_time: 1_795_012_200,
            };
            black_box(policy.tools.decide(black_box(&ctx), b, now));
        }
    };
    // Warm the buckets, then count allocations over many rounds.
    one_round(&mut buckets, 0);
    let before = ALLOCS.load(Ordering::Relaxed);
    let rounds = 10_000u64;
    for r in 0..rounds {
        one_round(&mut buckets, r * 1_000_000_000);
    }
    let allocs = ALLOCS.load(Ordering::Relaxed) - before;
    println!(
        "policy decide: {} heap allocations in {} decisions ({:.3} per decision)",
        allocs,
        rounds * prepared.len() as u64,
        allocs as f64 / (rounds * prepared.len() as u64) as f64
    );
    let started = std::time::Instant::now();
    let n = 200_000u64;
    for _ in 0..n {
        now += 1_000_000_000;
        one_round(&mut buckets, now);
    }
    let per_s = (n * prepared.len() as u64) as f64 / started.elapsed().as_secs_f64();
    println!(
        "policy decide: {per_s:.0} decisions/s on one core (mix of {} calls over 6 profiles)",
        prepared.len()
    );
    let mut g = c.benchmark_group("policy");
    g.throughput(Throughput::Elements(prepared.len() as u64));
    g.bench_function("decide, 12-call mix over the shipped profiles", |b| {
        b.iter(|| {
            now += 1_000_000_000;
            one_round(&mut buckets, now);
        });
    });
    g.finish();
}

criterion_group!(benches, decide);
criterion_main!(benches);
