//! A sans-IO SASL client (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512): it makes the bytes a client
//! puts in SaslAuthenticate requests and checks the server's answers; the caller does the
//! I/O (broker-to-broker fetchers, the bench tool, tests).
//!
//! ```text
//! let mut client = SaslClient::new(mechanism, user, password)?;
//! let mut out = client.initial();            // SaslAuthenticate #1 auth_bytes
//! loop {
//!     let answer = /* the response's auth_bytes */;
//!     match client.step(&answer)? {
//!         Step::Send(bytes) => out = bytes,  // send another SaslAuthenticate
//!         Step::Done => break,               // authenticated
//!     }
//! }
//! ```

use super::scram::{self, Algorithm, SaslError};
use super::SaslMechanism;

/// What to do after a server message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send these bytes in the next SaslAuthenticate request.
    Send(Vec<u8>),
    /// The exchange succeeded (for SCRAM: the server proved it knows the credential).
    Done,
}

/// PLAIN's only message (RFC 4616): `authzid NUL user NUL password`, with an empty authzid.
pub fn plain_message(user: &str, password: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(user.len() + password.len() + 2);
    out.push(0);
    out.extend_from_slice(user.as_bytes());
    out.push(0);
    out.extend_from_slice(password.as_bytes());
    out
}

/// One SASL exchange of a client.
pub enum SaslClient {
    Plain {
        user: String,
        password: String,
        sent: bool,
    },
    Scram(ScramClient),
}

impl SaslClient {
    /// A client with a fresh random nonce (SCRAM).
    pub fn new(mechanism: SaslMechanism, user: &str, password: &str) -> Result<Self, SaslError> {
        Ok(match mechanism {
            SaslMechanism::Plain => SaslClient::Plain {
                user: user.to_string(),
                password: password.to_string(),
                sent: false,
            },
            m => SaslClient::Scram(ScramClient::new(m, user, password)?),
        })
    }

    pub fn mechanism(&self) -> SaslMechanism {
        match self {
            SaslClient::Plain { .. } => SaslMechanism::Plain,
            SaslClient::Scram(s) => s.algorithm.mechanism,
        }
    }

    /// The first message (the first SaslAuthenticate's `auth_bytes`).
    pub fn initial(&mut self) -> Vec<u8> {
        match self {
            SaslClient::Plain {
                user,
                password,
                sent,
            } => {
                *sent = true;
                plain_message(user, password)
            }
            SaslClient::Scram(s) => s.client_first(),
        }
    }

    /// Handles the server's answer to the last message sent.
    pub fn step(&mut self, server: &[u8]) -> Result<Step, SaslError> {
        match self {
            // PLAIN's server answers with empty bytes; success is the error code.
            SaslClient::Plain { sent: true, .. } => Ok(Step::Done),
            SaslClient::Plain { .. } => Err(SaslError::State),
            SaslClient::Scram(s) => match s.state {
                ScramState::SentFirst { .. } => s.handle_server_first(server).map(Step::Send),
                ScramState::SentFinal { .. } => s.handle_server_final(server).map(|()| Step::Done),
                _ => Err(SaslError::State),
            },
        }
    }
}

enum ScramState {
    Initial,
    SentFirst {
        /// `n=user,r=nonce` (the client-first message without its GS2 header).
        first_bare: String,
    },
    SentFinal {
        /// `ServerSignature` the server must answer with.
        server_signature: Vec<u8>,
    },
    Done,
    Failed,
}

/// The client side of SCRAM (RFC 5802) without channel binding (`n,,`).
pub struct ScramClient {
    algorithm: Algorithm,
    user: String,
    password: String,
    nonce: String,
    state: ScramState,
}

impl ScramClient {
    /// A client with a fresh random nonce.
    pub fn new(mechanism: SaslMechanism, user: &str, password: &str) -> Result<Self, SaslError> {
        ScramClient::with_nonce(mechanism, user, password, scram::new_nonce()?)
    }

    /// A client with the given nonce (tests against published vectors).
    pub fn with_nonce(
        mechanism: SaslMechanism,
        user: &str,
        password: &str,
        nonce: String,
    ) -> Result<Self, SaslError> {
        let algorithm = Algorithm::of(mechanism).ok_or(SaslError::Mechanism)?;
        if nonce.is_empty() || nonce.contains(',') || nonce.len() > scram::NONCE_CHARS_MAX {
            return Err(SaslError::Malformed("client nonce"));
        }
        Ok(ScramClient {
            algorithm,
            user: user.to_string(),
            password: password.to_string(),
            nonce,
            state: ScramState::Initial,
        })
    }

    /// `n,,n=user,r=nonce`.
    pub fn client_first(&mut self) -> Vec<u8> {
        let first_bare = format!("n={},r={}", scram::escape_user(&self.user), self.nonce);
        let message = format!("n,,{first_bare}");
        self.state = ScramState::SentFirst { first_bare };
        message.into_bytes()
    }

    /// Checks the server-first message (`r=...,s=...,i=...`) and makes the client-final one
    /// (`c=biws,r=...,p=proof`).
    pub fn handle_server_first(&mut self, message: &[u8]) -> Result<Vec<u8>, SaslError> {
        let ScramState::SentFirst { first_bare } =
            std::mem::replace(&mut self.state, ScramState::Failed)
        else {
            return Err(SaslError::State);
        };
        if message.len() > scram::MESSAGE_BYTES_MAX {
            return Err(SaslError::TooLong("server-first message"));
        }
        let server_first = std::str::from_utf8(message)
            .map_err(|_| SaslError::Malformed("server-first is not UTF-8"))?;
        if let Some(e) = scram::attribute(server_first, 'e') {
            return Err(SaslError::ServerError(e.to_string()));
        }
        if server_first.starts_with("m=") {
            return Err(SaslError::Malformed("mandatory extension"));
        }
        let nonce = scram::attribute(server_first, 'r').ok_or(SaslError::Malformed("no nonce"))?;
        if nonce.len() > 2 * scram::NONCE_CHARS_MAX {
            return Err(SaslError::TooLong("nonce"));
        }
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(SaslError::NonceMismatch);
        }
        let salt = scram::unb64(
            scram::attribute(server_first, 's').ok_or(SaslError::Malformed("no salt"))?,
        )?;
        if salt.is_empty() || salt.len() > scram::SALT_BYTES_MAX {
            return Err(SaslError::Malformed("salt length"));
        }
        let iterations: u32 = scram::attribute(server_first, 'i')
            .ok_or(SaslError::Malformed("no iteration count"))?
            .parse()
            .map_err(|_| SaslError::Malformed("iteration count"))?;
        if !(scram::ITERATIONS_MIN..=scram::ITERATIONS_MAX).contains(&iterations) {
            return Err(SaslError::Iterations(iterations));
        }
        let a = self.algorithm;
        let salted = a.salted_password(self.password.as_bytes(), &salt, iterations);
        let client_key = a.client_key(&salted);
        let stored_key = a.hash(&client_key);
        // "biws" is base64("n,,"): no channel binding, no authzid.
        let final_without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{first_bare},{server_first},{final_without_proof}");
        let client_signature = a.hmac(&stored_key, auth_message.as_bytes());
        let proof = scram::xor(&client_key, &client_signature);
        let server_signature = a.hmac(&a.server_key(&salted), auth_message.as_bytes());
        self.state = ScramState::SentFinal { server_signature };
        Ok(format!("{final_without_proof},p={}", scram::b64(&proof)).into_bytes())
    }

    /// Checks the server-final message (`v=signature`, or `e=error`).
    pub fn handle_server_final(&mut self, message: &[u8]) -> Result<(), SaslError> {
        let ScramState::SentFinal { server_signature } =
            std::mem::replace(&mut self.state, ScramState::Failed)
        else {
            return Err(SaslError::State);
        };
        let text = std::str::from_utf8(message)
            .map_err(|_| SaslError::Malformed("server-final is not UTF-8"))?;
        if let Some(e) = scram::attribute(text, 'e') {
            return Err(SaslError::ServerError(e.to_string()));
        }
        let v = scram::unb64(scram::attribute(text, 'v').ok_or(SaslError::Malformed("no v="))?)?;
        if !scram::constant_time_eq(&v, &server_signature) {
            return Err(SaslError::ServerSignature);
        }
        self.state = ScramState::Done;
        Ok(())
    }

    /// The exchange finished and the server proved itself.
    pub fn is_done(&self) -> bool {
        matches!(self.state, ScramState::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7677 section 3.
    const NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                                p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc7677_client() -> ScramClient {
        ScramClient::with_nonce(
            SaslMechanism::ScramSha256,
            "user",
            "pencil",
            NONCE.to_string(),
        )
        .unwrap()
    }

    #[test]
    fn scram_sha256_matches_rfc7677() {
        let mut c = rfc7677_client();
        assert_eq!(c.client_first(), b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let fin = c.handle_server_first(SERVER_FIRST.as_bytes()).unwrap();
        assert_eq!(String::from_utf8(fin).unwrap(), CLIENT_FINAL);
        c.handle_server_final(SERVER_FINAL.as_bytes()).unwrap();
        assert!(c.is_done());
    }

    #[test]
    fn wrong_server_signature_is_refused() {
        let mut c = rfc7677_client();
        c.client_first();
        c.handle_server_first(SERVER_FIRST.as_bytes()).unwrap();
        let bad = "v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
        assert_eq!(
            c.handle_server_final(bad.as_bytes()),
            Err(SaslError::ServerSignature)
        );
        assert!(!c.is_done());
    }

    #[test]
    fn server_nonce_must_extend_the_clients() {
        let mut c = rfc7677_client();
        c.client_first();
        let other = SERVER_FIRST.replace("r=rOpr", "r=xOpr");
        assert_eq!(
            c.handle_server_first(other.as_bytes()),
            Err(SaslError::NonceMismatch)
        );
        let mut c = rfc7677_client();
        c.client_first();
        let same = format!("r={NONCE},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096");
        assert_eq!(
            c.handle_server_first(same.as_bytes()),
            Err(SaslError::NonceMismatch)
        );
    }

    #[test]
    fn iterations_are_bounded() {
        for n in [1, scram::ITERATIONS_MIN - 1, scram::ITERATIONS_MAX + 1] {
            let mut c = rfc7677_client();
            c.client_first();
            let m = SERVER_FIRST.replace("i=4096", &format!("i={n}"));
            assert_eq!(
                c.handle_server_first(m.as_bytes()),
                Err(SaslError::Iterations(n))
            );
        }
    }

    #[test]
    fn server_error_is_reported() {
        let mut c = rfc7677_client();
        c.client_first();
        c.handle_server_first(SERVER_FIRST.as_bytes()).unwrap();
        assert_eq!(
            c.handle_server_final(b"e=invalid-proof"),
            Err(SaslError::ServerError("invalid-proof".into()))
        );
    }

    #[test]
    fn steps_out_of_order_fail() {
        let mut c = rfc7677_client();
        assert_eq!(
            c.handle_server_first(SERVER_FIRST.as_bytes()),
            Err(SaslError::State)
        );
        let mut c = SaslClient::new(SaslMechanism::Plain, "u", "p").unwrap();
        assert_eq!(c.step(b""), Err(SaslError::State));
        assert_eq!(c.initial(), b"\0u\0p");
        assert_eq!(c.step(b""), Ok(Step::Done));
    }

    #[test]
    fn user_names_are_escaped() {
        let mut c = ScramClient::with_nonce(SaslMechanism::ScramSha512, "a,b=c", "pw", "n1".into())
            .unwrap();
        assert_eq!(c.client_first(), b"n,,n=a=2Cb=3Dc,r=n1");
    }
}
