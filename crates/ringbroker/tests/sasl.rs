//! SASL end to end (issue #16): PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 with kcat,
//! confluent-kafka and kafka-python against users made with `ringbroker user create` before
//! the first start; the order rules of a SASL listener; KIP-368 re-authentication; the SCRAM
//! credential APIs and their persistence.
//!
//! The SASL listener comes first in `--listeners`: Metadata advertises the first listener's
//! endpoint until per-listener endpoints land (helper sec-tls), and clients must be sent back
//! to the SASL port.

mod common;

use common::sasl::{sasl_script, user_create};
use common::{run_status, Broker, Client};
use kafka_protocol::messages::alter_user_scram_credentials_request::{
    ScramCredentialDeletion, ScramCredentialUpsertion,
};
use kafka_protocol::messages::describe_user_scram_credentials_request::UserName;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use ringbroker_broker::security::sasl_client::{SaslClient, Step};
use ringbroker_broker::security::SaslMechanism;
use std::time::Duration;

const LISTENERS: &str = "SASL_PLAINTEXT://127.0.0.1:0,PLAINTEXT://127.0.0.1:0";
const MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

/// A data dir with user `alice` (password `alice-secret`) for both SCRAM mechanisms, made
/// offline.
fn data_dir_with_alice() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for m in ["SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let (ok, out) = user_create(dir.path(), "alice", m, "alice-secret");
        assert!(ok, "user create: {out}");
    }
    dir
}

fn kcat_sasl(addr: &str, mechanism: &str, user: &str, password: &str) -> Vec<String> {
    [
        "-b",
        addr,
        "-X",
        "security.protocol=SASL_PLAINTEXT",
        "-X",
        &format!("sasl.mechanisms={mechanism}"),
        "-X",
        &format!("sasl.username={user}"),
        "-X",
        &format!("sasl.password={password}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn kcat(args: &[String], more: &[&str], input: &str) -> (bool, String, String) {
    let mut full: Vec<&str> = vec!["30", "kcat"];
    full.extend(args.iter().map(String::as_str));
    full.extend_from_slice(more);
    run_status("timeout", &full, input)
}

/// Waits until the metrics endpoint shows `ringbroker_sasl_authentications_total` for
/// (`mechanism`, `result`) at least `min`.
fn wait_count(broker: &Broker, mechanism: &str, result: &str, min: u64) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let n = broker.sasl_count(mechanism, result);
        if n >= min || std::time::Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn sasl_clients_authenticate_with_every_mechanism_and_wrong_passwords_are_refused() {
    let dir = data_dir_with_alice();
    let data_dir = dir.path();
    let broker = Broker::start_listeners(data_dir, LISTENERS, &[]);
    let sasl = broker.listener_addr("SASL_PLAINTEXT");

    // The data dir is locked while the broker runs: `user create` refuses.
    let (ok, out) = user_create(data_dir, "mallory", "SCRAM-SHA-256", "x");
    assert!(!ok, "user create under a running broker succeeded: {out}");
    assert!(out.contains("in use"), "{out}");

    for m in MECHANISMS {
        // kcat: produce, then consume in a group (committed on close: a second run gets none).
        let args = kcat_sasl(&sasl, m, "alice", "alice-secret");
        let topic = format!("kcat-{m}");
        let (ok, out, err) = kcat(&args, &["-P", "-t", &topic], "a\nb\nc\n");
        assert!(ok, "kcat {m} produce: {out} {err}");
        let group = format!("kg-{m}");
        let consume = [
            "-X",
            "auto.offset.reset=earliest",
            "-G",
            &group,
            "-c",
            "3",
            "-q",
            "-f",
            "%s\n",
            &topic,
        ];
        let (ok, out, err) = kcat(&args, &consume, "");
        assert!(ok, "kcat {m} group consume: {out} {err}");
        assert_eq!(common::sorted_lines(&out), ["a", "b", "c"], "{err}");
        let (_, out, _) = kcat(
            &args,
            &[
                "-X",
                "auto.offset.reset=earliest",
                "-G",
                &group,
                "-e",
                "-q",
                &topic,
            ],
            "",
        );
        assert_eq!(out.trim(), "", "the group's commits were lost");

        // confluent-kafka and kafka-python: produce, group consume, commit.
        for client in ["confluent", "kafka-python"] {
            let topic = format!("{client}-{m}");
            let group = format!("g-{client}-{m}");
            let (ok, out, err) = sasl_script(&[
                client,
                "roundtrip",
                &sasl,
                "SASL_PLAINTEXT",
                m,
                "alice",
                "alice-secret",
                &topic,
                &group,
            ]);
            assert!(ok, "{client} {m}: {out}\n{err}");
            assert!(out.contains("ok\t5"), "{client} {m}: {out}");
            assert!(out.contains("committed\t5"), "{client} {m}: {out}");
        }
    }

    // Wrong passwords: refused by every client and mechanism, counted, logged without the
    // password.
    for m in MECHANISMS {
        let before = broker.sasl_count(m, "failure");
        let args = kcat_sasl(&sasl, m, "alice", "wrong-password");
        let (ok, out, err) = kcat(&args, &["-L", "-m", "5"], "");
        assert!(!ok, "kcat {m} with a wrong password listed metadata: {out}");
        assert!(
            err.contains("Authentication failed"),
            "kcat {m}: no authentication error: {err}"
        );
        for client in ["confluent", "kafka-python"] {
            let (ok, out, err) = sasl_script(&[
                client,
                "refused",
                &sasl,
                "SASL_PLAINTEXT",
                m,
                "alice",
                "wrong-password",
            ]);
            assert!(
                ok && out.starts_with("refused"),
                "{client} {m}: {out}\n{err}"
            );
        }
        let after = wait_count(&broker, m, "failure", before + 3);
        assert!(
            after >= before + 3,
            "{m}: failures counted {before} -> {after}"
        );
    }
    assert!(wait_count(&broker, "SCRAM-SHA-512", "success", 1) >= 1);
    assert!(
        !broker.log().contains("wrong-password"),
        "a password was logged"
    );

    // The broker keeps serving.
    let args = kcat_sasl(&sasl, "SCRAM-SHA-512", "alice", "alice-secret");
    let (ok, out, err) = kcat(&args, &["-L"], "");
    assert!(ok, "after the failures: {out} {err}");
}

fn handshake(client: &mut Client, version: i16, mechanism: &str) -> SaslHandshakeResponse {
    client.call(
        ApiKey::SaslHandshake,
        version,
        &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_string(mechanism.into())),
    )
}

fn authenticate(client: &mut Client, version: i16, bytes: Vec<u8>) -> SaslAuthenticateResponse {
    client.call(
        ApiKey::SaslAuthenticate,
        version,
        &SaslAuthenticateRequest::default().with_auth_bytes(bytes.into()),
    )
}

/// Runs a whole exchange with SaslAuthenticate `version`; the last response.
fn login(
    client: &mut Client,
    version: i16,
    mechanism: SaslMechanism,
    user: &str,
    password: &str,
) -> SaslAuthenticateResponse {
    let h = handshake(client, 1, mechanism.name());
    assert_eq!(h.error_code, 0, "handshake {}", mechanism.name());
    let mut sasl = SaslClient::new(mechanism, user, password).unwrap();
    let mut out = sasl.initial();
    loop {
        let r = authenticate(client, version, out);
        if r.error_code != 0 {
            return r;
        }
        match sasl.step(&r.auth_bytes).expect("server answer checks out") {
            Step::Send(next) => out = next,
            Step::Done => return r,
        }
    }
}

fn metadata_frame(client: &mut Client) -> Vec<u8> {
    client
        .frame(ApiKey::Metadata, 12, &MetadataRequest::default())
        .1
}

#[test]
fn sasl_listener_serves_only_apiversions_and_sasl_before_authentication() {
    let dir = data_dir_with_alice();
    let broker = Broker::start_listeners(dir.path(), LISTENERS, &[]);
    let sasl = broker.listener_addr("SASL_PLAINTEXT");
    let plain = broker.listener_addr("PLAINTEXT");

    // ApiVersions is answered (listing the SASL APIs), Metadata closes the connection.
    let mut c = Client::connect(&sasl);
    let v: ApiVersionsResponse = c.call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    assert_eq!(v.error_code, 0);
    for api in [ApiKey::SaslHandshake, ApiKey::SaslAuthenticate] {
        assert!(
            v.api_keys.iter().any(|k| k.api_key == api as i16),
            "{api:?}"
        );
    }
    let frame = metadata_frame(&mut c);
    assert!(
        c.closed_after(&frame),
        "Metadata before authentication was served"
    );

    // An unknown mechanism: UNSUPPORTED_SASL_MECHANISM with the enabled ones, then closed.
    let mut c = Client::connect(&sasl);
    let h = handshake(&mut c, 1, "GSSAPI");
    assert_eq!(h.error_code, 33);
    let names: Vec<&str> = h.mechanisms.iter().map(|m| m.as_str()).collect();
    assert_eq!(names, ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"]);
    let frame = metadata_frame(&mut c);
    assert!(c.closed_after(&frame));

    // SaslAuthenticate without a handshake: ILLEGAL_SASL_STATE, closed.
    let mut c = Client::connect(&sasl);
    let r = authenticate(&mut c, 2, b"\0alice\0alice-secret".to_vec());
    assert_eq!(r.error_code, 34);
    let frame = metadata_frame(&mut c);
    assert!(c.closed_after(&frame));

    // A listener without SASL answers a handshake ILLEGAL_SASL_STATE and serves on.
    let mut c = Client::connect(&plain);
    assert_eq!(handshake(&mut c, 1, "PLAIN").error_code, 34);
    let _: MetadataResponse = c.call(ApiKey::Metadata, 12, &MetadataRequest::default());

    // Every mechanism through SaslAuthenticate v0..=2; then Metadata is served.
    for (i, m) in SaslMechanism::ALL.into_iter().enumerate() {
        let version = (i % 3) as i16;
        let mut c = Client::connect(&sasl);
        let r = login(&mut c, version, m, "alice", "alice-secret");
        assert_eq!(r.error_code, 0, "{}: {:?}", m.name(), r.error_message);
        assert_eq!(r.session_lifetime_ms, 0, "no reauth configured");
        let _: MetadataResponse = c.call(ApiKey::Metadata, 12, &MetadataRequest::default());
        // Authenticated, without KIP-368: another handshake is ILLEGAL_SASL_STATE.
        assert_eq!(handshake(&mut c, 1, "PLAIN").error_code, 34);
    }

    // A wrong password: SASL_AUTHENTICATION_FAILED with Kafka's message, after the delay,
    // then closed.
    let mut c = Client::connect(&sasl);
    let started = std::time::Instant::now();
    let r = login(&mut c, 2, SaslMechanism::ScramSha256, "alice", "nope");
    assert_eq!(r.error_code, 58);
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert_eq!(
        r.error_message.as_deref(),
        Some(
            "Authentication failed during authentication due to invalid credentials with SASL \
             mechanism SCRAM-SHA-256"
        )
    );
    let frame = metadata_frame(&mut c);
    assert!(c.closed_after(&frame));

    // SaslHandshake v0: the tokens follow as raw size-prefixed frames.
    let mut c = Client::connect(&sasl);
    assert_eq!(handshake(&mut c, 0, "PLAIN").error_code, 0);
    assert_eq!(c.raw_exchange(b"\0alice\0alice-secret"), Some(Vec::new()));
    let _: MetadataResponse = c.call(ApiKey::Metadata, 12, &MetadataRequest::default());
}

#[test]
fn sessions_expire_without_reauthentication_and_clients_that_reauthenticate_keep_working() {
    let dir = data_dir_with_alice();
    let (ok, out) = user_create(dir.path(), "bob", "SCRAM-SHA-256", "bob-secret");
    assert!(ok, "{out}");
    let broker = Broker::start_listeners(
        dir.path(),
        LISTENERS,
        &["--connections-max-reauth-ms", "3000"],
    );
    let sasl = broker.listener_addr("SASL_PLAINTEXT");

    // librdkafka re-authenticates on its own: an 8 s run keeps producing and consuming.
    let (ok, out, err) = sasl_script(&[
        "confluent",
        "long-run",
        &sasl,
        "SASL_PLAINTEXT",
        "SCRAM-SHA-256",
        "alice",
        "alice-secret",
        "reauth-long",
        "8",
    ]);
    assert!(ok, "long run: {out}\n{err}");
    let rounds: u32 = out
        .lines()
        .find_map(|l| l.strip_prefix("ok\t"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(rounds >= 5, "{out}");
    // Its connections re-authenticated (each logs in again about every 3 s).
    let logins = wait_count(&broker, "SCRAM-SHA-256", "success", 1);
    // Without re-authentication its few connections log in once each (about 5).
    assert!(
        logins >= 8,
        "only {logins} SCRAM-SHA-256 logins in 8 s with 3 s sessions"
    );

    // A raw client that does not re-authenticate is closed once its session expired.
    let mut idle = Client::connect(&sasl);
    let r = login(
        &mut idle,
        2,
        SaslMechanism::ScramSha512,
        "alice",
        "alice-secret",
    );
    assert_eq!(r.error_code, 0);
    assert_eq!(r.session_lifetime_ms, 3000);
    // One that re-authenticates within the lifetime (with the same mechanism, KIP-368) is
    // served past it.
    let mut active = Client::connect(&sasl);
    assert_eq!(
        login(
            &mut active,
            2,
            SaslMechanism::ScramSha256,
            "alice",
            "alice-secret"
        )
        .error_code,
        0
    );
    let _: MetadataResponse = idle.call(ApiKey::Metadata, 12, &MetadataRequest::default());
    std::thread::sleep(Duration::from_millis(2000));
    let r = login(
        &mut active,
        2,
        SaslMechanism::ScramSha256,
        "alice",
        "alice-secret",
    );
    assert_eq!(r.error_code, 0, "re-authentication: {:?}", r.error_message);
    assert_eq!(r.session_lifetime_ms, 3000);
    std::thread::sleep(Duration::from_millis(1500));
    let _: MetadataResponse = active.call(ApiKey::Metadata, 12, &MetadataRequest::default());
    let frame = metadata_frame(&mut idle);
    assert!(idle.closed_after(&frame), "an expired session was served");

    // Re-authenticating as someone else fails and closes.
    let r = login(
        &mut active,
        2,
        SaslMechanism::ScramSha256,
        "bob",
        "bob-secret",
    );
    assert_eq!(r.error_code, 58);
    assert!(
        r.error_message
            .as_deref()
            .is_some_and(|m| m.contains("Cannot change principals")),
        "{:?}",
        r.error_message
    );
    let frame = metadata_frame(&mut active);
    assert!(active.closed_after(&frame));
}

fn upsertion(user: &str, mechanism: i8, iterations: i32, len: usize) -> ScramCredentialUpsertion {
    ScramCredentialUpsertion::default()
        .with_name(StrBytes::from_string(user.into()))
        .with_mechanism(mechanism)
        .with_iterations(iterations)
        .with_salt(vec![7u8; 16].into())
        .with_salted_password(vec![9u8; len].into())
}

#[test]
fn user_scram_credential_apis_follow_kafka_and_survive_a_restart() {
    let dir = data_dir_with_alice();
    let mut broker = Broker::start_listeners(dir.path(), LISTENERS, &[]);
    let sasl = broker.listener_addr("SASL_PLAINTEXT");

    // confluent-kafka's AdminClient (logged in as alice) creates carol.
    let (ok, out, err) = sasl_script(&[
        "confluent",
        "alter-user",
        &sasl,
        "SASL_PLAINTEXT",
        "SCRAM-SHA-512",
        "alice",
        "alice-secret",
        "carol",
        "SCRAM-SHA-512",
        "carol-secret",
    ]);
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("described\tcarol\tSCRAM_SHA_512\t4096"),
        "{out}"
    );
    for m in ["SCRAM-SHA-512", "PLAIN"] {
        let (ok, out, err) = kcat(&kcat_sasl(&sasl, m, "carol", "carol-secret"), &["-L"], "");
        assert!(ok, "carol {m}: {out} {err}");
    }

    // Kafka's errors, from a raw client on the plaintext listener.
    let mut c = Client::connect(&broker.listener_addr("PLAINTEXT"));
    let r: AlterUserScramCredentialsResponse = c.call(
        ApiKey::AlterUserScramCredentials,
        0,
        &AlterUserScramCredentialsRequest::default()
            .with_upsertions(vec![
                upsertion("few", 1, 1000, 32),
                upsertion("many", 2, 20000, 64),
                upsertion("unknown-mech", 0, 4096, 32),
                upsertion("", 1, 4096, 32),
                upsertion("twice", 1, 4096, 32),
                upsertion("twice", 1, 4096, 32),
                upsertion("dave", 1, 4096, 32),
            ])
            .with_deletions(vec![ScramCredentialDeletion::default()
                .with_name(StrBytes::from_static_str("nobody"))
                .with_mechanism(1)]),
    );
    let code = |user: &str| {
        r.results
            .iter()
            .find(|x| x.user.as_str() == user)
            .unwrap_or_else(|| panic!("no result for {user:?}: {r:?}"))
            .error_code
    };
    assert_eq!(code("few"), 93);
    assert_eq!(code("many"), 93);
    assert_eq!(code("unknown-mech"), 33);
    assert_eq!(code(""), 93);
    assert_eq!(code("twice"), 92);
    assert_eq!(code("nobody"), 91);
    assert_eq!(code("dave"), 0);
    let d: DescribeUserScramCredentialsResponse = c.call(
        ApiKey::DescribeUserScramCredentials,
        0,
        &DescribeUserScramCredentialsRequest::default().with_users(Some(vec![
            UserName::default().with_name(StrBytes::from_static_str("dave")),
            UserName::default().with_name(StrBytes::from_static_str("nobody")),
            UserName::default().with_name(StrBytes::from_static_str("alice")),
            UserName::default().with_name(StrBytes::from_static_str("alice")),
        ])),
    );
    assert_eq!(d.error_code, 0);
    let find = |user: &str| d.results.iter().find(|x| x.user.as_str() == user).unwrap();
    assert_eq!(find("dave").error_code, 0);
    assert_eq!(find("dave").credential_infos.len(), 1);
    assert_eq!(find("dave").credential_infos[0].mechanism, 1);
    assert_eq!(find("nobody").error_code, 91);
    assert_eq!(find("alice").error_code, 92);
    let all: DescribeUserScramCredentialsResponse = c.call(
        ApiKey::DescribeUserScramCredentials,
        0,
        &DescribeUserScramCredentialsRequest::default().with_users(None),
    );
    let users: Vec<&str> = all.results.iter().map(|x| x.user.as_str()).collect();
    assert_eq!(users, ["alice", "carol", "dave"]);

    // Deleting works, and everything survives a restart.
    let r: AlterUserScramCredentialsResponse = c.call(
        ApiKey::AlterUserScramCredentials,
        0,
        &AlterUserScramCredentialsRequest::default().with_deletions(vec![
            ScramCredentialDeletion::default()
                .with_name(StrBytes::from_static_str("dave"))
                .with_mechanism(1),
        ]),
    );
    assert_eq!(r.results[0].error_code, 0);
    assert!(broker.stop().success());
    let listed = std::process::Command::new(env!("CARGO_BIN_EXE_ringbroker"))
        .args(["user", "list", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(
        listed.contains("carol\tSCRAM-SHA-512(iterations=4096)"),
        "{listed}"
    );
    assert!(!listed.contains("dave"), "{listed}");
    let broker = Broker::start_listeners(dir.path(), LISTENERS, &[]);
    let sasl = broker.listener_addr("SASL_PLAINTEXT");
    let (ok, out, err) = kcat(
        &kcat_sasl(&sasl, "SCRAM-SHA-512", "carol", "carol-secret"),
        &["-L"],
        "",
    );
    assert!(ok, "carol after a restart: {out} {err}");
}

#[test]
fn sasl_ssl_serves_scram_sha512_to_kcat_confluent_and_kafka_python() {
    let dir = data_dir_with_alice();
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = common::certs::TestPki::new(pki_dir.path());
    let mut extra: Vec<String> = pki.broker_flags();
    extra.push("--sasl-mechanisms".into());
    extra.push("SCRAM-SHA-512".into());
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let broker = Broker::start_listeners(
        dir.path(),
        "SASL_SSL://127.0.0.1:0,PLAINTEXT://127.0.0.1:0",
        &extra,
    );
    let addr = broker.listener_addr("SASL_SSL");
    let ca = pki.ca.cert.display().to_string();
    let args: Vec<String> = [
        "-b",
        &addr,
        "-X",
        "security.protocol=SASL_SSL",
        "-X",
        &format!("ssl.ca.location={ca}"),
        "-X",
        "sasl.mechanisms=SCRAM-SHA-512",
        "-X",
        "sasl.username=alice",
        "-X",
        "sasl.password=alice-secret",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (ok, out, err) = kcat(&args, &["-P", "-t", "ssl-kcat"], "a\nb\n");
    assert!(ok, "kcat produce over SASL_SSL: {out} {err}");
    let (ok, out, err) = kcat(
        &args,
        &["-C", "-e", "-q", "-f", "%s\n", "-t", "ssl-kcat"],
        "",
    );
    assert!(ok, "kcat consume over SASL_SSL: {out} {err}");
    assert_eq!(common::sorted_lines(&out), ["a", "b"]);
    for client in ["confluent", "kafka-python"] {
        let topic = format!("ssl-{client}");
        let group = format!("g-ssl-{client}");
        let (ok, out, err) = sasl_script(&[
            client,
            "roundtrip",
            &addr,
            "SASL_SSL",
            "SCRAM-SHA-512",
            "alice",
            "alice-secret",
            &topic,
            &group,
            &ca,
        ]);
        assert!(ok, "{client} over SASL_SSL: {out}\n{err}");
        assert!(
            out.contains("ok\t5") && out.contains("committed\t5"),
            "{out}"
        );
        // A wrong password over TLS is refused too.
        let (ok, out, err) = sasl_script(&[
            client,
            "refused",
            &addr,
            "SASL_SSL",
            "SCRAM-SHA-512",
            "alice",
            "wrong",
            &ca,
        ]);
        assert!(ok && out.starts_with("refused"), "{client}: {out}\n{err}");
    }
    // Only the enabled mechanism is offered.
    let (ok, _, err) = kcat(
        &kcat_sasl(&addr, "PLAIN", "alice", "alice-secret")
            .into_iter()
            .map(|a| a.replace("SASL_PLAINTEXT", "SASL_SSL"))
            .chain(["-X".to_string(), format!("ssl.ca.location={ca}")])
            .collect::<Vec<_>>(),
        &["-L", "-m", "5"],
        "",
    );
    assert!(
        !ok && err.contains("mechanism"),
        "PLAIN was accepted: {err}"
    );
}

/// SASL_SSL with the mechanisms the SCRAM-SHA-512 test above leaves out (PLAIN and
/// SCRAM-SHA-256, offered by default): kcat, confluent-kafka and kafka-python each produce,
/// consume in a group and commit over TLS.
#[test]
fn sasl_ssl_serves_plain_and_scram_sha256_to_kcat_confluent_and_kafka_python() {
    let dir = data_dir_with_alice();
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = common::certs::TestPki::new(pki_dir.path());
    let extra: Vec<String> = pki.broker_flags();
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let broker = Broker::start_listeners(dir.path(), "SASL_SSL://127.0.0.1:0", &extra);
    let addr = broker.listener_addr("SASL_SSL");
    let ca = pki.ca.cert.display().to_string();
    for mechanism in ["PLAIN", "SCRAM-SHA-256"] {
        let args: Vec<String> = kcat_sasl(&addr, mechanism, "alice", "alice-secret")
            .into_iter()
            .map(|a| a.replace("SASL_PLAINTEXT", "SASL_SSL"))
            .chain(["-X".to_string(), format!("ssl.ca.location={ca}")])
            .collect();
        let topic = format!("kcat-{mechanism}");
        let (ok, out, err) = kcat(&args, &["-P", "-t", &topic], "a\nb\n");
        assert!(ok, "kcat {mechanism} produce over SASL_SSL: {out} {err}");
        let (ok, out, err) = kcat(&args, &["-C", "-e", "-q", "-f", "%s\n", "-t", &topic], "");
        assert!(ok, "kcat {mechanism} consume over SASL_SSL: {out} {err}");
        assert_eq!(common::sorted_lines(&out), ["a", "b"]);
        for client in ["confluent", "kafka-python"] {
            let topic = format!("ssl-{client}-{mechanism}");
            let group = format!("g-{topic}");
            let (ok, out, err) = sasl_script(&[
                client,
                "roundtrip",
                &addr,
                "SASL_SSL",
                mechanism,
                "alice",
                "alice-secret",
                &topic,
                &group,
                &ca,
            ]);
            assert!(ok, "{client} {mechanism} over SASL_SSL: {out}\n{err}");
            assert!(
                out.contains("ok\t5") && out.contains("committed\t5"),
                "{client} {mechanism}: {out}"
            );
        }
    }
}

/// Review fix: a failed authentication is terminal at once. Requests pipelined behind it
/// (another handshake, the right password, Metadata) are never served: the failure's answer
/// comes after the delay, then the connection closes, and the second login never happened.
#[test]
fn requests_pipelined_behind_a_failed_authentication_are_never_served() {
    let dir = data_dir_with_alice();
    let broker = Broker::start_listeners(dir.path(), LISTENERS, &[]);
    let sasl = broker.listener_addr("SASL_PLAINTEXT");
    let mut c = Client::connect(&sasl);
    let handshake_frame = |c: &mut Client| {
        c.frame(
            ApiKey::SaslHandshake,
            1,
            &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN")),
        )
    };
    let authenticate_frame = |c: &mut Client, password: &str| {
        c.frame(
            ApiKey::SaslAuthenticate,
            2,
            &SaslAuthenticateRequest::default()
                .with_auth_bytes(format!("\0alice\0{password}").into_bytes().into()),
        )
    };
    let (h1, mut bytes) = handshake_frame(&mut c);
    let (a1, f) = authenticate_frame(&mut c, "wrong");
    bytes.extend(f);
    bytes.extend(handshake_frame(&mut c).1);
    bytes.extend(authenticate_frame(&mut c, "alice-secret").1);
    bytes.extend(metadata_frame(&mut c));
    c.send(&bytes);
    let h: SaslHandshakeResponse = c.read(ApiKey::SaslHandshake, 1, h1);
    assert_eq!(h.error_code, 0);
    let a: SaslAuthenticateResponse = c.read(ApiKey::SaslAuthenticate, 2, a1);
    assert_eq!(a.error_code, 58);
    assert!(
        c.closed_after(&[]),
        "answered after a failed authentication"
    );
    assert_eq!(wait_count(&broker, "PLAIN", "failure", 1), 1);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        broker.sasl_count("PLAIN", "success"),
        0,
        "a login pipelined behind a failed one ran"
    );
}

/// Review fix: before authenticating, a client may not announce a frame larger than
/// Kafka's `sasl.server.max.receive.size` (512 KiB): the connection closes at once, without
/// waiting for (or buffering) the bytes.
#[test]
fn a_large_frame_before_sasl_authentication_closes_the_connection() {
    let dir = data_dir_with_alice();
    let broker = Broker::start_listeners(dir.path(), LISTENERS, &[]);
    let sasl = broker.listener_addr("SASL_PLAINTEXT");
    let mut c = Client::connect(&sasl);
    let announced_bytes: u32 = 1024 * 1024;
    assert!(
        c.closed_after(&announced_bytes.to_be_bytes()),
        "a 1 MiB frame was awaited before authentication"
    );
    // The same size once authenticated is only awaited (the connection stays open).
    let mut c = Client::connect(&sasl);
    let r = login(&mut c, 2, SaslMechanism::Plain, "alice", "alice-secret");
    assert_eq!(r.error_code, 0);
    let _: MetadataResponse = c.call(ApiKey::Metadata, 12, &MetadataRequest::default());
}

/// Review fix: KIP-368 re-authentication must use the first authentication's mechanism
/// (Kafka answers another one UNSUPPORTED_SASL_MECHANISM and closes).
#[test]
fn reauthentication_with_another_mechanism_is_refused_and_closes() {
    let dir = data_dir_with_alice();
    let broker = Broker::start_listeners(
        dir.path(),
        LISTENERS,
        &["--connections-max-reauth-ms", "60000"],
    );
    let sasl = broker.listener_addr("SASL_PLAINTEXT");
    let mut c = Client::connect(&sasl);
    let r = login(&mut c, 2, SaslMechanism::Plain, "alice", "alice-secret");
    assert_eq!(r.error_code, 0);
    // The same mechanism re-authenticates.
    let r = login(&mut c, 2, SaslMechanism::Plain, "alice", "alice-secret");
    assert_eq!(r.error_code, 0, "{:?}", r.error_message);
    let h = handshake(&mut c, 1, "SCRAM-SHA-256");
    assert_eq!(h.error_code, 33, "mechanism switched on re-authentication");
    let frame = metadata_frame(&mut c);
    assert!(c.closed_after(&frame));
}
