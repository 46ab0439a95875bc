//! Cluster mode: a node's SCRAM bootstrap file (`ringbroker user create --data-dir`) is
//! submitted to the quorum once; a credential deleted afterwards with
//! AlterUserScramCredentials stays deleted across restarts (review fix of issue #16).

mod common;

use common::cluster::Cluster;
use common::sasl::user_create;
use common::Client;
use kafka_protocol::messages::alter_user_scram_credentials_request::ScramCredentialDeletion;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use std::time::{Duration, Instant};

/// Users the cluster's store holds (DescribeUserScramCredentials of all users).
fn users(addr: &str) -> Vec<String> {
    let mut c = Client::connect(addr);
    let r: DescribeUserScramCredentialsResponse = c.call(
        ApiKey::DescribeUserScramCredentials,
        0,
        &DescribeUserScramCredentialsRequest::default().with_users(None),
    );
    r.results.iter().map(|u| u.user.to_string()).collect()
}

/// Polls until `users(addr)` satisfies `ready` or `wait` passes; the last answer.
fn wait_users(addr: &str, wait: Duration, ready: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + wait;
    loop {
        let u = users(addr);
        if ready(&u) || Instant::now() > deadline {
            return u;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_deleted_bootstrap_user_does_not_come_back_at_the_next_start() {
    let mut c = Cluster::start(1);
    c.kill(1);
    let data_dir = c.node(1).data_dir.clone();
    let (ok, out) = user_create(&data_dir, "alice", "SCRAM-SHA-256", "alice-secret");
    assert!(ok, "user create: {out}");
    c.restart(1);
    let addr = c.addr(1);
    let u = wait_users(&addr, Duration::from_secs(30), |u| {
        u.iter().any(|x| x == "alice")
    });
    assert!(
        u.iter().any(|x| x == "alice"),
        "bootstrap user not submitted: {u:?}"
    );
    // The file is out of the way once submitted (kept, 0600).
    let meta = data_dir.join("meta");
    let deadline = Instant::now() + Duration::from_secs(10);
    while meta.join("scram-credentials.json").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!meta.join("scram-credentials.json").exists());
    assert!(meta.join("scram-credentials.json.submitted").exists());

    let mut client = Client::connect(&addr);
    let r: AlterUserScramCredentialsResponse = client.call(
        ApiKey::AlterUserScramCredentials,
        0,
        &AlterUserScramCredentialsRequest::default().with_deletions(vec![
            ScramCredentialDeletion::default()
                .with_name(StrBytes::from_static_str("alice"))
                .with_mechanism(1),
        ]),
    );
    assert_eq!(r.results.len(), 1);
    assert_eq!(
        r.results[0].error_code, 0,
        "{:?}",
        r.results[0].error_message
    );
    assert!(!users(&addr).iter().any(|x| x == "alice"));

    c.kill(1);
    c.restart(1);
    // Before the fix the node re-submitted its bootstrap file within a second or two.
    let u = wait_users(&addr, Duration::from_secs(5), |u| {
        u.iter().any(|x| x == "alice")
    });
    assert!(
        !u.iter().any(|x| x == "alice"),
        "the deleted bootstrap user came back: {u:?}\n{}",
        c.logs()
    );
}
