//! `bootcast serve` over HTTP, driven through its real endpoints: boot scripts per host state,
//! the agent's hello, the token-protected staff API, start-up errors and graceful shutdown.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{credential_of, fake_bootenv, http, request, Lab, Served};

fn serve(lab: &Lab, extra: &[&str]) -> Served {
    let mut args = vec!["--http", "127.0.0.1:0", "--tftp", "off"];
    args.extend_from_slice(extra);
    Served::start(lab.cmd(), &args)
}

const MAC: &str = "52:54:00:12:34:56";

#[test]
fn host_lifecycle_unknown_then_registered_then_task() {
    let lab = Lab::new();
    fake_bootenv(&lab);
    let mut s = serve(&lab, &["--advertise", "10.99.0.1"]);
    let token = s.token.clone().expect("first start prints the token");

    // the chain script names the advertised address
    let (code, chain) = http("GET", &format!("{}/boot.ipxe", s.url), None, None);
    assert_eq!(code, 200);
    assert!(chain.contains("chain http://10.99.0.1:"), "{chain}");

    // unknown host: registered into the boot environment, MAC in any of iPXE's forms
    let (code, script) = http(
        "GET",
        &format!(
            "{}/boot/52-54-00-12-34-56.ipxe?platform=pcbios&buildarch=i386",
            s.url
        ),
        None,
        None,
    );
    assert_eq!(code, 200);
    assert!(script.starts_with("#!ipxe\n"));
    assert!(script.contains("registering"), "{script}");
    assert!(script.contains("/bootenv/vmlinuz initrd=initrd.img"));
    assert!(!script.contains("bootcast.task="));

    let credential = credential_of(&script);

    // the boot environment files are served, with ranges; only those two files
    let (code, body) = http("GET", &format!("{}/bootenv/vmlinuz", s.url), None, None);
    assert_eq!((code, body.as_str()), (200, "kernel bytes"));
    let (code, _, body) = request(
        "GET",
        &format!("{}/bootenv/vmlinuz", s.url),
        &[("range", "bytes=2-5")],
        None,
    );
    assert_eq!((code, &body[..]), (206, &b"rnel"[..]));
    for bad in [
        "bootenv.json",
        "cache",
        "..%2Fbootcast.db",
        "..%2F..%2Fetc%2Fpasswd",
    ] {
        let (code, _) = http("GET", &format!("{}/bootenv/{bad}", s.url), None, None);
        assert_eq!(code, 404, "{bad}");
    }

    // a hello without the credential of this boot is refused, and registers nothing
    let hello = |mac: &str, credential: Option<&str>, task: Option<i64>| {
        let mut v = serde_json::json!({
            "protocol": bootcast::proto::agent::AGENT_PROTOCOL, "mac": mac, "arch": "x86_64", "firmware": "bios", "boot_time": 1_700_000_000u64
        });
        if let Some(n) = credential {
            v["credential"] = n.into();
        }
        if let Some(t) = task {
            v["task"] = t.into();
        }
        http(
            "POST",
            &format!("{}/api/v1/agent/hello", s.url),
            None,
            Some(&v.to_string()),
        )
    };
    let (code, body) = hello(MAC, None, None);
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("network-boot the machine through bootcast again"),
        "{body}"
    );
    let (code, _) = hello(MAC, Some("00112233445566778899aabbccddeeff"), None);
    assert_eq!(code, 403);

    // the agent says hello with it
    let (code, reply) = hello(MAC, Some(&credential), None);
    assert_eq!(code, 200, "{reply}");
    let answer: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(
        (&answer["action"], &answer["mac"]),
        (&"reboot".into(), &MAC.into()),
        "{reply}"
    );
    let session = answer["session"].as_str().unwrap().to_string();
    assert!(session.len() == 32 && session != credential, "{reply}");
    // a retried hello (its answer was lost) gets the same session
    let (code, again) = hello(MAC, Some(&credential), None);
    assert_eq!(code, 200, "{again}");
    assert_eq!(common::session_of(&again), session);

    // the staff API shows the registered host; iPXE's buildarch (i386) did not stick
    let (code, hosts) = http(
        "GET",
        &format!("{}/api/v1/hosts", s.url),
        Some(&token),
        None,
    );
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&hosts).unwrap();
    let h = &v["hosts"][0];
    assert_eq!(h["mac"], MAC);
    assert_eq!(h["arch"], "x86_64");
    assert_eq!(h["firmware"], "bios");
    assert_eq!(h["boots"], 1);
    assert!(h["registered_at"].is_string());

    // registered, nothing to do: local disk, BIOS and UEFI flavours
    let (_, script) = http(
        "GET",
        &format!("{}/boot/{MAC}.ipxe?platform=pcbios&buildarch=i386", s.url),
        None,
        None,
    );
    assert!(
        script.contains("sanboot --no-describe --drive 0x80"),
        "{script}"
    );
    let (_, script) = http(
        "GET",
        &format!("{}/boot/{MAC}.ipxe?platform=efi", s.url),
        None,
        None,
    );
    assert!(script.contains("\nexit 1"), "{script}");
    assert!(!script.contains("sanboot"));

    // a pending task: the boot environment with the task id, and the task moves to booting
    let db = bootcast::db::Db::open(&lab.data().join("bootcast.db")).unwrap();
    let mac: bootcast::mac::Mac = MAC.parse().unwrap();
    let task =
        bootcast::db::tasks::create(&db.lock(), mac, bootcast::db::TaskKind::Reimage, 1).unwrap();
    let (_, script) = http(
        "GET",
        &format!("{}/boot/{MAC}.ipxe?platform=efi", s.url),
        None,
        None,
    );
    assert!(
        script.contains(&format!("bootcast.task={}", task.id)),
        "{script}"
    );
    let task_credential = credential_of(&script);
    assert_ne!(
        task_credential, credential,
        "every boot gets a new credential"
    );
    let state = |id| bootcast::db::tasks::get(&db.lock(), id).unwrap().unwrap();
    assert_eq!(state(task.id).state, bootcast::db::TaskState::Booting);

    // another host, booted properly (its own credential), naming that task changes nothing of it
    let other = "52:54:00:00:00:99";
    let (_, other_script) = http("GET", &format!("{}/boot/{other}.ipxe", s.url), None, None);
    let (code, _) = hello(other, Some(&credential_of(&other_script)), Some(task.id));
    assert_eq!(code, 200);
    assert_eq!(state(task.id).state, bootcast::db::TaskState::Booting);
    // nor with the victim's credentials, old or current
    let (code, _) = hello(other, Some(&credential), Some(task.id));
    assert_eq!(code, 403);
    let (code, _) = hello(other, Some(&task_credential), Some(task.id));
    assert_eq!(code, 403);
    // the stale credential of the first boot no longer works for the host itself either
    let (code, _) = hello(MAC, Some(&credential), Some(task.id));
    assert_eq!(code, 403);
    assert_eq!(state(task.id).state, bootcast::db::TaskState::Booting);

    // one host in detail: recent boots, the open task
    let (code, one) = http(
        "GET",
        &format!("{}/api/v1/hosts/{MAC}", s.url),
        Some(&token),
        None,
    );
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&one).unwrap();
    assert_eq!(v["task"]["id"], task.id);
    // newest first: efi, efi, pcbios+i386, the retried hello, the hello, the first script
    assert_eq!(v["boots"].as_array().unwrap().len(), 6);
    assert_eq!(v["boots"][2]["arch"], "i386");

    // the host's own hello closes the task with a reason (this agent runs no tasks yet), so
    // the next boot goes to the local disk instead of looping
    let (code, _) = hello(MAC, Some(&task_credential), Some(task.id));
    assert_eq!(code, 200);
    let t = state(task.id);
    assert_eq!(t.state, bootcast::db::TaskState::Failed);
    assert!(t.detail.unwrap().contains("cannot run reimage tasks"));
    let (_, script) = http(
        "GET",
        &format!("{}/boot/{MAC}.ipxe?platform=efi", s.url),
        None,
        None,
    );
    assert!(script.contains("\nexit 1"), "{script}");

    // SIGTERM: clean exit
    let status = s.stop();
    assert!(status.success(), "{status}: {}", s.log_text());
    assert!(s.log_text().contains("SIGTERM: shutting down"));
}

#[test]
fn staff_api_needs_the_token_agent_api_checks_its_input() {
    let lab = Lab::new();
    let s = serve(&lab, &[]);
    let token = s.token.clone().unwrap();
    let path = lab.data().join("api-token");
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // token show prints the same token again
    let out = lab.run(&["token", "show"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), token);

    let hosts = format!("{}/api/v1/hosts", s.url);
    let (code, body) = http("GET", &hosts, None, None);
    assert_eq!(code, 401);
    assert!(body.contains("Bearer"));
    let (code, _) = http("GET", &hosts, Some("0000"), None);
    assert_eq!(code, 401);
    let (code, body) = http("GET", &hosts, Some(&token), None);
    assert_eq!(
        (code, body.as_str()),
        (200, r#"{"hosts":[],"next":null,"total":0}"#)
    );

    let hello = |body: &str| {
        http(
            "POST",
            &format!("{}/api/v1/agent/hello", s.url),
            None,
            Some(body),
        )
    };
    assert_eq!(
        hello(r#"{"protocol":1,"mac":"nope","arch":"x86_64","firmware":"bios","boot_time":1}"#).0,
        400
    );
    assert_eq!(
        hello(r#"{"protocol":1,"mac":"52:54:00:00:00:01","arch":"x86 64; rm","firmware":"bios","boot_time":1}"#)
            .0,
        400
    );
    assert_eq!(
        hello(r#"{"protocol":1,"mac":"52:54:00:00:00:01","arch":"x86_64","firmware":"coreboot","boot_time":1}"#)
            .0,
        422
    );
    assert_eq!(hello("not json").0, 400);
    let (code, body) = http(
        "GET",
        &format!("{}/boot/../../etc/passwd", s.url),
        None,
        None,
    );
    assert_ne!(code, 200, "{body}");
    let (code, _) = http("GET", &format!("{}/boot/zz.ipxe", s.url), None, None);
    assert_eq!(code, 404);
    // nothing was recorded by the refused requests
    let (_, body) = http("GET", &hosts, Some(&token), None);
    assert_eq!(body, r#"{"hosts":[],"next":null,"total":0}"#);

    // without a boot environment an unknown host is told why, not left hanging
    let (code, script) = http("GET", &format!("{}/boot/{MAC}.ipxe", s.url), None, None);
    assert_eq!(code, 200);
    assert!(script.contains("bootcast bootenv build"), "{script}");
    // the embedded iPXE binaries over HTTP
    let (code, _) = http("GET", &format!("{}/ipxe/snponly.efi", s.url), None, None);
    assert_eq!(code, 200);

    // a second start does not print the token again
    drop(s);
    let s2 = serve(&lab, &[]);
    assert!(s2.token.is_none());
    assert!(s2.log_text().contains("`bootcast token show`"));
}

#[test]
fn startup_errors_name_the_problem_and_the_fix() {
    let lab = Lab::new();
    let out = lab.run(&[
        "serve",
        "--http",
        "8080",
        "--dhcp-mode",
        "full",
        "--advertise",
        "10.99.0.300",
        "--tftp",
        "off",
    ]);
    assert!(!out.status.success());
    let err = common::stderr(&out);
    assert!(
        err.contains("http.listen (--http) = \"8080\": write ADDRESS:PORT"),
        "{err}"
    );
    assert!(err.contains("--dhcp-interface"), "{err}");
    assert!(err.contains("10.99.0.300"), "{err}");

    // a DHCP interface that does not exist
    let out = lab.run(&["serve", "--dhcp-interface", "nosuch0", "--tftp", "off"]);
    assert!(!out.status.success());
    assert!(common::stderr(&out).contains("\"nosuch0\" does not exist"));

    // a port in use
    let s = serve(&lab, &[]);
    let addr = s.url.trim_start_matches("http://").to_string();
    let out = lab.run(&["serve", "--http", &addr, "--tftp", "off"]);
    assert!(!out.status.success());
    let err = common::stderr(&out);
    assert!(
        err.contains("cannot bind HTTP to") && err.contains("another program"),
        "{err}"
    );

    // a bad config file is named with its line
    let cfg = lab.file("bad.toml", b"[http]\nlisten = 8080\n");
    let out = lab.run(&["serve", "--config", cfg.to_str().unwrap()]);
    let err = common::stderr(&out);
    assert!(err.contains("bad.toml") && err.contains("line 2"), "{err}");
}
