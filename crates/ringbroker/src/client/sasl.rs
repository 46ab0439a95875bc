//! SASL authentication of a client connection (SASL_PLAINTEXT, SASL_SSL), as Kafka's clients
//! do it: ApiVersions, SaslHandshake v1 naming the mechanism, then SaslAuthenticate requests
//! carrying the mechanism's messages until it is done. The mechanism itself (PLAIN, SCRAM's
//! client-first / client-final and the check of the server's signature) is the broker crate's
//! sans-IO SASL client.

use super::security::SaslCredentials;
use super::{kafka_error, Client};
use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use kafka_protocol::messages::{
    ApiKey, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
    SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;
use ringbroker_broker::security::sasl_client::{SaslClient, Step};
use std::time::{Duration, Instant};

/// When to re-authenticate a session that lasts `lifetime`: at 85% of it, as Kafka's clients
/// do (they pick 85% to 95%), so the new session is in place before the old one ends.
pub fn reauthenticate_after(lifetime: Duration) -> Instant {
    Instant::now() + lifetime.mul_f64(0.85)
}

/// SaslHandshake v1: the SASL messages then travel in SaslAuthenticate requests (v0 sent
/// them as raw frames, which Kafka's clients stopped doing).
const SASL_HANDSHAKE_VERSION: i16 = 1;
/// SaslAuthenticate versions this client speaks.
const SASL_AUTHENTICATE_VERSIONS: (i16, i16) = (0, 2);
/// SaslAuthenticate round trips after which a mechanism that is still not done is given up
/// (SCRAM needs two, PLAIN one).
pub const SASL_ROUNDS_MAX: usize = 8;

/// Kafka error codes the exchange names.
const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
const SASL_AUTHENTICATION_FAILED: i16 = 58;

/// Authenticates `client` with `credentials`; on success the connection serves every API,
/// for the session lifetime returned (`None`: the broker sets none; KIP-368).
pub async fn authenticate(
    client: &mut Client,
    credentials: &SaslCredentials,
) -> Result<Option<Duration>> {
    let addr = client.addr.clone();
    let mechanism = credentials.mechanism.name();
    let handshake_version = client
        .version(
            ApiKey::SaslHandshake,
            (SASL_HANDSHAKE_VERSION, SASL_HANDSHAKE_VERSION),
        )
        .await
        .context("SASL needs SaslHandshake v1 (is this a SASL listener?)")?;
    let request =
        SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(mechanism));
    let response: SaslHandshakeResponse = client
        .call(ApiKey::SaslHandshake, handshake_version, &request)
        .await
        .with_context(|| format!("SaslHandshake with {addr}"))?;
    if response.error_code == UNSUPPORTED_SASL_MECHANISM {
        let offered: Vec<&str> = response.mechanisms.iter().map(|m| m.as_str()).collect();
        bail!(
            "the broker at {addr} does not offer SASL mechanism {mechanism} (it offers: {}); choose one with --sasl-mechanism",
            offered.join(", ")
        );
    }
    if response.error_code != 0 {
        return Err(kafka_error(response.error_code)
            .context(format!("SaslHandshake {mechanism} with {addr}")));
    }
    let version = client
        .version(ApiKey::SaslAuthenticate, SASL_AUTHENTICATE_VERSIONS)
        .await?;
    let mut exchange = SaslClient::new(
        credentials.mechanism,
        &credentials.user,
        &credentials.password,
    )
    .map_err(|e| anyhow!("SASL {mechanism}: {e}"))?;
    let mut message = exchange.initial();
    for _ in 0..SASL_ROUNDS_MAX {
        let request = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(message));
        let response: SaslAuthenticateResponse = client
            .call(ApiKey::SaslAuthenticate, version, &request)
            .await
            .with_context(|| format!("SaslAuthenticate with {addr}"))?;
        if response.error_code == SASL_AUTHENTICATION_FAILED {
            return Err(AuthenticationFailed {
                addr,
                user: credentials.user.clone(),
                mechanism,
                detail: response
                    .error_message
                    .as_ref()
                    .map(|m| m.to_string())
                    .unwrap_or_default(),
            }
            .into());
        }
        if response.error_code != 0 {
            return Err(kafka_error(response.error_code)
                .context(format!("SaslAuthenticate {mechanism} with {addr}")));
        }
        match exchange.step(&response.auth_bytes).map_err(|e| {
            anyhow!("SASL {mechanism} with {addr}: the broker's answer is not accepted: {e}")
        })? {
            Step::Send(next) => message = next,
            Step::Done => {
                return Ok((response.session_lifetime_ms > 0)
                    .then(|| Duration::from_millis(response.session_lifetime_ms as u64)));
            }
        }
    }
    Err(anyhow!(
        "SASL {mechanism} with {addr} is not done after {SASL_ROUNDS_MAX} round trips"
    ))
}

/// The broker refused the credentials (SASL_AUTHENTICATION_FAILED).
#[derive(Debug)]
pub struct AuthenticationFailed {
    pub addr: String,
    pub user: String,
    pub mechanism: &'static str,
    /// The broker's error message, if any.
    pub detail: String,
}

impl std::fmt::Display for AuthenticationFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "authentication failed: the broker at {} refused user {:?} with {} (SASL_AUTHENTICATION_FAILED{}{}); check --sasl-user, --sasl-password-file and --sasl-mechanism",
            self.addr,
            self.user,
            self.mechanism,
            if self.detail.is_empty() { "" } else { ": " },
            self.detail
        )
    }
}

impl std::error::Error for AuthenticationFailed {}

/// Whether `e` (or an error it wraps) is a refused authentication.
pub fn is_authentication_failure(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| c.downcast_ref::<AuthenticationFailed>().is_some())
}
