//! Egress: a sandbox with `--network egress` reaches the outside world —
//! here a network namespace the test made, on documentation and private
//! ranges — and never the host it runs on, other sandboxes, link-local
//! addresses or the controllers; its connections and bandwidth are
//! bounded per sandbox; a worker killed with SIGKILL leaves nothing that
//! its next start does not remove. No traffic leaves the machine: every
//! address used is on the test's own veth or a sandbox's.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use nubo_test_support::{wait_for, RemoteNet};
use serde_json::{json, Value};

use crate::support::{probe, Platform};

fn net(p: &Platform, f: &str, ev: Value) -> Value {
    p.result(f, &ev.to_string())
}

/// The worker's egress bridge, from its start-up line.
fn bridge(p: &Platform) -> String {
    let logs = p.logs();
    let at = logs
        .find("egress: bridge ")
        .unwrap_or_else(|| panic!("no egress line in nubo up's log:\n{logs}"));
    logs[at + "egress: bridge ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn links(prefix: &str) -> Vec<(String, String)> {
    std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(prefix))
        .map(|n| {
            let idx = std::fs::read_to_string(format!("/sys/class/net/{n}/ifindex"))
                .unwrap_or_default()
                .trim()
                .to_string();
            (n, idx)
        })
        .collect()
}

fn host_reaches(addr: &str, port: u16) -> bool {
    let a = SocketAddr::new(addr.parse().unwrap(), port);
    TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok()
}

/// The host's IPv4 address on the interface of its default route, read
/// from the kernel (nothing is sent).
fn primary_address() -> Option<String> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    let dev = routes.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 7 && f[1] == "00000000" && f[7] == "00000000").then(|| f[0].to_string())
    })?;
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", &dev])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let at = text.find("inet ")?;
    Some(text[at + 5..].split('/').next()?.to_string())
}

fn api_port(p: &Platform) -> u16 {
    p.endpoint.rsplit(':').next().unwrap().parse().unwrap()
}

fn assert_refused(r: &Value, what: &str) {
    assert_eq!(r["ok"], false, "{what} must be unreachable: {r}");
}

/// nftables, the default lists: the remote's public address is reached;
/// the host's loopback, the host's own address on the remote link, the
/// controller's API port, a link-local and a private address of the
/// remote, and another sandbox are not; the resolver given by
/// --egress-dns answers on 53 although private; inbound connections to a
/// sandbox fail; a function without egress reaches nothing; one sandbox's
/// connection limit and bandwidth do not touch another's.
#[test]
#[ignore = "needs root"]
fn egress_reaches_the_outside_never_the_host() {
    let remote = RemoteNet::new("a", &["198.51.100.0/24", "10.99.1.0/24", "169.254.77.0/24"]);
    for a in ["198.51.100.2", "10.99.1.2", "169.254.77.2"] {
        assert!(host_reaches(a, 8080), "the test's remote {a} is up");
    }
    let lo = TcpListener::bind("127.0.0.1:0").unwrap();
    let lo_port = lo.local_addr().unwrap().port();
    let any = TcpListener::bind("0.0.0.0:0").unwrap();
    let any_port = any.local_addr().unwrap().port();

    let p = Platform::start_with(&[
        ("NUBO_EGRESS_FIREWALL", "nftables"),
        ("NUBO_EGRESS_DNS", "10.99.1.2"),
        ("NUBO_EGRESS_MAX_CONNECTIONS", "20"),
        ("NUBO_EGRESS_RATE_MBIT", "40"),
    ]);
    let br = bridge(&p);
    let egress = ["--network", "egress", "--timeout", "30"];
    probe(&p, "eg", "net", &egress);
    probe(&p, "eg2", "net", &egress);
    probe(&p, "none", "net", &["--timeout", "30"]);
    probe(&p, "bw1", "net", &egress);
    probe(&p, "bw2", "net", &egress);

    let api = api_port(&p);
    // The host's address on its default route (this machine's own).
    let primary = primary_address().unwrap_or_else(|| "198.51.100.1".into());
    let r = net(
        &p,
        "eg",
        json!({
            "connect": [
                [primary, any_port],
                ["198.51.100.2", 8080],
                ["127.0.0.1", lo_port],
                ["198.51.100.1", any_port],
                ["127.0.0.1", api],
                ["198.51.100.1", api],
                ["169.254.77.2", 8080],
                ["10.99.1.2", 8080],
            ],
            "udp": ["10.99.1.2", 53],
            "resolv": true,
        }),
    );
    assert_refused(&r["connect"][0], "the host's primary address");
    let c = &r["connect"].as_array().unwrap()[1..];
    assert_eq!(c[0]["ok"], true, "the remote is reached: {r}");
    assert_eq!(c[0]["read"], "remote\n", "{r}");
    assert_refused(&c[1], "a server on the host's loopback");
    assert_refused(&c[2], "the host's own address");
    assert_refused(&c[3], "the controller's API port");
    assert_refused(&c[4], "the controller's port on the host's address");
    assert_refused(&c[5], "a link-local address");
    assert_refused(&c[6], "a private address (not in egress_allow)");
    assert_eq!(r["udp"]["ok"], true, "the resolver answers on 53: {r}");
    assert!(
        r["resolv"]
            .as_str()
            .unwrap()
            .contains("nameserver 10.99.1.2"),
        "{r}"
    );
    let mine: Ipv4Addr = r["address"].as_str().unwrap().parse().unwrap();

    // Another sandbox: its listener is real (it reaches itself), yet
    // neither the first sandbox nor the host gets in.
    let r2 = net(&p, "eg2", json!({"listen": 9100}));
    let theirs = r2["address"].as_str().unwrap().to_string();
    assert_ne!(theirs, mine.to_string());
    let r2 = net(&p, "eg2", json!({"connect": [[theirs, 9100]]}));
    assert_eq!(r2["connect"][0]["read"], "sandbox\n", "{r2}");
    let r = net(&p, "eg", json!({"connect": [[theirs, 9100]]}));
    assert_refused(&r["connect"][0], "another sandbox");
    assert!(
        !host_reaches(&theirs, 9100),
        "inbound connections to a sandbox must fail"
    );

    // Without egress: nothing, not even the remote.
    let r = net(&p, "none", json!({"connect": [["198.51.100.2", 8080]]}));
    assert_refused(&r["connect"][0], "anything without egress");
    assert_eq!(r["address"], Value::Null, "{r}");

    // Bandwidth: 40 Mbit/s (5 MB/s) each, both downloading at once.
    let limit = 5e6;
    // Two fresh sandboxes (see the closing note of issue 11: under the
    // full suite, `eg`'s connect after its refused attempts timed out
    // twice; not explained yet). The second starts a second later, so
    // both run at once for 4 s
    // (connects made while the other floods the shared link can lose a
    // SYN; see the closing note of issue 11).
    let rates: Vec<f64> = std::thread::scope(|s| {
        let hs: Vec<_> = [("bw1", 0u64, 6u64), ("bw2", 1, 4)]
            .into_iter()
            .map(|(f, delay, secs)| {
                let p = &p;
                s.spawn(move || {
                    std::thread::sleep(Duration::from_secs(delay));
                    net(p, f, json!({"download": ["198.51.100.2", 8081, secs]}))["bytes_per_s"]
                        .as_f64()
                        .unwrap()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &rates {
        assert!(
            *r < 2.0 * limit && *r > 0.2 * limit,
            "each sandbox near its 5 MB/s, not beyond: {rates:?}"
        );
    }

    // The connection limit (20) stops this sandbox, not the other.
    let r = net(&p, "bw1", json!({"hold": ["198.51.100.2", 8082, 30]}));
    let held = r["held"].as_u64().unwrap();
    assert!(
        (15..=20).contains(&held),
        "at most 20 connections, then refused: {r}"
    );
    assert!(r["hold_error"].is_string(), "{r}");
    let r2 = net(&p, "bw2", json!({"connect": [["198.51.100.2", 8080]]}));
    assert_eq!(
        r2["connect"][0]["ok"], true,
        "the other sandbox still connects: {r2}"
    );

    // A graceful stop removes the bridge and the rules.
    let veths = br.replacen("nb", "nv", 1);
    let table = format!("nubo_{}", &br[2..]);
    drop(p);
    assert!(links(&br).is_empty(), "bridge {br} left");
    assert!(links(&veths).is_empty(), "veths left: {:?}", links(&veths));
    let st = Command::new("nft")
        .args(["list", "table", "inet", &table])
        .output()
        .unwrap();
    assert!(!st.status.success(), "table {table} left");
    drop(remote);
}

/// iptables, with lists: a private range in egress_allow is reached, a
/// public one in egress_deny is not, the rest of the defaults hold; the
/// connection limit holds under iptables too; shutdown removes the chains.
#[test]
#[ignore = "needs root"]
fn egress_lists_under_iptables() {
    let _remote = RemoteNet::new(
        "b",
        &[
            "203.0.113.0/25",
            "203.0.113.128/25",
            "10.99.2.0/24",
            "169.254.78.0/24",
        ],
    );
    for a in ["203.0.113.2", "203.0.113.130", "10.99.2.2", "169.254.78.2"] {
        assert!(host_reaches(a, 8080), "the test's remote {a} is up");
    }
    let any = TcpListener::bind("0.0.0.0:0").unwrap();
    let any_port = any.local_addr().unwrap().port();
    let p = Platform::start_with(&[
        ("NUBO_EGRESS_FIREWALL", "iptables"),
        ("NUBO_EGRESS_ALLOW", "10.99.2.0/24"),
        ("NUBO_EGRESS_DENY", "203.0.113.128/25"),
        ("NUBO_EGRESS_MAX_CONNECTIONS", "10"),
    ]);
    let br = bridge(&p);
    let tag = br[2..].to_string();
    probe(&p, "eg", "net", &["--network", "egress", "--timeout", "30"]);
    let api = api_port(&p);
    let r = net(
        &p,
        "eg",
        json!({"connect": [
            ["203.0.113.2", 8080],
            ["10.99.2.2", 8080],
            ["203.0.113.130", 8080],
            ["169.254.78.2", 8080],
            ["127.0.0.1", api],
            ["203.0.113.1", any_port],
        ]}),
    );
    let c = r["connect"].as_array().unwrap();
    assert_eq!(c[0]["read"], "remote\n", "a public address: {r}");
    assert_eq!(
        c[1]["read"], "remote\n",
        "a private range in egress_allow: {r}"
    );
    assert_refused(&c[2], "a range in egress_deny");
    assert_refused(&c[3], "a link-local address");
    assert_refused(&c[4], "the controller's API port");
    assert_refused(&c[5], "the host's own address");
    let r = net(&p, "eg", json!({"hold": ["203.0.113.2", 8082, 20]}));
    let held = r["held"].as_u64().unwrap();
    assert!((5..=10).contains(&held), "at most 10 connections: {r}");

    let rules = || {
        let out = Command::new("sh")
            .args(["-c", "iptables -w -S; iptables -w -t nat -S"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).matches(&tag).count()
    };
    assert!(rules() > 0, "the worker's chains are installed");
    drop(p);
    assert_eq!(rules(), 0, "shutdown removes every rule of the worker");
    assert!(links(&br).is_empty(), "bridge {br} left");
}

/// SIGKILL with 20 egress sandboxes up, then a restart: every veth,
/// bridge port and namespace of the old sandboxes is gone, and the rules
/// are there once, not twice.
#[test]
#[ignore = "needs root"]
fn egress_leftovers_after_a_worker_crash() {
    let mut p = Platform::start();
    let br = bridge(&p);
    let veths = br.replacen("nb", "nv", 1);
    let table = format!("nubo_{}", &br[2..]);
    probe(
        &p,
        "slow",
        "sleep",
        &["--network", "egress", "--timeout", "30"],
    );
    std::thread::scope(|s| {
        for _ in 0..20 {
            let p = &p;
            s.spawn(move || p.result("slow", r#"{"seconds": 2}"#));
        }
    });
    let before = links(&veths);
    assert!(
        before.len() >= 20,
        "20 busy sandboxes, each with a veth: {before:?}"
    );
    let ports = |b: &str| {
        std::fs::read_dir(format!("/sys/class/net/{b}/brif"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!(ports(&br), before.len());
    let rules = || {
        let out = Command::new("nft")
            .args(["list", "table", "inet", &table])
            .output()
            .unwrap();
        let t = String::from_utf8_lossy(&out.stdout).into_owned();
        (
            t.matches("masquerade").count(),
            t.matches("jump refuse").count(),
        )
    };
    let rules_before = rules();
    assert_eq!(rules_before.0, 1);

    p.crash_and_restart();
    assert_eq!(bridge(&p), br, "same worker, same bridge");
    // The restarted worker prewarms its own egress sandboxes (two): only
    // those have veths.
    let after = wait_for("only the new worker's veths", 30, || {
        let l = links(&veths);
        (l.len() == 2).then_some(l)
    });
    for old in &before {
        assert!(
            !after.contains(old),
            "veth {old:?} of a killed sandbox survived"
        );
    }
    assert_eq!(ports(&br), 2, "bridge ports: the new sandboxes only");
    assert_eq!(rules(), rules_before, "the rules once, not twice");
    // The sandbox works after the restart.
    assert_eq!(p.result("slow", r#"{"seconds": 0.01}"#)["slept"], 0.01);
}
