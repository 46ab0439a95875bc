//! The SASL server: SaslHandshake names a mechanism, SaslAuthenticate carries its messages
//! (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512), and KIP-368 re-authentication.
//!
//! State: an exchange in progress lives in `Conn::sasl` (a connection never moves between
//! shards mid-exchange) and is cleared when it ends; the outcome is `Conn::principal`
//! (`User:<name>`), `Conn::authenticated` and, with `connections.max.reauth.ms`,
//! `Conn::session_expiry`. Credentials come from this shard's copy of the SCRAM store
//! ([`super::credentials`]); PLAIN is checked against it too: the password is salted with the
//! user's stored salt and iterations (PBKDF2) and the resulting StoredKey compared, so one
//! store serves every mechanism and no password is kept anywhere.
//!
//! Order (as Kafka): ApiVersions (optional) → SaslHandshake → SaslAuthenticate... on a SASL
//! listener; [`super::admit`] closes a connection sending anything else first. A SaslHandshake
//! v0 means the client sends the mechanism's tokens without Kafka headers (size-prefixed raw
//! frames), which [`raw_token`] serves. A failed authentication is answered after
//! `failed_authentication_delay` with SASL_AUTHENTICATION_FAILED, then the connection closes.

use super::credentials;
use super::scram::{self, Algorithm, Credential, SaslError};
use super::SaslMechanism;
use crate::connection::Conn;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Kafka's error codes of the SASL APIs.
pub const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
pub const ILLEGAL_SASL_STATE: i16 = 34;
pub const SASL_AUTHENTICATION_FAILED: i16 = 58;

/// The longest mechanism name a SaslHandshake may carry (Kafka's are at most 20 bytes).
pub const MECHANISM_NAME_BYTES_MAX: usize = 64;

/// An exchange in progress (kept in `Conn::sasl`).
struct Exchange {
    mechanism: SaslMechanism,
    /// SaslHandshake v0: tokens come as raw size-prefixed frames, not SaslAuthenticate.
    raw: bool,
    /// The connection was authenticated before (KIP-368 re-authentication).
    reauth: bool,
    stage: Stage,
}

enum Stage {
    /// Waiting for the client's first message.
    Start,
    /// SCRAM: server-first sent, waiting for client-final.
    ScramFirstSent {
        user: String,
        credential: Credential,
        /// base64 of the GS2 header the client-final's `c=` must repeat.
        channel_binding: String,
        client_first_bare: String,
        server_first: String,
        nonce: String,
    },
}

/// What one client message leads to.
#[derive(Debug)]
pub enum Answer {
    /// More messages follow: send these bytes.
    Continue(Vec<u8>),
    /// Authenticated: send these bytes (SCRAM's server-final, empty for PLAIN).
    Done(Vec<u8>),
}

/// A failed authentication: the message Kafka answers with and, for logs, the user tried.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub user: Option<String>,
    pub mechanism: Option<SaslMechanism>,
}

fn failure(mechanism: SaslMechanism, user: Option<String>, message: String) -> Failure {
    Failure {
        message,
        user,
        mechanism: Some(mechanism),
    }
}

/// Kafka's answer to wrong SCRAM credentials (an unknown user too: `ScramSaslServer` fails
/// the exchange on client-first then).
fn scram_invalid(mechanism: SaslMechanism, user: Option<String>) -> Failure {
    failure(
        mechanism,
        user,
        format!(
            "Authentication failed during authentication due to invalid credentials with SASL \
             mechanism {}",
            mechanism.name()
        ),
    )
}

/// Kafka's `PlainSaslServer` answer to a wrong user or password.
fn plain_invalid(user: Option<String>) -> Failure {
    failure(
        SaslMechanism::Plain,
        user,
        "Authentication failed: Invalid username or password".to_string(),
    )
}

/// The mechanisms this broker offers, by name.
pub fn enabled_mechanisms() -> Vec<SaslMechanism> {
    crate::shard::current()
        .shared
        .config
        .security
        .sasl_mechanisms
        .clone()
}

/// The outcome of a SaslHandshake: the error code and whether the connection closes after
/// the answer.
pub struct HandshakeOutcome {
    pub error_code: i16,
    pub close: Option<String>,
}

/// Handles SaslHandshake `version` naming `mechanism`.
pub fn handshake(conn: &Conn, mechanism: &str, version: i16) -> HandshakeOutcome {
    let ok = |error_code| HandshakeOutcome {
        error_code,
        close: None,
    };
    if !conn.protocol.uses_sasl() {
        // Kafka's KafkaApis answers a handshake that reaches it (no SASL here) this way.
        return ok(ILLEGAL_SASL_STATE);
    }
    if conn.sasl.borrow().is_some() {
        conn.auth_failed.set(true);
        return HandshakeOutcome {
            error_code: ILLEGAL_SASL_STATE,
            close: Some("SaslHandshake during a SASL exchange".to_string()),
        };
    }
    let reauth = conn.authenticated.get();
    if reauth {
        // KIP-368: only when sessions expire, and never with v0 (raw tokens).
        let allowed = crate::shard::current()
            .shared
            .config
            .security
            .connections_max_reauth
            .is_some()
            && version >= 1;
        if !allowed {
            return ok(ILLEGAL_SASL_STATE);
        }
    }
    let mechanism = (mechanism.len() <= MECHANISM_NAME_BYTES_MAX)
        .then(|| SaslMechanism::from_name(mechanism))
        .flatten()
        .filter(|m| enabled_mechanisms().contains(m));
    let Some(mechanism) = mechanism else {
        conn.auth_failed.set(true);
        return HandshakeOutcome {
            error_code: UNSUPPORTED_SASL_MECHANISM,
            close: Some("unsupported SASL mechanism".to_string()),
        };
    };
    if reauth && conn.sasl_mechanism.get() != Some(mechanism) {
        // KIP-368 (Kafka's SaslServerAuthenticator): re-authentication keeps the mechanism.
        conn.auth_failed.set(true);
        return HandshakeOutcome {
            error_code: UNSUPPORTED_SASL_MECHANISM,
            close: Some(format!(
                "SASL mechanism {} is not supported for re-authentication of mechanism {}",
                mechanism.name(),
                conn.sasl_mechanism.get().map_or("none", |m| m.name())
            )),
        };
    }
    *conn.sasl.borrow_mut() = Some(Box::new(Exchange {
        mechanism,
        raw: version == 0,
        reauth,
        stage: Stage::Start,
    }));
    ok(0)
}

/// Whether the connection's next frame is a raw SASL token (after a SaslHandshake v0).
pub fn raw_expected(conn: &Conn) -> bool {
    conn.protocol.uses_sasl()
        && conn
            .sasl
            .borrow()
            .as_ref()
            .and_then(|s| s.downcast_ref::<Exchange>())
            .is_some_and(|e| e.raw)
}

/// Whether a SaslAuthenticate is expected now (an exchange started by SaslHandshake v1).
pub fn exchange_in_progress(conn: &Conn) -> bool {
    conn.sasl
        .borrow()
        .as_ref()
        .and_then(|s| s.downcast_ref::<Exchange>())
        .is_some_and(|e| !e.raw)
}

/// Authentication result counters (`ringbroker_sasl_authentications_total`), by mechanism
/// (in [`SaslMechanism::ALL`] order, then "unknown") and result (success, failure).
static AUTHENTICATIONS: [[AtomicU64; 2]; 4] = [
    [AtomicU64::new(0), AtomicU64::new(0)],
    [AtomicU64::new(0), AtomicU64::new(0)],
    [AtomicU64::new(0), AtomicU64::new(0)],
    [AtomicU64::new(0), AtomicU64::new(0)],
];

fn count(mechanism: Option<SaslMechanism>, success: bool) {
    let m = mechanism
        .and_then(|m| SaslMechanism::ALL.iter().position(|&x| x == m))
        .unwrap_or(3);
    AUTHENTICATIONS[m][usize::from(!success)].fetch_add(1, Ordering::Relaxed);
}

/// `(mechanism, result, count)` of every authentication since start, for the metrics layer.
pub fn authentication_counts() -> Vec<(&'static str, &'static str, u64)> {
    let mut out = Vec::new();
    for (i, row) in AUTHENTICATIONS.iter().enumerate() {
        let name = SaslMechanism::ALL.get(i).map_or("unknown", |m| m.name());
        for (j, result) in ["success", "failure"].into_iter().enumerate() {
            out.push((name, result, row[j].load(Ordering::Relaxed)));
        }
    }
    out
}

/// The outcome for a SASL request that arrives after a failed authentication
/// (`Conn::auth_failed`): closed unanswered, so that pipelined attempts neither skip the
/// failure delay nor run at all.
pub fn refused_after_failure(conn: &Conn) -> Option<crate::api::Outcome> {
    conn.auth_failed.get().then(|| {
        crate::api::Outcome::Close("SASL request after a failed authentication".to_string())
    })
}

/// Handles one client message of the exchange in progress. On success the connection is
/// authenticated (principal, mechanism, session expiry set; `Conn::sasl` cleared); on
/// failure the exchange is cleared, `Conn::auth_failed` set at once (nothing pipelined
/// behind it is served), and the caller answers after the delay, then closes.
pub fn authenticate(conn: &Conn, message: &[u8]) -> Result<Answer, Failure> {
    let result = authenticate_message(conn, message);
    if result.is_err() {
        conn.auth_failed.set(true);
    }
    result
}

fn authenticate_message(conn: &Conn, message: &[u8]) -> Result<Answer, Failure> {
    let taken = conn.sasl.borrow_mut().take();
    let Some(exchange) = taken.and_then(|s| s.downcast::<Exchange>().ok()) else {
        return Err(Failure {
            message: "SaslAuthenticate before SaslHandshake".to_string(),
            user: None,
            mechanism: None,
        });
    };
    let mut exchange = *exchange;
    let mechanism = exchange.mechanism;
    let result = if message.len() > scram::MESSAGE_BYTES_MAX {
        Err(failure(
            mechanism,
            None,
            format!(
                "SASL message of {} bytes is longer than {}",
                message.len(),
                scram::MESSAGE_BYTES_MAX
            ),
        ))
    } else {
        step(&mut exchange, message)
    };
    match result {
        Ok(Step::Continue(bytes, stage)) => {
            exchange.stage = stage;
            *conn.sasl.borrow_mut() = Some(Box::new(exchange));
            Ok(Answer::Continue(bytes))
        }
        Ok(Step::Done(bytes, user)) => {
            let principal = format!("User:{user}");
            if exchange.reauth && **conn.principal.borrow() != *principal {
                count(Some(mechanism), false);
                return Err(failure(
                    mechanism,
                    Some(user),
                    format!(
                        "Cannot change principals during re-authentication from {}: {principal}",
                        conn.principal.borrow()
                    ),
                ));
            }
            count(Some(mechanism), true);
            *conn.principal.borrow_mut() = Rc::from(principal);
            conn.authenticated.set(true);
            conn.sasl_mechanism.set(Some(mechanism));
            let reauth = crate::shard::current()
                .shared
                .config
                .security
                .connections_max_reauth;
            conn.session_expiry.set(reauth.map(|d| Instant::now() + d));
            tracing::debug!(peer = %conn.peer, user = %user, mechanism = mechanism.name(), reauth = exchange.reauth, "SASL authentication succeeded");
            Ok(Answer::Done(bytes))
        }
        Err(f) => {
            count(Some(mechanism), false);
            Err(f)
        }
    }
}

/// Logs a failed authentication (rate limited; never the password) and counts nothing more
/// (the exchange's result was counted).
pub fn log_failure(conn: &Conn, f: &Failure) {
    let mechanism = f.mechanism.map_or("none", |m| m.name());
    let user = f.user.as_deref().unwrap_or("");
    crate::warn_limited!(peer = %conn.peer, user, mechanism, reason = %f.message, "SASL authentication failed");
}

/// The session lifetime to tell a client that just authenticated with SaslAuthenticate v1+
/// (0: sessions do not expire).
pub fn session_lifetime_ms() -> i64 {
    crate::shard::current()
        .shared
        .config
        .security
        .connections_max_reauth
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

enum Step {
    Continue(Vec<u8>, Stage),
    Done(Vec<u8>, String),
}

fn step(exchange: &mut Exchange, message: &[u8]) -> Result<Step, Failure> {
    let mechanism = exchange.mechanism;
    match std::mem::replace(&mut exchange.stage, Stage::Start) {
        Stage::Start => match mechanism {
            SaslMechanism::Plain => plain(message),
            m => scram_client_first(m, message),
        },
        Stage::ScramFirstSent {
            user,
            credential,
            channel_binding,
            client_first_bare,
            server_first,
            nonce,
        } => {
            let Some(algorithm) = Algorithm::of(mechanism) else {
                return Err(scram_invalid(mechanism, Some(user)));
            };
            let text = std::str::from_utf8(message)
                .map_err(|_| malformed(mechanism, Some(user.clone()), "client-final not UTF-8"))?;
            let (without_proof, proof) = text
                .rsplit_once(",p=")
                .ok_or_else(|| malformed(mechanism, Some(user.clone()), "no proof"))?;
            if scram::attribute(without_proof, 'c') != Some(channel_binding.as_str()) {
                return Err(malformed(
                    mechanism,
                    Some(user),
                    "channel binding does not match",
                ));
            }
            // As Kafka's ScramSaslServer: the nonce must end with the server's (librdkafka
            // before 2.x sends the client nonce followed by the whole combined nonce).
            let echoed = scram::attribute(without_proof, 'r').unwrap_or("");
            if !echoed.ends_with(nonce.as_str()) || echoed.len() > 3 * scram::NONCE_CHARS_MAX {
                return Err(malformed(mechanism, Some(user), "nonce does not match"));
            }
            let proof = scram::unb64(proof)
                .map_err(|_| malformed(mechanism, Some(user.clone()), "bad proof"))?;
            if proof.len() != algorithm.output_len() {
                return Err(scram_invalid(mechanism, Some(user)));
            }
            let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
            let client_signature = algorithm.hmac(&credential.stored_key, auth_message.as_bytes());
            let client_key = scram::xor(&proof, &client_signature);
            if !scram::constant_time_eq(&algorithm.hash(&client_key), &credential.stored_key) {
                tracing::debug!(%auth_message, "SCRAM proof does not match");
                return Err(scram_invalid(mechanism, Some(user)));
            }
            let server_signature = algorithm.hmac(&credential.server_key, auth_message.as_bytes());
            Ok(Step::Done(
                format!("v={}", scram::b64(&server_signature)).into_bytes(),
                user,
            ))
        }
    }
}

fn malformed(mechanism: SaslMechanism, user: Option<String>, what: &str) -> Failure {
    tracing::debug!(
        mechanism = mechanism.name(),
        what,
        "malformed SCRAM message"
    );
    // Kafka answers a malformed message like invalid credentials (its SaslException path).
    scram_invalid(mechanism, user)
}

/// PLAIN (RFC 4616): `authzid NUL user NUL password`; authzid empty or the user.
fn plain(message: &[u8]) -> Result<Step, Failure> {
    let mut parts = message.splitn(3, |&b| b == 0);
    let (Some(authzid), Some(user), Some(password)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(failure(
            SaslMechanism::Plain,
            None,
            "Authentication failed: Invalid SASL/PLAIN response: expected 3 tokens".to_string(),
        ));
    };
    let (Ok(authzid), Ok(user)) = (std::str::from_utf8(authzid), std::str::from_utf8(user)) else {
        return Err(plain_invalid(None));
    };
    if user.is_empty() || user.len() > scram::USER_BYTES_MAX {
        return Err(failure(
            SaslMechanism::Plain,
            None,
            "Authentication failed: username not specified".to_string(),
        ));
    }
    if password.is_empty() {
        return Err(failure(
            SaslMechanism::Plain,
            Some(user.to_string()),
            "Authentication failed: password not specified".to_string(),
        ));
    }
    if !authzid.is_empty() && authzid != user {
        return Err(failure(
            SaslMechanism::Plain,
            Some(user.to_string()),
            "Authentication failed: Client requested an authorization id that is different from \
             username"
                .to_string(),
        ));
    }
    if !plain_password_matches(&credentials::current(), user, password) {
        return Err(plain_invalid(Some(user.to_string())));
    }
    Ok(Step::Done(Vec::new(), user.to_string()))
}

/// Whether `password` is `user`'s: salted with the salt and iterations of one of the user's
/// SCRAM credentials (SHA-256 first), its StoredKey must be the stored one.
pub fn plain_password_matches(
    store: &credentials::Credentials,
    user: &str,
    password: &[u8],
) -> bool {
    let Some(credential) = [SaslMechanism::ScramSha256, SaslMechanism::ScramSha512]
        .into_iter()
        .find_map(|m| store.get(user, m))
    else {
        // An unknown user costs the same PBKDF2 as a known one (the time must not tell
        // whether the user exists).
        if let Some(algorithm) = Algorithm::of(SaslMechanism::ScramSha256) {
            let salt = [0u8; UNKNOWN_USER_SALT_BYTES];
            let _ = algorithm.salted_password(password, &salt, UNKNOWN_USER_ITERATIONS);
        }
        return false;
    };
    let Some(algorithm) = Algorithm::of(credential.mechanism) else {
        return false;
    };
    let salted = algorithm.salted_password(password, &credential.salt, credential.iterations);
    let stored_key = algorithm.hash(&algorithm.client_key(&salted));
    scram::constant_time_eq(&stored_key, &credential.stored_key)
}

/// Salt length of the PBKDF2 run for a PLAIN login of an unknown user.
const UNKNOWN_USER_SALT_BYTES: usize = scram::SALT_RANDOM_BYTES;
/// Its iterations: the default of `ringbroker user create` (Kafka's 4096).
const UNKNOWN_USER_ITERATIONS: u32 = scram::ITERATIONS_MIN;

/// SCRAM client-first: `gs2-header client-first-bare` with gs2-header `n,,` or
/// `n,a=user,` (no channel binding).
fn scram_client_first(mechanism: SaslMechanism, message: &[u8]) -> Result<Step, Failure> {
    let text = std::str::from_utf8(message)
        .map_err(|_| malformed(mechanism, None, "client-first not UTF-8"))?;
    let rest = text
        .strip_prefix("n,")
        .ok_or_else(|| malformed(mechanism, None, "channel binding"))?;
    let (authzid, bare) = rest
        .split_once(',')
        .ok_or_else(|| malformed(mechanism, None, "gs2 header"))?;
    let gs2_header = &text[..text.len() - bare.len()];
    let user_field =
        scram::attribute(bare, 'n').ok_or_else(|| malformed(mechanism, None, "no user"))?;
    if !bare.starts_with("n=") {
        return Err(malformed(mechanism, None, "user first"));
    }
    let user = scram::unescape_user(user_field).map_err(|_| scram_invalid(mechanism, None))?;
    if !authzid.is_empty() {
        let authzid = authzid
            .strip_prefix("a=")
            .map(scram::unescape_user)
            .and_then(Result::ok);
        if authzid.as_deref() != Some(user.as_str()) {
            return Err(failure(
                mechanism,
                Some(user),
                "Authentication failed: Client requested an authorization id that is different \
                 from username"
                    .to_string(),
            ));
        }
    }
    let client_nonce = scram::attribute(bare, 'r')
        .filter(|n| !n.is_empty() && n.len() <= scram::NONCE_CHARS_MAX)
        .ok_or_else(|| malformed(mechanism, Some(user.clone()), "nonce"))?;
    if user.is_empty() {
        return Err(scram_invalid(mechanism, None));
    }
    let Some(credential) = credentials::current().get(&user, mechanism).cloned() else {
        return Err(scram_invalid(mechanism, Some(user)));
    };
    let server_nonce = scram::new_nonce().map_err(|_: SaslError| {
        failure(
            mechanism,
            Some(user.clone()),
            "Authentication failed: no random nonce".to_string(),
        )
    })?;
    let nonce = format!("{client_nonce}{server_nonce}");
    let server_first = format!(
        "r={nonce},s={},i={}",
        scram::b64(&credential.salt),
        credential.iterations
    );
    Ok(Step::Continue(
        server_first.clone().into_bytes(),
        Stage::ScramFirstSent {
            user,
            credential,
            channel_binding: scram::b64(gs2_header.as_bytes()),
            client_first_bare: bare.to_string(),
            server_first,
            nonce,
        },
    ))
}

/// Waits `failed_authentication_delay` on the ring (slows password guessing).
pub async fn failure_delay() {
    let delay = crate::shard::current()
        .shared
        .config
        .security
        .failed_authentication_delay;
    if !delay.is_zero() {
        ringbroker_runtime::op::sleep(delay).await;
    }
}

/// Serves a raw SASL token (the frame after a SaslHandshake v0, without a Kafka header):
/// answers with a size-prefixed raw token, or closes the connection on failure.
pub async fn raw_token(frame: bytes::Bytes, conn: &Conn) -> crate::api::Outcome {
    use crate::api::Outcome;
    if let Some(closed) = refused_after_failure(conn) {
        return closed;
    }
    match authenticate(conn, &frame) {
        Ok(Answer::Continue(bytes) | Answer::Done(bytes)) => {
            let mut out = Vec::with_capacity(4 + bytes.len());
            out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            out.extend_from_slice(&bytes);
            Outcome::Respond(bytes::Bytes::from(out))
        }
        Err(f) => {
            log_failure(conn, &f);
            failure_delay().await;
            Outcome::Close(format!("SASL authentication failed: {}", f.message))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::sasl_client::{ScramClient, Step as ClientStep};

    fn store_with(user: &str, password: &str) -> credentials::Credentials {
        let mut store = credentials::Credentials::default();
        for m in [SaslMechanism::ScramSha256, SaslMechanism::ScramSha512] {
            store.upsert(
                user,
                Credential::generate(m, password.as_bytes(), scram::ITERATIONS_MIN).unwrap(),
            );
        }
        store
    }

    /// Runs client-first and client-final through the server steps.
    fn run(
        store: &credentials::Credentials,
        m: SaslMechanism,
        user: &str,
        password: &str,
    ) -> Result<String, String> {
        credentials::install(std::sync::Arc::new(store.clone()));
        let mut client = crate::security::sasl_client::SaslClient::Scram(
            ScramClient::new(m, user, password).unwrap(),
        );
        let mut exchange = Exchange {
            mechanism: m,
            raw: false,
            reauth: false,
            stage: Stage::Start,
        };
        let mut out = client.initial();
        loop {
            match step(&mut exchange, &out).map_err(|f| f.message)? {
                Step::Continue(bytes, stage) => {
                    exchange.stage = stage;
                    match client.step(&bytes).map_err(|e| e.to_string())? {
                        ClientStep::Send(b) => out = b,
                        ClientStep::Done => return Err("client done early".into()),
                    }
                }
                Step::Done(bytes, user) => {
                    client.step(&bytes).map_err(|e| e.to_string())?;
                    return Ok(user);
                }
            }
        }
    }

    #[test]
    fn scram_server_accepts_the_right_password_only() {
        let store = store_with("a,b=c", "secret");
        for m in [SaslMechanism::ScramSha256, SaslMechanism::ScramSha512] {
            assert_eq!(run(&store, m, "a,b=c", "secret"), Ok("a,b=c".to_string()));
            let err = run(&store, m, "a,b=c", "wrong").unwrap_err();
            assert!(err.contains("invalid credentials"), "{err}");
            assert!(run(&store, m, "nobody", "secret").is_err());
        }
    }

    #[test]
    fn plain_is_checked_against_the_scram_store() {
        let store = store_with("alice", "pw");
        assert!(plain_password_matches(&store, "alice", b"pw"));
        assert!(!plain_password_matches(&store, "alice", b"pW"));
        assert!(!plain_password_matches(&store, "bob", b"pw"));
        credentials::install(std::sync::Arc::new(store));
        assert!(matches!(plain(b"\0alice\0pw"), Ok(Step::Done(_, u)) if u == "alice"));
        assert!(matches!(plain(b"alice\0alice\0pw"), Ok(Step::Done(..))));
        assert!(plain(b"bob\0alice\0pw").is_err());
        assert!(plain(b"\0alice\0bad").is_err());
        assert!(plain(b"\0alice").is_err());
    }

    #[test]
    fn client_final_with_a_forged_proof_or_other_nonce_fails() {
        let store = store_with("u", "pw");
        credentials::install(std::sync::Arc::new(store));
        let m = SaslMechanism::ScramSha256;
        let mut ex = Exchange {
            mechanism: m,
            raw: false,
            reauth: false,
            stage: Stage::Start,
        };
        let Ok(Step::Continue(server_first, stage)) = step(&mut ex, b"n,,n=u,r=abc") else {
            panic!("client-first refused");
        };
        ex.stage = stage;
        let sf = String::from_utf8(server_first).unwrap();
        let nonce = scram::attribute(&sf, 'r').unwrap();
        assert!(nonce.starts_with("abc") && nonce.len() > 3);
        let forged = format!("c=biws,r={nonce},p={}", scram::b64(&[0u8; 32]));
        assert!(step(&mut ex, forged.as_bytes()).is_err());
        // y/p channel binding is refused.
        let mut ex2 = Exchange {
            mechanism: m,
            raw: false,
            reauth: false,
            stage: Stage::Start,
        };
        assert!(step(&mut ex2, b"p=tls-unique,,n=u,r=abc").is_err());
    }
}
