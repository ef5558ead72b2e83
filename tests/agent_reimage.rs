//! The agent's reimage without a VM: `bootcast agent boot` with a fake /proc and /sys whose
//! kernel command line names a file as the disk (`bootcast.disk=`), against a real
//! `bootcast serve`: task created by the CLI, image written through the verified path, progress
//! and done reported, and a second version moves only what changed.

mod common;

use std::path::Path;

use serde_json::{json, Value};

use common::{disk_like, fake_bootenv, http, nonce_of, sha256, Lab, Served};

const MAC: &str = "52:54:00:77:00:01";

fn boot_script(s: &Served) -> String {
    let (code, script) = http(
        "GET",
        &format!("{}/boot/{MAC}.ipxe?platform=pcbios", s.url),
        None,
        None,
    );
    assert_eq!(code, 200, "{script}");
    script
}

/// The host's first network boot and the agent's hello: `MAC` is registered.
fn register(s: &Served) {
    let script = boot_script(s);
    let hello = json!({"mac": MAC, "arch": "x86_64", "firmware": "bios", "boot_time": 1, "nonce": nonce_of(&script)});
    let (code, body) = http(
        "POST",
        &format!("{}/api/v1/agent/hello", s.url),
        None,
        Some(&hello.to_string()),
    );
    assert_eq!(code, 200, "{body}");
}

/// The `bootcast.task=` of a boot script.
fn task_of(script: &str) -> String {
    script
        .split_whitespace()
        .find_map(|w| w.strip_prefix("bootcast.task="))
        .unwrap_or_else(|| panic!("no task in {script}"))
        .to_string()
}

/// A fake root for `agent boot --root`: the kernel command line the boot script would give.
fn fake_root(dir: &Path, cmdline: &str) {
    std::fs::create_dir_all(dir.join("proc")).unwrap();
    std::fs::create_dir_all(dir.join("sys/class/net/eth0")).unwrap();
    std::fs::create_dir_all(dir.join("sys/block")).unwrap();
    std::fs::write(dir.join("proc/cmdline"), cmdline).unwrap();
    std::fs::write(dir.join("proc/stat"), "cpu 1\nbtime 1763900000\n").unwrap();
    std::fs::write(dir.join("proc/mounts"), "").unwrap();
    std::fs::write(dir.join("sys/class/net/eth0/address"), format!("{MAC}\n")).unwrap();
}

fn metric(s: &Served, name: &str) -> u64 {
    let (_, text) = http("GET", &format!("{}/metrics", s.url), None, None);
    text.lines()
        .find_map(|l| l.strip_prefix(name).map(|v| v.trim().parse().unwrap()))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// One boot of the agent for the host's current task; returns the agent's stdout+stderr.
fn agent_boot(lab: &Lab, s: &Served, target: &Path, tag: &str) -> String {
    let script = boot_script(s);
    let task = task_of(&script);
    let root = lab.path(&format!("root-{tag}"));
    fake_root(
        &root,
        &format!(
            "console=ttyS0 bootcast.server={} bootcast.mac={MAC} bootcast.task={task} bootcast.nonce={} bootcast.disk={}",
            s.url,
            nonce_of(&script),
            target.display()
        ),
    );
    let out = std::process::Command::new(common::BIN)
        .args(["agent", "boot", "--no-act", "--tries", "2", "--root"])
        .arg(&root)
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn task_state(lab: &Lab) -> Value {
    let v = lab.json(&["task", "list", "--all", "--host", MAC]);
    v["tasks"][0].clone()
}

#[test]
fn agent_reimages_v1_then_only_what_changed_for_v2() {
    let lab = Lab::new();
    fake_bootenv(&lab);
    let v1 = disk_like(6 << 20, 11);
    let mut v2 = v1.clone();
    for (i, b) in v2[3 << 20..(3 << 20) + 200_000].iter_mut().enumerate() {
        *b = (i % 251) as u8 ^ 0x5a;
    }
    let a1 = lab.add("m", &lab.file("v1.img", &v1));
    let s = Served::start(lab.cmd(), &["--http", "127.0.0.1:0", "--tftp", "off"]);

    register(&s);

    // reimage with v1 onto an empty "disk"
    let target = lab.path("disk.raw");
    std::fs::write(&target, b"").unwrap();
    let spec = format!("m@{}", a1["version"].as_str().unwrap());
    lab.json(&["task", "reimage", "--host", MAC, "--image", &spec]);
    let log = agent_boot(&lab, &s, &target, "1");
    assert!(
        log.contains(&format!("BOOTCAST-AGENT-REIMAGE-DONE {MAC}")),
        "{log}"
    );
    assert_eq!(sha256(&std::fs::read(&target).unwrap()), sha256(&v1));
    let t = task_state(&lab);
    assert_eq!(t["state"], "done", "{t}");
    assert_eq!(t["progress"]["bytes_total"], v1.len() as u64, "{t}");

    // v2: only the changed region crosses the wire
    let a2 = lab.add("m", &lab.file("v2.img", &v2));
    let new_bytes = a2["new_bytes"].as_u64().unwrap();
    assert!(new_bytes > 0);
    let before = metric(&s, "bootcast_chunk_bytes_served_total");
    // plain NAME is the newest version, even one added within the same second as v1
    let t2 = lab.json(&["task", "reimage", "--host", MAC, "--image", "m"]);
    assert_eq!(t2["tasks"][0]["version"], a2["version"], "{t2}");
    let log = agent_boot(&lab, &s, &target, "2");
    assert!(log.contains("BOOTCAST-AGENT-REIMAGE-DONE"), "{log}");
    assert_eq!(sha256(&std::fs::read(&target).unwrap()), sha256(&v2));
    let served = metric(&s, "bootcast_chunk_bytes_served_total") - before;
    common::say(&format!(
        "agent reimage v1 -> v2: {served} bytes served for {new_bytes} new compressed bytes ({} image)",
        v2.len()
    ));
    assert!(
        served * 10 <= new_bytes * 11,
        "served {served} > 1.1 x {new_bytes}"
    );
    assert_eq!(task_state(&lab)["state"], "done");
    // the host's next boot is its local disk
    assert!(boot_script(&s).contains("sanboot"));
}

#[test]
fn a_corrupt_chunk_fails_the_task_with_its_name() {
    let lab = Lab::new();
    fake_bootenv(&lab);
    let v1 = disk_like(3 << 20, 12);
    lab.add("m", &lab.file("v1.img", &v1));
    let victim = lab.chunk_files()[0].clone();
    let id = victim.file_name().unwrap().to_string_lossy().to_string();
    let mut bytes = std::fs::read(&victim).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x40;
    std::fs::write(&victim, bytes).unwrap();
    let s = Served::start(lab.cmd(), &["--http", "127.0.0.1:0", "--tftp", "off"]);
    register(&s);
    lab.json(&["task", "reimage", "--host", MAC, "--image", "m"]);
    let target = lab.path("disk.raw");
    std::fs::write(&target, b"").unwrap();
    let log = agent_boot(&lab, &s, &target, "1");
    assert!(log.contains("BOOTCAST-AGENT-REIMAGE-FAILED"), "{log}");
    let t = task_state(&lab);
    assert_eq!(t["state"], "failed", "{t}");
    let detail = t["detail"].as_str().unwrap();
    assert!(
        detail.contains(&id) && detail.contains("corrupt"),
        "{detail}"
    );
    // nothing unverified reached the disk: every 4 KiB block is still empty or holds the
    // image's own bytes
    let disk = std::fs::read(&target).unwrap();
    let foreign = disk
        .chunks(4096)
        .zip(v1.chunks(4096))
        .filter(|(d, want)| d != want && d.iter().any(|b| *b != 0))
        .count();
    assert_eq!(
        foreign, 0,
        "{foreign} blocks hold bytes that are not the image's"
    );
}

/// A TCP relay between the agent and the server, under the test's control. It forwards
/// everything, except that after [`Relay::hold_after`] the *chunk* connections (those whose
/// first request is for a manifest or chunks, not the agent's reports) stop passing server
/// bytes once the budget is spent: the agent is then mid-restore, deterministically.
/// [`Relay::cut`] closes every connection made so far and points new ones at another
/// upstream, or refuses them (accepts and closes at once, as a host whose server is down).
struct Relay {
    port: u16,
    state: std::sync::Arc<(std::sync::Mutex<RelayState>, std::sync::Condvar)>,
}

struct RelayState {
    upstream: Option<std::net::SocketAddr>,
    /// Chunk bytes that may still pass; `None`: no limit.
    budget: Option<u64>,
    /// A chunk connection is waiting for budget.
    holding: bool,
    /// Bumped by `cut`: connections of an older generation close.
    generation: u64,
    /// Server-to-agent bytes on chunk connections, in total.
    chunk_bytes: u64,
}

impl Relay {
    fn start(upstream: std::net::SocketAddr) -> Relay {
        use std::io::{Read, Write};
        use std::net::{Shutdown, TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = std::sync::Arc::new((
            std::sync::Mutex::new(RelayState {
                upstream: Some(upstream),
                budget: None,
                holding: false,
                generation: 0,
                chunk_bytes: 0,
            }),
            std::sync::Condvar::new(),
        ));
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut client) = conn else { continue };
                let (upstream, generation) = {
                    let g = st.0.lock().unwrap();
                    (g.upstream, g.generation)
                };
                let Some(server) = upstream.and_then(|u| TcpStream::connect(u).ok()) else {
                    drop(client);
                    continue;
                };
                // the first request line says what kind of connection this is
                let mut first = vec![0u8; 64];
                let n = client.read(&mut first).unwrap_or(0);
                first.truncate(n);
                let head = String::from_utf8_lossy(&first).to_string();
                let chunky = head.contains(" /chunks/") || head.contains(" /api/v1/images/");
                let mut s1 = server.try_clone().unwrap();
                if s1.write_all(&first).is_err() {
                    continue;
                }
                let mut c1 = client.try_clone().unwrap();
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c1, &mut s1);
                    let _ = s1.shutdown(Shutdown::Write);
                });
                let st = st.clone();
                std::thread::spawn(move || {
                    let (mut server, mut client) = (server, client);
                    let mut buf = vec![0u8; 16 << 10];
                    'conn: loop {
                        let n = match server.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let mut sent = 0;
                        while sent < n {
                            let take = {
                                let (lock, cv) = &*st;
                                let mut g = lock.lock().unwrap();
                                loop {
                                    if g.generation != generation {
                                        break 'conn;
                                    }
                                    match (chunky, g.budget) {
                                        (true, Some(0)) => {
                                            g.holding = true;
                                            cv.notify_all();
                                            g = cv.wait(g).unwrap();
                                        }
                                        (true, Some(b)) => {
                                            let t = (n - sent).min(b as usize);
                                            g.budget = Some(b - t as u64);
                                            break t;
                                        }
                                        _ => break n - sent,
                                    }
                                }
                            };
                            if client.write_all(&buf[sent..sent + take]).is_err() {
                                break 'conn;
                            }
                            if chunky {
                                st.0.lock().unwrap().chunk_bytes += take as u64;
                            }
                            sent += take;
                        }
                    }
                    let _ = client.shutdown(Shutdown::Both);
                    let _ = server.shutdown(Shutdown::Both);
                });
            }
        });
        Relay { port, state }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// From now on, at most `bytes` more server bytes on chunk connections, then they wait.
    fn hold_after(&self, bytes: u64) {
        self.state.0.lock().unwrap().budget = Some(bytes);
    }

    /// Waits until a chunk connection waits for budget.
    fn wait_held(&self) {
        let (lock, cv) = &*self.state;
        let mut g = lock.lock().unwrap();
        while !g.holding {
            g = cv.wait(g).unwrap();
        }
    }

    /// Closes every connection so far; new ones go to `upstream` (refused if `None`), without
    /// a budget.
    fn cut(&self, upstream: Option<std::net::SocketAddr>) {
        let (lock, cv) = &*self.state;
        let mut g = lock.lock().unwrap();
        g.generation += 1;
        g.budget = None;
        g.holding = false;
        g.upstream = upstream;
        cv.notify_all();
    }

    fn chunk_bytes(&self) -> u64 {
        self.state.0.lock().unwrap().chunk_bytes
    }
}

/// The agent as a child process, its console lines read as they come.
struct Agent {
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    log: String,
}

impl Agent {
    /// `agent boot` for the host's current task, reaching the server at `server`.
    fn spawn(lab: &Lab, s: &Served, server: &str, target: &Path) -> Agent {
        use std::io::BufRead;
        let script = boot_script(s);
        let root = lab.path("root");
        fake_root(
            &root,
            &format!(
                "bootcast.server={server} bootcast.mac={MAC} bootcast.task={} bootcast.nonce={} bootcast.disk={}",
                task_of(&script),
                nonce_of(&script),
                target.display()
            ),
        );
        let mut child = std::process::Command::new(common::BIN)
            .args(["agent", "boot", "--no-act", "--tries", "2", "--root"])
            .arg(&root)
            .stdout(std::process::Stdio::piped()) // the agent's console lines
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        Agent {
            child,
            lines,
            log: String::new(),
        }
    }

    /// Reads console lines up to the first containing `what`; returns it.
    fn line(&mut self, what: &str) -> String {
        loop {
            let line = self
                .lines
                .next()
                .unwrap_or_else(|| panic!("agent ended before {what:?}:\n{}", self.log))
                .unwrap();
            self.log.push_str(&line);
            self.log.push('\n');
            if line.contains(what) {
                return line;
            }
        }
    }

    fn finish(mut self) -> String {
        for l in self.lines.by_ref() {
            self.log.push_str(&l.unwrap());
            self.log.push('\n');
        }
        assert!(self.child.wait().unwrap().success(), "{}", self.log);
        self.log
    }
}

/// The number after `word` in `line` (`... kept 123 in place ...`).
fn number_after(line: &str, word: &str) -> u64 {
    let mut w = line.split_whitespace();
    w.find(|x| *x == word)
        .and_then(|_| w.next())
        .and_then(|n| n.trim_start_matches('(').parse().ok())
        .unwrap_or_else(|| panic!("no number after {word:?} in {line:?}"))
}

/// Kill -9 of the server mid-restore, the server down for a while, then a new server process
/// on the same data: the agent waits, resumes, keeps every chunk it had written and verified,
/// and the disk is right.
#[test]
fn the_server_killed_mid_restore_comes_back_and_the_agent_resumes() {
    let lab = Lab::new();
    fake_bootenv(&lab);
    // incompressible, so the relay's byte budget maps onto image bytes
    let v1 = common::random_bytes(32 << 20, 13);
    let added = lab.add("m", &lab.file("v1.img", &v1));
    let compressed = added["stored_bytes"].as_u64().unwrap();
    let mut s1 = Served::start(lab.cmd(), &["--http", "127.0.0.1:0", "--tftp", "off"]);
    register(&s1);
    lab.json(&["task", "reimage", "--host", MAC, "--image", "m"]);

    let relay = Relay::start(s1.url.trim_start_matches("http://").parse().unwrap());
    // 20 MiB: more than the 4 batches (4 MiB of image each) the agent has in flight at once,
    // so at least one batch is complete, written and verified when the server dies
    relay.hold_after(20 << 20);
    let target = lab.path("disk.raw");
    std::fs::write(&target, b"").unwrap();
    let mut agent = Agent::spawn(&lab, &s1, &relay.url(), &target);
    relay.wait_held();
    let before_kill = relay.chunk_bytes();
    s1.child.kill().unwrap(); // SIGKILL
    s1.child.wait().unwrap();
    relay.cut(None);
    agent.line("server unreachable");
    // a new server process on the same data directory
    let s2 = Served::start(lab.cmd(), &["--http", "127.0.0.1:0", "--tftp", "off"]);
    relay.cut(Some(s2.url.trim_start_matches("http://").parse().unwrap()));
    let done = agent.line("BOOTCAST-AGENT-REIMAGE-DONE");
    let log = agent.finish();
    assert_eq!(
        sha256(&std::fs::read(&target).unwrap()),
        sha256(&v1),
        "{log}"
    );
    assert_eq!(task_state(&lab)["state"], "done");
    // the resumed run kept what the first one verified and fetched only the rest
    let kept = number_after(&done, "kept");
    let fetched = number_after(&done, "fetched");
    let served = metric(&s2, "bootcast_chunk_bytes_served_total");
    common::say(&format!(
        "server killed after {before_kill} of {compressed} compressed bytes: the resumed restore kept {kept} bytes in place, fetched {fetched} (the new server served {served})"
    ));
    assert!(kept > 0, "nothing kept: {done}");
    assert_eq!(kept + fetched, v1.len() as u64, "{done}");
    assert!(
        served < compressed,
        "the new server sent the whole image again"
    );
}

/// A task cancelled while its agent writes: the agent's next progress report gets 409, it
/// stops before the next batch, does not report the task done or failed, and says so.
#[test]
fn a_task_cancelled_mid_restore_stops_its_agent() {
    let lab = Lab::new();
    fake_bootenv(&lab);
    let v1 = common::random_bytes(32 << 20, 14);
    lab.add("m", &lab.file("v1.img", &v1));
    let s = Served::start(lab.cmd(), &["--http", "127.0.0.1:0", "--tftp", "off"]);
    register(&s);
    lab.json(&["task", "reimage", "--host", MAC, "--image", "m"]);
    let relay = Relay::start(s.url.trim_start_matches("http://").parse().unwrap());
    relay.hold_after(8 << 20);
    let target = lab.path("disk.raw");
    std::fs::write(&target, b"").unwrap();
    let mut agent = Agent::spawn(&lab, &s, &relay.url(), &target);
    relay.wait_held();
    let id = task_state(&lab)["id"].as_i64().unwrap().to_string();
    lab.json(&["task", "cancel", &id]);
    // progress reports pass the relay: the agent learns of the cancel while chunks are held
    agent.line("the server closed task");
    relay.cut(Some(s.url.trim_start_matches("http://").parse().unwrap()));
    agent.line(&format!("BOOTCAST-AGENT-REIMAGE-CANCELLED {MAC}"));
    let log = agent.finish();
    assert!(!log.contains("REIMAGE-DONE"), "{log}");
    let t = task_state(&lab);
    assert_eq!(t["state"], "cancelled", "{t}");
    // it stopped early: far from all of the image was fetched
    assert!(
        relay.chunk_bytes() < (24 << 20),
        "{} bytes fetched after the cancel",
        relay.chunk_bytes()
    );
}
