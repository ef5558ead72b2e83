//! Mixed releases: a relay of the previous release (relay protocol 1; its messages are frozen
//! in tests/fixtures/relay_protocol_1.rs, copied from the release that spoke it) keeps working
//! against this central server: heartbeat, the push order it reads, the manifest and chunks it
//! fetches with its token, its progress reported done. A relay two protocols older, and one
//! newer than the server, are refused with a message that names what to upgrade; so is the
//! hello of a boot environment of another agent protocol (the previous release's, as its agent
//! sent it, names the rebuild). A boot environment built by the previous release is not handed
//! out: the boot script says to rebuild it, no credential is issued, the task waits.

mod common;

#[path = "fixtures/relay_protocol_1.rs"]
#[allow(dead_code)]
mod v1;

use common::{disk_like, site, InProcess, Lab};

fn heartbeat(url: &str, token: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
    let (code, _, body) = common::request(
        "POST",
        &format!("{url}/api/v1/relay/heartbeat"),
        &[
            ("authorization", &format!("Bearer {token}")),
            ("content-type", "application/json"),
        ],
        Some(body),
    );
    (code, body)
}

#[test]
fn a_relay_of_the_previous_release_is_served_and_older_or_newer_ones_are_refused() {
    assert_eq!(
        v1::PROTOCOL + 1,
        bootcast::proto::relay::PROTOCOL,
        "the fixture is the protocol before this one"
    );
    let lab = Lab::new();
    let a = lab.add("win11", &lab.file("v.img", &disk_like(2 << 20, 81)));
    let version = a["version"].as_str().unwrap().to_string();
    let token = site(&lab, "s1", &[]);
    let c = InProcess::start(&lab);
    let push = lab.json(&["push", "create", "--image", "win11", "--sites", "s1"])["push"]["id"]
        .as_i64()
        .unwrap();

    // the old relay's first heartbeat, as it serialised it; the reply read with its types
    let mut hb = v1::Heartbeat {
        protocol: v1::PROTOCOL,
        site: "s1".into(),
        url: "http://10.99.3.2:8080".into(),
        version: "previous".into(),
        cache_bytes: 0,
        quota_bytes: None,
        complete: vec![],
        pushes: vec![],
    };
    let (code, body) = heartbeat(&c.url, &token, serde_json::to_vec(&hb).unwrap());
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let reply: v1::HeartbeatReply =
        serde_json::from_slice(&body).expect("a protocol-1 relay reads the reply");
    assert_eq!(reply.pushes.len(), 1, "{reply:?}");
    assert_eq!(reply.pushes[0].id, push);
    assert_eq!(reply.pushes[0].versions[0].version, version);

    // it fetches the order's manifest and chunks as it did, its token in a header
    let relay_headers = [
        (v1::RELAY_TOKEN_HEADER, token.as_str()),
        (v1::RELAY_URL_HEADER, "http://10.99.3.2:8080"),
    ];
    let (code, _, manifest) = common::request(
        "GET",
        &format!("{}/api/v1/images/win11/{version}/manifest", c.url),
        &relay_headers,
        None,
    );
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&manifest));
    let (m, _) = bootcast::store::Manifest::decode(&manifest).expect("the manifest decodes");
    let first = m.chunks().next().unwrap().1;
    let (code, _, chunk) = common::request(
        "GET",
        &format!("{}/chunks/{first}", c.url),
        &relay_headers,
        None,
    );
    assert_eq!(code, 200);
    assert!(!chunk.is_empty());

    // its progress: the version complete, the push done
    hb.complete = vec![v1::VersionRef {
        image: "win11".into(),
        version: version.clone(),
    }];
    hb.pushes = vec![v1::PushProgress {
        push,
        state: v1::PushState::Done,
        bytes_done: 1,
        bytes_total: 1,
        fetched: 1,
        rate: 0,
        detail: None,
    }];
    let (code, body) = heartbeat(&c.url, &token, serde_json::to_vec(&hb).unwrap());
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(common::push_row(&lab, push, "s1")["state"], "done");

    // two protocols older (a relay from before the number sends none): refused, naming the
    // upgrade; nothing recorded
    let mut old = serde_json::to_value(&hb).unwrap();
    old.as_object_mut().unwrap().remove("protocol");
    old["url"] = "http://10.99.3.9:8080".into();
    let (code, body) = heartbeat(&c.url, &token, serde_json::to_vec(&old).unwrap());
    let text = String::from_utf8_lossy(&body);
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("upgrade the relay"), "{text}");
    let sites = lab.json(&["site", "list"]);
    assert!(!sites.to_string().contains("10.99.3.9"), "{sites}");

    // newer than this server: refused, naming the server
    let mut newer = serde_json::to_value(&hb).unwrap();
    newer["protocol"] = (bootcast::proto::relay::PROTOCOL + 1).into();
    let (code, body) = heartbeat(&c.url, &token, serde_json::to_vec(&newer).unwrap());
    let text = String::from_utf8_lossy(&body);
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("upgrade the server"), "{text}");
}

#[test]
fn a_boot_environment_of_another_agent_protocol_is_refused_naming_the_fix() {
    let lab = Lab::new();
    let c = InProcess::start(&lab);
    let hello = |body: &str| {
        let (code, _, out) = common::request(
            "POST",
            &format!("{}/api/v1/agent/hello", c.url),
            &[("content-type", "application/json")],
            Some(body.as_bytes().to_vec()),
        );
        (code, String::from_utf8_lossy(&out).into_owned())
    };
    // the previous release's agent (agent protocol 0): its hello carried the boot's nonce
    let (code, text) = hello(
        r#"{"mac":"52:54:00:33:00:01","arch":"x86_64","firmware":"uefi","boot_time":1,"task":4,"nonce":"00112233445566778899aabbccddeeff"}"#,
    );
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("bootcast bootenv build"), "{text}");
    // a newer agent than this server
    let (code, text) = hello(&format!(
        r#"{{"protocol":{},"mac":"52:54:00:33:00:01","arch":"x86_64","firmware":"uefi","boot_time":1}}"#,
        bootcast::proto::agent::AGENT_PROTOCOL + 1
    ));
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("upgrade the server"), "{text}");
    // nothing was recorded of either
    let hosts = lab.json(&["host", "list"]);
    assert!(!hosts.to_string().contains("52:54:00:33:00:01"), "{hosts}");
}

/// The previous release's boot environment (its `bootenv.json` has no agent protocol: its agent
/// speaks protocol 0, refused at hello since boot credentials): the server does not boot PCs
/// into it. A registration or a task gets a script that names the rebuild, with no credential,
/// and the task stays pending; `bootenv show` and the server's banner say so. Rebuilt, the
/// same PC gets the boot environment.
#[test]
fn a_boot_environment_of_the_previous_release_is_not_handed_out() {
    const MAC: &str = "52:54:00:33:00:02";
    let lab = Lab::new();
    common::fake_bootenv(&lab);
    let info = lab.data().join("bootenv/bootenv.json");
    let mut old: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&info).unwrap()).unwrap();
    old.as_object_mut().unwrap().remove("agent_protocol");
    old["bootcast_version"] = "previous".into();
    std::fs::write(&info, serde_json::to_vec(&old).unwrap()).unwrap();
    let shown = lab.run(&["bootenv", "show"]);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.contains("NOT USABLE"), "{text}");
    assert!(text.contains("bootcast bootenv build"), "{text}");
    let c = common::Served::start(lab.cmd(), &["--http", "127.0.0.1:0", "--tftp", "off"]);
    assert!(
        c.log_text().contains("agent protocol 0"),
        "the banner names the stale boot environment: {}",
        c.log_text()
    );
    let script = common::boot_script(&c, MAC);
    assert!(script.contains("bootcast bootenv build"), "{script}");
    assert!(!script.contains("bootcast.credential"), "{script}");
    // a task for it (the host is known from that boot) waits, pending, rather than booting an
    // agent that cannot say hello
    let disk = lab.add("disk", &lab.file("d.img", &disk_like(1 << 20, 82)));
    assert!(disk["version"].is_string());
    lab.json(&["task", "reimage", "--host", MAC, "--image", "disk"]);
    let script = common::boot_script(&c, MAC);
    assert!(!script.contains("bootcast.credential"), "{script}");
    let t = lab.json(&["task", "list", "--host", MAC]);
    assert_eq!(t["tasks"][0]["state"], "pending", "{t}");
    // rebuilt (this release's record): handed out again
    common::fake_bootenv(&lab);
    let script = common::boot_script(&c, MAC);
    assert!(script.contains("bootcast.credential="), "{script}");
}
