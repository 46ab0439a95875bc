//! Broker-to-broker security (issue #16) across real brokers (`--cluster`): the metadata
//! quorum's links authenticate with mutual TLS (the cluster's CA) and a challenge-response
//! over the inter-broker password; a node without those credentials (wrong password, a
//! certificate of another CA, no security at all) cannot join the quorum while the cluster
//! goes on working; replication and failover work on the secured cluster.

mod common;

use common::certs::{self, CertKey};
use common::cluster::{wait_metadata, Cluster, NodeArgs};
use kafka_protocol::messages::metadata_response::MetadataResponse;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);
const INTER_BROKER_USER: &str = "admin";

/// Certificates and password files made for one test (with `openssl`, as docs/operations.md
/// shows): the cluster's CA and the brokers' certificate (for 127.0.0.1, server and client
/// use), another CA and a certificate of it, the inter-broker password and a wrong one.
struct Pki {
    dir: tempfile::TempDir,
    ca: CertKey,
    broker: CertKey,
    intruder: CertKey,
}

/// Extensions of a broker certificate: it serves (listeners, quorum) and connects (quorum,
/// follower fetches) as 127.0.0.1.
const BROKER_EXT: &str = "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
                          extendedKeyUsage=serverAuth,clientAuth\n";
const PASSWORD: &str = "inter-broker-secret";

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = certs::make_ca(dir.path(), "ca");
        let broker = certs::make_signed(dir.path(), &ca, "broker", "/CN=broker", BROKER_EXT);
        let other_ca = certs::make_ca(dir.path(), "other-ca");
        let intruder =
            certs::make_signed(dir.path(), &other_ca, "intruder", "/CN=broker", BROKER_EXT);
        std::fs::write(dir.path().join("password"), format!("{PASSWORD}\n")).unwrap();
        std::fs::write(dir.path().join("wrong-password"), "guessed\n").unwrap();
        Pki {
            dir,
            ca,
            broker,
            intruder,
        }
    }

    fn s(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }

    /// The quorum security flags: this node's certificate `cert`, trusting our CA, and the
    /// inter-broker password in the file `password`.
    fn flags(&self, cert: &CertKey, password: &str) -> Vec<String> {
        vec![
            "--tls-cert-file".into(),
            cert.cert.display().to_string(),
            "--tls-key-file".into(),
            cert.key.display().to_string(),
            "--tls-client-ca-file".into(),
            self.ca.cert.display().to_string(),
            "--inter-broker-user".into(),
            INTER_BROKER_USER.into(),
            "--inter-broker-password-file".into(),
            self.s(password),
        ]
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn script() -> String {
    format!(
        "{}/../../tests/clients/cluster_security.py",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// Runs a command of tests/clients/cluster_security.py with `client_config` (librdkafka
/// properties as JSON) for every client.
fn py(client_config: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new("python3")
        .arg(script())
        .args(args)
        .env("RB_CLIENT_CONFIG", client_config)
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "{args:?}: {stdout:?}: {e}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// (leader, sorted isr) of each partition of `topic`.
fn partitions(m: &MetadataResponse, topic: &str) -> Option<Vec<(i32, Vec<i32>)>> {
    let t = m
        .topics
        .iter()
        .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic) && t.error_code == 0)?;
    let mut ps: Vec<_> = t.partitions.iter().collect();
    ps.sort_by_key(|p| p.partition_index);
    Some(
        ps.into_iter()
            .map(|p| {
                let mut isr: Vec<i32> = p.isr_nodes.iter().map(|b| b.0).collect();
                isr.sort_unstable();
                (p.leader_id.0, isr)
            })
            .collect(),
    )
}

fn wait_partitions(
    c: &Cluster,
    via: i32,
    topic: &str,
    ok: impl Fn(i32, &[i32]) -> bool,
) -> Vec<(i32, Vec<i32>)> {
    let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_metadata(&c.addr(via), Some(&[topic]), WAIT, |m| {
            partitions(m, topic).is_some_and(|ps| {
                !ps.is_empty() && ps.iter().all(|(l, isr)| *l >= 0 && ok(*l, isr))
            })
        })
    }));
    match waited {
        Ok(m) => partitions(&m, topic).expect("checked"),
        Err(_) => panic!("{topic} did not settle as expected\n{}", c.logs()),
    }
}

/// Broker ids Metadata from `addr` lists.
fn broker_ids(addr: &str) -> Vec<i32> {
    let m = common::cluster::metadata(addr, Some(&[]));
    let mut ids: Vec<i32> = m.brokers.iter().map(|b| b.node_id.0).collect();
    ids.sort_unstable();
    ids
}

/// The concatenated `.log` segments of `topic`-`partition` on a node.
fn log_bytes(data_dir: &Path, topic: &str, partition: i32) -> Vec<u8> {
    let dir = data_dir.join(format!("{topic}-{partition}"));
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    names.sort();
    names
        .iter()
        .flat_map(|p| std::fs::read(p).unwrap())
        .collect()
}

/// Waits until every replica of `topic`'s partitions holds the same bytes.
fn wait_identical_replicas(c: &Cluster, ids: &[i32], topic: &str, partitions: i32) {
    let deadline = Instant::now() + WAIT;
    for p in 0..partitions {
        loop {
            let logs: Vec<Vec<u8>> = ids
                .iter()
                .map(|&id| log_bytes(&c.node(id).data_dir, topic, p))
                .collect();
            if !logs[0].is_empty() && logs.iter().all(|l| *l == logs[0]) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "partition {p}: replica logs differ ({:?} bytes)\n{}",
                logs.iter().map(Vec::len).collect::<Vec<_>>(),
                c.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn acked(out: &serde_json::Value) -> Vec<i64> {
    out["acked"]
        .as_array()
        .unwrap_or_else(|| panic!("{out}"))
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect()
}

/// "replica fetcher connected" lines in every node's log.
fn fetcher_connections(c: &Cluster) -> usize {
    c.nodes
        .iter()
        .map(|n| c.log(n.id).matches("replica fetcher connected").count())
        .sum()
}

#[test]
fn a_sasl_ssl_cluster_with_an_authenticated_quorum_replicates_and_fails_over() {
    let pki = Pki::new();
    let mut flags = pki.flags(&pki.broker, "password");
    // SASL sessions last 4 s: followers must re-authenticate on their connections (KIP-368).
    flags.extend(
        [
            "--sasl-mechanisms",
            "SCRAM-SHA-512",
            "--super-users",
            "User:admin",
            "--connections-max-reauth-ms",
            "4000",
        ]
        .map(String::from),
    );
    // Every node: the inter-broker listener SASL_SSL first (the default inter-broker
    // listener), a PLAINTEXT one for the test's own Metadata requests; the inter-broker user
    // made before the first start, with the inter-broker password.
    let node_args: NodeArgs = std::sync::Arc::new(|node| {
        if !node.data_dir.exists() {
            std::fs::create_dir_all(&node.data_dir).unwrap();
            let (ok, out) = common::sasl::user_create(
                &node.data_dir,
                INTER_BROKER_USER,
                "SCRAM-SHA-512",
                PASSWORD,
            );
            assert!(ok, "{out}");
        }
        vec![
            "--listeners".into(),
            format!(
                "SASL_SSL://127.0.0.1:{},PLAINTEXT://127.0.0.1:{}",
                node.spare_port, node.client_port
            ),
        ]
    });
    let mut c = Cluster::start_with_node_args(3, &strs(&flags), node_args);
    for n in &c.nodes {
        let log = c.log(n.id);
        assert!(
            log.contains("quorum connections are authenticated"),
            "node {}:\n{log}",
            n.id
        );
    }
    let secured: Vec<String> = c
        .nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.spare_port))
        .collect();
    let bootstrap = secured.join(",");
    let client = serde_json::json!({
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": INTER_BROKER_USER,
        "sasl.password": PASSWORD,
        "ssl.ca.location": pki.ca.cert.display().to_string(),
        "ssl.certificate.location": pki.broker.cert.display().to_string(),
        "ssl.key.location": pki.broker.key.display().to_string(),
    })
    .to_string();
    let topic = "secured";
    let out = py(&client, &["create", &bootstrap, topic, "2", "3"]);
    assert_eq!(out["ok"], true, "{out}\n{}", c.logs());
    wait_partitions(&c, 1, topic, |_, isr| isr.len() == 3);
    let out = py(&client, &["produce", &bootstrap, topic, "2000"]);
    assert_eq!(acked(&out).len(), 2000, "{out}\n{}", c.logs());
    wait_identical_replicas(&c, &[1, 2, 3], topic, 2);
    // The followers fetched over SASL_SSL.
    let logs = c.logs();
    let fetcher_lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("replica fetcher connected"))
        .collect();
    assert!(!fetcher_lines.is_empty(), "{logs}");
    assert!(
        fetcher_lines.iter().all(|l| l.contains("SASL_SSL")),
        "{fetcher_lines:#?}"
    );
    // Sessions expire every 4 s: the followers re-authenticate in place, so no fetcher
    // connection is lost over two sessions' time, and replication goes on.
    let connections = fetcher_connections(&c);
    let out = py(&client, &["produce", &bootstrap, topic, "500", "20"]);
    assert_eq!(acked(&out).len(), 500, "{out}\n{}", c.logs());
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        fetcher_connections(&c),
        connections,
        "fetcher connections were replaced (re-authentication failed?)\n{}",
        c.logs()
    );
    wait_identical_replicas(&c, &[1, 2, 3], topic, 2);

    // A leader killed: another one takes over within seconds and acks=all goes on.
    let leader = wait_partitions(&c, 1, topic, |_, _| true)[0].0;
    let other = [1, 2, 3].into_iter().find(|&id| id != leader).unwrap();
    c.kill(leader);
    let killed_at = Instant::now();
    let after = wait_partitions(&c, other, topic, |l, _| l != leader);
    assert!(
        killed_at.elapsed() < Duration::from_secs(15),
        "new leader after {:?}",
        killed_at.elapsed()
    );
    assert!(!after[0].1.contains(&leader), "{after:?}");
    let survivors: Vec<String> = c
        .nodes
        .iter()
        .filter(|n| n.id != leader)
        .map(|n| format!("127.0.0.1:{}", n.spare_port))
        .collect();
    let out = py(&client, &["produce", &survivors.join(","), topic, "500"]);
    assert_eq!(acked(&out).len(), 500, "{out}\n{}", c.logs());
    // It comes back through the authenticated quorum, catches up over SASL_SSL and rejoins
    // the ISR.
    c.restart(leader);
    wait_partitions(&c, other, topic, |_, isr| isr.len() == 3);
    wait_identical_replicas(&c, &[1, 2, 3], topic, 2);
}

/// A node started by hand outside the cluster (a learner: node `id`, not among the voters),
/// its log going to a file.
struct Outsider {
    child: Child,
    log: PathBuf,
}

impl Outsider {
    fn start(c: &Cluster, dir: &Path, id: i32, flags: &[String]) -> Outsider {
        let internal = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let log = dir.join(format!("outsider-{id}.log"));
        let data_dir = dir.join(format!("outsider-{id}"));
        let child = Command::new(env!("CARGO_BIN_EXE_ringbroker"))
            .arg("serve")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .args(["--cores", &common::two_cores()])
            .args(["--node-id", &id.to_string(), "--cluster", &c.voters])
            .args(["--internal-listen", &internal.to_string()])
            .args(flags)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start ringbroker");
        Outsider { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Outsider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Refusals the voters have logged so far.
fn refusals(c: &Cluster) -> usize {
    c.nodes
        .iter()
        .map(|n| c.log(n.id).matches("quorum connection refused").count())
        .sum()
}

#[test]
fn nodes_without_the_clusters_credentials_stay_out_of_the_quorum() {
    let pki = Pki::new();
    let flags = pki.flags(&pki.broker, "password");
    let mut c = Cluster::start_with(3, &strs(&flags));
    wait_metadata(&c.addr(1), Some(&[]), WAIT, |m| m.brokers.len() == 3);
    let outsiders = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Vec<String>, bool)> = vec![
        (
            "the wrong inter-broker password",
            pki.flags(&pki.broker, "wrong-password"),
            true,
        ),
        (
            "a certificate of another CA",
            pki.flags(&pki.intruder, "password"),
            true,
        ),
        ("no security at all", Vec::new(), false),
    ];
    for (id, (what, flags, logs_itself)) in (10..).zip(cases) {
        let before = refusals(&c);
        let outsider = Outsider::start(&c, outsiders.path(), id, &flags);
        // Long enough for its hellos to reach every voter many times over (a learner with
        // the credentials is registered within about a second).
        std::thread::sleep(Duration::from_secs(6));
        assert_eq!(
            broker_ids(&c.addr(1)),
            vec![1, 2, 3],
            "a node with {what} joined\n{}\n{}",
            outsider.log(),
            c.logs()
        );
        assert!(
            refusals(&c) > before,
            "the voters logged no refusal of the node with {what}\n{}",
            c.logs()
        );
        let log = outsider.log();
        assert!(
            !log.contains("listening on"),
            "the node with {what} started serving:\n{log}"
        );
        if logs_itself {
            assert!(
                log.contains("quorum connection refused"),
                "the node with {what} logged no failure:\n{log}"
            );
        }
    }
    // The cluster goes on: topics are created and replicated.
    let out = py("{}", &["create", &c.bootstrap(), "after", "1", "3"]);
    assert_eq!(out["ok"], true, "{out}\n{}", c.logs());
    wait_partitions(&c, 2, "after", |_, isr| isr.len() == 3);
    // With the credentials, the same kind of node joins (what the refusals above are
    // measured against).
    let id = c.add_node();
    wait_metadata(&c.addr(1), Some(&[]), WAIT, |m| {
        m.brokers.iter().any(|b| b.node_id.0 == id)
    });
}

/// Runs `ringbroker serve` in cluster mode (a single voter) with `flags` until it exits or
/// serves (then it is killed; at most 30 s): its exit status if it exited, and its log.
fn serve_until_exit(dir: &Path, flags: &[String]) -> (Option<std::process::ExitStatus>, String) {
    let internal = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let log = dir.join("serve.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringbroker"))
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--metrics-listen", "127.0.0.1:0"])
        .args(["--cores", &common::two_cores()])
        .args(["--node-id", "1", "--cluster", &format!("1@{internal}")])
        .args(["--internal-listen", &internal.to_string()])
        .args(flags)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start ringbroker");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        let serving = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("listening on");
        if serving || Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status, std::fs::read_to_string(&log).unwrap_or_default())
}

#[test]
fn a_cluster_with_secured_client_listeners_refuses_to_start_without_the_inter_broker_password() {
    let pki = Pki::new();
    // Mutual TLS alone does not name quorum members (the client CA signs clients'
    // certificates too): the inter-broker password is required.
    let mut tls_only = pki.flags(&pki.broker, "password");
    tls_only.truncate(6);
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("SSL://127.0.0.1:0", tls_only.clone()),
        (
            "PLAINTEXT://127.0.0.1:0,SSL://127.0.0.1:0",
            tls_only[..4].to_vec(),
        ),
    ];
    for (listeners, security) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut flags = vec!["--listeners".to_string(), listeners.to_string()];
        flags.extend(security);
        let (status, log) = serve_until_exit(dir.path(), &flags);
        let status =
            status.unwrap_or_else(|| panic!("{listeners} started without the password:\n{log}"));
        assert!(!status.success(), "{listeners}: {status}\n{log}");
        assert!(
            log.contains("--inter-broker-user") && log.contains("--inter-broker-password-file"),
            "{listeners}: the refusal names no flags:\n{log}"
        );
        assert!(!log.contains("listening on"), "{listeners} served:\n{log}");
    }
    // With the password it starts (what the refusals are measured against); a cluster with
    // only PLAINTEXT listeners needs none.
    let with_password = pki.flags(&pki.broker, "password");
    for flags in [
        [
            vec!["--listeners".into(), "SSL://127.0.0.1:0".into()],
            with_password,
        ]
        .concat(),
        vec!["--listeners".into(), "PLAINTEXT://127.0.0.1:0".into()],
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (status, log) = serve_until_exit(dir.path(), &flags);
        assert!(status.is_none(), "{flags:?} exited {status:?}:\n{log}");
        assert!(
            log.contains("listening on"),
            "{flags:?} did not serve:\n{log}"
        );
    }
}
