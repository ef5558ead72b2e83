//! HTTP load client of `bench/http/run.sh`: fetches objects from a server with N requests in
//! flight over keep-alive connections, and prints one JSON line: requests per second, MB/s,
//! latency percentiles, errors. Every answer's length is checked against the list.
//!
//!   http_load --base http://127.0.0.1:8080/chunks/ --list ids.txt --concurrency 16 \
//!       --requests 20000 [--token-file FILE]
//!
//! `ids.txt`: one `NAME SIZE` per line; request `k` asks for line `k mod lines` (the same order
//! for every server).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};

struct Args {
    base: String,
    list: String,
    concurrency: usize,
    requests: usize,
    token: Option<String>,
}

fn args() -> Result<Args> {
    let mut a = Args {
        base: String::new(),
        list: String::new(),
        concurrency: 1,
        requests: 10_000,
        token: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--base" => a.base = v()?,
            "--list" => a.list = v()?,
            "--concurrency" => a.concurrency = v()?.parse()?,
            "--requests" => a.requests = v()?.parse()?,
            "--token-file" => {
                let path = v()?;
                let t = std::fs::read_to_string(&path).with_context(|| path.clone())?;
                a.token = Some(t.trim().to_string());
            }
            _ => bail!("unknown argument {k}"),
        }
    }
    if a.base.is_empty() || a.list.is_empty() {
        bail!("usage: http_load --base URL --list FILE [--concurrency N] [--requests N] [--token-file F]");
    }
    Ok(a)
}

fn main() -> Result<()> {
    let a = args()?;
    let list: Vec<(String, u64)> = std::fs::read_to_string(&a.list)
        .with_context(|| a.list.clone())?
        .lines()
        .filter_map(|l| {
            let (name, size) = l.split_once(' ')?;
            Some((name.to_string(), size.trim().parse().ok()?))
        })
        .collect();
    if list.is_empty() {
        bail!("{}: no `NAME SIZE` line", a.list);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(a.concurrency)
            .build()?;
        let list = Arc::new(list);
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..a.concurrency {
            let (client, list, next) = (client.clone(), list.clone(), next.clone());
            let (base, token, total) = (a.base.clone(), a.token.clone(), a.requests);
            workers.spawn(async move {
                let (mut bytes, mut errors, mut lat) = (0u64, 0u64, Vec::new());
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= total {
                        break;
                    }
                    let (name, size) = &list[k % list.len()];
                    let t = Instant::now();
                    let mut req = client.get(format!("{base}{name}"));
                    if let Some(tok) = &token {
                        req = req.bearer_auth(tok);
                    }
                    match req.send().await {
                        Ok(r) if r.status().is_success() => match r.bytes().await {
                            Ok(b) if b.len() as u64 == *size => bytes += b.len() as u64,
                            _ => errors += 1,
                        },
                        _ => errors += 1,
                    }
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                (bytes, errors, lat)
            });
        }
        let (mut bytes, mut errors, mut lat) = (0u64, 0u64, Vec::new());
        while let Some(r) = workers.join_next().await {
            let (b, e, l) = r?;
            bytes += b;
            errors += e;
            lat.extend(l);
        }
        let secs = started.elapsed().as_secs_f64();
        lat.sort_by(f64::total_cmp);
        let pct = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
        println!(
            "{}",
            serde_json::json!({
                "concurrency": a.concurrency,
                "requests": a.requests,
                "secs": secs,
                "req_per_s": a.requests as f64 / secs,
                "mb_per_s": bytes as f64 / secs / 1e6,
                "p50_ms": pct(0.5),
                "p99_ms": pct(0.99),
                "errors": errors,
            })
        );
        anyhow::Ok(())
    })
}
