//! Authentication of quorum connections (issue #16), sans I/O.
//!
//! Two independent layers, either or both:
//!
//! - **TLS with mutual authentication** ([`QuorumTls`]): both ends present their certificate
//!   (the broker's `--tls-cert-file`) and verify the peer's against the CA
//!   (`--tls-client-ca-file`). Built by [`QuorumTls::from_pem_files`].
//! - **A challenge-response over the inter-broker password** ([`QuorumKey`]): the connecting
//!   node's hello carries a fresh nonce; the accepting node answers with its own nonce and a
//!   proof (HMAC-SHA256 over both nonces, both node ids and the cluster fingerprint, keyed by
//!   a key derived from the password with PBKDF2), the connecting node checks it and answers
//!   with its own proof. Each proof is bound to both nonces, so a recorded proof is worthless
//!   on another connection, and the two directions use different labels, so one side's proof
//!   cannot be reflected back as the other's. Comparisons are constant-time
//!   (`ring::hmac::verify`).
//!
//! Why not SASL: quorum members must authenticate each other before any metadata (the SCRAM
//! credential store lives in the metadata image) exists, so they share the inter-broker
//! password directly.

use crate::NodeId;
use ring::rand::SecureRandom;
use ring::{hmac, pbkdf2};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;

/// Bytes of each side's nonce.
pub const NONCE_BYTES: usize = 32;
/// Bytes of a proof (HMAC-SHA256).
pub const PROOF_BYTES: usize = 32;
/// PBKDF2 iterations of the key derivation (once per start; Kafka's SCRAM default is 4096).
pub const PBKDF2_ITERATIONS: u32 = 16_384;
/// Longest password accepted (it is read from a file).
pub const PASSWORD_BYTES_MAX: usize = 4096;

const SALT_LABEL: &[u8] = b"ringbroker quorum key v1";
const LABEL_SERVER: &[u8] = b"ringbroker quorum server proof v1";
const LABEL_CLIENT: &[u8] = b"ringbroker quorum client proof v1";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the peer's proof is wrong (another inter-broker password, or a replayed proof)")]
    BadProof,
    #[error("a nonce of {0} bytes (expected {NONCE_BYTES})")]
    BadNonce(usize),
    #[error("the peer sent no authentication (is the inter-broker password configured there?)")]
    Missing,
    #[error("no randomness available")]
    Random,
}

/// The inter-broker password as configuration carries it: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct QuorumPassword {
    /// The inter-broker user (mixed into the key, so two clusters' users differ).
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for QuorumPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuorumPassword")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The key proofs are made with: PBKDF2-HMAC-SHA256 of the password, salted with the user and
/// the cluster fingerprint.
#[derive(Clone)]
pub struct QuorumKey {
    key: hmac::Key,
    fingerprint: u64,
}

impl std::fmt::Debug for QuorumKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuorumKey").finish_non_exhaustive()
    }
}

/// Which side of a connection made a proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The node that accepted the connection.
    Server,
    /// The node that opened it.
    Client,
}

/// The nonces and identities one connection's proofs cover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub client: NodeId,
    pub server: NodeId,
    pub client_nonce: [u8; NONCE_BYTES],
    pub server_nonce: [u8; NONCE_BYTES],
}

impl QuorumKey {
    pub fn derive(password: &QuorumPassword, fingerprint: u64) -> QuorumKey {
        let mut salt = Vec::with_capacity(SALT_LABEL.len() + 8 + password.user.len());
        salt.extend_from_slice(SALT_LABEL);
        salt.extend_from_slice(&fingerprint.to_be_bytes());
        salt.extend_from_slice(password.user.as_bytes());
        let mut out = [0u8; 32];
        // The constant is not zero.
        let iterations = NonZeroU32::new(PBKDF2_ITERATIONS).unwrap_or(NonZeroU32::MIN);
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            iterations,
            &salt,
            password.password.as_bytes(),
            &mut out,
        );
        QuorumKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, &out),
            fingerprint,
        }
    }

    fn message(&self, role: Role, x: &Exchange) -> Vec<u8> {
        let label = match role {
            Role::Server => LABEL_SERVER,
            Role::Client => LABEL_CLIENT,
        };
        let mut m = Vec::with_capacity(label.len() + 16 + 2 * NONCE_BYTES);
        m.extend_from_slice(label);
        m.extend_from_slice(&self.fingerprint.to_be_bytes());
        m.extend_from_slice(&x.client.to_be_bytes());
        m.extend_from_slice(&x.server.to_be_bytes());
        m.extend_from_slice(&x.client_nonce);
        m.extend_from_slice(&x.server_nonce);
        m
    }

    /// `role`'s proof for the exchange `x`.
    pub fn proof(&self, role: Role, x: &Exchange) -> Vec<u8> {
        hmac::sign(&self.key, &self.message(role, x))
            .as_ref()
            .to_vec()
    }

    /// Checks, in constant time, that `proof` is `role`'s proof for `x`.
    pub fn verify(&self, role: Role, x: &Exchange, proof: &[u8]) -> Result<(), AuthError> {
        hmac::verify(&self.key, &self.message(role, x), proof).map_err(|_| AuthError::BadProof)
    }
}

/// A fresh nonce from the system's CSPRNG.
pub fn new_nonce(rng: &ring::rand::SystemRandom) -> Result<[u8; NONCE_BYTES], AuthError> {
    let mut n = [0u8; NONCE_BYTES];
    rng.fill(&mut n).map_err(|_| AuthError::Random)?;
    Ok(n)
}

/// A nonce as a peer sent it: exactly [`NONCE_BYTES`].
pub fn nonce_from(bytes: &[u8]) -> Result<[u8; NONCE_BYTES], AuthError> {
    bytes
        .try_into()
        .map_err(|_| AuthError::BadNonce(bytes.len()))
}

/// TLS of quorum links: each node's server side (requires and verifies a client certificate)
/// and client side (presents the same certificate, verifies the peer's).
#[derive(Debug, Clone)]
pub struct QuorumTls {
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
}

impl QuorumTls {
    /// Loads the node's certificate chain and key and the CA peers' certificates chain to
    /// (PEM files: `--tls-cert-file`, `--tls-key-file`, `--tls-client-ca-file`).
    pub fn from_pem_files(cert: &Path, key: &Path, ca: &Path) -> Result<QuorumTls, String> {
        let chain = load_certs(cert)?;
        let key = load_key(key)?;
        let mut roots = rustls::RootCertStore::empty();
        for c in load_certs(ca)? {
            roots
                .add(c)
                .map_err(|e| format!("{}: not a usable CA certificate: {e}", ca.display()))?;
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .map_err(|e| format!("{}: {e}", ca.display()))?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| format!("{}: {e}", cert.display()))?;
        // The connecting side only writes after the handshake: no tickets it would not read.
        server.send_tls13_tickets = 0;
        let server_verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| format!("{}: {e}", ca.display()))?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PeerVerifier {
                inner: server_verifier,
            }))
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("{}: {e}", cert.display()))?;
        Ok(QuorumTls {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

/// PEM certificates of `path` (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

/// The PEM private key of `path` (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("{}: no usable private key: {e}", path.display()))
}

/// Verifies a peer's certificate chain against the cluster's CA, not its name: quorum peers
/// are known by the addresses in `--cluster` (often IPs, or addresses behind NAT), not by the
/// names their certificates carry. Any certificate of that CA is a cluster member's; use a CA
/// that signs only brokers, or add the inter-broker password.
#[derive(Debug)]
struct PeerVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
}

impl rustls::client::danger::ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn password(p: &str) -> QuorumPassword {
        QuorumPassword {
            user: "broker".to_string(),
            password: p.to_string(),
        }
    }

    fn exchange(rng: &ring::rand::SystemRandom) -> Exchange {
        Exchange {
            client: 2,
            server: 1,
            client_nonce: new_nonce(rng).unwrap(),
            server_nonce: new_nonce(rng).unwrap(),
        }
    }

    #[test]
    fn both_proofs_check_with_the_same_password_only() {
        let rng = ring::rand::SystemRandom::new();
        let key = QuorumKey::derive(&password("s3cret"), 42);
        let x = exchange(&rng);
        let server = key.proof(Role::Server, &x);
        let client = key.proof(Role::Client, &x);
        assert_eq!(server.len(), PROOF_BYTES);
        key.verify(Role::Server, &x, &server).unwrap();
        key.verify(Role::Client, &x, &client).unwrap();
        // One side's proof is not the other's (no reflection).
        assert_eq!(
            key.verify(Role::Client, &x, &server),
            Err(AuthError::BadProof)
        );
        assert_eq!(
            key.verify(Role::Server, &x, &client),
            Err(AuthError::BadProof)
        );
        // Another password, another cluster (fingerprint), another user: refused.
        let wrong = QuorumKey::derive(&password("s3cret!"), 42);
        assert_eq!(
            wrong.verify(Role::Client, &x, &client),
            Err(AuthError::BadProof)
        );
        let other_cluster = QuorumKey::derive(&password("s3cret"), 43);
        assert_eq!(
            other_cluster.verify(Role::Client, &x, &client),
            Err(AuthError::BadProof)
        );
        let other_user = QuorumKey::derive(
            &QuorumPassword {
                user: "other".to_string(),
                password: "s3cret".to_string(),
            },
            42,
        );
        assert_eq!(
            other_user.verify(Role::Client, &x, &client),
            Err(AuthError::BadProof)
        );
    }

    #[test]
    fn a_recorded_proof_fails_on_a_new_nonce_or_another_pair_of_nodes() {
        let rng = ring::rand::SystemRandom::new();
        let key = QuorumKey::derive(&password("pw"), 7);
        let x = exchange(&rng);
        let client = key.proof(Role::Client, &x);
        // The server's next connection picks a new nonce: the replayed proof is refused.
        let replay = Exchange {
            server_nonce: new_nonce(&rng).unwrap(),
            ..x.clone()
        };
        assert_eq!(
            key.verify(Role::Client, &replay, &client),
            Err(AuthError::BadProof)
        );
        // Replayed against another node, or claiming another node's id.
        for moved in [
            Exchange {
                server: 3,
                ..x.clone()
            },
            Exchange {
                client: 3,
                ..x.clone()
            },
        ] {
            assert_eq!(
                key.verify(Role::Client, &moved, &client),
                Err(AuthError::BadProof)
            );
        }
    }

    #[test]
    fn truncated_or_empty_proofs_and_nonces_are_refused() {
        let rng = ring::rand::SystemRandom::new();
        let key = QuorumKey::derive(&password("pw"), 7);
        let x = exchange(&rng);
        let proof = key.proof(Role::Client, &x);
        for cut in [0, 1, PROOF_BYTES - 1] {
            assert_eq!(
                key.verify(Role::Client, &x, &proof[..cut]),
                Err(AuthError::BadProof)
            );
        }
        let mut longer = proof.clone();
        longer.push(0);
        assert_eq!(
            key.verify(Role::Client, &x, &longer),
            Err(AuthError::BadProof)
        );
        assert_eq!(nonce_from(&[1, 2, 3]), Err(AuthError::BadNonce(3)));
        assert_eq!(nonce_from(&[]), Err(AuthError::BadNonce(0)));
        assert!(nonce_from(&x.client_nonce).is_ok());
    }

    #[test]
    fn the_password_is_not_printed() {
        let p = password("hunter2");
        assert!(!format!("{p:?}").contains("hunter2"));
    }
}
