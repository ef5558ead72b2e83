//! The chunk service of `bootcast serve` (manifests, chunks, batches, metrics) and
//! `image export --from`, the agent's restore core, against a real server on 127.0.0.1.

mod common;

use std::collections::HashSet;

use bootcast::store::{ChunkId, Manifest, Store};
use common::*;

fn serve(lab: &Lab) -> InProcess {
    InProcess::start(lab)
}

/// One GET as staff: (status, response headers as `name: value` lines, body bytes).
fn get(s: &InProcess, url: &str, headers: &[(&str, &str)]) -> (u16, String, Vec<u8>) {
    let (h, v) = staff(s);
    let mut headers = headers.to_vec();
    headers.push((h, &v));
    let (code, head, body) = request("GET", url, &headers, None);
    let head = head.iter().map(|(k, v)| format!("{k}: {v}\n")).collect();
    (code, head, body)
}

/// `POST /chunks/batch` with these raw ids, as staff.
fn batch(s: &InProcess, url: &str, ids: &[ChunkId]) -> (u16, Vec<u8>) {
    let body: Vec<u8> = ids.iter().flat_map(|id| id.0).collect();
    let (h, v) = staff(s);
    let (code, _, body) = request(
        "POST",
        &format!("{url}/chunks/batch"),
        &[("content-type", "application/octet-stream"), (h, &v)],
        Some(body),
    );
    (code, body)
}

/// Splits a batch response into (id, Some(bytes) | None for missing).
fn frames(mut body: &[u8]) -> Vec<(ChunkId, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    while !body.is_empty() {
        let id = ChunkId(body[..32].try_into().unwrap());
        let len = u32::from_be_bytes(body[32..36].try_into().unwrap());
        body = &body[36..];
        if len == u32::MAX {
            out.push((id, None));
        } else {
            out.push((id, Some(body[..len as usize].to_vec())));
            body = &body[len as usize..];
        }
    }
    out
}

/// A counter from `/metrics`.
fn metric(url: &str, name: &str) -> u64 {
    let (code, text) = http("GET", &format!("{url}/metrics"), None, None);
    assert_eq!(code, 200);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// `bootcast_chunk_bytes_served_total` from `/metrics`.
fn bytes_served(url: &str) -> u64 {
    let (code, text) = http("GET", &format!("{url}/metrics"), None, None);
    assert_eq!(code, 200);
    text.lines()
        .find_map(|l| l.strip_prefix("bootcast_chunk_bytes_served_total "))
        .expect("metric present")
        .trim()
        .parse()
        .unwrap()
}

fn manifest_of(lab: &Lab, spec: &str) -> Manifest {
    Store::open(&lab.data())
        .unwrap()
        .resolve(spec)
        .unwrap()
        .manifest
}

#[test]
fn manifest_chunk_and_batch_endpoints() {
    let server = Lab::new();
    let added = server.add("disk", &server.file("d.img", &disk_like(3 << 20, 11)));
    let version = added["version"].as_str().unwrap().to_string();
    let s = serve(&server);
    let url = &s.url;

    // manifest: by latest, prefix and full id; the bytes decode to that version
    for v in ["latest", &version[..12], &version] {
        let (code, headers, body) = get(&s, &format!("{url}/api/v1/images/disk/{v}/manifest"), &[]);
        assert_eq!(code, 200, "{v}: {}", String::from_utf8_lossy(&body));
        assert!(headers.contains(&format!("x-bootcast-version: {version}")));
        let (_, id) = Manifest::decode(&body).expect("a valid manifest");
        assert_eq!(id.to_hex(), version);
    }
    for (path, code, says) in [
        ("images/nope/latest/manifest", 404, "no image named"),
        ("images/disk/ffffffff/manifest", 404, "has no version"),
        ("images/.bad/latest/manifest", 400, "invalid image name"),
    ] {
        let (got, body) = http(
            "GET",
            &format!("{url}/api/v1/{path}"),
            s.token.as_deref(),
            None,
        );
        assert_eq!(got, code, "{path}: {body}");
        assert!(body.contains(says), "{path}: {body}");
    }
    // the list is staff-only; manifests and chunks need a credential too (a relay token, a
    // boot session or the API token): a PC on the LAN gets none of them
    assert_eq!(
        http("GET", &format!("{url}/api/v1/images"), None, None).0,
        401
    );
    let first = manifest_of(&server, "disk").chunks().next().unwrap().1;
    for (method, path) in [
        ("GET", "api/v1/images/disk/latest/manifest".to_string()),
        ("GET", format!("chunks/{first}")),
        ("POST", "chunks/batch".to_string()),
    ] {
        for headers in [
            vec![],
            vec![("x-bootcast-relay-token", "made-up")],
            vec![
                ("x-bootcast-mac", "52:54:00:00:00:01"),
                ("x-bootcast-session", "00ff"),
            ],
            vec![("authorization", "Bearer wrong")],
        ] {
            let body = (method == "POST").then(|| first.0.to_vec());
            let (code, _, answer) = request(method, &format!("{url}/{path}"), &headers, body);
            let answer = String::from_utf8_lossy(&answer);
            assert!(
                code == 403 || code == 401,
                "{method} /{path} with {headers:?}: {code} {answer}"
            );
        }
    }
    let (code, list) = http(
        "GET",
        &format!("{url}/api/v1/images"),
        s.token.as_deref(),
        None,
    );
    assert_eq!(code, 200);
    assert!(list.contains(&version), "{list}");

    // one chunk: the stored frame as-is, immutable, ETag = id, Range, 304
    let store = Store::open(&server.data()).unwrap();
    let manifest = manifest_of(&server, "disk");
    let ids: Vec<ChunkId> = manifest.chunks().map(|(_, id, _)| id).collect();
    let (a, b) = (ids[0], ids[1]);
    let stored_a = std::fs::read(store.chunk_path(&a)).unwrap();
    let (code, headers, body) = get(&s, &format!("{url}/chunks/{a}"), &[]);
    assert_eq!(code, 200);
    assert_eq!(body, stored_a, "the stored zstd frame, not decompressed");
    assert!(headers.contains(&format!("etag: \"{a}\"")), "{headers}");
    assert!(
        headers.contains("cache-control: public, max-age=31536000, immutable"),
        "{headers}"
    );
    // asked again: the same bytes, from the frames kept in memory (no file read)
    assert_eq!(metric(url, "bootcast_chunks_from_memory_total"), 0);
    let (code, _, again) = get(&s, &format!("{url}/chunks/{a}"), &[]);
    assert_eq!((code, &again), (200, &stored_a));
    assert_eq!(metric(url, "bootcast_chunks_from_memory_total"), 1);
    let (h, v) = staff(&s);
    let (code, head, body) = request("HEAD", &format!("{url}/chunks/{a}"), &[(h, &v)], None);
    assert_eq!(code, 200);
    assert!(body.is_empty());
    let length = stored_a.len().to_string();
    assert!(
        head.iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("content-length") && *v == length),
        "{head:?}"
    );
    let (code, headers, body) = get(&s, &format!("{url}/chunks/{a}"), &[("range", "bytes=4-13")]);
    assert_eq!(code, 206, "{headers}");
    assert_eq!(body, stored_a[4..14]);
    let etag = format!("\"{a}\"");
    let (code, _, _) = get(
        &s,
        &format!("{url}/chunks/{a}"),
        &[("if-none-match", &etag)],
    );
    assert_eq!(code, 304);
    let missing = ChunkId::of(b"no such chunk");
    let (code, body) = http(
        "GET",
        &format!("{url}/chunks/{missing}"),
        s.token.as_deref(),
        None,
    );
    assert_eq!(code, 404);
    assert!(body.contains(&missing.to_hex()), "{body}");
    let (code, body) = http(
        "GET",
        &format!("{url}/chunks/xyz"),
        s.token.as_deref(),
        None,
    );
    assert_eq!(code, 400);
    assert!(body.contains("64 hex digits"), "{body}");

    // batch: request order, a missing chunk in-band, the rest still served
    let (code, body) = batch(&s, url, &[b, missing, a]);
    assert_eq!(code, 200);
    let got = frames(&body);
    assert_eq!(got.len(), 3);
    assert_eq!(
        got[0],
        (b, Some(std::fs::read(store.chunk_path(&b)).unwrap()))
    );
    assert_eq!(got[1], (missing, None));
    assert_eq!(got[2], (a, Some(stored_a.clone())));
    // malformed and oversized batches
    let (h, v) = staff(&s);
    let (code, _, body) = request(
        "POST",
        &format!("{url}/chunks/batch"),
        &[(h, &v)],
        Some(vec![0u8; 33]),
    );
    assert_eq!(code, 400, "{}", String::from_utf8_lossy(&body));
    let (code, body) = batch(&s, url, &vec![a; 4097]);
    assert_eq!(code, 413);
    assert!(String::from_utf8_lossy(&body).contains("4096"));

    // counters: one chunk twice, 10 range bytes, two batch frames
    let served = bytes_served(url);
    let expected =
        stored_a.len() as u64 * 3 + 10 + std::fs::metadata(store.chunk_path(&b)).unwrap().len();
    assert_eq!(served, expected);
}

#[test]
fn remote_export_is_byte_identical_and_counted() {
    let server = Lab::new();
    let image = disk_like(6 << 20, 12);
    server.add("disk", &server.file("d.img", &image));
    let s = serve(&server);
    let client = Lab::client_of(&server);
    let target = client.path("out.img");
    let before = bytes_served(&s.url);
    let r = client.json(&[
        "image",
        "export",
        "disk",
        target.to_str().unwrap(),
        "--from",
        &s.url,
    ]);
    assert_eq!(sha256(&std::fs::read(&target).unwrap()), sha256(&image));
    let served = bytes_served(&s.url) - before;
    assert!(served > 0);
    assert_eq!(r["fetched_compressed"].as_u64().unwrap(), served, "{r}");
    assert!(
        !client.data().join("store").exists(),
        "no local store needed"
    );
    say(&format!(
        "remote export: {} image bytes, {served} compressed bytes served",
        image.len()
    ));
}

#[test]
fn reimage_with_v2_moves_only_what_changed() {
    let server = Lab::new();
    let v1 = disk_like(8 << 20, 13);
    let mut v2 = v1.clone();
    for at in [1usize << 20, 4 << 20, (7 << 20) + 12345] {
        v2[at..at + 6000].fill(0x5A);
    }
    let a = server.add("disk", &server.file("v1.img", &v1));
    let b = server.add("disk", &server.file("v2.img", &v2));
    let (s1, s2) = (
        format!("disk@{}", a["version"].as_str().unwrap()),
        format!("disk@{}", b["version"].as_str().unwrap()),
    );
    let s = serve(&server);
    let client = Lab::client_of(&server);
    let target = client.path("disk.img");
    let t = target.to_str().unwrap();
    client.json(&["image", "export", &s1, t, "--from", &s.url]);
    assert_eq!(sha256(&std::fs::read(&target).unwrap()), sha256(&v1));

    // What the disk lacks: v2's chunks that v1 does not hold at the same offset.
    let (m1, m2) = (manifest_of(&server, &s1), manifest_of(&server, &s2));
    let held: HashSet<(u64, ChunkId)> = m1.chunks().map(|(e, id, _)| (e.offset, id)).collect();
    let lacking: Vec<(ChunkId, u64)> = m2
        .chunks()
        .filter(|(e, id, _)| !held.contains(&(e.offset, *id)))
        .map(|(_, id, c)| (id, c as u64))
        .collect();
    assert!(!lacking.is_empty());
    let lacking_bytes: u64 = lacking.iter().map(|(_, c)| c).sum();
    let distinct: std::collections::HashMap<ChunkId, u64> = lacking.iter().copied().collect();
    let distinct_bytes: u64 = distinct.values().sum();

    let before = bytes_served(&s.url);
    let r = client.json(&["image", "export", &s2, t, "--seed", t, "--from", &s.url]);
    let served = bytes_served(&s.url) - before;
    assert_eq!(sha256(&std::fs::read(&target).unwrap()), sha256(&v2));
    say(&format!(
        "v1 -> v2 in place: {served} bytes served for {} lacking chunks of {lacking_bytes} compressed bytes ({} in place)",
        lacking.len(),
        r["in_place"]
    ));
    assert!(
        served as f64 <= 1.1 * lacking_bytes as f64,
        "served {served} > 1.1 x {lacking_bytes}"
    );
    assert!(served >= distinct_bytes, "every lacking chunk is fetched");
    assert!(r["in_place"].as_u64().unwrap() > 6 << 20, "{r}");
}

#[test]
fn corrupt_chunk_on_the_server_is_refused_and_never_written() {
    let server = Lab::new();
    server.add("disk", &server.file("d.img", &disk_like(4 << 20, 14)));
    let store = Store::open(&server.data()).unwrap();
    let manifest = manifest_of(&server, "disk");
    let (extent, id, _) = manifest.chunks().nth(2).unwrap();
    let (offset, len) = (extent.offset as usize, extent.len as usize);
    let path = store.chunk_path(&id);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[20] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();

    let s = serve(&server);
    let client = Lab::client_of(&server);
    let target = client.path("out.img");
    let out = client.run(&[
        "image",
        "export",
        "disk",
        target.to_str().unwrap(),
        "--from",
        &s.url,
        "--threads",
        "1",
    ]);
    common::assert_corrupt_refused(&out, &id.to_hex(), &target, offset..offset + len);
}

#[test]
fn unreachable_server_and_unknown_image_are_clear_errors() {
    let client = Lab::new();
    // a port nothing listens on: bind one, then free it
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let export_from = |token: Option<&str>| {
        let mut c = client.cmd();
        if let Some(t) = token {
            c.env("BOOTCAST_TOKEN", t);
        }
        c.args(["image", "export", "disk"])
            .arg(client.path("o"))
            .args(["--from", &format!("http://127.0.0.1:{port}")])
            .output()
            .unwrap()
    };
    let out = export_from(Some("some-token"));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("bootcast serve"), "{}", stderr(&out));
    // no token at all: the error says where to get one
    let out = export_from(None);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("images are private"),
        "{}",
        stderr(&out)
    );

    let server = Lab::new();
    server.add("disk", &server.file("d.img", &disk_like(1 << 20, 15)));
    let s = serve(&server);
    let client = Lab::client_of(&server);
    let out = client.run(&[
        "image",
        "export",
        "other",
        client.path("o").to_str().unwrap(),
        "--from",
        &s.url,
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no image named"), "{}", stderr(&out));
}

#[test]
fn corrupt_chunk_during_in_place_reimage_leaves_the_old_content() {
    let server = Lab::new();
    let v1 = disk_like(4 << 20, 16);
    let mut v2 = v1.clone();
    v2[2 << 20..(2 << 20) + 3000].fill(0x77);
    server.add("disk", &server.file("v1.img", &v1));
    let b = server.add("disk", &server.file("v2.img", &v2));
    let spec = format!("disk@{}", b["version"].as_str().unwrap());
    // A chunk of v2 that the disk (holding v1) lacks: the one the change falls in.
    let m2 = manifest_of(&server, &spec);
    let (extent, id, _) = m2
        .chunks()
        .find(|(e, _, _)| e.offset <= 2 << 20 && 2 << 20 < e.offset + e.len)
        .unwrap();
    let (offset, len) = (extent.offset as usize, extent.len as usize);
    let path = Store::open(&server.data()).unwrap().chunk_path(&id);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x80;
    std::fs::write(&path, bytes).unwrap();

    let s = serve(&server);
    let client = Lab::client_of(&server);
    let target = client.file("disk.img", &v1);
    let t = target.to_str().unwrap();
    let out = client.run(&["image", "export", &spec, t, "--seed", t, "--from", &s.url]);
    assert!(!out.status.success(), "export of a corrupt chunk must fail");
    assert!(stderr(&out).contains(&id.to_hex()), "{}", stderr(&out));
    let disk = std::fs::read(&target).unwrap();
    assert_eq!(
        disk[offset..offset + len],
        v1[offset..offset + len],
        "the corrupt chunk's range must keep the disk's old bytes"
    );
}
