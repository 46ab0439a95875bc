//! SCRAM primitives (RFC 5802, RFC 7677) shared by the SASL server ([`super::sasl`]) and the
//! SASL client ([`super::sasl_client`]): key derivation, the credential a server stores,
//! attribute parsing and user-name escaping.

use super::SaslMechanism;
use base64::Engine as _;
use ring::{digest, hmac, pbkdf2};
use std::num::NonZeroU32;

/// Fewest PBKDF2 iterations a credential may have (Kafka's `ScramMechanism.minIterations`,
/// RFC 7677's 4096). A client refuses a server asking for fewer, AlterUserScramCredentials
/// refuses to store fewer.
pub const ITERATIONS_MIN: u32 = 4096;
/// Most PBKDF2 iterations (Kafka's `ScramMechanism.maxIterations`): bounds the work a server
/// can make a client do and the work a credential costs the broker at each login.
pub const ITERATIONS_MAX: u32 = 16384;
/// Longest SCRAM nonce either side accepts from its peer (ours are 32 random bytes, 44 base64
/// characters; clients send about as many).
pub const NONCE_CHARS_MAX: usize = 256;
/// Longest salt accepted from a server or stored (ours are 32 bytes).
pub const SALT_BYTES_MAX: usize = 256;
/// Longest user name (after `=2C`/`=3D` decoding).
pub const USER_BYTES_MAX: usize = 256;
/// Largest SASL message (one SaslAuthenticate's `auth_bytes`, either direction) of any
/// mechanism: SCRAM messages are a few hundred bytes, PLAIN's is two names and a password.
pub const MESSAGE_BYTES_MAX: usize = 8 * 1024;
/// Random bytes in a nonce we make (base64 encoded on the wire).
pub const NONCE_RANDOM_BYTES: usize = 32;
/// Random bytes of salt in a credential we make.
pub const SALT_RANDOM_BYTES: usize = 32;

/// Why a SCRAM or PLAIN step failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaslError {
    /// The peer's message does not follow the mechanism's grammar.
    Malformed(&'static str),
    /// The server's nonce does not start with the client's.
    NonceMismatch,
    /// Iterations outside [`ITERATIONS_MIN`]..=[`ITERATIONS_MAX`].
    Iterations(u32),
    /// The server's signature is wrong (it does not know the password).
    ServerSignature,
    /// The server answered `e=...`.
    ServerError(String),
    /// The mechanism is not one this code speaks for the step.
    Mechanism,
    /// A message or field is longer than its limit.
    TooLong(&'static str),
    /// The system's random number generator failed.
    Random,
    /// A step was called out of order.
    State,
}

impl std::fmt::Display for SaslError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SaslError::Malformed(what) => write!(f, "malformed SASL message: {what}"),
            SaslError::NonceMismatch => f.write_str("server nonce does not extend the client's"),
            SaslError::Iterations(n) => write!(
                f,
                "SCRAM iterations {n} outside {ITERATIONS_MIN}..={ITERATIONS_MAX}"
            ),
            SaslError::ServerSignature => f.write_str("invalid SCRAM server signature"),
            SaslError::ServerError(e) => write!(f, "SCRAM server error: {e}"),
            SaslError::Mechanism => f.write_str("not a SCRAM mechanism"),
            SaslError::TooLong(what) => write!(f, "SASL {what} too long"),
            SaslError::Random => f.write_str("random number generator failed"),
            SaslError::State => f.write_str("SASL step out of order"),
        }
    }
}

impl std::error::Error for SaslError {}

/// The hash functions of a SCRAM mechanism.
#[derive(Clone, Copy)]
pub struct Algorithm {
    pub mechanism: SaslMechanism,
    pbkdf2: pbkdf2::Algorithm,
    hmac: hmac::Algorithm,
    digest: &'static digest::Algorithm,
}

impl Algorithm {
    /// `None` for PLAIN.
    pub fn of(mechanism: SaslMechanism) -> Option<Algorithm> {
        match mechanism {
            SaslMechanism::ScramSha256 => Some(Algorithm {
                mechanism,
                pbkdf2: pbkdf2::PBKDF2_HMAC_SHA256,
                hmac: hmac::HMAC_SHA256,
                digest: &digest::SHA256,
            }),
            SaslMechanism::ScramSha512 => Some(Algorithm {
                mechanism,
                pbkdf2: pbkdf2::PBKDF2_HMAC_SHA512,
                hmac: hmac::HMAC_SHA512,
                digest: &digest::SHA512,
            }),
            SaslMechanism::Plain => None,
        }
    }

    /// Output length of the hash (32 or 64 bytes).
    pub fn output_len(&self) -> usize {
        self.digest.output_len()
    }

    /// `Hi(password, salt, i)`: the salted password. `iterations` must be non-zero (callers
    /// bound it by [`ITERATIONS_MIN`]).
    pub fn salted_password(&self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let mut out = vec![0u8; self.output_len()];
        let iterations = NonZeroU32::new(iterations).unwrap_or(NonZeroU32::MIN);
        pbkdf2::derive(self.pbkdf2, iterations, salt, password, &mut out);
        out
    }

    pub fn hmac(&self, key: &[u8], data: &[u8]) -> Vec<u8> {
        let key = hmac::Key::new(self.hmac, key);
        hmac::sign(&key, data).as_ref().to_vec()
    }

    pub fn hash(&self, data: &[u8]) -> Vec<u8> {
        digest::digest(self.digest, data).as_ref().to_vec()
    }

    /// `ClientKey = HMAC(SaltedPassword, "Client Key")`.
    pub fn client_key(&self, salted: &[u8]) -> Vec<u8> {
        self.hmac(salted, b"Client Key")
    }

    /// `ServerKey = HMAC(SaltedPassword, "Server Key")`.
    pub fn server_key(&self, salted: &[u8]) -> Vec<u8> {
        self.hmac(salted, b"Server Key")
    }

    /// The credential a server stores for `password`: salt, iterations, `StoredKey =
    /// H(ClientKey)` and `ServerKey`.
    pub fn credential(&self, password: &[u8], salt: Vec<u8>, iterations: u32) -> Credential {
        let salted = self.salted_password(password, &salt, iterations);
        Credential {
            mechanism: self.mechanism,
            iterations,
            stored_key: self.hash(&self.client_key(&salted)),
            server_key: self.server_key(&salted),
            salt,
        }
    }
}

/// What a server keeps of a user's password for one SCRAM mechanism (its Debug form leaves
/// the keys out).
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub mechanism: SaslMechanism,
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("mechanism", &self.mechanism)
            .field("iterations", &self.iterations)
            .field("salt_bytes", &self.salt.len())
            .field("stored_key", &"<redacted>")
            .field("server_key", &"<redacted>")
            .finish()
    }
}

impl Credential {
    /// A credential for `password` with a fresh random salt.
    pub fn generate(
        mechanism: SaslMechanism,
        password: &[u8],
        iterations: u32,
    ) -> Result<Credential, SaslError> {
        let algorithm = Algorithm::of(mechanism).ok_or(SaslError::Mechanism)?;
        if !(ITERATIONS_MIN..=ITERATIONS_MAX).contains(&iterations) {
            return Err(SaslError::Iterations(iterations));
        }
        let salt = random_bytes(SALT_RANDOM_BYTES)?;
        Ok(algorithm.credential(password, salt, iterations))
    }

    /// From the metadata image's form; `None` when it is not a SCRAM credential this broker
    /// can check (unknown mechanism, wrong key lengths).
    pub fn from_stored(c: &ringbroker_cluster::ScramCredential) -> Option<Credential> {
        let mechanism = SaslMechanism::from_name(&c.mechanism)?;
        let algorithm = Algorithm::of(mechanism)?;
        if c.stored_key.len() != algorithm.output_len()
            || c.server_key.len() != algorithm.output_len()
            || c.salt.len() > SALT_BYTES_MAX
            || !(1..=ITERATIONS_MAX).contains(&c.iterations)
        {
            return None;
        }
        Some(Credential {
            mechanism,
            iterations: c.iterations,
            salt: c.salt.clone(),
            stored_key: c.stored_key.clone(),
            server_key: c.server_key.clone(),
        })
    }

    /// The metadata image's form.
    pub fn to_stored(&self) -> ringbroker_cluster::ScramCredential {
        ringbroker_cluster::ScramCredential {
            mechanism: self.mechanism.name().to_string(),
            iterations: self.iterations,
            salt: self.salt.clone(),
            stored_key: self.stored_key.clone(),
            server_key: self.server_key.clone(),
        }
    }
}

/// `n` random bytes from the system's generator.
pub fn random_bytes(n: usize) -> Result<Vec<u8>, SaslError> {
    use ring::rand::SecureRandom as _;
    let mut out = vec![0u8; n];
    ring::rand::SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| SaslError::Random)?;
    Ok(out)
}

/// A fresh nonce: [`NONCE_RANDOM_BYTES`] random bytes in URL-safe base64 without padding
/// (letters, digits, `-`, `_`: librdkafka mis-parses a nonce holding `=`, `+` or `/`).
pub fn new_nonce() -> Result<String, SaslError> {
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes(NONCE_RANDOM_BYTES)?))
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn unb64(text: &str) -> Result<Vec<u8>, SaslError> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| SaslError::Malformed("bad base64"))
}

/// `a XOR b` (same lengths).
pub fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

/// Compares in time independent of where the slices differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// A user name as SCRAM writes it (`,` → `=2C`, `=` → `=3D`).
pub fn escape_user(user: &str) -> String {
    user.replace('=', "=3D").replace(',', "=2C")
}

/// Decodes `=2C`/`=3D`; any other `=` is an error (RFC 5802 §5.1).
pub fn unescape_user(text: &str) -> Result<String, SaslError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('=') {
        out.push_str(&rest[..at]);
        let code = rest.get(at + 1..at + 3);
        match code {
            Some("2C") => out.push(','),
            Some("3D") => out.push('='),
            _ => return Err(SaslError::Malformed("bad user name escape")),
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    if out.len() > USER_BYTES_MAX {
        return Err(SaslError::TooLong("user name"));
    }
    Ok(out)
}

/// The value of attribute `key` (`key=value`) in a comma-separated SCRAM message.
pub fn attribute(message: &str, key: char) -> Option<&str> {
    message.split(',').find_map(|part| {
        let mut chars = part.chars();
        (chars.next() == Some(key) && chars.next() == Some('=')).then(|| &part[2..])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_escape_both_ways() {
        assert_eq!(escape_user("a,b=c"), "a=2Cb=3Dc");
        assert_eq!(unescape_user("a=2Cb=3Dc").unwrap(), "a,b=c");
        assert!(unescape_user("a=2").is_err());
        assert!(unescape_user("a=41").is_err());
        assert!(unescape_user(&"x".repeat(USER_BYTES_MAX + 1)).is_err());
    }

    #[test]
    fn attributes_are_found_by_key() {
        let m = "r=abc,s=c2FsdA==,i=4096";
        assert_eq!(attribute(m, 'r'), Some("abc"));
        assert_eq!(attribute(m, 's'), Some("c2FsdA=="));
        assert_eq!(attribute(m, 'i'), Some("4096"));
        assert_eq!(attribute(m, 'x'), None);
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn generated_credentials_respect_iteration_bounds() {
        let m = SaslMechanism::ScramSha512;
        assert!(Credential::generate(m, b"pw", ITERATIONS_MIN - 1).is_err());
        assert!(Credential::generate(m, b"pw", ITERATIONS_MAX + 1).is_err());
        let c = Credential::generate(m, b"pw", ITERATIONS_MIN).unwrap();
        assert_eq!(c.stored_key.len(), 64);
        assert_eq!(Credential::from_stored(&c.to_stored()), Some(c));
    }
}
